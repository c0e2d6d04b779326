//! One test per decision of the control-plane plan (no I/O, no runtime, no fakes). The
//! observations are what a driver would have read from tailscaled and Headscale.

use std::time::Duration;

use ipnetwork::IpNetwork;

use super::*;
use crate::control::{ControlPlaneError, NotReadyReason, Readiness, RouteState};

const POD: &str = "10.244.1.0/24";
const ADMIN: &str = "192.168.50.0/24";
const ME: u64 = 7;
const KEY: &str = "nodekey:aa";

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

fn api() -> Wanted {
    wanted(ApprovalPath::Api)
}

fn auto() -> Wanted {
    wanted(ApprovalPath::AutoApprovers)
}

fn running(id: &str) -> AgentView {
    AgentView {
        version: "1.102.3-t0".into(),
        backend_state: "Running".into(),
        self_node: Some(SelfView {
            id: id.into(),
            public_key: KEY.into(),
            host_name: "node-1".into(),
            primary_routes: vec![],
            tags: vec![],
        }),
    }
}

fn prefs_in_place(advertise: &[&str]) -> PrefsView {
    PrefsView {
        advertise_routes: advertise.iter().map(|s| n(s)).collect(),
        route_all: true,
        no_snat: true,
        no_stateful_filtering: true,
        no_stateful_filtering_unsupported: false,
    }
}

/// Status read, prefs in place (POD advertised).
fn advertised() -> ControlObservation {
    ControlObservation {
        agent: Some(running(&ME.to_string())),
        prefs: Some(prefs_in_place(&[POD])),
        ..Default::default()
    }
}

fn node(approved: &[&str]) -> NodeLookup {
    NodeLookup::Found(NodeView {
        id: ME,
        node_key: KEY.into(),
        approved_routes: approved.iter().map(|s| n(s)).collect(),
    })
}

/// Advertised, Headscale ≥ 0.26 node read with `approved`.
fn v26(approved: &[&str]) -> ControlObservation {
    let mut o = advertised();
    o.approval.model = Some(RouteModel::ApprovedRoutes);
    o.approval.node = node(approved);
    o
}

fn row(id: u64, prefix: &str, advertised: bool, enabled: bool, owner: Option<u64>) -> RouteRowView {
    RouteRowView {
        id,
        prefix: Some(n(prefix)),
        advertised,
        enabled,
        node_id: owner,
    }
}

/// Advertised, Headscale ≤ 0.25 node read, with `rows`.
fn v25(rows: Option<Vec<RouteRowView>>) -> ControlObservation {
    let mut o = advertised();
    o.approval.model = Some(RouteModel::RouteRows);
    o.approval.node = node(&[]);
    o.approval.route_rows = rows;
    o
}

fn failure(step: ControlStep) -> PlanFailure {
    match step {
        ControlStep::Fail(f) => f,
        s => panic!("expected a failure, got {s:?}"),
    }
}

// ---- advertising (LocalAPI prefs) ----

#[test]
fn first_step_reads_tailscaled_status() {
    assert_eq!(
        next_step(&api(), &ControlObservation::default()),
        ControlStep::ObserveAgent
    );
}

#[test]
fn prefs_are_read_once_tailscaled_runs() {
    let o = ControlObservation {
        agent: Some(running("7")),
        ..Default::default()
    };
    assert_eq!(next_step(&api(), &o), ControlStep::ObservePrefs);
}

#[test]
fn advertise_keeps_other_routes_including_exit_routes_and_sets_flags() {
    let mut o = advertised();
    o.prefs = Some(PrefsView {
        advertise_routes: vec![n(ADMIN), n("172.16.9.0/24"), n("0.0.0.0/0"), n("::/0")],
        ..Default::default()
    });
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::PatchPrefs(PrefsPatch {
            advertise_routes: Some(vec![
                n(ADMIN),
                n("172.16.9.0/24"),
                n("0.0.0.0/0"),
                n("::/0"),
                n(POD)
            ]),
            route_all: Some(true),
            no_snat: Some(true),
            no_stateful_filtering: Some(true),
        })
    );
}

#[test]
fn nothing_to_patch_when_prefs_in_place() {
    assert!(prefs_patch_add(&prefs_in_place(&[ADMIN, POD]), &[n(POD)]).is_empty());
    // the plan moves on to the approval (API) or the primary wait (autoApprovers)
    assert_eq!(
        next_step(&api(), &advertised()),
        ControlStep::ObserveRouteModel
    );
    assert_eq!(
        next_step(&auto(), &advertised()),
        ControlStep::ObservePrimary
    );
}

#[test]
fn prefs_drift_repairs_only_the_flipped_flags() {
    let mut o = advertised();
    o.prefs = Some(PrefsView {
        route_all: false,
        no_snat: false,
        no_stateful_filtering: false,
        ..prefs_in_place(&[POD])
    });
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::PatchPrefs(PrefsPatch {
            advertise_routes: None,
            route_all: Some(true),
            no_snat: Some(true),
            no_stateful_filtering: Some(true),
        })
    );
}

#[test]
fn prefs_drift_removed_route_is_re_advertised() {
    let mut o = advertised();
    o.prefs = Some(prefs_in_place(&[ADMIN]));
    let ControlStep::PatchPrefs(p) = next_step(&api(), &o) else {
        panic!("expected a prefs patch");
    };
    assert_eq!(p.advertise_routes, Some(vec![n(ADMIN), n(POD)]));
    assert_eq!((p.route_all, p.no_snat), (None, None));
}

#[test]
fn prefs_conflict_after_attempts_is_not_advertised() {
    let f = prefs_conflict(5);
    assert_eq!(f.reason, NotReadyReason::NotAdvertised);
    assert!(
        matches!(f.error, ControlPlaneError::Conflict { ref reason } if reason.contains("gave up after 5 read-modify-write cycles"))
    );
}

// ---- invalid input and tailscaled state ----

#[test]
fn invalid_route_with_host_bits_is_refused_before_any_read() {
    let mut w = api();
    w.routes = vec![n("10.244.1.7/24")];
    let f = failure(next_step(&w, &ControlObservation::default()));
    assert!(matches!(f.error, ControlPlaneError::InvalidRoute { .. }));
    assert_eq!(f.reason, NotReadyReason::Refused);
    assert!(matches!(
        failure(next_withdraw_step(&w, &ControlObservation::default())).error,
        ControlPlaneError::InvalidRoute { .. }
    ));
}

#[test]
fn exit_routes_are_refused() {
    for exit in ["0.0.0.0/0", "::/0"] {
        let mut w = api();
        w.routes = vec![n(exit)];
        let f = failure(next_step(&w, &ControlObservation::default()));
        assert!(
            matches!(f.error, ControlPlaneError::InvalidRoute { ref reason, .. } if reason.contains("exit")),
            "{exit}"
        );
    }
}

#[test]
fn no_pod_cidr_is_not_ready() {
    let mut w = api();
    w.routes.clear();
    let f = failure(next_step(&w, &ControlObservation::default()));
    assert_eq!(
        f.error,
        ControlPlaneError::NotReady {
            reason: "no pod CIDR to advertise".into()
        }
    );
    assert_eq!(f.reason, NotReadyReason::AgentNotRunning);
}

#[test]
fn agent_not_running_fails_before_prefs() {
    let o = ControlObservation {
        agent: Some(AgentView {
            backend_state: "Stopped".into(),
            ..running("7")
        }),
        ..Default::default()
    };
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::AgentNotRunning);
    assert!(
        matches!(f.error, ControlPlaneError::NotReady { ref reason } if reason.contains("\"Stopped\"")),
        "{:?}",
        f.error
    );
}

#[test]
fn no_self_node_is_agent_not_running() {
    for agent in [
        AgentView {
            backend_state: "Running".into(),
            self_node: None,
            ..AgentView::default()
        },
        running(""),
    ] {
        let o = ControlObservation {
            agent: Some(agent),
            ..Default::default()
        };
        let f = failure(next_step(&api(), &o));
        assert_eq!(f.reason, NotReadyReason::AgentNotRunning);
        assert_eq!(
            f.error,
            ControlPlaneError::NotReady {
                reason: "tailscaled status has no Self node".into()
            }
        );
    }
}

// ---- identity (API approval) ----

#[test]
fn identity_mismatch_when_self_id_is_not_a_headscale_id() {
    let mut o = advertised();
    o.agent = Some(running("nTSC2abcd"));
    // the prefs are written first: the check comes with the approval
    let mut before = o.clone();
    before.prefs = None;
    assert_eq!(next_step(&api(), &before), ControlStep::ObservePrefs);
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::IdentityMismatch);
    assert!(
        matches!(f.error, ControlPlaneError::Conflict { ref reason } if reason.contains("not a Headscale node id"))
    );
    // autoApprovers never looks at the id
    assert_eq!(next_step(&auto(), &o), ControlStep::ObservePrimary);
}

#[test]
fn identity_mismatch_when_headscale_has_no_such_node() {
    let mut o = v26(&[]);
    o.approval.node = NodeLookup::NotFound;
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::IdentityMismatch);
    assert!(
        matches!(f.error, ControlPlaneError::Conflict { ref reason } if reason.contains("headscale has no node 7"))
    );
}

#[test]
fn identity_mismatch_when_node_key_differs_never_approves() {
    for model in [RouteModel::ApprovedRoutes, RouteModel::RouteRows] {
        let mut o = v26(&[]);
        o.approval.model = Some(model);
        o.approval.node = NodeLookup::Found(NodeView {
            id: ME,
            node_key: "nodekey:someone-else".into(),
            approved_routes: vec![],
        });
        let f = failure(next_step(&api(), &o));
        assert_eq!(f.reason, NotReadyReason::IdentityMismatch, "{model:?}");
        assert!(
            matches!(f.error, ControlPlaneError::Conflict { ref reason } if reason.contains("identity mismatch") && reason.contains("refusing to approve"))
        );
    }
}

#[test]
fn route_model_is_detected_before_the_node_is_read() {
    let o = advertised();
    assert_eq!(next_step(&api(), &o), ControlStep::ObserveRouteModel);
    let mut o = o;
    o.approval.model = Some(RouteModel::ApprovedRoutes);
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::ObserveNode { node_id: ME }
    );
}

// ---- approval ≥ 0.26 ----

#[test]
fn approve_sends_current_approvals_union_ours_for_this_node() {
    assert_eq!(
        next_step(&api(), &v26(&[ADMIN])),
        ControlStep::ApproveRoutes {
            node_id: ME,
            routes: vec![n(ADMIN), n(POD)]
        }
    );
}

#[test]
fn already_approved_makes_no_approve_call() {
    assert_eq!(next_step(&api(), &v26(&[POD])), ControlStep::ObservePrimary);
}

#[test]
fn approve_answer_with_the_routes_moves_on() {
    let mut o = v26(&[ADMIN]);
    o.record_approve_routes_answer(vec![n(ADMIN), n(POD)]);
    assert_eq!(next_step(&api(), &o), ControlStep::ObservePrimary);
}

#[test]
fn approve_answer_without_the_routes_is_not_approved_and_not_resent() {
    let mut o = v26(&[ADMIN]);
    o.record_approve_routes_answer(vec![n(ADMIN)]);
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::NotApproved);
    assert_eq!(
        f.error,
        ControlPlaneError::NotApproved {
            routes: vec![n(POD)],
            reason: "approve_routes answered without the routes".into()
        }
    );
}

// ---- approval ≤ 0.25 route rows ----

#[test]
fn rows_are_read_for_this_node() {
    assert_eq!(
        next_step(&api(), &v25(None)),
        ControlStep::ObserveRouteRows { node_id: ME }
    );
}

#[test]
fn rows_wait_for_the_advertised_row_to_appear() {
    // no row yet, and a row that is not (yet) advertised
    for rows in [vec![], vec![row(3, POD, false, false, Some(ME))]] {
        assert_eq!(
            next_step(&api(), &v25(Some(rows))),
            ControlStep::WaitRouteRows {
                pending: vec![n(POD)]
            }
        );
    }
}

#[test]
fn rows_missing_at_the_deadline_are_not_advertised() {
    let mut o = v25(Some(vec![]));
    o.deadline_passed = true;
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::NotAdvertised);
    assert!(
        matches!(f.error, ControlPlaneError::NotApproved { ref routes, ref reason } if routes == &vec![n(POD)] && reason.contains("no advertised route row for node 7"))
    );
}

#[test]
fn rows_enable_only_this_nodes_row_of_our_prefix() {
    let rows = vec![
        row(1, POD, true, false, Some(99)),   // another node, same prefix
        row(2, ADMIN, true, false, Some(ME)), // ours, not HeadCNI's prefix
        row(3, POD, true, false, Some(ME)),   // this one
        row(4, "10.244.2.0/24", true, false, Some(99)),
    ];
    assert_eq!(
        next_step(&api(), &v25(Some(rows))),
        ControlStep::EnableRouteRows {
            node_id: ME,
            rows: vec![(3, n(POD))]
        }
    );
}

#[test]
fn rows_naming_no_node_count_as_this_nodes() {
    let rows = vec![row(5, POD, true, false, None)];
    assert_eq!(
        next_step(&api(), &v25(Some(rows))),
        ControlStep::EnableRouteRows {
            node_id: ME,
            rows: vec![(5, n(POD))]
        }
    );
}

#[test]
fn rows_enabled_are_confirmed_then_reported_approved() {
    let mut o = v25(Some(vec![row(3, POD, true, false, Some(ME))]));
    o.record_rows_enabled(&[3]);
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::ConfirmRouteRows { node_id: ME }
    );
    // already enabled from the start: confirmed too, no enable call
    let already = v25(Some(vec![row(3, POD, true, true, Some(ME))]));
    assert_eq!(
        next_step(&api(), &already),
        ControlStep::ConfirmRouteRows { node_id: ME }
    );
    o.approval.route_rows_confirmed = Some(vec![n(ADMIN), n(POD)]);
    assert_eq!(next_step(&api(), &o), ControlStep::ObservePrimary);
    o.primary = Some(vec![n(POD)]);
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::Ready(RouteState {
            advertised: vec![n(POD)],
            approved: vec![n(ADMIN), n(POD)],
            primary: vec![n(POD)],
        })
    );
}

// ---- primary ----

#[test]
fn primary_reached_is_ready_with_the_nodes_approvals() {
    let mut o = v26(&[ADMIN, POD]);
    o.primary = Some(vec![n(POD)]);
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::Ready(RouteState {
            advertised: vec![n(POD)],
            approved: vec![n(ADMIN), n(POD)],
            primary: vec![n(POD)],
        })
    );
}

#[test]
fn auto_approvers_primary_implies_approved() {
    let mut o = advertised();
    o.primary = Some(vec![n(POD), n("10.9.0.0/24")]);
    let ControlStep::Ready(state) = next_step(&auto(), &o) else {
        panic!("expected ready");
    };
    assert_eq!(state.approved, vec![n(POD)], "only the wanted routes");
    assert_eq!(state.primary, vec![n(POD), n("10.9.0.0/24")]);
}

#[test]
fn not_primary_yet_waits_until_the_deadline() {
    let mut o = v26(&[POD]);
    o.primary = Some(vec![]);
    assert_eq!(
        next_step(&api(), &o),
        ControlStep::WaitPrimary {
            missing: vec![n(POD)]
        }
    );
}

#[test]
fn approved_but_not_primary_is_not_primary() {
    let mut o = v26(&[POD]);
    o.primary = Some(vec![]);
    o.deadline_passed = true;
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::NotPrimary);
    assert!(
        matches!(f.error, ControlPlaneError::NotApproved { ref reason, .. } if reason.contains("approved for node 7 but not primary after 60s"))
    );
}

#[test]
fn not_approved_by_headscale_at_the_deadline_is_not_approved() {
    // ≤ 0.25: the row was enabled, but the confirmed read no longer shows it enabled
    let mut o = v25(Some(vec![row(3, POD, true, true, Some(ME))]));
    o.approval.route_rows_confirmed = Some(vec![]);
    o.primary = Some(vec![]);
    o.deadline_passed = true;
    let f = failure(next_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::NotApproved);
    assert_eq!(
        f.error,
        ControlPlaneError::NotApproved {
            routes: vec![n(POD)],
            reason: "not approved by headscale after 60s".into()
        }
    );
}

#[test]
fn auto_approvers_not_approved_explains_the_policy() {
    let mut o = advertised();
    o.primary = Some(vec![]);
    o.deadline_passed = true;
    let f = failure(next_step(&auto(), &o));
    assert_eq!(f.reason, NotReadyReason::NotApproved);
    let detail = f.error.to_string();
    assert!(detail.contains("autoApprovers.routes"), "{detail}");
    assert!(detail.contains(&format!("containing {POD}")), "{detail}");
    assert!(f.error.is_transient());
}

#[test]
fn partial_routes_report_how_far_the_reconcile_got() {
    // prefs not in place: nothing reported
    let mut o = advertised();
    o.prefs = Some(prefs_in_place(&[]));
    assert_eq!(partial_routes(&api(), &o), RouteState::default());
    // autoApprovers timed out: advertised, nothing approved or primary
    let mut o = advertised();
    o.primary = Some(vec![]);
    assert_eq!(
        partial_routes(&auto(), &o),
        RouteState {
            advertised: vec![n(POD)],
            ..Default::default()
        }
    );
    // approved, primary elsewhere
    let mut o = v26(&[POD]);
    o.primary = Some(vec![]);
    assert_eq!(partial_routes(&api(), &o).approved, vec![n(POD)]);
}

// ---- withdraw ----

#[test]
fn withdraw_removes_only_ours_from_prefs_and_leaves_flags() {
    let o = ControlObservation {
        agent: Some(running("7")),
        prefs: Some(prefs_in_place(&[ADMIN, POD, "0.0.0.0/0"])),
        ..Default::default()
    };
    assert_eq!(
        next_withdraw_step(&api(), &o),
        ControlStep::PatchPrefs(PrefsPatch {
            advertise_routes: Some(vec![n(ADMIN), n("0.0.0.0/0")]),
            ..Default::default()
        })
    );
}

#[test]
fn withdraw_does_not_require_a_running_tailscaled() {
    let o = ControlObservation {
        agent: Some(AgentView::default()),
        prefs: Some(prefs_in_place(&[ADMIN])),
        ..Default::default()
    };
    // not running and no Self: prefs cleaned, nothing to revoke
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::Withdrawn);
    let mut o = o;
    o.prefs = None;
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::ObservePrefs);
}

#[test]
fn withdraw_with_auto_approvers_ends_after_the_prefs() {
    let mut o = v26(&[POD]);
    o.prefs = Some(prefs_in_place(&[ADMIN]));
    assert_eq!(next_withdraw_step(&auto(), &o), ControlStep::Withdrawn);
}

#[test]
fn withdraw_without_a_headscale_node_has_nothing_to_revoke() {
    let mut o = advertised();
    o.prefs = Some(prefs_in_place(&[]));
    assert_eq!(
        next_withdraw_step(&api(), &o),
        ControlStep::ObserveNode { node_id: ME }
    );
    o.approval.node = NodeLookup::NotFound;
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::Withdrawn);
    o.agent = Some(running("not-a-number"));
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::Withdrawn);
}

#[test]
fn withdraw_refuses_on_identity_mismatch() {
    let mut o = v26(&[POD]);
    o.prefs = Some(prefs_in_place(&[]));
    o.approval.node = NodeLookup::Found(NodeView {
        id: ME,
        node_key: "nodekey:other".into(),
        approved_routes: vec![n(POD)],
    });
    let f = failure(next_withdraw_step(&api(), &o));
    assert_eq!(f.reason, NotReadyReason::IdentityMismatch);
    assert!(f.error.to_string().contains("not touching its approvals"));
}

#[test]
fn withdraw_reads_the_node_before_the_route_model() {
    let mut o = advertised();
    o.prefs = Some(prefs_in_place(&[]));
    o.approval.node = node(&[POD]);
    assert_eq!(
        next_withdraw_step(&api(), &o),
        ControlStep::ObserveRouteModel
    );
}

#[test]
fn withdraw_approvals_keep_everything_but_ours() {
    let mut o = v26(&[ADMIN, POD]);
    o.prefs = Some(prefs_in_place(&[ADMIN]));
    assert_eq!(
        next_withdraw_step(&api(), &o),
        ControlStep::ApproveRoutes {
            node_id: ME,
            routes: vec![n(ADMIN)]
        }
    );
    o.record_approve_routes_answer(vec![n(ADMIN)]);
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::Withdrawn);
}

#[test]
fn withdraw_makes_no_call_when_ours_is_not_approved() {
    let mut o = v26(&[ADMIN]);
    o.prefs = Some(prefs_in_place(&[ADMIN]));
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::Withdrawn);
}

#[test]
fn withdraw_rows_disables_only_this_nodes_enabled_rows_of_ours() {
    let mut o = v25(Some(vec![
        row(1, POD, true, true, Some(99)),
        row(2, ADMIN, true, true, Some(ME)),
        row(3, POD, true, true, Some(ME)),
        row(4, POD, false, false, Some(ME)),
    ]));
    o.prefs = Some(prefs_in_place(&[ADMIN]));
    assert_eq!(
        next_withdraw_step(&api(), &o),
        ControlStep::DisableRouteRows { route_ids: vec![3] }
    );
    o.record_rows_disabled(&[3]);
    assert_eq!(next_withdraw_step(&api(), &o), ControlStep::Withdrawn);
}

// ---- readiness of an observation (headcni status) ----

#[test]
fn observed_readiness_by_stage() {
    let mut agent = running("7");
    let prefs = prefs_in_place(&[POD]);
    let routes = [n(POD)];
    assert!(matches!(
        observed_readiness(&routes, &AgentView::default(), Some(&prefs)),
        Readiness::NotReady {
            reason: NotReadyReason::AgentNotRunning,
            ..
        }
    ));
    assert!(matches!(
        observed_readiness(&routes, &agent, None),
        Readiness::NotReady {
            reason: NotReadyReason::NotAdvertised,
            ..
        }
    ));
    match observed_readiness(&routes, &agent, Some(&prefs)) {
        Readiness::NotReady { reason, detail } => {
            assert_eq!(reason, NotReadyReason::NotApproved);
            assert!(detail.starts_with("not primary"), "{detail}");
        }
        r => panic!("{r:?}"),
    }
    if let Some(s) = &mut agent.self_node {
        s.primary_routes = vec![n(POD)];
    }
    assert_eq!(
        observed_readiness(&routes, &agent, Some(&prefs)),
        Readiness::Ready
    );
}

#[test]
fn failure_reasons_follow_the_error_kind() {
    let r = |e: ControlPlaneError| PlanFailure::from(e).reason;
    let (endpoint, reason) = (String::from("e"), String::from("r"));
    assert_eq!(
        r(ControlPlaneError::Unreachable {
            endpoint: endpoint.clone(),
            reason: reason.clone()
        }),
        NotReadyReason::Unreachable
    );
    assert_eq!(
        r(ControlPlaneError::Refused {
            endpoint,
            reason: reason.clone()
        }),
        NotReadyReason::Refused
    );
    assert_eq!(
        r(ControlPlaneError::Conflict { reason }),
        NotReadyReason::NotAdvertised
    );
}

// ---- whole runs against an in-memory model (the driver's loop without I/O) ----

/// Runs the plan to its end, answering each step as a cooperative tailscaled + Headscale
/// would; returns the steps taken.
fn run(wanted: &Wanted, model: RouteModel, mut obs: ControlObservation) -> Vec<ControlStep> {
    let mut steps = Vec::new();
    for _ in 0..50 {
        let step = next_step(wanted, &obs);
        steps.push(step.clone());
        match step {
            ControlStep::ObserveAgent => obs.agent = Some(running("7")),
            ControlStep::ObservePrefs => obs.prefs = Some(PrefsView::default()),
            ControlStep::PatchPrefs(p) => {
                let cur = obs.prefs.get_or_insert_with(PrefsView::default);
                if let Some(r) = p.advertise_routes {
                    cur.advertise_routes = r;
                }
                cur.route_all |= p.route_all.unwrap_or(false);
                cur.no_snat |= p.no_snat.unwrap_or(false);
                cur.no_stateful_filtering |= p.no_stateful_filtering.unwrap_or(false);
            }
            ControlStep::ObserveRouteModel => obs.approval.model = Some(model),
            ControlStep::ObserveNode { .. } => obs.approval.node = node(&[]),
            ControlStep::ApproveRoutes { routes, .. } => obs.record_approve_routes_answer(routes),
            ControlStep::ObserveRouteRows { .. } => {
                obs.approval.route_rows = Some(vec![row(3, POD, true, false, Some(ME))]);
            }
            ControlStep::EnableRouteRows { rows, .. } => {
                let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
                obs.record_rows_enabled(&ids);
            }
            ControlStep::ConfirmRouteRows { .. } => {
                obs.approval.route_rows_confirmed = Some(vec![n(POD)]);
            }
            ControlStep::ObservePrimary => obs.primary = Some(vec![n(POD)]),
            ControlStep::Ready(_) | ControlStep::Fail(_) => return steps,
            s => panic!("unexpected {s:?}"),
        }
    }
    panic!("the plan did not end: {steps:?}");
}

#[test]
fn fresh_node_v0_26_is_advertised_approved_and_primary() {
    let steps = run(
        &api(),
        RouteModel::ApprovedRoutes,
        ControlObservation::default(),
    );
    let kinds: Vec<_> = steps.iter().map(std::mem::discriminant).collect();
    let want = [
        ControlStep::ObserveAgent,
        ControlStep::ObservePrefs,
        ControlStep::PatchPrefs(PrefsPatch::default()),
        ControlStep::ObserveRouteModel,
        ControlStep::ObserveNode { node_id: ME },
        ControlStep::ApproveRoutes {
            node_id: ME,
            routes: vec![],
        },
        ControlStep::ObservePrimary,
        ControlStep::Ready(RouteState::default()),
    ];
    assert_eq!(
        kinds,
        want.iter().map(std::mem::discriminant).collect::<Vec<_>>()
    );
    assert_eq!(
        steps[5],
        ControlStep::ApproveRoutes {
            node_id: ME,
            routes: vec![n(POD)]
        }
    );
}

#[test]
fn fresh_node_v0_25_enables_its_row_then_confirms() {
    let steps = run(&api(), RouteModel::RouteRows, ControlObservation::default());
    assert!(steps.contains(&ControlStep::EnableRouteRows {
        node_id: ME,
        rows: vec![(3, n(POD))]
    }));
    assert!(steps.contains(&ControlStep::ConfirmRouteRows { node_id: ME }));
    assert!(matches!(steps.last(), Some(ControlStep::Ready(s)) if s.approved == vec![n(POD)]));
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s, ControlStep::ApproveRoutes { .. }))
    );
}

#[test]
fn auto_approvers_run_never_touches_headscale() {
    let steps = run(
        &auto(),
        RouteModel::ApprovedRoutes,
        ControlObservation::default(),
    );
    assert!(steps.iter().all(|s| !matches!(
        s,
        ControlStep::ObserveRouteModel
            | ControlStep::ObserveNode { .. }
            | ControlStep::ApproveRoutes { .. }
            | ControlStep::ObserveRouteRows { .. }
            | ControlStep::EnableRouteRows { .. }
    )));
    assert!(matches!(steps.last(), Some(ControlStep::Ready(_))));
}

#[test]
fn no_stateful_filtering_is_required_only_where_tailscaled_has_it() {
    assert!(has_no_stateful_filtering("1.66.0"));
    assert!(has_no_stateful_filtering("1.102.3-t1234abcd-g5678"));
    assert!(has_no_stateful_filtering("2.0.0"));
    assert!(
        has_no_stateful_filtering(""),
        "unknown: assume a current tailscaled"
    );
    assert!(!has_no_stateful_filtering("1.64.2-t1234"));
    assert!(!has_no_stateful_filtering("1.62.1"));
    let mut old = prefs_in_place(&[POD]);
    old.no_stateful_filtering = false;
    assert_eq!(
        prefs_patch_add(&old, &[n(POD)]).no_stateful_filtering,
        Some(true),
        "a current tailscaled gets it set"
    );
    old.no_stateful_filtering_unsupported = true;
    assert!(
        prefs_patch_add(&old, &[n(POD)]).is_empty(),
        "1.62/1.64: nothing to patch, the prefs are in place"
    );
    assert!(stateful_filtering_note("1.64.2").is_some());
    assert!(stateful_filtering_note("1.66.0").is_none());
}
