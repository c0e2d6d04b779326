//! Readiness decisions on what tailscaled shows: is it running with a `Self`, and does a
//! read-only observation (for `headcni status`) show the wanted routes advertised and primary.

use ipnetwork::IpNetwork;

use super::routes::{contains_all, missing};
use super::{AgentView, PlanFailure, PrefsView, SelfView};
use crate::control::{ControlPlaneError, NotReadyReason, Readiness};

/// This node's `Self` when tailscaled can manage routes: `BackendState == "Running"` and a
/// `Self` with a non-empty `ID`.
///
/// Errors ([`ControlPlaneError::NotReady`], reason `agent-not-running`): another
/// `BackendState` ("log it in to Headscale"), or no `Self` / an empty `Self.ID`.
pub fn running_self(agent: &AgentView) -> Result<&SelfView, PlanFailure> {
    if !agent.is_running() {
        return Err(PlanFailure::new(
            ControlPlaneError::NotReady {
                reason: format!(
                    "tailscaled BackendState is {:?}, not \"Running\" (log it in to Headscale)",
                    agent.backend_state
                ),
            },
            NotReadyReason::AgentNotRunning,
        ));
    }
    match &agent.self_node {
        Some(s) if !s.id.is_empty() => Ok(s),
        _ => Err(PlanFailure::new(
            ControlPlaneError::NotReady {
                reason: "tailscaled status has no Self node".to_string(),
            },
            NotReadyReason::AgentNotRunning,
        )),
    }
}

/// Readiness of a read-only observation (`headcni status`): `agent-not-running` unless
/// `BackendState == "Running"`, then `not-advertised` unless `AdvertiseRoutes ⊇ wanted`
/// (`prefs` `None` = could not be read = nothing advertised), then `not-approved` ("not
/// primary: …") unless `Self.PrimaryRoutes ⊇ wanted`, else ready. Approvals are not consulted:
/// primary implies approved.
pub fn observed_readiness(
    wanted: &[IpNetwork],
    agent: &AgentView,
    prefs: Option<&PrefsView>,
) -> Readiness {
    let advertised: &[IpNetwork] = prefs.map(|p| p.advertise_routes.as_slice()).unwrap_or(&[]);
    let primary: &[IpNetwork] = agent
        .self_node
        .as_ref()
        .map(|s| s.primary_routes.as_slice())
        .unwrap_or(&[]);
    if !agent.is_running() {
        Readiness::NotReady {
            reason: NotReadyReason::AgentNotRunning,
            detail: format!("tailscaled BackendState is {:?}", agent.backend_state),
        }
    } else if !contains_all(advertised, wanted) {
        Readiness::NotReady {
            reason: NotReadyReason::NotAdvertised,
            detail: format!("not advertised: {:?}", missing(advertised, wanted)),
        }
    } else if !contains_all(primary, wanted) {
        Readiness::NotReady {
            reason: NotReadyReason::NotApproved,
            detail: format!("not primary: {:?}", missing(primary, wanted)),
        }
    } else {
        Readiness::Ready
    }
}
