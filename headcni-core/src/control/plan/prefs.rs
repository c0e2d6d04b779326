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
/// `NoSNAT`, `NoStatefulFiltering` set to true where they are not. Empty when all is in place.
pub fn prefs_patch_add(cur: &PrefsView, routes: &[IpNetwork]) -> PrefsPatch {
    PrefsPatch {
        advertise_routes: (!contains_all(&cur.advertise_routes, routes))
            .then(|| union(&cur.advertise_routes, routes)),
        route_all: (!cur.route_all).then_some(true),
        no_snat: (!cur.no_snat).then_some(true),
        no_stateful_filtering: (!cur.no_stateful_filtering).then_some(true),
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
