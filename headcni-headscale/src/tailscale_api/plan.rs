//! The pure route decisions of the Tailscale API approver: which full enabled set to send.
//!
//! `POST /api/v2/device/{deviceId}/routes` replaces the device's enabled set (client-go-v2
//! `devices.go` `SetSubnetRoutes`; Headscale main `hscontrol/api/v2/devices.go`
//! `setDeviceRoutes` → `SetApprovedRoutes`), so every decision starts from the current set and
//! changes only HeadCNI's own routes.

use ipnetwork::IpNetwork;

use super::error::TailscaleApiError;

/// Checks that `routes` are routes HeadCNI may manage: masked prefixes, never an exit route.
///
/// Errors: [`TailscaleApiError::InvalidRoute`] for `10.244.1.5/24` (host bits set) or a `/0`.
pub fn validate_routes(routes: &[IpNetwork]) -> Result<(), TailscaleApiError> {
    for r in routes {
        if r.prefix() == 0 {
            return Err(TailscaleApiError::InvalidRoute {
                route: *r,
                reason: "exit routes are never managed by HeadCNI".into(),
            });
        }
        if r.ip() != r.network() {
            return Err(TailscaleApiError::InvalidRoute {
                route: *r,
                reason: format!("not a masked prefix (use {}/{})", r.network(), r.prefix()),
            });
        }
    }
    Ok(())
}

/// The routes of `want` missing from `have`, in `want`'s order, without duplicates.
pub fn missing(have: &[IpNetwork], want: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for w in want {
        if !have.contains(w) && !out.contains(w) {
            out.push(*w);
        }
    }
    out
}

/// The enabled set to send so that `ours` are enabled: `enabled ∪ ours` (the current set in
/// its order, then ours that are missing); `None` when every route of `ours` is already
/// enabled (no request is needed). Whatever else is enabled, an exit route included, is kept
/// as it is: dropping it would disable it.
pub fn approve_set(enabled: &[IpNetwork], ours: &[IpNetwork]) -> Option<Vec<IpNetwork>> {
    let add = missing(enabled, ours);
    if add.is_empty() {
        return None;
    }
    let mut out = enabled.to_vec();
    out.extend(add);
    Some(out)
}

/// The enabled set to send so that `ours` are no longer enabled: `enabled \ ours`; `None` when
/// none of `ours` is enabled.
pub fn withdraw_set(enabled: &[IpNetwork], ours: &[IpNetwork]) -> Option<Vec<IpNetwork>> {
    if !enabled.iter().any(|r| ours.contains(r)) {
        return None;
    }
    Some(
        enabled
            .iter()
            .filter(|r| !ours.contains(r))
            .copied()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn validation() {
        assert!(validate_routes(&[n("10.244.1.0/24"), n("fd00:10:244:1::/64")]).is_ok());
        for bad in ["0.0.0.0/0", "::/0", "10.244.1.5/24"] {
            assert!(
                matches!(
                    validate_routes(&[n(bad)]),
                    Err(TailscaleApiError::InvalidRoute { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn union_keeps_others_and_adds_only_ours() {
        let enabled = [n("192.168.50.0/24"), n("0.0.0.0/0")];
        assert_eq!(
            approve_set(&enabled, &[n("10.244.1.0/24"), n("10.244.1.0/24")]),
            Some(vec![
                n("192.168.50.0/24"),
                n("0.0.0.0/0"),
                n("10.244.1.0/24")
            ])
        );
        assert_eq!(
            approve_set(&[n("10.244.1.0/24")], &[n("10.244.1.0/24")]),
            None
        );
    }

    #[test]
    fn withdraw_keeps_others() {
        let enabled = [n("192.168.50.0/24"), n("10.244.1.0/24")];
        assert_eq!(
            withdraw_set(&enabled, &[n("10.244.1.0/24")]),
            Some(vec![n("192.168.50.0/24")])
        );
        assert_eq!(withdraw_set(&enabled, &[n("10.244.2.0/24")]), None);
    }
}
