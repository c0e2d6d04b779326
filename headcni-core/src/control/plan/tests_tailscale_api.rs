//! One test per decision of the plan with `approval = "tailscale-api"` (no I/O): one
//! `ApproveDevice` after the prefs, the wait while the device does not advertise the routes,
//! the identity failures, the primary wait, and the one-step withdrawal.

use std::time::Duration;

use ipnetwork::IpNetwork;

use super::*;
use crate::control::{ControlPlaneError, NotReadyReason, RouteState};

const POD: &str = "10.244.1.0/24";
const ADMIN: &str = "192.168.50.0/24";
/// Tailscale SaaS stable ids are not numbers (client-go-v2 `testdata/devices.json`).
const STABLE: &str = "nTESTJ31CNTRL";
const KEY: &str = "nodekey:aa";

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ns(v: &[&str]) -> Vec<IpNetwork> {
    v.iter().map(|s| n(s)).collect()
}

fn wanted() -> Wanted {
    Wanted {
        routes: vec![n(POD)],
        approval: ApprovalPath::TailscaleApi,
        approval_timeout: Duration::from_secs(60),
    }
}

fn running() -> AgentView {
    AgentView {
        version: "1.102.3-t0".into(),
        backend_state: "Running".into(),
        self_node: Some(SelfView {
            id: STABLE.into(),
            public_key: KEY.into(),
            host_name: "node-1".into(),
            primary_routes: vec![],
            tags: vec![],
        }),
    }
}

fn prefs(advertise: &[&str]) -> PrefsView {
    PrefsView {
        advertise_routes: ns(advertise),
        route_all: true,
        no_snat: true,
        no_stateful_filtering: true,
        no_stateful_filtering_unsupported: false,
    }
}

/// Status read, prefs in place, the device as `device`.
fn obs(device: DeviceView) -> ControlObservation {
    let mut o = ControlObservation {
        agent: Some(running()),
        prefs: Some(prefs(&[ADMIN, POD])),
        ..Default::default()
    };
    o.approval.device = device;
    o
}

fn approve_step() -> ControlStep {
    ControlStep::ApproveDevice {
        node_key: KEY.into(),
        stable_id: STABLE.into(),
        routes: vec![n(POD)],
    }
}

fn failure(step: ControlStep) -> PlanFailure {
    match step {
        ControlStep::Fail(f) => f,
        s => panic!("expected a failure, got {s:?}"),
    }
}

// ---- reconcile ----

#[test]
fn tailscale_api_prefs_come_before_the_approval() {
    let mut o = obs(DeviceView::NotAsked);
    o.prefs = Some(prefs(&[ADMIN]));
    let ControlStep::PatchPrefs(p) = next_step(&wanted(), &o) else {
        panic!("expected a prefs patch");
    };
    assert_eq!(p.advertise_routes, Some(ns(&[ADMIN, POD])));
}

#[test]
fn tailscale_api_asks_one_approve_device_by_node_key_and_stable_id() {
    // `Self.ID` is a stable id (not a Headscale node id): no Headscale lookup first.
    let step = next_step(&wanted(), &obs(DeviceView::NotAsked));
    assert_eq!(step, approve_step());
    // the approval wait (the driver's deadline) starts here
    assert!(!step.is_before_approval());
}

#[test]
fn tailscale_api_device_with_routes_enabled_moves_on_to_primary() {
    let o = obs(DeviceView::Enabled(ns(&[ADMIN, POD])));
    assert_eq!(next_step(&wanted(), &o), ControlStep::ObservePrimary);
}

#[test]
fn tailscale_api_ready_reports_the_devices_enabled_set_as_approved() {
    let mut o = obs(DeviceView::Enabled(ns(&[ADMIN, POD])));
    o.primary = Some(ns(&[POD]));
    assert_eq!(
        next_step(&wanted(), &o),
        ControlStep::Ready(RouteState {
            advertised: ns(&[ADMIN, POD]),
            approved: ns(&[ADMIN, POD]),
            primary: ns(&[POD]),
        })
    );
}

#[test]
fn tailscale_api_not_primary_yet_waits() {
    let mut o = obs(DeviceView::Enabled(ns(&[POD])));
    o.primary = Some(vec![]);
    assert_eq!(
        next_step(&wanted(), &o),
        ControlStep::WaitPrimary {
            missing: ns(&[POD])
        }
    );
}

#[test]
fn tailscale_api_enabled_but_not_primary_at_deadline_is_not_primary() {
    let mut o = obs(DeviceView::Enabled(ns(&[POD])));
    o.primary = Some(vec![]);
    o.deadline_passed = true;
    let f = failure(next_step(&wanted(), &o));
    assert_eq!(f.reason, NotReadyReason::NotPrimary);
}

#[test]
fn tailscale_api_device_not_advertising_yet_waits() {
    let o = obs(DeviceView::NotAdvertised(ns(&[POD])));
    assert_eq!(
        next_step(&wanted(), &o),
        ControlStep::WaitDevice {
            pending: ns(&[POD])
        }
    );
}

#[test]
fn tailscale_api_device_not_advertising_at_deadline_is_not_approved_naming_the_api() {
    let mut o = obs(DeviceView::NotAdvertised(ns(&[POD])));
    o.deadline_passed = true;
    let f = failure(next_step(&wanted(), &o));
    assert_eq!(f.reason, NotReadyReason::NotApproved);
    let ControlPlaneError::NotApproved { routes, reason } = &f.error else {
        panic!("{:?}", f.error);
    };
    assert_eq!(routes, &ns(&[POD]));
    assert!(reason.contains("Tailscale API"), "{reason}");
}

#[test]
fn tailscale_api_answer_without_the_routes_is_not_approved() {
    let f = failure(next_step(
        &wanted(),
        &obs(DeviceView::Enabled(ns(&[ADMIN]))),
    ));
    assert_eq!(f.reason, NotReadyReason::NotApproved);
    assert!(f.error.to_string().contains("Tailscale API"), "{}", f.error);
}

#[test]
fn tailscale_api_identity_mismatch_is_identity_mismatch() {
    for device in [
        DeviceView::Mismatch {
            reason: "device n1 has node key nodekey:bb".into(),
        },
        DeviceView::NotFound {
            reason: "no device matches node key nodekey:aa".into(),
        },
    ] {
        let f = failure(next_step(&wanted(), &obs(device.clone())));
        assert_eq!(f.reason, NotReadyReason::IdentityMismatch, "{device:?}");
        assert!(matches!(f.error, ControlPlaneError::Conflict { .. }));
    }
}

#[test]
fn tailscale_api_without_a_node_key_is_not_ready() {
    let mut o = obs(DeviceView::NotAsked);
    if let Some(s) = o.agent.as_mut().and_then(|a| a.self_node.as_mut()) {
        s.public_key.clear();
    }
    let f = failure(next_step(&wanted(), &o));
    assert_eq!(f.reason, NotReadyReason::AgentNotRunning);
}

#[test]
fn tailscale_api_partial_routes_report_the_enabled_set() {
    let o = obs(DeviceView::Enabled(ns(&[POD])));
    assert_eq!(partial_routes(&wanted(), &o).approved, ns(&[POD]));
    assert!(
        partial_routes(&wanted(), &obs(DeviceView::NotAsked))
            .approved
            .is_empty()
    );
}

// ---- withdraw ----

#[test]
fn tailscale_api_withdraw_unadvertises_first() {
    let o = obs(DeviceView::NotAsked);
    let ControlStep::PatchPrefs(p) = next_withdraw_step(&wanted(), &o) else {
        panic!("expected a prefs patch");
    };
    assert_eq!(p.advertise_routes, Some(ns(&[ADMIN])));
}

#[test]
fn tailscale_api_withdraw_is_one_withdraw_device_step() {
    let mut o = obs(DeviceView::NotAsked);
    o.prefs = Some(prefs(&[ADMIN]));
    assert_eq!(
        next_withdraw_step(&wanted(), &o),
        ControlStep::WithdrawDevice {
            node_key: KEY.into(),
            stable_id: STABLE.into(),
            routes: ns(&[POD]),
        }
    );
    o.approval.device = DeviceView::Enabled(ns(&[ADMIN]));
    assert_eq!(next_withdraw_step(&wanted(), &o), ControlStep::Withdrawn);
}

#[test]
fn tailscale_api_withdraw_without_a_device_is_done() {
    let mut o = obs(DeviceView::NotFound {
        reason: "no device".into(),
    });
    o.prefs = Some(prefs(&[ADMIN]));
    assert_eq!(next_withdraw_step(&wanted(), &o), ControlStep::Withdrawn);
    // and without a Self there is nothing to look up
    o.approval.device = DeviceView::NotAsked;
    o.agent = Some(AgentView {
        self_node: None,
        ..running()
    });
    assert_eq!(next_withdraw_step(&wanted(), &o), ControlStep::Withdrawn);
}

#[test]
fn tailscale_api_withdraw_identity_mismatch_is_identity_mismatch() {
    let mut o = obs(DeviceView::Mismatch {
        reason: "device n1 has node key nodekey:bb".into(),
    });
    o.prefs = Some(prefs(&[ADMIN]));
    let f = failure(next_withdraw_step(&wanted(), &o));
    assert_eq!(f.reason, NotReadyReason::IdentityMismatch);
}

#[test]
fn tailscale_api_withdraw_answer_still_enabling_ours_is_refused() {
    let mut o = obs(DeviceView::Enabled(ns(&[ADMIN, POD])));
    o.prefs = Some(prefs(&[ADMIN]));
    let f = failure(next_withdraw_step(&wanted(), &o));
    assert_eq!(f.reason, NotReadyReason::Refused);
}
