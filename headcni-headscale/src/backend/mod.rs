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
//!    With the Tailscale API ([`ApprovalMode::TailscaleApi`]): the device whose `nodeKey` is
//!    `Self.PublicKey` and `nodeId` is `Self.ID` gets `enabledRoutes ∪ PodCIDRs`
//!    ([`crate::tailscale_api::TailscaleApi::approve`]), retried while the device does not
//!    advertise them yet.
//! 4. Confirm: LocalAPI `Self.PrimaryRoutes ⊇ PodCIDRs`, bounded by
//!    [`BackendOptions::approval_timeout`].
//!
//! The decisions are `headcni_core::control::plan`'s (pure, unit-tested there); this module is
//! the driver that observes, asks the plan for the next step and performs it:
//! - `views`: LocalAPI/Headscale types → the plan's observation types, errors → typed errors;
//! - `drive`: the bounded observe → decide → act loop (retries, prefs optimistic concurrency,
//!   the approval deadline and the 50 ms-doubling polls);
//! - `observe`: the read-only [`TailnetBackend::observe`] and the peers' routes.

mod drive;
mod observe;
mod views;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use async_trait::async_trait;
use headcni_core::control::plan::{
    ApprovalPath, ServedRoutes, Wanted, approver_note, missing_peer_routes, partial_routes,
    prefs_patch_remove, running_self, stateful_filtering_note,
};
use headcni_core::control::{
    ApprovalCheck, ControlPlaneBackend, ControlPlaneError, ControlPlaneStatus, NotReadyReason,
    PeerRoutes, Readiness, RouteState,
};
use ipnetwork::IpNetwork;

/// Checks that HeadCNI manages only masked, non-exit prefixes (the plan's check, re-exported
/// here for callers of this module).
pub use headcni_core::control::plan::validate_routes;

use crate::headscale::{HeadscaleClient, HeadscaleError};
use crate::localapi::{LocalApiClient, LocalApiError};
use crate::retry::{Backoff, Retryable};
use crate::tailscale_api::{TailscaleApi, TailscaleApiError};
use drive::{Drive, Op};
use views::{hs_err, la_err};

/// How this node's routes get approved.
#[derive(Debug, Clone)]
pub enum ApprovalMode {
    /// Approve through the Headscale REST API with an API key (`[headscale] approval = "api"`).
    Api(Arc<HeadscaleClient>),
    /// No API key on the node: the Headscale policy's `autoApprovers.routes` must contain the
    /// PodCIDR (`[headscale] approval = "auto-approvers"`); HeadCNI advertises and waits.
    AutoApprovers,
    /// Approve through the Tailscale API v2 with an OAuth client (`[headscale] approval =
    /// "tailscale-api"`): Tailscale SaaS, or a Headscale serving `/api/v2`. Only this node's
    /// PodCIDRs are ever added to or removed from its device's enabled routes.
    TailscaleApi(Arc<TailscaleApi>),
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
    /// The cluster CIDR(s): which peers' routes count as pod routes for
    /// [`ControlPlaneStatus::missing_peer_routes`] (every non-exit route when empty).
    pub cluster_cidrs: Vec<IpNetwork>,
    /// How often (at most) the served routes of every node are listed from Headscale for
    /// [`ControlPlaneStatus::missing_peer_routes`] (one `GET /api/v1/node`, or `GET
    /// /api/v1/routes` on ≤ 0.25). Default 5 minutes; the netmap is compared on every pass.
    pub peer_check_interval: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            backoff: Backoff::default(),
            approval_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            prefs_write_attempts: 5,
            cluster_cidrs: Vec::new(),
            peer_check_interval: Duration::from_secs(300),
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
    /// The last list of every node's served routes and when it was read.
    served: Mutex<Option<(Instant, Vec<ServedRoutes>)>>,
}

fn now_unix() -> Option<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
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
            served: Mutex::new(None),
        }
    }

    fn backend_name(approval: &ApprovalMode) -> &'static str {
        match approval {
            ApprovalMode::Api(_) => "headscale/api",
            ApprovalMode::AutoApprovers => "headscale/auto-approvers",
            ApprovalMode::TailscaleApi(_) => "tailscale/api",
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

    /// The plan's intent for `routes`.
    fn wanted(&self, routes: &[IpNetwork]) -> Wanted {
        Wanted {
            routes: routes.to_vec(),
            approval: match self.approval {
                ApprovalMode::Api(_) => ApprovalPath::Api,
                ApprovalMode::AutoApprovers => ApprovalPath::AutoApprovers,
                ApprovalMode::TailscaleApi(_) => ApprovalPath::TailscaleApi,
            },
            approval_timeout: self.opts.approval_timeout,
        }
    }

    /// A LocalAPI call with the backoff for retryable errors.
    async fn la<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ControlPlaneError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, LocalApiError>>,
    {
        self.opts.backoff.retry(what, op).await.map_err(la_err)
    }

    /// A Headscale call with the backoff for retryable errors.
    async fn hs<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ControlPlaneError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, HeadscaleError>>,
    {
        self.opts.backoff.retry(what, op).await.map_err(hs_err)
    }

    /// A Tailscale API call with the backoff for retryable errors, except "not advertised
    /// yet", which is the plan's to wait on (until the approval deadline). Returns the
    /// client's error: the plan reads lookups and advertisement from it.
    async fn ts<T, F, Fut>(&self, what: &str, op: F) -> Result<T, TailscaleApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TailscaleApiError>>,
    {
        self.opts
            .backoff
            .retry_if(what, op, |e: &TailscaleApiError| {
                e.is_retryable() && !matches!(e, TailscaleApiError::NotAdvertised { .. })
            })
            .await
    }

    /// The first wait of a poll loop: 50 ms, or [`BackendOptions::poll_interval`] if shorter.
    fn first_poll(&self) -> Duration {
        self.opts.poll_interval.min(Duration::from_millis(50))
    }

    /// The wait after `delay`: doubled, capped at [`BackendOptions::poll_interval`].
    fn next_poll(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.opts.poll_interval)
    }
}

#[async_trait]
impl ControlPlaneBackend for TailnetBackend {
    async fn ensure_routes(&self, routes: &[IpNetwork]) -> Result<RouteState, ControlPlaneError> {
        self.ensure_routes_checked(routes, ApprovalCheck::Verify)
            .await
    }

    /// With [`ApprovalCheck::TrustPrimary`], routes already in LocalAPI `Self.PrimaryRoutes`
    /// need no Headscale (or Tailscale API) read: a pass then costs the LocalAPI `status`,
    /// `prefs` and the peers' `status`; Headscale is asked only when a route is not primary
    /// (approval needed) and for [`missing_peer_routes`] at most once per
    /// [`BackendOptions::peer_check_interval`].
    async fn ensure_routes_checked(
        &self,
        routes: &[IpNetwork],
        check: ApprovalCheck,
    ) -> Result<RouteState, ControlPlaneError> {
        let mut out = ControlPlaneStatus::initial(Self::backend_name(&self.approval));
        out.wanted = routes.to_vec();
        let wanted = self.wanted(routes);
        let mut drive = Drive::new(self, wanted.clone(), Op::Ensure)
            .trusting_primary(check == ApprovalCheck::TrustPrimary);
        let res = drive.run().await;
        let obs = drive.into_observation();
        if let Some(me) = obs.agent.as_ref().and_then(|a| running_self(a).ok()) {
            out.node_id = Some(me.id.clone());
            out.node_name = Some(me.host_name.clone());
        }
        out.notes.extend(
            obs.agent
                .as_ref()
                .and_then(|a| stateful_filtering_note(&a.version)),
        );
        let tags = obs
            .agent
            .as_ref()
            .and_then(|a| a.self_node.as_ref())
            .map(|s| s.tags.clone())
            .unwrap_or_default();
        if let Ok(p) = self.peers().await {
            out.peers = p;
        }
        if let (Some(id), Some(served)) = (out.node_id.clone(), self.served_routes().await) {
            out.missing_peer_routes =
                missing_peer_routes(&id, &served, &out.peers, &self.opts.cluster_cidrs);
        }
        out.observed_at_unix = now_unix();
        let ret = match res {
            Ok(state) => {
                let state = state.unwrap_or_default();
                out.routes = state.clone();
                out.readiness = Readiness::Ready;
                Ok(state)
            }
            Err(f) => {
                tracing::warn!(error = %f.error, reason = ?f.reason, "control plane not ready");
                out.routes = partial_routes(&wanted, &obs);
                out.readiness = f.readiness();
                if matches!(self.approval, ApprovalMode::AutoApprovers) {
                    out.notes.extend(approver_note(&out.readiness, &tags));
                }
                Err(f.error)
            }
        };
        self.set_status(out);
        ret
    }

    async fn withdraw_routes(&self, routes: &[IpNetwork]) -> Result<(), ControlPlaneError> {
        let mut drive = Drive::new(self, self.wanted(routes), Op::Withdraw);
        let res = drive.run().await;
        let obs = drive.into_observation();
        if let Ok(mut g) = self.status.lock() {
            // The prefs no longer advertise ours once the plan went past them.
            if let Some(p) = obs
                .prefs
                .as_ref()
                .filter(|p| prefs_patch_remove(p, routes).is_empty())
            {
                g.routes.advertised = p.advertise_routes.clone();
            }
            g.readiness = match &res {
                Ok(_) => Readiness::NotReady {
                    reason: NotReadyReason::Withdrawn,
                    detail: "routes withdrawn (uninstall)".to_string(),
                },
                Err(f) => f.readiness(),
            };
            g.observed_at_unix = now_unix();
        }
        res.map(|_| ()).map_err(|f| f.error)
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
