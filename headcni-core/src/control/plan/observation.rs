//! What the plan decides on: the intent ([`Wanted`]) and what the driver observed so far
//! ([`ControlObservation`]), in the terms of the LocalAPI and the Headscale REST API.

use std::time::Duration;

use ipnetwork::IpNetwork;

/// How this node's routes get approved (the `[headscale] approval` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalPath {
    /// Through the Headscale REST API with an API key (`approval = "api"`).
    Api,
    /// By the Headscale policy's `autoApprovers.routes`; no API call, approvals invisible
    /// (`approval = "auto-approvers"`).
    AutoApprovers,
    /// Through the Tailscale API v2 with an OAuth client (`approval = "tailscale-api"`):
    /// Tailscale SaaS, or a Headscale that serves `/api/v2`. The device is found by
    /// `Self.PublicKey` (its `nodeKey`) and `Self.ID` (its `nodeId`).
    TailscaleApi,
}

/// The intent of a reconcile or a withdrawal: not observed, given by the node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// HeadCNI's routes for this node (its PodCIDRs); must be masked, non-exit prefixes.
    pub routes: Vec<IpNetwork>,
    /// How they get approved.
    pub approval: ApprovalPath,
    /// The bound of the approval and primary waits, only quoted in failure messages (the
    /// driver owns the clock and reports [`ControlObservation::deadline_passed`]).
    pub approval_timeout: Duration,
}

/// LocalAPI `Self` (tailscale `ipn/ipnstate/ipnstate.go` `PeerStatus`), the fields HeadCNI
/// decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfView {
    /// `ID`: the control server's node id (Headscale: decimal node id); may be empty.
    pub id: String,
    /// `PublicKey`: `nodekey:<hex>`; equals Headscale's `nodeKey` for the same node.
    pub public_key: String,
    /// `HostName`.
    pub host_name: String,
    /// `PrimaryRoutes`: the routes this node serves as primary.
    pub primary_routes: Vec<IpNetwork>,
    /// `Tags`: the node's ACL tags (empty: user-owned).
    pub tags: Vec<String>,
}

/// LocalAPI `GET /localapi/v0/status?peers=false` (tailscale `ipn/ipnstate/ipnstate.go`
/// `Status`), the fields HeadCNI decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentView {
    /// `Version`: tailscaled's version, e.g. `1.64.2-t…` (empty when unknown).
    pub version: String,
    /// `BackendState`: `NoState`, `NeedsLogin`, `NeedsMachineAuth`, `Stopped`, `Starting`,
    /// `Running`.
    pub backend_state: String,
    /// `Self` (`null` before login).
    pub self_node: Option<SelfView>,
}

impl AgentView {
    /// `BackendState == "Running"`.
    pub fn is_running(&self) -> bool {
        self.backend_state == "Running"
    }
}

/// LocalAPI `GET /localapi/v0/prefs` (tailscale `ipn/prefs.go` `Prefs`), the fields HeadCNI
/// manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefsView {
    /// `AdvertiseRoutes`, all of them (not only HeadCNI's), in tailscaled's order.
    pub advertise_routes: Vec<IpNetwork>,
    /// `RouteAll` (accept peers' routes).
    pub route_all: bool,
    /// `NoSNAT`.
    pub no_snat: bool,
    /// `NoStatefulFiltering` is set to `true` (an unset or `false` `opt.Bool` is `false` here).
    pub no_stateful_filtering: bool,
    /// This tailscaled has no `NoStatefulFiltering` pref at all (before 1.66.0, e.g. the
    /// 1.62/1.64 that Headscale 0.25–0.27 support; see [`super::has_no_stateful_filtering`]):
    /// a PATCH of it is ignored, so it is not required.
    pub no_stateful_filtering_unsupported: bool,
}

/// Headscale's route model, from the server's API generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteModel {
    /// ≤ 0.25: route rows (`GET /api/v1/node/{id}/routes`, `POST /api/v1/routes/{id}/enable`).
    RouteRows,
    /// ≥ 0.26: `approvedRoutes` on the node, `POST /api/v1/node/{id}/approve_routes` (replace
    /// semantics).
    ApprovedRoutes,
}

/// Headscale `v1Node` (`GET /api/v1/node/{id}`), the fields HeadCNI decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// `id`.
    pub id: u64,
    /// `nodeKey` (`nodekey:<hex>`).
    pub node_key: String,
    /// `approvedRoutes` (≥ 0.26; empty on ≤ 0.25). After our own `approve_routes` the driver
    /// stores the answer's `approvedRoutes` here.
    pub approved_routes: Vec<IpNetwork>,
}

/// The result of looking up this node in Headscale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NodeLookup {
    /// Not read yet.
    #[default]
    NotRead,
    /// `GET /api/v1/node/{id}` answered "not found".
    NotFound,
    /// The node.
    Found(NodeView),
}

/// One Headscale ≤ 0.25 `v1Route` row, the fields HeadCNI decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRowView {
    /// Route id (the `{routeId}` of `enable`/`disable`).
    pub id: u64,
    /// The prefix (`None` if Headscale sent none).
    pub prefix: Option<IpNetwork>,
    /// Currently announced by the node.
    pub advertised: bool,
    /// Enabled (approved).
    pub enabled: bool,
    /// The owning node's id, when the row names one.
    pub node_id: Option<u64>,
}

/// What the Tailscale API v2 answered about this node's device (`approval =
/// "tailscale-api"`), as the driver recorded it after an approve or withdraw call
/// (tailscale/tailscale-client-go-v2 `devices.go`: `GET /api/v2/tailnet/{tailnet}/devices`,
/// `GET`/`POST /api/v2/device/{deviceId}/routes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeviceView {
    /// Not asked yet in this reconcile (and after a wait).
    #[default]
    NotAsked,
    /// The device's `enabledRoutes` as the API last answered (after our call).
    Enabled(Vec<IpNetwork>),
    /// The device's `advertisedRoutes` lack these routes: the control server has not seen
    /// tailscaled announce them yet (nothing was changed).
    NotAdvertised(Vec<IpNetwork>),
    /// No device of the tailnet has this node key or stable id; `reason` is the client's
    /// message.
    NotFound {
        /// What was searched, for the failure message.
        reason: String,
    },
    /// The device found by one identifier disagrees with the other, or several devices
    /// match; nothing was changed. `reason` is the client's message.
    Mismatch {
        /// What disagrees.
        reason: String,
    },
}

/// What the control server's API showed about this node: Headscale's REST API (API
/// approval) or the Tailscale API (`device`). Stays at its default with autoApprovers, where
/// nothing is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalView {
    /// The route model, `None` until detected.
    pub model: Option<RouteModel>,
    /// This node as Headscale knows it.
    pub node: NodeLookup,
    /// ≥ 0.26: our `approve_routes` was answered (its `approvedRoutes` are in
    /// [`NodeView::approved_routes`]).
    pub approve_routes_answered: bool,
    /// ≤ 0.25: this node's route rows as last read, with the effects of our own
    /// `enable`/`disable` calls recorded; `None` until read (and after a wait).
    pub route_rows: Option<Vec<RouteRowView>>,
    /// ≤ 0.25: the enabled prefixes of this node's rows, read again once every wanted row was
    /// enabled (the approved set reported in the status).
    pub route_rows_confirmed: Option<Vec<IpNetwork>>,
    /// Tailscale API approval: this node's device as the API last answered.
    pub device: DeviceView,
}

/// Everything observed so far in one reconcile or withdrawal; `None` means "not read yet".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlObservation {
    /// LocalAPI status (`?peers=false`), read once at the start.
    pub agent: Option<AgentView>,
    /// LocalAPI prefs as last read.
    pub prefs: Option<PrefsView>,
    /// Headscale's view of this node (API approval).
    pub approval: ApprovalView,
    /// `Self.PrimaryRoutes` of the latest status poll after approval (empty when the poll
    /// showed no `Self`); `None` until polled (and after a wait).
    pub primary: Option<Vec<IpNetwork>>,
    /// Whether the approval deadline (set by the driver once the prefs are in place) has
    /// passed at the time of this decision.
    pub deadline_passed: bool,
    /// The driver allows deciding from `Self.PrimaryRoutes` of [`ControlObservation::agent`]
    /// alone that routes already primary are approved (no control-server read:
    /// `crate::control::ApprovalCheck::TrustPrimary`). `false`: the approval is read.
    pub trust_primary: bool,
}

impl ControlObservation {
    /// Records that our `enable` calls succeeded for `route_ids` (≤ 0.25).
    pub fn record_rows_enabled(&mut self, route_ids: &[u64]) {
        self.set_rows_enabled(route_ids, true);
    }

    /// Records that our `disable` calls succeeded for `route_ids` (≤ 0.25).
    pub fn record_rows_disabled(&mut self, route_ids: &[u64]) {
        self.set_rows_enabled(route_ids, false);
    }

    fn set_rows_enabled(&mut self, route_ids: &[u64], enabled: bool) {
        if let Some(rows) = &mut self.approval.route_rows {
            for r in rows.iter_mut().filter(|r| route_ids.contains(&r.id)) {
                r.enabled = enabled;
            }
        }
    }

    /// Records the answer of our `approve_routes` (≥ 0.26): the node's `approvedRoutes`.
    pub fn record_approve_routes_answer(&mut self, approved_routes: Vec<IpNetwork>) {
        if let NodeLookup::Found(n) = &mut self.approval.node {
            n.approved_routes = approved_routes;
        }
        self.approval.approve_routes_answered = true;
    }
}
