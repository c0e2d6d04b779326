//! The reconcile's decisions: advertise, approve for this node only, wait for primary.

use ipnetwork::IpNetwork;

use super::routes::{contains_all, display, missing, union, validate_routes};
use super::{
    ApprovalPath, ControlObservation, ControlStep, DeviceView, NodeLookup, PlanFailure, RouteModel,
    RouteRowView, SelfView, Wanted, prefs_patch_add, running_self,
};
use crate::control::{ControlPlaneError, NotReadyReason, RouteState};

/// The next step of a reconcile that makes `wanted.routes` advertised, approved for this node
/// and primary (see the [module docs](super) for the order).
///
/// Failures ([`ControlStep::Fail`]): an invalid route (`refused`); no route
/// (`agent-not-running`); tailscaled not running or without `Self` (`agent-not-running`);
/// with API approval, `Self.ID` not a Headscale id, no such Headscale node, or its `nodeKey`
/// ≠ `Self.PublicKey` (`identity-mismatch`, never approving then); `approve_routes` answered
/// without the routes (`not-approved`); ≤ 0.25 no advertised row by the deadline
/// (`not-advertised`); with the Tailscale API, no device or a device whose `nodeKey`/`nodeId`
/// disagree with `Self.PublicKey`/`Self.ID` (`identity-mismatch`), the device still not
/// advertising the routes at the deadline or the answer lacking them (`not-approved`, naming
/// the Tailscale API); not primary by the deadline: approved → `not-primary`, not approved →
/// `not-approved`, autoApprovers → `not-approved` naming the policy's `autoApprovers.routes`.
///
/// With [`ControlObservation::trust_primary`], routes already in the status's
/// `Self.PrimaryRoutes` are ready once the prefs are in place, without an approval read.
pub fn next_step(wanted: &Wanted, obs: &ControlObservation) -> ControlStep {
    match plan(wanted, obs) {
        Ok(step) | Err(step) => step,
    }
}

/// The routes as far as this (possibly failed) reconcile got: `advertised` once the prefs are
/// in place, `approved` once the API approval completed, `primary` from the last poll.
pub fn partial_routes(wanted: &Wanted, obs: &ControlObservation) -> RouteState {
    let Some(me) = obs.agent.as_ref().and_then(|a| running_self(a).ok()) else {
        return RouteState::default();
    };
    let settled = obs
        .prefs
        .as_ref()
        .filter(|p| prefs_patch_add(p, &wanted.routes).is_empty());
    let advertised = settled
        .map(|p| p.advertise_routes.clone())
        .unwrap_or_default();
    let approved = match (wanted.approval, settled) {
        (ApprovalPath::Api, Some(_)) => api_approval(wanted, me, obs).unwrap_or_default(),
        (ApprovalPath::TailscaleApi, Some(_)) => match &obs.approval.device {
            DeviceView::Enabled(e) => e.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    RouteState {
        advertised,
        approved,
        primary: obs.primary.clone().unwrap_or_default(),
    }
}

fn fail(f: impl Into<PlanFailure>) -> ControlStep {
    ControlStep::Fail(f.into())
}

/// `Err` carries an early step (a read, a write, a wait or a failure).
fn plan(wanted: &Wanted, obs: &ControlObservation) -> Result<ControlStep, ControlStep> {
    let routes = &wanted.routes;
    validate_routes(routes).map_err(fail)?;
    if routes.is_empty() {
        return Err(fail(ControlPlaneError::NotReady {
            reason: "no pod CIDR to advertise".to_string(),
        }));
    }
    let agent = obs.agent.as_ref().ok_or(ControlStep::ObserveAgent)?;
    let me = running_self(agent).map_err(ControlStep::Fail)?;
    let prefs = obs.prefs.as_ref().ok_or(ControlStep::ObservePrefs)?;
    let patch = prefs_patch_add(prefs, routes);
    if !patch.is_empty() {
        return Err(ControlStep::PatchPrefs(patch));
    }
    if obs.trust_primary && contains_all(&me.primary_routes, routes) {
        // Primary implies approved (the control server makes primary only approved routes):
        // nothing to change, nothing to ask the control server.
        return Ok(ControlStep::Ready(RouteState {
            advertised: prefs.advertise_routes.clone(),
            approved: routes.to_vec(),
            primary: me.primary_routes.clone(),
        }));
    }
    let approved = match wanted.approval {
        ApprovalPath::Api => Some(api_approval(wanted, me, obs)?),
        ApprovalPath::TailscaleApi => Some(device_approval(wanted, me, obs)?),
        ApprovalPath::AutoApprovers => None,
    };
    let primary = obs.primary.as_ref().ok_or(ControlStep::ObservePrimary)?;
    if contains_all(primary, routes) {
        // Without an API key the approvals are invisible: primary implies approved.
        let approved = approved.unwrap_or_else(|| {
            routes
                .iter()
                .filter(|r| primary.contains(r))
                .copied()
                .collect()
        });
        return Ok(ControlStep::Ready(RouteState {
            advertised: prefs.advertise_routes.clone(),
            approved,
            primary: primary.clone(),
        }));
    }
    let miss = missing(primary, routes);
    if !obs.deadline_passed {
        return Err(ControlStep::WaitPrimary { missing: miss });
    }
    Err(ControlStep::Fail(not_primary(wanted, me, approved, miss)))
}

/// The API approval of this node; `Ok` with the node's approved set once complete.
fn api_approval(
    wanted: &Wanted,
    me: &SelfView,
    obs: &ControlObservation,
) -> Result<Vec<IpNetwork>, ControlStep> {
    let routes = &wanted.routes;
    let id = &me.id;
    let node_id: u64 = id.parse().map_err(|_| {
        ControlStep::Fail(PlanFailure::new(
            ControlPlaneError::Conflict {
                reason: format!(
                    "tailscaled Self.ID {id:?} is not a Headscale node id (is the control server Headscale?)"
                ),
            },
            NotReadyReason::IdentityMismatch,
        ))
    })?;
    let a = &obs.approval;
    let model = a.model.ok_or(ControlStep::ObserveRouteModel)?;
    let node = match &a.node {
        NodeLookup::NotRead => return Err(ControlStep::ObserveNode { node_id }),
        NodeLookup::NotFound => {
            return Err(ControlStep::Fail(PlanFailure::new(
                ControlPlaneError::Conflict {
                    reason: format!(
                        "headscale has no node {node_id} (tailscaled Self.ID); is tailscaled logged in to this Headscale?"
                    ),
                },
                NotReadyReason::IdentityMismatch,
            )));
        }
        NodeLookup::Found(n) => n,
    };
    if node.node_key != me.public_key {
        return Err(ControlStep::Fail(PlanFailure::new(
            ControlPlaneError::Conflict {
                reason: format!(
                    "identity mismatch: headscale node {node_id} has nodeKey {} but tailscaled Self.PublicKey is {}; refusing to approve",
                    node.node_key, me.public_key
                ),
            },
            NotReadyReason::IdentityMismatch,
        )));
    }
    match model {
        RouteModel::ApprovedRoutes => {
            if contains_all(&node.approved_routes, routes) {
                return Ok(node.approved_routes.clone());
            }
            if a.approve_routes_answered {
                return Err(fail(ControlPlaneError::NotApproved {
                    routes: missing(&node.approved_routes, routes),
                    reason: "approve_routes answered without the routes".to_string(),
                }));
            }
            // Replace semantics: the node's current approvals plus ours, nothing else.
            Err(ControlStep::ApproveRoutes {
                node_id,
                routes: union(&node.approved_routes, routes),
            })
        }
        RouteModel::RouteRows => {
            if let Some(confirmed) = &a.route_rows_confirmed {
                return Ok(confirmed.clone());
            }
            let rows = a
                .route_rows
                .as_ref()
                .ok_or(ControlStep::ObserveRouteRows { node_id })?;
            let (enable, pending) = rows_to_enable(rows, node_id, routes);
            if !enable.is_empty() {
                return Err(ControlStep::EnableRouteRows {
                    node_id,
                    rows: enable,
                });
            }
            if pending.is_empty() {
                return Err(ControlStep::ConfirmRouteRows { node_id });
            }
            if !obs.deadline_passed {
                return Err(ControlStep::WaitRouteRows { pending });
            }
            Err(ControlStep::Fail(PlanFailure::new(
                ControlPlaneError::NotApproved {
                    routes: pending,
                    reason: format!(
                        "headscale shows no advertised route row for node {node_id} within {:?} (is tailscaled announcing it?)",
                        wanted.approval_timeout
                    ),
                },
                NotReadyReason::NotAdvertised,
            )))
        }
    }
}

/// The Tailscale API approval of this node's device; `Ok` with the device's enabled set once
/// it contains every wanted route. One [`ControlStep::ApproveDevice`] per reconcile (the client
/// posts only when a route is missing), then a wait while the device does not advertise them.
fn device_approval(
    wanted: &Wanted,
    me: &SelfView,
    obs: &ControlObservation,
) -> Result<Vec<IpNetwork>, ControlStep> {
    let routes = &wanted.routes;
    if me.public_key.is_empty() {
        return Err(fail(ControlPlaneError::NotReady {
            reason: "tailscaled Self has no PublicKey (node key): cannot find its device in the Tailscale API".to_string(),
        }));
    }
    match &obs.approval.device {
        DeviceView::NotAsked => Err(ControlStep::ApproveDevice {
            node_key: me.public_key.clone(),
            stable_id: me.id.clone(),
            routes: routes.clone(),
        }),
        DeviceView::Enabled(enabled) if contains_all(enabled, routes) => Ok(enabled.clone()),
        DeviceView::Enabled(enabled) => Err(ControlStep::Fail(PlanFailure::new(
            ControlPlaneError::NotApproved {
                routes: missing(enabled, routes),
                reason: "the Tailscale API answered the route update without them".to_string(),
            },
            NotReadyReason::NotApproved,
        ))),
        DeviceView::NotAdvertised(pending) if !obs.deadline_passed => {
            Err(ControlStep::WaitDevice {
                pending: pending.clone(),
            })
        }
        DeviceView::NotAdvertised(pending) => Err(ControlStep::Fail(PlanFailure::new(
            ControlPlaneError::NotApproved {
                routes: pending.clone(),
                reason: format!(
                    "not approved through the Tailscale API after {:?}: device {} ({}) does not advertise them there (has tailscaled announced its AdvertiseRoutes to the control server?)",
                    wanted.approval_timeout, me.id, me.public_key
                ),
            },
            NotReadyReason::NotApproved,
        ))),
        DeviceView::NotFound { reason } | DeviceView::Mismatch { reason } => {
            Err(ControlStep::Fail(PlanFailure::new(
                ControlPlaneError::Conflict {
                    reason: format!("tailscale API: {reason}"),
                },
                NotReadyReason::IdentityMismatch,
            )))
        }
    }
}

/// ≤ 0.25: for each wanted prefix, this node's first row (or one naming no node): advertised
/// and enabled → done; advertised only → to enable; none or not advertised → pending.
fn rows_to_enable(
    rows: &[RouteRowView],
    node_id: u64,
    routes: &[IpNetwork],
) -> (Vec<(u64, IpNetwork)>, Vec<IpNetwork>) {
    let mut enable = Vec::new();
    let mut pending = Vec::new();
    for p in routes {
        let row = rows
            .iter()
            .find(|r| r.prefix.as_ref() == Some(p) && r.node_id.is_none_or(|n| n == node_id));
        match row {
            Some(r) if r.advertised && r.enabled => {}
            Some(r) if r.advertised => enable.push((r.id, *p)),
            _ => pending.push(*p),
        }
    }
    (enable, pending)
}

/// The failure when the routes are not primary by the deadline: approved for this node →
/// `not-primary`; not approved → `not-approved`; autoApprovers (approvals invisible) →
/// `not-approved` explaining the policy.
fn not_primary(
    wanted: &Wanted,
    me: &SelfView,
    approved: Option<Vec<IpNetwork>>,
    miss: Vec<IpNetwork>,
) -> PlanFailure {
    let t = wanted.approval_timeout;
    let id = &me.id;
    let approver = match wanted.approval {
        ApprovalPath::TailscaleApi => "the Tailscale API",
        _ => "headscale",
    };
    match approved {
        Some(a) if contains_all(&a, &miss) => PlanFailure::new(
            ControlPlaneError::NotApproved {
                routes: miss,
                reason: format!(
                    "approved for node {id} but not primary after {t:?}: another node may serve the same prefix, or tailscaled has not received the update"
                ),
            },
            NotReadyReason::NotPrimary,
        ),
        Some(_) => PlanFailure::new(
            ControlPlaneError::NotApproved {
                routes: miss,
                reason: format!("not approved by {approver} after {t:?}"),
            },
            NotReadyReason::NotApproved,
        ),
        None => {
            let reason = format!(
                "advertised but not approved after {t:?}: approval = auto-approvers needs a Headscale policy whose autoApprovers.routes has a prefix containing {} for this node's user or tag",
                display(&miss)
            );
            PlanFailure::new(
                ControlPlaneError::NotApproved {
                    routes: miss,
                    reason,
                },
                NotReadyReason::NotApproved,
            )
        }
    }
}
