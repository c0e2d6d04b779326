//! The plan's output: the one next step ([`ControlStep`]) and a failure with the readiness
//! reason it implies ([`PlanFailure`]).

use ipnetwork::IpNetwork;

use super::prefs::PrefsPatch;
use crate::control::{ControlPlaneError, NotReadyReason, Readiness, RouteState};

/// A failure of a reconcile or withdrawal, with the `/readyz` reason it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFailure {
    /// The error returned to the caller.
    pub error: ControlPlaneError,
    /// The readiness reason shown in `/readyz` and `headcni status`.
    pub reason: NotReadyReason,
}

impl PlanFailure {
    /// A failure with an explicit reason.
    pub fn new(error: ControlPlaneError, reason: NotReadyReason) -> Self {
        PlanFailure { error, reason }
    }

    /// `NotReady { reason, detail: error }`.
    pub fn readiness(&self) -> Readiness {
        Readiness::NotReady {
            reason: self.reason,
            detail: self.error.to_string(),
        }
    }
}

impl From<ControlPlaneError> for PlanFailure {
    /// The reason an error implies when nothing more specific is known: unreachable →
    /// `unreachable`; refused or invalid route → `refused`; not ready → `agent-not-running`;
    /// not approved → `not-approved`; conflict → `not-advertised`.
    fn from(error: ControlPlaneError) -> Self {
        let reason = match &error {
            ControlPlaneError::Unreachable { .. } => NotReadyReason::Unreachable,
            ControlPlaneError::Refused { .. } | ControlPlaneError::InvalidRoute { .. } => {
                NotReadyReason::Refused
            }
            ControlPlaneError::NotReady { .. } => NotReadyReason::AgentNotRunning,
            ControlPlaneError::NotApproved { .. } => NotReadyReason::NotApproved,
            ControlPlaneError::Conflict { .. } => NotReadyReason::NotAdvertised,
        };
        PlanFailure { error, reason }
    }
}

/// The one next step of a reconcile ([`super::next_step`]) or withdrawal
/// ([`super::next_withdraw_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlStep {
    /// Read LocalAPI `GET /localapi/v0/status?peers=false` into
    /// [`super::ControlObservation::agent`].
    ObserveAgent,
    /// Read LocalAPI `GET /localapi/v0/prefs` into [`super::ControlObservation::prefs`].
    ObservePrefs,
    /// `PATCH /localapi/v0/prefs` with this patch (optimistic concurrency: re-read the prefs
    /// before a patch that replaces `AdvertiseRoutes`, and after it).
    PatchPrefs(PrefsPatch),
    /// Detect Headscale's API generation into [`super::ApprovalView::model`].
    ObserveRouteModel,
    /// Read Headscale `GET /api/v1/node/{node_id}` into [`super::ApprovalView::node`].
    ObserveNode {
        /// The node id (tailscaled `Self.ID`).
        node_id: u64,
    },
    /// Headscale ≥ 0.26 `POST /api/v1/node/{node_id}/approve_routes` with `routes`, the full
    /// replacement set; record the answer with
    /// [`super::ControlObservation::record_approve_routes_answer`].
    ApproveRoutes {
        /// This node's id, never another one.
        node_id: u64,
        /// The node's whole approved set after the call.
        routes: Vec<IpNetwork>,
    },
    /// Headscale ≤ 0.25 `GET /api/v1/node/{node_id}/routes` into
    /// [`super::ApprovalView::route_rows`].
    ObserveRouteRows {
        /// This node's id.
        node_id: u64,
    },
    /// Headscale ≤ 0.25 `POST /api/v1/routes/{id}/enable` for each row, in order; record with
    /// [`super::ControlObservation::record_rows_enabled`].
    EnableRouteRows {
        /// This node's id (the rows' owner).
        node_id: u64,
        /// `(route id, prefix)` of each row to enable: only this node's rows of wanted
        /// prefixes.
        rows: Vec<(u64, IpNetwork)>,
    },
    /// Headscale ≤ 0.25: no advertised row yet for `pending`; sleep one poll interval, then
    /// forget [`super::ApprovalView::route_rows`] (so that they are read again).
    WaitRouteRows {
        /// Wanted prefixes without an advertised row of this node.
        pending: Vec<IpNetwork>,
    },
    /// Headscale ≤ 0.25: every wanted row is enabled; read `GET /api/v1/node/{node_id}/routes`
    /// again and store the enabled prefixes in [`super::ApprovalView::route_rows_confirmed`].
    ConfirmRouteRows {
        /// This node's id.
        node_id: u64,
    },
    /// Headscale ≤ 0.25 `POST /api/v1/routes/{id}/disable` for each row id, in order (withdraw);
    /// record with [`super::ControlObservation::record_rows_disabled`].
    DisableRouteRows {
        /// Enabled rows of this node (or naming no node) with one of our prefixes.
        route_ids: Vec<u64>,
    },
    /// Tailscale API v2: find this node's device (`GET /api/v2/tailnet/{tailnet}/devices`,
    /// matching both `nodeKey` and `nodeId`), read its routes, and — only when one of `routes`
    /// is not enabled yet — `POST /api/v2/device/{deviceId}/routes` with `enabledRoutes ∪
    /// routes` (replace semantics, every other enabled route kept, never an exit route).
    /// Record the outcome in [`super::ApprovalView::device`].
    ApproveDevice {
        /// `Self.PublicKey` (`nodekey:<hex>`), the device's `nodeKey`.
        node_key: String,
        /// `Self.ID`, the device's `nodeId`.
        stable_id: String,
        /// HeadCNI's routes for this node (only these are added).
        routes: Vec<IpNetwork>,
    },
    /// Tailscale API: the device does not advertise `pending` yet; sleep one poll interval,
    /// then forget [`super::ApprovalView::device`] (so that the approval is tried again).
    WaitDevice {
        /// Wanted routes missing from the device's `advertisedRoutes`.
        pending: Vec<IpNetwork>,
    },
    /// Tailscale API v2 (withdraw): find the device as for [`ControlStep::ApproveDevice`] and
    /// — only when one of `routes` is enabled — `POST /api/v2/device/{deviceId}/routes` with
    /// `enabledRoutes \ routes`. Record the outcome in [`super::ApprovalView::device`].
    WithdrawDevice {
        /// `Self.PublicKey`.
        node_key: String,
        /// `Self.ID`.
        stable_id: String,
        /// HeadCNI's routes for this node (only these are removed).
        routes: Vec<IpNetwork>,
    },
    /// Poll LocalAPI `GET /localapi/v0/status?peers=false` into
    /// [`super::ControlObservation::primary`] (`Self.PrimaryRoutes`).
    ObservePrimary,
    /// Not primary yet; sleep one poll interval, then forget
    /// [`super::ControlObservation::primary`].
    WaitPrimary {
        /// Wanted routes not in `Self.PrimaryRoutes`.
        missing: Vec<IpNetwork>,
    },
    /// Done: the wanted routes are advertised, approved and primary.
    Ready(RouteState),
    /// Done: the routes are withdrawn (uninstall).
    Withdrawn,
    /// Stop with this failure.
    Fail(PlanFailure),
}

impl ControlStep {
    /// Whether the step belongs to the LocalAPI status/prefs phase that precedes the bounded
    /// approval wait (the driver starts its deadline at the first step that does not).
    pub fn is_before_approval(&self) -> bool {
        matches!(
            self,
            ControlStep::ObserveAgent | ControlStep::ObservePrefs | ControlStep::PatchPrefs(_)
        )
    }
}
