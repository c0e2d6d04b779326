//! The control-plane backend trait: what the node daemon needs from a tailnet control plane
//! (Headscale + tailscaled today; other backends can implement it). No I/O here.
//!
//! The daemon calls [`ControlPlaneBackend::ensure_routes`] from its reconcile loop,
//! [`ControlPlaneBackend::withdraw_routes`] from `headcni uninstall` (never on a plain restart),
//! and reads [`ControlPlaneBackend::status`] for `/readyz` and `headcni status`.
//!
//! [`plan`] holds the backend's decisions as a pure state machine (observation in, one next
//! step out); an adapter such as `headcni-headscale`'s `TailnetBackend` drives it with I/O.

pub mod bus;
pub mod plan;

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Route state of this node as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteState {
    /// Routes this node advertises (Tailscale prefs `AdvertiseRoutes`), all of them, not
    /// only HeadCNI's.
    pub advertised: Vec<IpNetwork>,
    /// Routes the control plane approved for this node (Headscale `approvedRoutes`, or the
    /// enabled route rows of Headscale ≤ 0.25). A backend that cannot read approvals (no API
    /// key) reports the wanted routes it saw become primary.
    pub approved: Vec<IpNetwork>,
    /// Routes this node serves as primary (LocalAPI `Self.PrimaryRoutes`).
    pub primary: Vec<IpNetwork>,
}

/// Another node's routes seen through the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRoutes {
    /// The peer's host name.
    pub name: String,
    /// The peer's control-plane node id, when known (Headscale node id as a decimal string).
    pub id: Option<String>,
    /// Whether the control plane reports the peer online.
    pub online: bool,
    /// Its primary routes (its pod CIDRs).
    pub routes: Vec<IpNetwork>,
}

/// Why the control plane is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotReadyReason {
    /// No reconcile has finished yet.
    NotReconciled,
    /// The local agent (tailscaled) or the control server could not be reached.
    Unreachable,
    /// The local agent is not logged in / not running (e.g. `BackendState != Running`).
    AgentNotRunning,
    /// The pod CIDR(s) are not (yet) in the advertised routes.
    NotAdvertised,
    /// The routes are advertised but the control plane has not approved them.
    NotApproved,
    /// The routes are approved but this node does not serve them as primary.
    NotPrimary,
    /// The control plane and the local agent disagree about this node's identity.
    IdentityMismatch,
    /// The control plane refused a request (authentication, validation).
    Refused,
    /// The routes were withdrawn (uninstall).
    Withdrawn,
}

fn display_routes(routes: &[IpNetwork]) -> String {
    routes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl NotReadyReason {
    /// The reason as it appears in `/readyz`, `/status` and the docs (kebab-case, e.g.
    /// `not-approved`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotReadyReason::NotReconciled => "not-reconciled",
            NotReadyReason::Unreachable => "unreachable",
            NotReadyReason::AgentNotRunning => "agent-not-running",
            NotReadyReason::NotAdvertised => "not-advertised",
            NotReadyReason::NotApproved => "not-approved",
            NotReadyReason::NotPrimary => "not-primary",
            NotReadyReason::IdentityMismatch => "identity-mismatch",
            NotReadyReason::Refused => "refused",
            NotReadyReason::Withdrawn => "withdrawn",
        }
    }
}

/// Readiness of the control plane for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Readiness {
    /// The wanted routes are advertised, approved and primary.
    Ready,
    /// Not ready, with a machine-readable reason and a human-readable detail.
    NotReady {
        /// Machine-readable reason.
        reason: NotReadyReason,
        /// What is wrong, for operators (never contains secrets).
        detail: String,
    },
}

impl Readiness {
    /// True for [`Readiness::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// The control plane's status as last observed, for `/readyz` and `headcni status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneStatus {
    /// Backend and mode, e.g. `"headscale/api"` or `"headscale/auto-approvers"`.
    pub backend: String,
    /// This node's control-plane id (Headscale node id, decimal), when known.
    pub node_id: Option<String>,
    /// This node's tailnet host name, when known.
    pub node_name: Option<String>,
    /// The routes HeadCNI wants for this node (its pod CIDRs).
    pub wanted: Vec<IpNetwork>,
    /// Advertised / approved / primary routes of this node.
    pub routes: RouteState,
    /// Peers' primary routes (other nodes' pod CIDRs) seen through the tailnet.
    pub peers: Vec<PeerRoutes>,
    /// Ready, or not ready and why.
    pub readiness: Readiness,
    /// Seconds since the Unix epoch of the last observation, if any.
    pub observed_at_unix: Option<u64>,
    /// Things an operator should know that do not make the node unready, e.g. that this
    /// tailscaled cannot turn stateful filtering off (one sentence each, no secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Other nodes' pod routes the control server says they serve but this node's netmap
    /// lacks (e.g. the policy's ACL does not let this node reach them): pod traffic to those
    /// nodes is broken ([`plan::missing_peer_routes`]). Only known with an API key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_peer_routes: Vec<PeerRoutes>,
}

impl ControlPlaneStatus {
    /// A status before any reconcile: not ready with [`NotReadyReason::NotReconciled`].
    pub fn initial(backend: impl Into<String>) -> Self {
        ControlPlaneStatus {
            backend: backend.into(),
            node_id: None,
            node_name: None,
            wanted: Vec::new(),
            routes: RouteState::default(),
            peers: Vec::new(),
            readiness: Readiness::NotReady {
                reason: NotReadyReason::NotReconciled,
                detail: "no control-plane reconcile has completed yet".to_string(),
            },
            observed_at_unix: None,
            notes: Vec::new(),
            missing_peer_routes: Vec::new(),
        }
    }
}

/// Errors of a control-plane backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPlaneError {
    /// The backend could not be reached (retry with backoff).
    #[error("{endpoint} unreachable: {reason}")]
    Unreachable {
        /// Which endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The backend refused the request (auth, validation).
    #[error("{endpoint} refused: {reason}")]
    Refused {
        /// Which endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The local agent is not in a state where routes can be managed (not logged in, stopped).
    #[error("control plane not ready: {reason}")]
    NotReady {
        /// Why.
        reason: String,
    },
    /// The wanted routes were not approved / not made primary within the bounded wait.
    #[error("routes {} not approved: {reason}", display_routes(routes))]
    NotApproved {
        /// The routes still missing.
        routes: Vec<IpNetwork>,
        /// Why (e.g. "no autoApprovers entry contains the route").
        reason: String,
    },
    /// Inconsistent state that HeadCNI refuses to act on (identity mismatch, conflicting
    /// concurrent writers that did not settle).
    #[error("conflict: {reason}")]
    Conflict {
        /// What conflicts.
        reason: String,
    },
    /// A route HeadCNI was asked to manage is not acceptable (not masked, an exit route).
    #[error("invalid route {route}: {reason}")]
    InvalidRoute {
        /// The route.
        route: IpNetwork,
        /// Why it is refused.
        reason: String,
    },
}

impl ControlPlaneError {
    /// Whether retrying later (with backoff) may succeed: unreachable, not-ready, not-approved
    /// and conflicts are transient; refusals and invalid routes are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ControlPlaneError::Unreachable { .. }
                | ControlPlaneError::NotReady { .. }
                | ControlPlaneError::NotApproved { .. }
                | ControlPlaneError::Conflict { .. }
        )
    }
}

/// A tailnet control plane that carries this node's pod CIDRs.
#[async_trait]
pub trait ControlPlaneBackend: Send + Sync {
    /// Makes sure `routes` (this node's pod CIDRs) are advertised, approved for this node and
    /// primary, keeping every route that is not HeadCNI's; returns the resulting state.
    /// Bounded in time: never blocks forever.
    async fn ensure_routes(&self, routes: &[IpNetwork]) -> Result<RouteState, ControlPlaneError>;
    /// [`ControlPlaneBackend::ensure_routes`] with `check` saying whether the control
    /// server's approvals must be read ([`ApprovalCheck::Verify`], what `ensure_routes`
    /// does) or may be inferred from the routes being primary
    /// ([`ApprovalCheck::TrustPrimary`]: the daemon's event-driven and polling passes between
    /// two slow resyncs). The default ignores `check`.
    async fn ensure_routes_checked(
        &self,
        routes: &[IpNetwork],
        check: ApprovalCheck,
    ) -> Result<RouteState, ControlPlaneError> {
        let _ = check;
        self.ensure_routes(routes).await
    }
    /// Withdraws `routes` (uninstall); other routes are kept.
    async fn withdraw_routes(&self, routes: &[IpNetwork]) -> Result<(), ControlPlaneError>;
    /// Peers' routes seen through the tailnet.
    async fn peer_routes(&self) -> Result<Vec<PeerRoutes>, ControlPlaneError>;
    /// The last observed status (no I/O; cheap enough for every `/readyz` probe).
    fn status(&self) -> ControlPlaneStatus;
}

/// How a reconcile learns that this node's routes are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalCheck {
    /// Read the approvals from the control server (Headscale REST, Tailscale API) as the
    /// plan says: the first pass and the slow resync.
    #[default]
    Verify,
    /// Routes that tailscaled already serves as primary (LocalAPI `Self.PrimaryRoutes`) are
    /// approved: the control server computes primary routes from approved ones only. The
    /// control server is then not asked; routes not primary go through the approval path.
    TrustPrimary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_status_is_not_ready() {
        let s = ControlPlaneStatus::initial("x");
        assert!(!s.readiness.is_ready());
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["readiness"]["reason"], "not-reconciled");
    }

    #[test]
    fn transient_errors() {
        assert!(
            ControlPlaneError::Unreachable {
                endpoint: "e".into(),
                reason: "r".into()
            }
            .is_transient()
        );
        assert!(
            !ControlPlaneError::Refused {
                endpoint: "e".into(),
                reason: "r".into()
            }
            .is_transient()
        );
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reason_names_match_their_serde_names() {
        for r in [
            NotReadyReason::NotReconciled,
            NotReadyReason::Unreachable,
            NotReadyReason::AgentNotRunning,
            NotReadyReason::NotAdvertised,
            NotReadyReason::NotApproved,
            NotReadyReason::NotPrimary,
            NotReadyReason::IdentityMismatch,
            NotReadyReason::Refused,
            NotReadyReason::Withdrawn,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn not_approved_lists_routes_as_cidrs() {
        let e = ControlPlaneError::NotApproved {
            routes: vec![
                "10.250.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            reason: "no policy".into(),
        };
        assert_eq!(
            e.to_string(),
            "routes 10.250.1.0/24, fd00::/64 not approved: no policy"
        );
    }
}
