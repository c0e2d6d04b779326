//! The plan with `ControlObservation::trust_primary` (the daemon's passes between two slow
//! resyncs): routes already primary need no control-server read; anything else takes the
//! approval path as before.

use std::time::Duration;

use ipnetwork::IpNetwork;

use super::*;
use crate::control::RouteState;

const POD: &str = "10.244.1.0/24";

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn wanted(approval: ApprovalPath) -> Wanted {
    Wanted {
        routes: vec![n(POD)],
        approval,
        approval_timeout: Duration::from_secs(60),
    }
}

fn obs(primary: &[&str], advertise: &[&str], trust: bool) -> ControlObservation {
    ControlObservation {
        agent: Some(AgentView {
            version: "1.102.3-t0".into(),
            backend_state: "Running".into(),
            self_node: Some(SelfView {
                id: "7".into(),
                public_key: "nodekey:aa".into(),
                host_name: "node-1".into(),
                primary_routes: primary.iter().map(|s| n(s)).collect(),
                tags: vec![],
            }),
        }),
        prefs: Some(PrefsView {
            advertise_routes: advertise.iter().map(|s| n(s)).collect(),
            route_all: true,
            no_snat: true,
            no_stateful_filtering: true,
            no_stateful_filtering_unsupported: false,
        }),
        trust_primary: trust,
        ..Default::default()
    }
}

#[test]
fn primary_routes_are_ready_without_asking_headscale_when_trusted() {
    for approval in [
        ApprovalPath::Api,
        ApprovalPath::AutoApprovers,
        ApprovalPath::TailscaleApi,
    ] {
        let step = next_step(&wanted(approval), &obs(&[POD], &[POD], true));
        assert_eq!(
            step,
            ControlStep::Ready(RouteState {
                advertised: vec![n(POD)],
                approved: vec![n(POD)],
                primary: vec![n(POD)],
            }),
            "{approval:?}"
        );
    }
}

#[test]
fn without_trust_the_approval_is_read_even_when_primary() {
    let step = next_step(&wanted(ApprovalPath::Api), &obs(&[POD], &[POD], false));
    assert_eq!(step, ControlStep::ObserveRouteModel);
}

#[test]
fn trusted_but_not_primary_takes_the_approval_path() {
    let step = next_step(&wanted(ApprovalPath::Api), &obs(&[], &[POD], true));
    assert_eq!(step, ControlStep::ObserveRouteModel);
}

#[test]
fn trusted_primary_still_repairs_prefs_drift_first() {
    // AdvertiseRoutes lost the PodCIDR behind the daemon's back: the prefs come first.
    let step = next_step(&wanted(ApprovalPath::Api), &obs(&[POD], &[], true));
    assert!(matches!(step, ControlStep::PatchPrefs(_)), "{step:?}");
}
