//! The withdrawal's decisions (`headcni uninstall`): stop advertising HeadCNI's routes and
//! revoke only their approvals on this node, keeping every other route and approval.

use super::routes::{validate_routes, without};
use super::{
    ApprovalPath, ControlObservation, ControlStep, DeviceView, NodeLookup, PlanFailure, RouteModel,
    Wanted, prefs_patch_remove,
};
use crate::control::{ControlPlaneError, NotReadyReason};

/// The next step of withdrawing `wanted.routes`:
/// 1. status, then prefs: `AdvertiseRoutes \ routes` (flags left alone);
/// 2. with autoApprovers, or when tailscaled shows no `Self`/`ID`, or `Self.ID` is not a
///    Headscale id, or Headscale has no such node: done (nothing of ours to revoke);
/// 3. refuse to touch approvals when the node's `nodeKey` ≠ `Self.PublicKey`
///    (`identity-mismatch`);
/// 4. ≥ 0.26: `approve_routes` with the approved set minus ours, only if one of ours is
///    approved; ≤ 0.25: `disable` this node's enabled rows of our prefixes.
///
/// With the Tailscale API, step 2–4 are one [`ControlStep::WithdrawDevice`] on the device of
/// `Self.PublicKey`/`Self.ID`: no such device → done; a device disagreeing with one of them →
/// `identity-mismatch`; an answer still enabling one of ours → `refused`.
///
/// Unlike [`super::next_step`] it does not require tailscaled to be running.
pub fn next_withdraw_step(wanted: &Wanted, obs: &ControlObservation) -> ControlStep {
    match plan(wanted, obs) {
        Ok(step) | Err(step) => step,
    }
}

fn plan(wanted: &Wanted, obs: &ControlObservation) -> Result<ControlStep, ControlStep> {
    let routes = &wanted.routes;
    validate_routes(routes).map_err(|e| ControlStep::Fail(e.into()))?;
    let agent = obs.agent.as_ref().ok_or(ControlStep::ObserveAgent)?;
    let prefs = obs.prefs.as_ref().ok_or(ControlStep::ObservePrefs)?;
    let patch = prefs_patch_remove(prefs, routes);
    if !patch.is_empty() {
        return Err(ControlStep::PatchPrefs(patch));
    }
    if wanted.approval == ApprovalPath::AutoApprovers {
        // Nothing to revoke through the API; the route is no longer announced, so it is no
        // longer served.
        return Ok(ControlStep::Withdrawn);
    }
    let Some(me) = agent.self_node.as_ref().filter(|s| !s.id.is_empty()) else {
        return Ok(ControlStep::Withdrawn);
    };
    if wanted.approval == ApprovalPath::TailscaleApi {
        return match &obs.approval.device {
            DeviceView::NotAsked => Err(ControlStep::WithdrawDevice {
                node_key: me.public_key.clone(),
                stable_id: me.id.clone(),
                routes: routes.clone(),
            }),
            DeviceView::Enabled(enabled) if enabled.iter().any(|r| routes.contains(r)) => {
                Err(ControlStep::Fail(PlanFailure::new(
                    ControlPlaneError::Refused {
                        endpoint: "tailscale API".to_string(),
                        reason: format!(
                            "the route update left {:?} enabled on device {}",
                            enabled
                                .iter()
                                .filter(|r| routes.contains(r))
                                .collect::<Vec<_>>(),
                            me.id
                        ),
                    },
                    NotReadyReason::Refused,
                )))
            }
            DeviceView::Mismatch { reason } => Err(ControlStep::Fail(PlanFailure::new(
                ControlPlaneError::Conflict {
                    reason: format!("tailscale API: {reason}; not touching its routes"),
                },
                NotReadyReason::IdentityMismatch,
            ))),
            // Nothing of ours to revoke (no device), or revoked.
            DeviceView::Enabled(_) | DeviceView::NotFound { .. } | DeviceView::NotAdvertised(_) => {
                Ok(ControlStep::Withdrawn)
            }
        };
    }
    let Ok(node_id) = me.id.parse::<u64>() else {
        return Ok(ControlStep::Withdrawn);
    };
    let a = &obs.approval;
    let node = match &a.node {
        NodeLookup::NotRead => return Err(ControlStep::ObserveNode { node_id }),
        NodeLookup::NotFound => return Ok(ControlStep::Withdrawn),
        NodeLookup::Found(n) => n,
    };
    if node.node_key != me.public_key {
        return Err(ControlStep::Fail(PlanFailure::new(
            ControlPlaneError::Conflict {
                reason: format!(
                    "identity mismatch: headscale node {node_id} has nodeKey {} but tailscaled Self.PublicKey is {}; not touching its approvals",
                    node.node_key, me.public_key
                ),
            },
            NotReadyReason::IdentityMismatch,
        )));
    }
    match a.model.ok_or(ControlStep::ObserveRouteModel)? {
        RouteModel::ApprovedRoutes => {
            if !a.approve_routes_answered && node.approved_routes.iter().any(|r| routes.contains(r))
            {
                return Err(ControlStep::ApproveRoutes {
                    node_id,
                    routes: without(&node.approved_routes, routes),
                });
            }
        }
        RouteModel::RouteRows => {
            let rows = a
                .route_rows
                .as_ref()
                .ok_or(ControlStep::ObserveRouteRows { node_id })?;
            let route_ids: Vec<u64> = rows
                .iter()
                .filter(|r| {
                    r.enabled
                        && r.prefix.as_ref().is_some_and(|p| routes.contains(p))
                        && r.node_id.is_none_or(|n| n == node_id)
                })
                .map(|r| r.id)
                .collect();
            if !route_ids.is_empty() {
                return Err(ControlStep::DisableRouteRows { route_ids });
            }
        }
    }
    Ok(ControlStep::Withdrawn)
}
