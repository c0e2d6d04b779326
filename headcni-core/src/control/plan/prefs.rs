//! The prefs decisions: which LocalAPI prefs fields to patch so that tailscaled advertises the
//! PodCIDRs (keeping every other route) with the flags HeadCNI needs, or stops advertising
//! them.

use ipnetwork::IpNetwork;

use super::routes::{contains_all, union, without};
use super::{PlanFailure, PrefsView};
use crate::control::{ControlPlaneError, NotReadyReason};

/// A typed `ipn.MaskedPrefs` (tailscale `ipn/prefs.go`) restricted to the fields HeadCNI
/// writes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefsPatch {
    /// New `AdvertiseRoutes` (the whole list: the LocalAPI replaces it).
    pub advertise_routes: Option<Vec<IpNetwork>>,
    /// New `RouteAll`.
    pub route_all: Option<bool>,
    /// New `NoSNAT`.
    pub no_snat: Option<bool>,
    /// New `NoStatefulFiltering` (`opt.Bool`; HeadCNI only ever sets `true`).
    pub no_stateful_filtering: Option<bool>,
}

impl PrefsPatch {
    /// True when no field is set (nothing to write).
    pub fn is_empty(&self) -> bool {
        *self == PrefsPatch::default()
    }
}

/// The patch that makes `cur` advertise `routes`: `AdvertiseRoutes = cur ∪ routes` (every
/// other route kept, in order, exit routes included) if one is missing, and `RouteAll`,
/// `NoSNAT`, `NoStatefulFiltering` set to true where they are not (the last only where this
/// tailscaled has it). Empty when all is in place.
pub fn prefs_patch_add(cur: &PrefsView, routes: &[IpNetwork]) -> PrefsPatch {
    PrefsPatch {
        advertise_routes: (!contains_all(&cur.advertise_routes, routes))
            .then(|| union(&cur.advertise_routes, routes)),
        route_all: (!cur.route_all).then_some(true),
        no_snat: (!cur.no_snat).then_some(true),
        no_stateful_filtering: (!cur.no_stateful_filtering
            && !cur.no_stateful_filtering_unsupported)
            .then_some(true),
    }
}

/// The status note when this tailscaled has no `NoStatefulFiltering` pref (see
/// [`has_no_stateful_filtering`]); `None` when it has it.
pub fn stateful_filtering_note(agent_version: &str) -> Option<String> {
    (!has_no_stateful_filtering(agent_version)).then(|| {
        format!(
            "tailscaled {agent_version} has no NoStatefulFiltering pref (it came in 1.66 together with stateful filtering of subnet routes): HeadCNI does not set it; after an upgrade to 1.66 or later it is set on the next reconcile"
        )
    })
}

/// Whether a tailscaled of `version` (LocalAPI `Status.Version`, `1.64.2-t…`) has the
/// `NoStatefulFiltering` pref: it was added in 1.66.0 (tailscale `ipn/prefs.go`, absent at
/// v1.64.2). An unparsable or empty version counts as having it (current releases do).
pub fn has_no_stateful_filtering(version: &str) -> bool {
    let mut parts = version.split(['.', '-']);
    let major = parts.next().and_then(|m| m.parse::<u32>().ok());
    let minor = parts.next().and_then(|m| m.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 66),
        _ => true,
    }
}

/// The patch that stops advertising `routes`: `AdvertiseRoutes = cur \ routes` if one of them
/// is advertised; the flags are left alone. Empty when none is advertised.
pub fn prefs_patch_remove(cur: &PrefsView, routes: &[IpNetwork]) -> PrefsPatch {
    PrefsPatch {
        advertise_routes: cur
            .advertise_routes
            .iter()
            .any(|r| routes.contains(r))
            .then(|| without(&cur.advertise_routes, routes)),
        ..PrefsPatch::default()
    }
}

/// The failure when the prefs did not settle after `attempts` read-modify-write cycles
/// (concurrent writers): [`ControlPlaneError::Conflict`], reason `not-advertised`.
pub fn prefs_conflict(attempts: u32) -> PlanFailure {
    PlanFailure::new(
        ControlPlaneError::Conflict {
            reason: format!(
                "tailscaled AdvertiseRoutes kept changing under concurrent writers; gave up after {attempts} read-modify-write cycles"
            ),
        },
        NotReadyReason::NotAdvertised,
    )
}
