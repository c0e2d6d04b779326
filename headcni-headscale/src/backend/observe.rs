//! Read-only views for `headcni status`: [`TailnetBackend::observe`] and the peers' routes.

use headcni_core::control::plan::{
    PlanFailure, ServedRoutes, observed_readiness, stateful_filtering_note,
};
use headcni_core::control::{ControlPlaneError, ControlPlaneStatus, PeerRoutes};
use ipnetwork::IpNetwork;
use tokio::time::Instant;

use super::views::{agent_view, la_err, prefs_view};
use super::{ApprovalMode, TailnetBackend, now_unix};
use crate::headscale::{ApiGeneration, NodeId};
use crate::localapi::Status;
use crate::tailscale_api::NodeRef;

impl TailnetBackend {
    /// Observes the current state without changing anything (for `headcni status`): LocalAPI
    /// status with peers and prefs, and with an API key the node's approvals (≥ 0.26
    /// `approvedRoutes`, ≤ 0.25 the enabled route rows; with the Tailscale API the
    /// `enabledRoutes` of the device of `Self.PublicKey`/`Self.ID`). Readiness as
    /// `headcni_core::control::plan::observed_readiness` decides it; an unreachable
    /// tailscaled gives `unreachable`/`refused`.
    pub async fn observe(&self, routes: &[IpNetwork]) -> ControlPlaneStatus {
        let mut out = ControlPlaneStatus::initial(Self::backend_name(&self.approval));
        out.wanted = routes.to_vec();
        out.observed_at_unix = now_unix();
        let st = match self.localapi.status().await {
            Ok(s) => s,
            Err(e) => {
                out.readiness = PlanFailure::from(la_err(e)).readiness();
                return out;
            }
        };
        out.peers = peers_of(&st);
        if let Some(me) = &st.self_ {
            out.node_id = Some(me.id.clone());
            out.node_name = Some(me.host_name.clone());
            out.routes.primary = me.primary_routes.clone();
        }
        let agent = agent_view(&st);
        out.notes.extend(stateful_filtering_note(&agent.version));
        let prefs = self
            .localapi
            .prefs()
            .await
            .ok()
            .map(|p| prefs_view(&p, Some(&agent)));
        if let Some(p) = &prefs {
            out.routes.advertised = p.advertise_routes.clone();
        }
        if let (ApprovalMode::Api(client), Some(id)) = (
            &self.approval,
            out.node_id.as_ref().and_then(|i| i.parse::<NodeId>().ok()),
        ) {
            match client.generation().await {
                Ok(ApiGeneration::ApprovedRoutes) => {
                    if let Ok(n) = client.get_node(id).await {
                        out.routes.approved = n.approved_routes;
                    }
                }
                Ok(ApiGeneration::RouteRows) => {
                    if let Ok(rows) = client.node_routes(id).await {
                        out.routes.approved = rows
                            .iter()
                            .filter(|r| r.enabled)
                            .filter_map(|r| r.prefix)
                            .collect();
                    }
                }
                Err(_) => {}
            }
        }
        if let (ApprovalMode::TailscaleApi(api), Some(me)) = (&self.approval, &st.self_) {
            let node = NodeRef::new(me.public_key.clone(), me.id.clone());
            if let Ok(d) = api.find_device(&node).await
                && let Ok(r) = api.device_routes(d.device_id()).await
            {
                out.routes.approved = r.enabled;
            }
        }
        out.readiness = observed_readiness(routes, &agent, prefs.as_ref());
        out
    }

    /// Every node's served routes as Headscale lists them (API approval only; `None` without
    /// an API key or when the list cannot be read), read at most once per
    /// [`super::BackendOptions::peer_check_interval`]. ≥ 0.26: `GET /api/v1/node`
    /// `subnetRoutes` (approved ∩ announced, exit routes included: filtered later); ≤ 0.25:
    /// `GET /api/v1/routes`, the enabled and advertised rows.
    pub(super) async fn served_routes(&self) -> Option<Vec<ServedRoutes>> {
        let ApprovalMode::Api(client) = &self.approval else {
            return None;
        };
        if let Ok(g) = self.served.lock()
            && let Some((at, list)) = g.as_ref()
            && at.elapsed() < self.opts.peer_check_interval
        {
            return Some(list.clone());
        }
        let list = match client.generation().await.ok()? {
            ApiGeneration::ApprovedRoutes => client
                .list_nodes(None)
                .await
                .ok()?
                .into_iter()
                .map(|n| ServedRoutes {
                    id: n.id.to_string(),
                    name: n.name,
                    online: n.online,
                    routes: n.subnet_routes,
                })
                .collect(),
            ApiGeneration::RouteRows => {
                let mut by_node: Vec<ServedRoutes> = Vec::new();
                for r in client.list_routes().await.ok()? {
                    let (Some(node), Some(prefix)) = (r.node, r.prefix) else {
                        continue;
                    };
                    if !(r.enabled && r.advertised) {
                        continue;
                    }
                    let id = node.id.to_string();
                    match by_node.iter_mut().find(|s| s.id == id) {
                        Some(s) => s.routes.push(prefix),
                        None => by_node.push(ServedRoutes {
                            id,
                            name: node.name,
                            online: node.online,
                            routes: vec![prefix],
                        }),
                    }
                }
                by_node
            }
        };
        if let Ok(mut g) = self.served.lock() {
            *g = Some((Instant::now(), list.clone()));
        }
        Some(list)
    }

    /// Peers' primary routes: LocalAPI `GET status` (with peers).
    pub(super) async fn peers(&self) -> Result<Vec<PeerRoutes>, ControlPlaneError> {
        let st = self
            .la("localapi status", || self.localapi.status())
            .await?;
        Ok(peers_of(&st))
    }
}

/// The peers with primary routes, sorted by host name then id.
fn peers_of(st: &Status) -> Vec<PeerRoutes> {
    let mut v: Vec<PeerRoutes> = st
        .peer
        .values()
        .filter(|p| !p.primary_routes.is_empty())
        .map(|p| PeerRoutes {
            name: p.host_name.clone(),
            id: (!p.id.is_empty()).then(|| p.id.clone()),
            online: p.online,
            routes: p.primary_routes.clone(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    v
}
