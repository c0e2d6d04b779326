//! Route-list helpers of the plan: validation and set operations that keep tailscaled's and
//! Headscale's order.

use ipnetwork::IpNetwork;

use crate::control::ControlPlaneError;

/// Checks that HeadCNI manages only masked, non-exit prefixes.
///
/// Errors: [`ControlPlaneError::InvalidRoute`] for `10.244.1.5/24` (not masked) or a `/0`
/// (an exit route, `0.0.0.0/0` or `::/0`).
pub fn validate_routes(routes: &[IpNetwork]) -> Result<(), ControlPlaneError> {
    for r in routes {
        if r.ip() != r.network() {
            return Err(ControlPlaneError::InvalidRoute {
                route: *r,
                reason: format!("not a masked prefix (use {}/{})", r.network(), r.prefix()),
            });
        }
        if r.prefix() == 0 {
            return Err(ControlPlaneError::InvalidRoute {
                route: *r,
                reason: "exit routes are never managed by HeadCNI".to_string(),
            });
        }
    }
    Ok(())
}

/// Whether `have ⊇ want`.
pub(crate) fn contains_all(have: &[IpNetwork], want: &[IpNetwork]) -> bool {
    want.iter().all(|w| have.contains(w))
}

/// `want \ have`, in `want`'s order.
pub(crate) fn missing(have: &[IpNetwork], want: &[IpNetwork]) -> Vec<IpNetwork> {
    want.iter().filter(|w| !have.contains(w)).copied().collect()
}

/// `base ∪ add`, keeping `base`'s order and appending what is missing.
pub(crate) fn union(base: &[IpNetwork], add: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out = base.to_vec();
    for r in add {
        if !out.contains(r) {
            out.push(*r);
        }
    }
    out
}

/// `base \ remove`, keeping `base`'s order.
pub(crate) fn without(base: &[IpNetwork], remove: &[IpNetwork]) -> Vec<IpNetwork> {
    base.iter()
        .filter(|r| !remove.contains(r))
        .copied()
        .collect()
}

/// Joins routes as `a, b` for messages.
pub(crate) fn display(routes: &[IpNetwork]) -> String {
    routes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
