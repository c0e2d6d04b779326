//! The IPN bus decisions on values: which notifications trigger a pass, and what a pass does.

use std::time::Duration;

use ipnetwork::IpNetwork;

use super::*;
use crate::control::ApprovalCheck;
use crate::control::plan::PrefsView;

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn node(id: i64, primary: &[&str], allowed: &[&str]) -> NodeRoutes {
    NodeRoutes {
        id,
        primary_routes: primary.iter().map(|s| n(s)).collect(),
        allowed_ips: allowed.iter().map(|s| n(s)).collect(),
    }
}

fn prefs(routes: &[&str]) -> PrefsView {
    PrefsView {
        advertise_routes: routes.iter().map(|s| n(s)).collect(),
        route_all: true,
        no_snat: true,
        no_stateful_filtering: true,
        no_stateful_filtering_unsupported: false,
    }
}

/// The first message of a session (`NotifyInitialState | InitialPrefs | InitialNetMap`).
fn initial() -> BusEvent {
    BusEvent {
        state: Some("Running".into()),
        prefs: Some(prefs(&["10.244.1.0/24"])),
        full_netmap: Some((
            Some(node(
                1,
                &["10.244.1.0/24"],
                &["100.64.0.1/32", "10.244.1.0/24"],
            )),
            vec![
                node(2, &["10.244.2.0/24"], &["100.64.0.2/32", "10.244.2.0/24"]),
                node(3, &[], &["100.64.0.3/32"]),
            ],
        )),
        ..Default::default()
    }
}

fn seeded() -> BusView {
    let mut v = BusView::new();
    v.apply(&initial());
    v
}

#[test]
fn the_first_message_of_a_session_triggers_everything_once() {
    let mut v = BusView::new();
    assert_eq!(
        v.apply(&initial()),
        vec![
            BusChange::State,
            BusChange::Prefs,
            BusChange::SelfRoutes,
            BusChange::PeerRoutes
        ]
    );
    assert_eq!(
        v.tracked_peers(),
        1,
        "the peer without routes is not tracked"
    );
    assert!(v.apply(&initial()).is_empty(), "the same again: nothing");
}

#[test]
fn unrelated_notifications_trigger_nothing() {
    let mut v = seeded();
    // An Engine/Health-only notify parses to an empty event.
    assert!(v.apply(&BusEvent::default()).is_empty());
    // A peer's endpoint/online change (v1.100 PeersChanged with the full node): same routes.
    let ev = BusEvent {
        peers_changed: vec![node(
            2,
            &["10.244.2.0/24"],
            &["10.244.2.0/24", "100.64.0.2/32"],
        )],
        ..Default::default()
    };
    assert!(v.apply(&ev).is_empty());
    // A peer without routes comes and goes.
    let ev = BusEvent {
        peers_changed: vec![node(9, &[], &["100.64.0.9/32"])],
        peers_removed: vec![9],
        ..Default::default()
    };
    assert!(v.apply(&ev).is_empty());
    // The same prefs again (a prefs edit of a field HeadCNI does not manage).
    let ev = BusEvent {
        prefs: Some(prefs(&["10.244.1.0/24"])),
        ..Default::default()
    };
    assert!(v.apply(&ev).is_empty());
}

#[test]
fn a_peer_route_appearing_triggers_in_both_netmap_forms() {
    // v1.100+: PeersChanged.
    let mut v = seeded();
    let ev = BusEvent {
        peers_changed: vec![node(
            3,
            &["10.244.3.0/24"],
            &["100.64.0.3/32", "10.244.3.0/24"],
        )],
        ..Default::default()
    };
    assert_eq!(v.apply(&ev), vec![BusChange::PeerRoutes]);
    // Before v1.100: a whole NetMap.
    let mut v = seeded();
    let mut full = initial();
    full.state = None;
    full.prefs = None;
    if let Some((_, peers)) = &mut full.full_netmap {
        peers[1] = node(3, &["10.244.3.0/24"], &["100.64.0.3/32", "10.244.3.0/24"]);
    }
    assert_eq!(v.apply(&full), vec![BusChange::PeerRoutes]);
}

#[test]
fn a_peer_leaving_with_routes_triggers_in_both_forms() {
    let mut v = seeded();
    let ev = BusEvent {
        peers_removed: vec![2],
        ..Default::default()
    };
    assert_eq!(v.apply(&ev), vec![BusChange::PeerRoutes]);
    let mut v = seeded();
    let ev = BusEvent {
        full_netmap: Some((
            Some(node(
                1,
                &["10.244.1.0/24"],
                &["100.64.0.1/32", "10.244.1.0/24"],
            )),
            vec![],
        )),
        ..Default::default()
    };
    assert_eq!(v.apply(&ev), vec![BusChange::PeerRoutes]);
}

#[test]
fn own_route_revoked_or_approved_triggers_self_routes() {
    let mut v = seeded();
    let revoked = BusEvent {
        self_change: Some(node(1, &[], &["100.64.0.1/32"])),
        ..Default::default()
    };
    assert_eq!(v.apply(&revoked), vec![BusChange::SelfRoutes]);
    // Approved again but not primary yet: AllowedIPs alone tell it.
    let approved = BusEvent {
        self_change: Some(node(1, &[], &["100.64.0.1/32", "10.244.1.0/24"])),
        ..Default::default()
    };
    assert_eq!(v.apply(&approved), vec![BusChange::SelfRoutes]);
    // A new address of our own (host prefix) is not a route change.
    let addr = BusEvent {
        self_change: Some(node(
            1,
            &[],
            &["100.64.0.1/32", "fd7a::1/128", "10.244.1.0/24"],
        )),
        ..Default::default()
    };
    assert!(v.apply(&addr).is_empty());
}

#[test]
fn prefs_drift_and_state_changes_trigger() {
    let mut v = seeded();
    let drift = BusEvent {
        prefs: Some(prefs(&[])),
        ..Default::default()
    };
    assert_eq!(v.apply(&drift), vec![BusChange::Prefs]);
    let stopped = BusEvent {
        state: Some("Stopped".into()),
        ..Default::default()
    };
    assert_eq!(v.apply(&stopped), vec![BusChange::State]);
}

#[test]
fn the_peer_map_is_bounded() {
    let mut v = BusView::new();
    let peers: Vec<NodeRoutes> = (0..(MAX_TRACKED_PEERS as i64 + 10))
        .map(|i| NodeRoutes {
            id: i,
            primary_routes: vec![],
            allowed_ips: vec![n("10.0.0.0/24")],
        })
        .collect();
    let ev = BusEvent {
        full_netmap: Some((None, peers)),
        ..Default::default()
    };
    assert_eq!(v.apply(&ev), vec![BusChange::PeerRoutes]);
    assert_eq!(v.tracked_peers(), MAX_TRACKED_PEERS);
    // Overflowed: every full netmap counts as a change (conservative).
    assert_eq!(v.apply(&ev), vec![BusChange::PeerRoutes]);
}

#[test]
fn control_pass_decisions() {
    let base = PassInputs {
        first: false,
        bus_connected: true,
        bus_signalled: false,
        last_ready: true,
        resync_due: false,
    };
    assert_eq!(control_pass(base), ControlPass::Skip, "bus silent, ready");
    let verify = ControlPass::Run(ApprovalCheck::Verify);
    let trust = ControlPass::Run(ApprovalCheck::TrustPrimary);
    assert_eq!(
        control_pass(PassInputs {
            first: true,
            ..base
        }),
        verify
    );
    assert_eq!(
        control_pass(PassInputs {
            resync_due: true,
            ..base
        }),
        verify
    );
    assert_eq!(
        control_pass(PassInputs {
            bus_signalled: true,
            ..base
        }),
        trust
    );
    assert_eq!(
        control_pass(PassInputs {
            bus_connected: false,
            ..base
        }),
        trust,
        "no bus: every poll reads the LocalAPI"
    );
    assert_eq!(
        control_pass(PassInputs {
            last_ready: false,
            ..base
        }),
        trust
    );
}

#[test]
fn jitter_stays_between_base_and_a_fifth_more() {
    let b = Duration::from_secs(300);
    assert_eq!(jittered(b, 0.0), b);
    assert_eq!(jittered(b, 1.0), Duration::from_secs(360));
    assert_eq!(jittered(b, 7.0), Duration::from_secs(360));
    assert_eq!(jittered(b, f64::NAN), b);
    assert_eq!(jittered(b, -1.0), b);
}

#[test]
fn bus_retry_backs_off_then_falls_back() {
    let later = Duration::from_secs(600);
    assert_eq!(bus_retry(true, 1, later), BusRetry::Fallback(later));
    assert_eq!(
        bus_retry(false, 1, later),
        BusRetry::Reconnect(Duration::from_secs(1))
    );
    assert_eq!(
        bus_retry(false, 3, later),
        BusRetry::Reconnect(Duration::from_secs(4))
    );
    assert_eq!(
        bus_retry(false, BUS_FAILURES_BEFORE_FALLBACK, later),
        BusRetry::Fallback(later)
    );
}
