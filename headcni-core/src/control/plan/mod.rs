//! The control-plane reconcile as sans-I/O decisions: an observation of tailscaled (LocalAPI)
//! and Headscale (REST) in, the ONE next step out.
//!
//! A driver (e.g. `headcni-headscale`'s `TailnetBackend`) loops, bounded:
//!
//! 1. asks [`next_step`] (reconcile) or [`next_withdraw_step`] (uninstall) for the next step;
//! 2. performs it: an `Observe…` step reads one thing into the [`ControlObservation`]; a write
//!    step ([`ControlStep::PatchPrefs`], [`ControlStep::ApproveRoutes`],
//!    [`ControlStep::EnableRouteRows`], [`ControlStep::DisableRouteRows`],
//!    [`ControlStep::ApproveDevice`], [`ControlStep::WithdrawDevice`]) calls the API and
//!    records its effect in the observation; a `Wait…` step sleeps and forgets the observation
//!    it waits on; [`ControlStep::Ready`], [`ControlStep::Withdrawn`] and
//!    [`ControlStep::Fail`] end the loop;
//! 3. repeats.
//!
//! No I/O, no async, no clock here: the driver owns deadlines, poll intervals and retry
//! counts and passes "the approval deadline has passed" in
//! [`ControlObservation::deadline_passed`].
//!
//! The reconcile (control-plane-apis.md §5 (a), host mode):
//! 1. LocalAPI `GET status?peers=false`: `BackendState == Running`, a `Self` with an `ID`.
//! 2. LocalAPI prefs: `AdvertiseRoutes ∪ PodCIDRs` (every other route kept, exit routes
//!    included), `RouteAll`, `NoSNAT`, `NoStatefulFiltering` true.
//! 3. With an API key, approval for this node id only, after checking that Headscale's
//!    `nodeKey` is tailscaled's `Self.PublicKey`: ≥ 0.26 `approve_routes` with the node's
//!    approved set ∪ PodCIDRs (replace semantics); ≤ 0.25 wait for this node's advertised route
//!    row, then `enable` it. With autoApprovers: no API call. With the Tailscale API: one
//!    approve call on the device whose `nodeKey`/`nodeId` are `Self.PublicKey`/`Self.ID`
//!    (enabled set ∪ PodCIDRs), waiting while the device does not advertise them yet.
//! 4. Wait until LocalAPI `Self.PrimaryRoutes ⊇ PodCIDRs`.

mod approver;
mod ensure;
mod observation;
mod peers;
mod prefs;
mod readiness;
mod routes;
mod step;
mod withdraw;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dual_stack;
#[cfg(test)]
mod tests_tailscale_api;
#[cfg(test)]
mod tests_trust_primary;

pub use approver::approver_note;
pub use ensure::{next_step, partial_routes};
pub use observation::{
    AgentView, ApprovalPath, ApprovalView, ControlObservation, DeviceView, NodeLookup, NodeView,
    PrefsView, RouteModel, RouteRowView, SelfView, Wanted,
};
pub use peers::{ServedRoutes, missing_peer_routes};
pub use prefs::{
    PrefsPatch, has_no_stateful_filtering, prefs_conflict, prefs_patch_add, prefs_patch_remove,
    stateful_filtering_note,
};
pub use readiness::{observed_readiness, running_self};
pub use routes::validate_routes;
pub use step::{ControlStep, PlanFailure};
pub use withdraw::next_withdraw_step;
