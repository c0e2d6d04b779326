//! The LocalAPI and Headscale types as the plan's observation types
//! (`headcni_core::control::plan`), the plan's prefs patch as a LocalAPI `MaskedPrefs`, and the
//! clients' errors as [`ControlPlaneError`]s.

use headcni_core::control::ControlPlaneError;
use headcni_core::control::plan::{
    AgentView, DeviceView, NodeView, PrefsPatch, PrefsView, RouteModel, RouteRowView, SelfView,
    has_no_stateful_filtering,
};
use ipnetwork::IpNetwork;

use crate::headscale::{ApiGeneration, HeadscaleError, Node, Route};
use crate::localapi::{LocalApiError, MaskedPrefs, OptBool, Prefs, Status};
use crate::retry::control_error;
use crate::tailscale_api::TailscaleApiError;

/// LocalAPI `Status` → `AgentView` (`BackendState`, `Self`).
pub(super) fn agent_view(st: &Status) -> AgentView {
    AgentView {
        version: st.version.clone(),
        backend_state: st.backend_state.clone(),
        self_node: st.self_.as_ref().map(|s| SelfView {
            id: s.id.clone(),
            public_key: s.public_key.clone(),
            host_name: s.host_name.clone(),
            primary_routes: s.primary_routes.clone(),
            tags: s.tags.clone(),
        }),
    }
}

/// LocalAPI `Prefs` → `PrefsView` (`NoStatefulFiltering` counts only when `true`); `agent`,
/// the status read with them, says whether this tailscaled has that pref at all.
pub(super) fn prefs_view(p: &Prefs, agent: Option<&AgentView>) -> PrefsView {
    PrefsView {
        advertise_routes: p.advertise_routes.clone(),
        route_all: p.route_all,
        no_snat: p.no_snat,
        no_stateful_filtering: p.no_stateful_filtering == OptBool::True,
        no_stateful_filtering_unsupported: agent
            .is_some_and(|a| !has_no_stateful_filtering(&a.version)),
    }
}

/// The plan's `PrefsPatch` → the LocalAPI `MaskedPrefs` that sends exactly those fields.
pub(super) fn masked_prefs(p: &PrefsPatch) -> MaskedPrefs {
    MaskedPrefs {
        advertise_routes: p.advertise_routes.clone(),
        route_all: p.route_all,
        no_snat: p.no_snat,
        no_stateful_filtering: p.no_stateful_filtering.map(OptBool::from),
        ..MaskedPrefs::default()
    }
}

/// Headscale's API generation → its route model.
pub(super) fn route_model(g: ApiGeneration) -> RouteModel {
    match g {
        ApiGeneration::RouteRows => RouteModel::RouteRows,
        ApiGeneration::ApprovedRoutes => RouteModel::ApprovedRoutes,
    }
}

/// Headscale `v1Node` → `NodeView`.
pub(super) fn node_view(n: &Node) -> NodeView {
    NodeView {
        id: n.id,
        node_key: n.node_key.clone(),
        approved_routes: n.approved_routes.clone(),
    }
}

/// Headscale ≤ 0.25 `v1Route` rows → `RouteRowView`s, in order.
pub(super) fn row_views(rows: &[Route]) -> Vec<RouteRowView> {
    rows.iter()
        .map(|r| RouteRowView {
            id: r.id,
            prefix: r.prefix,
            advertised: r.advertised,
            enabled: r.enabled,
            node_id: r.node.as_ref().map(|n| n.id),
        })
        .collect()
}

/// A LocalAPI error: retryable → `Unreachable`, else `Refused` (endpoint "tailscaled LocalAPI").
pub(super) fn la_err(e: LocalApiError) -> ControlPlaneError {
    control_error("tailscaled LocalAPI", &e)
}

/// A Headscale error: retryable → `Unreachable`, else `Refused` (endpoint "headscale API").
pub(super) fn hs_err(e: HeadscaleError) -> ControlPlaneError {
    control_error("headscale API", &e)
}

/// The outcome of the Tailscale API client's `approve`/`withdraw` as the plan's
/// [`DeviceView`]: the enabled set; the routes the device does not advertise yet
/// ([`TailscaleApiError::NotAdvertised`]); no device ([`TailscaleApiError::DeviceNotFound`]);
/// a device whose `nodeKey`/`nodeId` disagree, or several devices
/// ([`TailscaleApiError::IdentityMismatch`], [`TailscaleApiError::AmbiguousDevice`]). Every
/// other error is a [`ControlPlaneError`] ([`ts_err`]).
pub(super) fn device_view(
    res: Result<Vec<IpNetwork>, TailscaleApiError>,
) -> Result<DeviceView, ControlPlaneError> {
    match res {
        Ok(enabled) => Ok(DeviceView::Enabled(enabled)),
        Err(TailscaleApiError::NotAdvertised { routes, .. }) => {
            Ok(DeviceView::NotAdvertised(routes))
        }
        Err(e @ TailscaleApiError::DeviceNotFound { .. }) => Ok(DeviceView::NotFound {
            reason: e.to_string(),
        }),
        Err(
            e @ (TailscaleApiError::IdentityMismatch { .. }
            | TailscaleApiError::AmbiguousDevice { .. }),
        ) => Ok(DeviceView::Mismatch {
            reason: e.to_string(),
        }),
        Err(e) => Err(ts_err(e)),
    }
}

/// A Tailscale API error (endpoint "tailscale API"): the answer lacking the routes →
/// `NotApproved`; a route HeadCNI refuses → `InvalidRoute`; retryable (transport, timeout,
/// 429, 5xx) → `Unreachable`; everything else — bad or unreadable credentials
/// (`invalid_client`, 401), a missing scope (403, `invalid_scope`), an unknown tailnet, a
/// refused request — → `Refused`.
pub(super) fn ts_err(e: TailscaleApiError) -> ControlPlaneError {
    match e {
        TailscaleApiError::NotApproved { ref routes, .. } => ControlPlaneError::NotApproved {
            routes: routes.clone(),
            reason: e.to_string(),
        },
        TailscaleApiError::InvalidRoute { route, reason } => {
            ControlPlaneError::InvalidRoute { route, reason }
        }
        e => control_error("tailscale API", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefs_patch_sends_only_the_planned_fields() {
        let m = masked_prefs(&PrefsPatch {
            advertise_routes: Some(vec!["10.244.1.0/24".parse().unwrap()]),
            no_stateful_filtering: Some(true),
            ..PrefsPatch::default()
        });
        assert_eq!(m.no_stateful_filtering, Some(OptBool::True));
        assert_eq!(m.route_all, None);
        assert!(masked_prefs(&PrefsPatch::default()).is_empty());
    }

    #[test]
    fn tailscale_api_errors_map_to_the_plans_terms() {
        let pod: IpNetwork = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            device_view(Err(TailscaleApiError::NotAdvertised {
                device: "n1".into(),
                routes: vec![pod],
            })),
            Ok(DeviceView::NotAdvertised(vec![pod]))
        );
        assert!(matches!(
            device_view(Err(TailscaleApiError::IdentityMismatch {
                reason: "x".into()
            })),
            Ok(DeviceView::Mismatch { .. })
        ));
        assert!(matches!(
            device_view(Err(TailscaleApiError::AmbiguousDevice {
                node: "x".into(),
                count: 2
            })),
            Ok(DeviceView::Mismatch { .. })
        ));
        assert!(matches!(
            device_view(Err(TailscaleApiError::DeviceNotFound {
                tailnet: "-".into(),
                node: "x".into()
            })),
            Ok(DeviceView::NotFound { .. })
        ));
        let refused = device_view(Err(TailscaleApiError::TokenRejected {
            status: 401,
            error: "invalid_client".into(),
            description: String::new(),
        }));
        assert!(
            matches!(refused, Err(ControlPlaneError::Refused { .. })),
            "{refused:?}"
        );
        let forbidden = ts_err(TailscaleApiError::Forbidden {
            endpoint: "POST /api/v2/device/n1/routes".into(),
            message: "missing scope".into(),
        });
        assert!(matches!(forbidden, ControlPlaneError::Refused { .. }));
        let down = ts_err(TailscaleApiError::Api {
            endpoint: "GET /api/v2/tailnet/-/devices".into(),
            status: 503,
            message: String::new(),
        });
        assert!(matches!(down, ControlPlaneError::Unreachable { .. }));
        let not_approved = ts_err(TailscaleApiError::NotApproved {
            device: "n1".into(),
            routes: vec![pod],
        });
        assert!(
            matches!(&not_approved, ControlPlaneError::NotApproved { routes, .. } if routes == &vec![pod])
        );
    }

    #[test]
    fn unset_no_stateful_filtering_is_not_in_place() {
        let p = Prefs {
            no_stateful_filtering: OptBool::Unset,
            ..Prefs::default()
        };
        assert!(!prefs_view(&p, None).no_stateful_filtering);
    }
}
