//! [`TailnetBackend`]: HeadCNI's [`ControlPlaneBackend`] over tailscaled (LocalAPI) and
//! Headscale (REST), in host mode with API approval or with the policy's autoApprovers.
//!
//! Host mode (control-plane-apis.md §5 (a)):
//! 1. LocalAPI `GET status?peers=false`: `BackendState == Running`; `Self.ID` is the Headscale
//!    node id, `Self.PublicKey` its `nodeKey`.
//! 2. LocalAPI prefs read-modify-write: `AdvertiseRoutes ∪ PodCIDRs` (every other route kept,
//!    exit routes included), `RouteAll`, `NoSNAT`, `NoStatefulFiltering` true. The list is
//!    re-read before the PATCH and after it; a concurrent change restarts the cycle.
//! 3. Approval for **this node id only**: ≥ 0.26 `approve_routes` with the node's current
//!    approved set ∪ PodCIDRs (replace semantics); ≤ 0.25 wait for the advertised route row,
//!    then `enable`. Never any other route, never exit routes. With autoApprovers: no API call.
//! 4. Confirm: LocalAPI `Self.PrimaryRoutes ⊇ PodCIDRs`, bounded by
//!    [`BackendOptions::approval_timeout`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use headcni_core::control::{
    ControlPlaneBackend, ControlPlaneError, ControlPlaneStatus, NotReadyReason, PeerRoutes,
    Readiness, RouteState,
};
use ipnetwork::IpNetwork;
use tokio::time::Instant;

use crate::headscale::{ApiGeneration, HeadscaleClient, HeadscaleError, NodeId};
use crate::localapi::{LocalApiClient, LocalApiError, MaskedPrefs, OptBool, Prefs, Status};
use crate::retry::{Backoff, Retryable};

/// How this node's routes get approved.
#[derive(Debug, Clone)]
pub enum ApprovalMode {
    /// Approve through the Headscale REST API with an API key (`[headscale] approval = "api"`).
    Api(Arc<HeadscaleClient>),
    /// No API key on the node: the Headscale policy's `autoApprovers.routes` must contain the
    /// PodCIDR (`[headscale] approval = "auto-approvers"`); HeadCNI advertises and waits.
    AutoApprovers,
}

/// Timing of a [`TailnetBackend`].
#[derive(Debug, Clone, PartialEq)]
pub struct BackendOptions {
    /// Backoff for each LocalAPI/Headscale call that fails with a retryable error.
    pub backoff: Backoff,
    /// Bound on waiting for approval and primary status (and for a ≤ 0.25 route row).
    /// Default 60 s.
    pub approval_timeout: Duration,
    /// Longest poll interval while waiting. Default 1 s. Polls start at 50 ms (or this, if
    /// shorter) and double up to it: Headscale usually distributes a change within tens of
    /// milliseconds, so the first checks come quickly without polling fast for long.
    pub poll_interval: Duration,
    /// Read-modify-write cycles of the prefs before giving up on concurrent writers. Default 5.
    pub prefs_write_attempts: u32,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            backoff: Backoff::default(),
            approval_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            prefs_write_attempts: 5,
        }
    }
}

/// The Headscale/Tailscale [`ControlPlaneBackend`] (host mode; daemon mode reuses it once its
/// dedicated tailscaled is logged in, see [`crate::daemon`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::path::Path;
/// use std::sync::Arc;
/// use headcni_core::control::ControlPlaneBackend;
/// use headcni_headscale::{
///     ApprovalMode, BackendOptions, HeadscaleClient, HeadscaleConfig, LocalApiClient, Secret,
///     TailnetBackend,
/// };
/// // [headscale] api_key_file, else HEADSCALE_API_KEY; refused if group/other-readable
/// let key = Secret::load_api_key(Some(Path::new("/etc/headcni/api-key")))?;
/// let hs = HeadscaleClient::new(HeadscaleConfig::new("https://headscale.example.com", Some(key)))?;
/// let backend = TailnetBackend::new(
///     LocalApiClient::new("/var/run/tailscale/tailscaled.sock"),
///     ApprovalMode::Api(Arc::new(hs)), // or ApprovalMode::AutoApprovers (no key)
///     BackendOptions::default(),
/// );
/// // reconcile loop: bounded, returns a typed error when not (yet) approved
/// let _ = backend.ensure_routes(&["10.244.1.0/24".parse()?]).await;
/// // /readyz and `headcni status`: no I/O
/// let status = backend.status();
/// println!("ready={} {:?}", status.readiness.is_ready(), status.readiness);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TailnetBackend {
    localapi: LocalApiClient,
    approval: ApprovalMode,
    opts: BackendOptions,
    status: Mutex<ControlPlaneStatus>,
}

/// A failure with the readiness reason it implies.
struct Failure {
    err: ControlPlaneError,
    reason: NotReadyReason,
}

impl From<ControlPlaneError> for Failure {
    fn from(err: ControlPlaneError) -> Self {
        let reason = match &err {
            ControlPlaneError::Unreachable { .. } => NotReadyReason::Unreachable,
            ControlPlaneError::Refused { .. } | ControlPlaneError::InvalidRoute { .. } => {
                NotReadyReason::Refused
            }
            ControlPlaneError::NotReady { .. } => NotReadyReason::AgentNotRunning,
            ControlPlaneError::NotApproved { .. } => NotReadyReason::NotApproved,
            ControlPlaneError::Conflict { .. } => NotReadyReason::NotAdvertised,
        };
        Failure { err, reason }
    }
}

fn la_err(e: LocalApiError) -> ControlPlaneError {
    let endpoint = "tailscaled LocalAPI".to_string();
    if e.is_retryable() {
        ControlPlaneError::Unreachable {
            endpoint,
            reason: e.to_string(),
        }
    } else {
        ControlPlaneError::Refused {
            endpoint,
            reason: e.to_string(),
        }
    }
}

fn hs_err(e: HeadscaleError) -> ControlPlaneError {
    let endpoint = "headscale API".to_string();
    if e.is_retryable() {
        ControlPlaneError::Unreachable {
            endpoint,
            reason: e.to_string(),
        }
    } else {
        ControlPlaneError::Refused {
            endpoint,
            reason: e.to_string(),
        }
    }
}

fn contains_all(have: &[IpNetwork], want: &[IpNetwork]) -> bool {
    want.iter().all(|w| have.contains(w))
}

fn missing(have: &[IpNetwork], want: &[IpNetwork]) -> Vec<IpNetwork> {
    want.iter().filter(|w| !have.contains(w)).copied().collect()
}

/// `base ∪ add`, keeping `base`'s order and appending what is missing.
fn union(base: &[IpNetwork], add: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out = base.to_vec();
    for r in add {
        if !out.contains(r) {
            out.push(*r);
        }
    }
    out
}

fn is_exit_route(r: &IpNetwork) -> bool {
    r.prefix() == 0
}

fn now_unix() -> Option<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Checks that HeadCNI manages only masked, non-exit prefixes.
///
/// Errors: [`ControlPlaneError::InvalidRoute`] for `10.244.1.5/24` (not masked) or `/0`.
pub fn validate_routes(routes: &[IpNetwork]) -> Result<(), ControlPlaneError> {
    for r in routes {
        if r.ip() != r.network() {
            return Err(ControlPlaneError::InvalidRoute {
                route: *r,
                reason: format!("not a masked prefix (use {}/{})", r.network(), r.prefix()),
            });
        }
        if is_exit_route(r) {
            return Err(ControlPlaneError::InvalidRoute {
                route: *r,
                reason: "exit routes are never managed by HeadCNI".to_string(),
            });
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum PrefsOp {
    Add,
    Remove,
}

impl TailnetBackend {
    /// A backend on the tailscaled at `localapi`, approving with `approval`.
    pub fn new(localapi: LocalApiClient, approval: ApprovalMode, opts: BackendOptions) -> Self {
        let name = Self::backend_name(&approval);
        TailnetBackend {
            localapi,
            approval,
            opts,
            status: Mutex::new(ControlPlaneStatus::initial(name)),
        }
    }

    fn backend_name(approval: &ApprovalMode) -> &'static str {
        match approval {
            ApprovalMode::Api(_) => "headscale/api",
            ApprovalMode::AutoApprovers => "headscale/auto-approvers",
        }
    }

    /// The LocalAPI client.
    pub fn localapi(&self) -> &LocalApiClient {
        &self.localapi
    }

    /// The approval mode.
    pub fn approval(&self) -> &ApprovalMode {
        &self.approval
    }

    fn set_status(&self, s: ControlPlaneStatus) {
        if let Ok(mut g) = self.status.lock() {
            *g = s;
        }
    }

    async fn la<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ControlPlaneError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, LocalApiError>>,
    {
        self.opts.backoff.retry(what, op).await.map_err(la_err)
    }

    async fn hs<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ControlPlaneError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, HeadscaleError>>,
    {
        self.opts.backoff.retry(what, op).await.map_err(hs_err)
    }

    /// Reads `status?peers=false` and requires a running, logged-in tailscaled.
    async fn running_self(&self) -> Result<(Status, String, String), Failure> {
        let st = self
            .la("localapi status", || self.localapi.status_without_peers())
            .await?;
        if !st.is_running() {
            return Err(Failure {
                err: ControlPlaneError::NotReady {
                    reason: format!(
                        "tailscaled BackendState is {:?}, not \"Running\" (log it in to Headscale)",
                        st.backend_state
                    ),
                },
                reason: NotReadyReason::AgentNotRunning,
            });
        }
        let (id, key) = match &st.self_ {
            Some(s) if !s.id.is_empty() => (s.id.clone(), s.public_key.clone()),
            _ => {
                return Err(Failure {
                    err: ControlPlaneError::NotReady {
                        reason: "tailscaled status has no Self node".to_string(),
                    },
                    reason: NotReadyReason::AgentNotRunning,
                });
            }
        };
        Ok((st, id, key))
    }

    /// Read-modify-write of the prefs. `Add`: `AdvertiseRoutes ∪ routes` and the three flags;
    /// `Remove`: `AdvertiseRoutes \ routes`. Returns the prefs as finally read back.
    async fn write_prefs(&self, routes: &[IpNetwork], op: PrefsOp) -> Result<Prefs, Failure> {
        let attempts = self.opts.prefs_write_attempts.max(1);
        for attempt in 0..attempts {
            let cur = self.la("localapi prefs", || self.localapi.prefs()).await?;
            let patch = desired_patch(&cur, routes, op);
            if patch.is_empty() {
                return Ok(cur);
            }
            if patch.advertise_routes.is_some() {
                // Optimistic concurrency: the LocalAPI has no compare-and-swap, so re-read just
                // before replacing the list and start over if another writer changed it.
                let again = self.la("localapi prefs", || self.localapi.prefs()).await?;
                if again.advertise_routes != cur.advertise_routes {
                    tracing::info!(
                        attempt,
                        "AdvertiseRoutes changed by another writer; re-reading"
                    );
                    continue;
                }
            }
            tracing::info!(
                advertise_routes = ?patch.advertise_routes,
                route_all = ?patch.route_all,
                no_snat = ?patch.no_snat,
                no_stateful_filtering = ?patch.no_stateful_filtering,
                "patching tailscaled prefs"
            );
            match self.localapi.patch_prefs(&patch).await {
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "PATCH prefs failed; retrying");
                    tokio::time::sleep(self.opts.backoff.delay(attempt)).await;
                    continue;
                }
                Err(e) => return Err(la_err(e).into()),
            }
            let after = self.la("localapi prefs", || self.localapi.prefs()).await?;
            if desired_patch(&after, routes, op).is_empty() {
                return Ok(after);
            }
            tracing::info!(
                attempt,
                "prefs overwritten concurrently after PATCH; retrying"
            );
        }
        Err(Failure {
            err: ControlPlaneError::Conflict {
                reason: format!(
                    "tailscaled AdvertiseRoutes kept changing under concurrent writers; gave up after {attempts} read-modify-write cycles"
                ),
            },
            reason: NotReadyReason::NotAdvertised,
        })
    }

    /// Makes Headscale approve `routes` for `node_id` only; returns that node's approved set.
    async fn approve(
        &self,
        client: &HeadscaleClient,
        node_id: NodeId,
        public_key: &str,
        routes: &[IpNetwork],
        deadline: Instant,
    ) -> Result<Vec<IpNetwork>, Failure> {
        let generation = self.hs("headscale detect", || client.generation()).await?;
        let node = match client.get_node(node_id).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => {
                return Err(Failure {
                    err: ControlPlaneError::Conflict {
                        reason: format!(
                            "headscale has no node {node_id} (tailscaled Self.ID); is tailscaled logged in to this Headscale?"
                        ),
                    },
                    reason: NotReadyReason::IdentityMismatch,
                });
            }
            Err(e) if e.is_retryable() => {
                self.hs("headscale get node", || client.get_node(node_id))
                    .await?
            }
            Err(e) => return Err(hs_err(e).into()),
        };
        if node.node_key != public_key {
            return Err(Failure {
                err: ControlPlaneError::Conflict {
                    reason: format!(
                        "identity mismatch: headscale node {node_id} has nodeKey {} but tailscaled Self.PublicKey is {public_key}; refusing to approve",
                        node.node_key
                    ),
                },
                reason: NotReadyReason::IdentityMismatch,
            });
        }
        match generation {
            ApiGeneration::ApprovedRoutes => {
                if contains_all(&node.approved_routes, routes) {
                    return Ok(node.approved_routes);
                }
                // Replace semantics: send the node's current approvals plus ours, nothing else.
                let want = union(&node.approved_routes, routes);
                tracing::info!(node_id, routes = ?want, "approving routes (approve_routes)");
                let updated = self
                    .hs("headscale approve_routes", || {
                        client.approve_routes(node_id, &want)
                    })
                    .await?;
                if !contains_all(&updated.approved_routes, routes) {
                    return Err(ControlPlaneError::NotApproved {
                        routes: missing(&updated.approved_routes, routes),
                        reason: "approve_routes answered without the routes".to_string(),
                    }
                    .into());
                }
                Ok(updated.approved_routes)
            }
            ApiGeneration::RouteRows => {
                let mut delay = self.first_poll();
                loop {
                    let rows = self
                        .hs("headscale node routes", || client.node_routes(node_id))
                        .await?;
                    let mut pending = Vec::new();
                    for p in routes {
                        let row = rows.iter().find(|r| {
                            r.prefix.as_ref() == Some(p)
                                && r.node.as_ref().is_none_or(|n| n.id == node_id)
                        });
                        match row {
                            Some(r) if r.advertised && r.enabled => {}
                            Some(r) if r.advertised => {
                                tracing::info!(node_id, route = %p, route_id = r.id, "enabling route row");
                                let rid = r.id;
                                self.hs("headscale enable route", || client.enable_route(rid))
                                    .await?;
                            }
                            _ => pending.push(*p),
                        }
                    }
                    if pending.is_empty() {
                        let rows = self
                            .hs("headscale node routes", || client.node_routes(node_id))
                            .await?;
                        return Ok(rows
                            .iter()
                            .filter(|r| r.enabled)
                            .filter_map(|r| r.prefix)
                            .collect());
                    }
                    if Instant::now() >= deadline {
                        return Err(Failure {
                            err: ControlPlaneError::NotApproved {
                                routes: pending,
                                reason: format!(
                                    "headscale shows no advertised route row for node {node_id} within {:?} (is tailscaled announcing it?)",
                                    self.opts.approval_timeout
                                ),
                            },
                            reason: NotReadyReason::NotAdvertised,
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = self.next_poll(delay);
                }
            }
        }
    }

    /// The first wait of a poll loop: 50 ms, or [`BackendOptions::poll_interval`] if shorter.
    fn first_poll(&self) -> Duration {
        self.opts.poll_interval.min(Duration::from_millis(50))
    }

    /// The wait after `delay`: doubled, capped at [`BackendOptions::poll_interval`].
    fn next_poll(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.opts.poll_interval)
    }

    /// Polls `Self.PrimaryRoutes` until it contains `routes` or `deadline` passes.
    async fn wait_primary(
        &self,
        routes: &[IpNetwork],
        deadline: Instant,
    ) -> Result<Status, (Status, ControlPlaneError)> {
        let mut delay = self.first_poll();
        loop {
            let st = match self
                .la("localapi status", || self.localapi.status_without_peers())
                .await
            {
                Ok(s) => s,
                Err(e) => return Err((Status::default(), e)),
            };
            let prim = st
                .self_
                .as_ref()
                .map(|s| s.primary_routes.clone())
                .unwrap_or_default();
            if contains_all(&prim, routes) {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let miss = missing(&prim, routes);
                return Err((
                    st,
                    ControlPlaneError::NotApproved {
                        routes: miss,
                        reason: String::new(),
                    },
                ));
            }
            tokio::time::sleep(delay).await;
            delay = self.next_poll(delay);
        }
    }

    async fn peers(&self) -> Result<Vec<PeerRoutes>, ControlPlaneError> {
        let st = self
            .la("localapi status", || self.localapi.status())
            .await?;
        Ok(peers_of(&st))
    }

    async fn ensure_inner(
        &self,
        routes: &[IpNetwork],
        out: &mut ControlPlaneStatus,
    ) -> Result<RouteState, Failure> {
        validate_routes(routes)?;
        if routes.is_empty() {
            return Err(ControlPlaneError::NotReady {
                reason: "no pod CIDR to advertise".to_string(),
            }
            .into());
        }
        let (st, id, public_key) = self.running_self().await?;
        out.node_id = Some(id.clone());
        out.node_name = st.self_.as_ref().map(|s| s.host_name.clone());
        let prefs = self.write_prefs(routes, PrefsOp::Add).await?;
        out.routes.advertised = prefs.advertise_routes.clone();
        let deadline = Instant::now() + self.opts.approval_timeout;
        let approved = match &self.approval {
            ApprovalMode::Api(client) => {
                let node_id: NodeId = id.parse().map_err(|_| Failure {
                    err: ControlPlaneError::Conflict {
                        reason: format!(
                            "tailscaled Self.ID {id:?} is not a Headscale node id (is the control server Headscale?)"
                        ),
                    },
                    reason: NotReadyReason::IdentityMismatch,
                })?;
                let a = self
                    .approve(client, node_id, &public_key, routes, deadline)
                    .await?;
                out.routes.approved = a.clone();
                Some(a)
            }
            ApprovalMode::AutoApprovers => None,
        };
        match self.wait_primary(routes, deadline).await {
            Ok(st) => {
                let prim = st.self_.map(|s| s.primary_routes).unwrap_or_default();
                if approved.is_none() {
                    // Without an API key the approvals are invisible: primary implies approved.
                    out.routes.approved = routes
                        .iter()
                        .filter(|r| prim.contains(r))
                        .copied()
                        .collect();
                }
                out.routes.primary = prim;
                Ok(out.routes.clone())
            }
            Err((st, err)) => {
                out.routes.primary = st.self_.map(|s| s.primary_routes).unwrap_or_default();
                let ControlPlaneError::NotApproved { routes: miss, .. } = err else {
                    return Err(err.into());
                };
                let t = self.opts.approval_timeout;
                Err(match approved {
                    Some(a) if contains_all(&a, &miss) => Failure {
                        err: ControlPlaneError::NotApproved {
                            routes: miss,
                            reason: format!(
                                "approved for node {id} but not primary after {t:?}: another node may serve the same prefix, or tailscaled has not received the update"
                            ),
                        },
                        reason: NotReadyReason::NotPrimary,
                    },
                    Some(_) => Failure {
                        err: ControlPlaneError::NotApproved {
                            routes: miss,
                            reason: format!("not approved by headscale after {t:?}"),
                        },
                        reason: NotReadyReason::NotApproved,
                    },
                    None => Failure {
                        err: ControlPlaneError::NotApproved {
                            routes: miss.clone(),
                            reason: format!(
                                "advertised but not approved after {t:?}: approval = auto-approvers needs a Headscale policy whose autoApprovers.routes has a prefix containing {} for this node's user or tag",
                                miss.iter()
                                    .map(|r| r.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        },
                        reason: NotReadyReason::NotApproved,
                    },
                })
            }
        }
    }

    async fn withdraw_inner(&self, routes: &[IpNetwork]) -> Result<(), Failure> {
        validate_routes(routes)?;
        let st = self
            .la("localapi status", || self.localapi.status_without_peers())
            .await?;
        let prefs = self.write_prefs(routes, PrefsOp::Remove).await?;
        if let Ok(mut g) = self.status.lock() {
            g.routes.advertised = prefs.advertise_routes.clone();
        }
        let ApprovalMode::Api(client) = &self.approval else {
            // autoApprovers: nothing to revoke through the API; the route is no longer
            // announced, so it is no longer served.
            return Ok(());
        };
        let Some(me) = st.self_.as_ref().filter(|s| !s.id.is_empty()) else {
            return Ok(());
        };
        let Ok(node_id) = me.id.parse::<NodeId>() else {
            return Ok(());
        };
        let node = match client.get_node(node_id).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) if e.is_retryable() => {
                self.hs("headscale get node", || client.get_node(node_id))
                    .await?
            }
            Err(e) => return Err(hs_err(e).into()),
        };
        if node.node_key != me.public_key {
            return Err(Failure {
                err: ControlPlaneError::Conflict {
                    reason: format!(
                        "identity mismatch: headscale node {node_id} has nodeKey {} but tailscaled Self.PublicKey is {}; not touching its approvals",
                        node.node_key, me.public_key
                    ),
                },
                reason: NotReadyReason::IdentityMismatch,
            });
        }
        match self.hs("headscale detect", || client.generation()).await? {
            ApiGeneration::ApprovedRoutes => {
                if node.approved_routes.iter().any(|r| routes.contains(r)) {
                    let keep: Vec<IpNetwork> = node
                        .approved_routes
                        .iter()
                        .filter(|r| !routes.contains(r))
                        .copied()
                        .collect();
                    tracing::info!(node_id, routes = ?keep, "withdrawing approvals (approve_routes)");
                    self.hs("headscale approve_routes", || {
                        client.approve_routes(node_id, &keep)
                    })
                    .await?;
                }
            }
            ApiGeneration::RouteRows => {
                let rows = self
                    .hs("headscale node routes", || client.node_routes(node_id))
                    .await?;
                for r in rows.iter().filter(|r| {
                    r.enabled
                        && r.prefix.as_ref().is_some_and(|p| routes.contains(p))
                        && r.node.as_ref().is_none_or(|n| n.id == node_id)
                }) {
                    let rid = r.id;
                    self.hs("headscale disable route", || client.disable_route(rid))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Observes the current state without changing anything (for `headcni status`): LocalAPI
    /// status with peers and prefs, and with an API key the node's approvals.
    pub async fn observe(&self, routes: &[IpNetwork]) -> ControlPlaneStatus {
        let mut out = ControlPlaneStatus::initial(Self::backend_name(&self.approval));
        out.wanted = routes.to_vec();
        out.observed_at_unix = now_unix();
        let st = match self.localapi.status().await {
            Ok(s) => s,
            Err(e) => {
                out.readiness = not_ready(la_err(e).into());
                return out;
            }
        };
        out.peers = peers_of(&st);
        if let Some(me) = &st.self_ {
            out.node_id = Some(me.id.clone());
            out.node_name = Some(me.host_name.clone());
            out.routes.primary = me.primary_routes.clone();
        }
        if let Ok(p) = self.localapi.prefs().await {
            out.routes.advertised = p.advertise_routes;
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
        out.readiness = if !st.is_running() {
            Readiness::NotReady {
                reason: NotReadyReason::AgentNotRunning,
                detail: format!("tailscaled BackendState is {:?}", st.backend_state),
            }
        } else if !contains_all(&out.routes.advertised, routes) {
            Readiness::NotReady {
                reason: NotReadyReason::NotAdvertised,
                detail: format!(
                    "not advertised: {:?}",
                    missing(&out.routes.advertised, routes)
                ),
            }
        } else if !contains_all(&out.routes.primary, routes) {
            Readiness::NotReady {
                reason: NotReadyReason::NotApproved,
                detail: format!("not primary: {:?}", missing(&out.routes.primary, routes)),
            }
        } else {
            Readiness::Ready
        };
        out
    }
}

fn not_ready(f: Failure) -> Readiness {
    Readiness::NotReady {
        reason: f.reason,
        detail: f.err.to_string(),
    }
}

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

/// The MaskedPrefs that brings `cur` to the wanted state (empty when nothing to do).
fn desired_patch(cur: &Prefs, routes: &[IpNetwork], op: PrefsOp) -> MaskedPrefs {
    let mut patch = MaskedPrefs::default();
    match op {
        PrefsOp::Add => {
            if !contains_all(&cur.advertise_routes, routes) {
                patch.advertise_routes = Some(union(&cur.advertise_routes, routes));
            }
            if !cur.route_all {
                patch.route_all = Some(true);
            }
            if !cur.no_snat {
                patch.no_snat = Some(true);
            }
            if cur.no_stateful_filtering != OptBool::True {
                patch.no_stateful_filtering = Some(OptBool::True);
            }
        }
        PrefsOp::Remove => {
            if cur.advertise_routes.iter().any(|r| routes.contains(r)) {
                patch.advertise_routes = Some(
                    cur.advertise_routes
                        .iter()
                        .filter(|r| !routes.contains(r))
                        .copied()
                        .collect(),
                );
            }
        }
    }
    patch
}

#[async_trait]
impl ControlPlaneBackend for TailnetBackend {
    async fn ensure_routes(&self, routes: &[IpNetwork]) -> Result<RouteState, ControlPlaneError> {
        let mut out = ControlPlaneStatus::initial(Self::backend_name(&self.approval));
        out.wanted = routes.to_vec();
        let res = self.ensure_inner(routes, &mut out).await;
        if let Ok(p) = self.peers().await {
            out.peers = p;
        }
        out.observed_at_unix = now_unix();
        let ret = match res {
            Ok(state) => {
                out.readiness = Readiness::Ready;
                Ok(state)
            }
            Err(f) => {
                tracing::warn!(error = %f.err, reason = ?f.reason, "control plane not ready");
                out.readiness = Readiness::NotReady {
                    reason: f.reason,
                    detail: f.err.to_string(),
                };
                Err(f.err)
            }
        };
        self.set_status(out);
        ret
    }

    async fn withdraw_routes(&self, routes: &[IpNetwork]) -> Result<(), ControlPlaneError> {
        let res = self.withdraw_inner(routes).await;
        if let Ok(mut g) = self.status.lock() {
            g.readiness = match &res {
                Ok(()) => Readiness::NotReady {
                    reason: NotReadyReason::Withdrawn,
                    detail: "routes withdrawn (uninstall)".to_string(),
                },
                Err(f) => Readiness::NotReady {
                    reason: f.reason,
                    detail: f.err.to_string(),
                },
            };
            g.observed_at_unix = now_unix();
        }
        res.map_err(|f| f.err)
    }

    async fn peer_routes(&self) -> Result<Vec<PeerRoutes>, ControlPlaneError> {
        self.peers().await
    }

    fn status(&self) -> ControlPlaneStatus {
        self.status
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn validate() {
        assert!(validate_routes(&[n("10.244.1.0/24")]).is_ok());
        assert!(validate_routes(&[n("10.244.1.5/24")]).is_err());
        assert!(validate_routes(&[n("0.0.0.0/0")]).is_err());
        assert!(validate_routes(&[n("::/0")]).is_err());
    }

    #[test]
    fn patch_add_keeps_others_and_sets_flags() {
        let cur = Prefs {
            advertise_routes: vec![n("192.168.50.0/24"), n("0.0.0.0/0")],
            ..Default::default()
        };
        let p = desired_patch(&cur, &[n("10.244.1.0/24")], PrefsOp::Add);
        assert_eq!(
            p.advertise_routes,
            Some(vec![
                n("192.168.50.0/24"),
                n("0.0.0.0/0"),
                n("10.244.1.0/24")
            ])
        );
        assert_eq!(p.route_all, Some(true));
        assert_eq!(p.no_snat, Some(true));
        assert_eq!(p.no_stateful_filtering, Some(OptBool::True));
        let done = Prefs {
            advertise_routes: vec![n("10.244.1.0/24")],
            route_all: true,
            no_snat: true,
            no_stateful_filtering: OptBool::True,
            ..Default::default()
        };
        assert!(desired_patch(&done, &[n("10.244.1.0/24")], PrefsOp::Add).is_empty());
        let rm = desired_patch(&cur, &[n("192.168.50.0/24")], PrefsOp::Remove);
        assert_eq!(rm.advertise_routes, Some(vec![n("0.0.0.0/0")]));
        assert_eq!(rm.route_all, None);
    }
}
