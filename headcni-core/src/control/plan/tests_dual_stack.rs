//! The control-plane plan with a dual-stack node: two PodCIDRs (IPv4 and IPv6) are
//! advertised together, approved together on each approval path (Headscale ≥ 0.26
//! `approve_routes`, ≤ 0.25 route rows, the Tailscale API), and the node is ready only when
//! both are primary. One test per decision; no I/O.

use std::time::Duration;

use ipnetwork::IpNetwork;

use super::*;
use crate::control::{ControlPlaneError, NotReadyReason, RouteState};

const POD4: &str = "10.244.1.0/24";
const POD6: &str = "fd00:10:244:1::/64";
const ADMIN: &str = "192.168.50.0/24";
const ME: u64 = 7;
const KEY: &str = "nodekey:aa";
const STABLE: &str = "nTESTJ31CNTRL";

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ns(v: &[&str]) -> Vec<IpNetwork> {
    v.iter().map(|s| n(s)).collect()
}

fn wanted(approval: ApprovalPath) -> Wanted {
    Wanted {
        routes: ns(&[POD4, POD6]),
        approval,
        approval_timeout: Duration::from_secs(60),
    }
}

fn obs(id: &str, advertise: &[&str]) -> ControlObservation {
    ControlObservation {
        agent: Some(AgentView {
            version: "1.102.3-t0".into(),
            backend_state: "Running".into(),
            self_node: Some(SelfView {
                id: id.into(),
                public_key: KEY.into(),
                host_name: "node-1".into(),
                primary_routes: vec![],
                tags: vec![],
            }),
        }),
        prefs: Some(PrefsView {
            advertise_routes: ns(advertise),
            route_all: true,
            no_snat: true,
            no_stateful_filtering: true,
            no_stateful_filtering_unsupported: false,
        }),
        ..Default::default()
    }
}

fn node(approved: &[&str]) -> NodeLookup {
    NodeLookup::Found(NodeView {
        id: ME,
        node_key: KEY.into(),
        approved_routes: ns(approved),
    })
}

fn v26(approved: &[&str]) -> ControlObservation {
    let mut o = obs(&ME.to_string(), &[ADMIN, POD4, POD6]);
    o.approval.model = Some(RouteModel::ApprovedRoutes);
    o.approval.node = node(approved);
    o
}

fn row(id: u64, prefix: &str, advertised: bool, enabled: bool) -> RouteRowView {
    RouteRowView {
        id,
        prefix: Some(n(prefix)),
        advertised,
        enabled,
        node_id: Some(ME),
    }
}

fn v25(rows: Vec<RouteRowView>) -> ControlObservation {
    let mut o = obs(&ME.to_string(), &[POD4, POD6]);
    o.approval.model = Some(RouteModel::RouteRows);
    o.approval.node = node(&[]);
    o.approval.route_rows = Some(rows);
    o
}

#[test]
fn both_pod_cidrs_are_advertised_in_one_patch_other_routes_kept() {
    let w = wanted(ApprovalPath::Api);
    let ControlStep::PatchPrefs(p) = next_step(&w, &obs("7", &[ADMIN])) else {
        panic!("expected a prefs patch");
    };
    assert_eq!(p.advertise_routes, Some(ns(&[ADMIN, POD4, POD6])));
    // Only the IPv6 one missing: it is added, nothing else changes.
    let ControlStep::PatchPrefs(p) = next_step(&w, &obs("7", &[ADMIN, POD4])) else {
        panic!("expected a prefs patch");
    };
    assert_eq!(p.advertise_routes, Some(ns(&[ADMIN, POD4, POD6])));
    assert_eq!(
        next_step(&w, &obs("7", &[POD6, ADMIN, POD4])),
        ControlStep::ObserveRouteModel,
        "both advertised, in any order: nothing to patch"
    );
}

#[test]
fn v026_approves_both_in_one_call_keeping_other_approvals() {
    let w = wanted(ApprovalPath::Api);
    for approved in [&[ADMIN][..], &[ADMIN, POD4][..], &[POD6][..]] {
        let ControlStep::ApproveRoutes { node_id, routes } = next_step(&w, &v26(approved)) else {
            panic!("expected approve_routes for {approved:?}");
        };
        assert_eq!(node_id, ME);
        let mut want: Vec<IpNetwork> = ns(approved);
        for r in [POD4, POD6] {
            if !want.contains(&n(r)) {
                want.push(n(r));
            }
        }
        assert_eq!(routes, want, "{approved:?}");
    }
    assert_eq!(
        next_step(&w, &v26(&[POD4, POD6])),
        ControlStep::ObservePrimary
    );
}

#[test]
fn v026_answer_without_the_ipv6_route_is_not_approved() {
    let w = wanted(ApprovalPath::Api);
    let mut o = v26(&[]);
    o.record_approve_routes_answer(ns(&[POD4]));
    let ControlStep::Fail(f) = next_step(&w, &o) else {
        panic!("expected a failure");
    };
    assert_eq!(f.reason, NotReadyReason::NotApproved);
    assert!(
        matches!(f.error, ControlPlaneError::NotApproved { ref routes, .. } if routes == &ns(&[POD6])),
        "{:?}",
        f.error
    );
}

#[test]
fn v025_enables_both_rows_and_waits_for_a_missing_one() {
    let w = wanted(ApprovalPath::Api);
    assert_eq!(
        next_step(
            &w,
            &v25(vec![row(3, POD4, true, false), row(4, POD6, true, false)])
        ),
        ControlStep::EnableRouteRows {
            node_id: ME,
            rows: vec![(3, n(POD4)), (4, n(POD6))]
        }
    );
    // The IPv6 row is not advertised yet: the IPv4 row is enabled, then the plan waits for
    // the IPv6 one (it does not confirm the node with half its routes).
    let mut o = v25(vec![row(3, POD4, true, false)]);
    assert_eq!(
        next_step(&w, &o),
        ControlStep::EnableRouteRows {
            node_id: ME,
            rows: vec![(3, n(POD4))]
        }
    );
    o.record_rows_enabled(&[3]);
    assert_eq!(
        next_step(&w, &o),
        ControlStep::WaitRouteRows {
            pending: ns(&[POD6])
        }
    );
}

#[test]
fn ready_only_when_both_are_primary() {
    let w = wanted(ApprovalPath::Api);
    let mut o = v26(&[POD4, POD6]);
    o.primary = Some(ns(&[POD4]));
    assert_eq!(
        next_step(&w, &o),
        ControlStep::WaitPrimary {
            missing: ns(&[POD6])
        }
    );
    o.primary = Some(ns(&[POD6, POD4]));
    assert_eq!(
        next_step(&w, &o),
        ControlStep::Ready(RouteState {
            advertised: ns(&[ADMIN, POD4, POD6]),
            approved: ns(&[POD4, POD6]),
            primary: ns(&[POD6, POD4]),
        })
    );
}

#[test]
fn tailscale_api_approves_both_and_waits_for_the_ipv6_advertisement() {
    let w = wanted(ApprovalPath::TailscaleApi);
    let mut o = obs(STABLE, &[POD4, POD6]);
    assert_eq!(
        next_step(&w, &o),
        ControlStep::ApproveDevice {
            node_key: KEY.into(),
            stable_id: STABLE.into(),
            routes: ns(&[POD4, POD6]),
        }
    );
    o.approval.device = DeviceView::NotAdvertised(ns(&[POD6]));
    assert_eq!(
        next_step(&w, &o),
        ControlStep::WaitDevice {
            pending: ns(&[POD6])
        }
    );
}

#[test]
fn withdraw_removes_both() {
    let w = wanted(ApprovalPath::Api);
    let ControlStep::PatchPrefs(p) = next_withdraw_step(&w, &obs("7", &[ADMIN, POD4, POD6])) else {
        panic!("expected a prefs patch");
    };
    assert_eq!(p.advertise_routes, Some(ns(&[ADMIN])));
}
