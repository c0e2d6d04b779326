//! TailnetBackend (host mode) against FakeTailscaled + FakeHeadscale: reconcile from several
//! starting states, approval scoped to this node id, withdraw, autoApprovers, faults.
//! Every Headscale exchange is validated against the OpenAPI spec of its generation.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_spec_valid, fast_backoff, net};
use headcni_core::control::{ControlPlaneBackend, ControlPlaneError, NotReadyReason, Readiness};
use headcni_headscale::backend::{ApprovalMode, BackendOptions, TailnetBackend};
use headcni_headscale::headscale::{HeadscaleClient, HeadscaleConfig};
use headcni_headscale::localapi::{LocalApiClient, OptBool, Prefs};
use headcni_headscale::secret::Secret;
use headcni_testkit::{
    FakeApiVersion, FakeHeadscale, FakeHeadscaleOptions, FakeTailscaled, Fault, default_prefs,
    random_node_key,
};
use ipnetwork::IpNetwork;

const POD: &str = "10.244.1.0/24";

struct Env {
    dir: tempfile::TempDir,
    hs: FakeHeadscale,
    ts: FakeTailscaled,
}

fn opts() -> BackendOptions {
    BackendOptions {
        backoff: fast_backoff(),
        approval_timeout: Duration::from_secs(3),
        poll_interval: Duration::from_millis(20),
        prefs_write_attempts: 5,
        peer_check_interval: Duration::ZERO,
        ..BackendOptions::default()
    }
}

/// A policy whose `autoApprovers.routes` lets user "ops" (the fake tailscaled's node owner)
/// approve `auto`, written in the form the policy generation of `version` needs.
fn auto_policy(version: FakeApiVersion, auto: &[IpNetwork]) -> String {
    let opts = FakeHeadscaleOptions {
        version,
        ..Default::default()
    };
    let user = opts.policy_version().user_token("ops");
    let routes: serde_json::Map<String, serde_json::Value> = auto
        .iter()
        .map(|p| (p.to_string(), serde_json::json!([user])))
        .collect();
    serde_json::json!({"autoApprovers": {"routes": routes}}).to_string()
}

async fn env(version: FakeApiVersion, auto: Vec<IpNetwork>, prefs: Prefs) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let hs = FakeHeadscale::start(FakeHeadscaleOptions {
        version,
        policy: (!auto.is_empty()).then(|| auto_policy(version, &auto)),
        ..Default::default()
    })
    .await
    .unwrap();
    let ts = FakeTailscaled::start_logged_in(
        dir.path().join("tailscaled.sock"),
        hs.control(),
        "node-1",
        "ops",
        prefs,
    )
    .await
    .unwrap();
    Env { dir, hs, ts }
}

fn api(hs: &FakeHeadscale) -> ApprovalMode {
    let mut cfg = HeadscaleConfig::new(hs.url(), Some(Secret::new(hs.api_key())));
    cfg.request_timeout = Duration::from_millis(400);
    ApprovalMode::Api(Arc::new(HeadscaleClient::new(cfg).unwrap()))
}

fn backend(e: &Env, approval: ApprovalMode) -> TailnetBackend {
    TailnetBackend::new(LocalApiClient::new(e.ts.socket()), approval, opts())
}

#[tokio::test]
async fn fresh_node_gets_advertised_approved_and_primary() {
    for version in [
        FakeApiVersion::V0_29,
        FakeApiVersion::V0_26,
        FakeApiVersion::V0_25,
    ] {
        let e = env(version, vec![], default_prefs()).await;
        let b = backend(&e, api(&e.hs));
        assert!(!b.status().readiness.is_ready());
        let state = b.ensure_routes(&[net(POD)]).await.unwrap();
        assert_eq!(state.advertised, vec![net(POD)], "{version:?}");
        assert_eq!(state.approved, vec![net(POD)]);
        assert_eq!(state.primary, vec![net(POD)]);
        let p = e.ts.prefs();
        assert!(p.route_all && p.no_snat, "{version:?}");
        assert_eq!(p.no_stateful_filtering, OptBool::True);
        let id = e.ts.node_id().unwrap();
        assert_eq!(e.hs.node(id).unwrap().approved, vec![net(POD)]);
        let s = b.status();
        assert_eq!(s.readiness, Readiness::Ready);
        assert_eq!(s.node_id, Some(id.to_string()));
        assert_eq!(s.node_name.as_deref(), Some("node-1"));
        assert_eq!(s.wanted, vec![net(POD)]);
        assert!(s.observed_at_unix.is_some());
        // idempotent: a second reconcile changes nothing
        let n = e.hs.exchanges().len();
        b.ensure_routes(&[net(POD)]).await.unwrap();
        let writes = e.hs.exchanges()[n..]
            .iter()
            .filter(|x| x.method == "POST")
            .count();
        assert_eq!(
            writes, 0,
            "{version:?}: no approval call when already approved"
        );
        assert_spec_valid(&e.hs);
    }
}

#[tokio::test]
async fn other_routes_kept_and_never_approved_by_us() {
    for version in [FakeApiVersion::V0_29, FakeApiVersion::V0_25] {
        let admin = net("192.168.50.0/24");
        let unapproved = net("172.16.9.0/24");
        let exit4 = net("0.0.0.0/0");
        let exit6 = net("::/0");
        let prefs = Prefs {
            advertise_routes: vec![admin, unapproved, exit4, exit6],
            route_all: false,
            no_snat: false,
            ..default_prefs()
        };
        let e = env(version, vec![], prefs).await;
        let me = e.ts.node_id().unwrap();
        e.hs.set_approved(me, &[admin]);

        // another node advertises the same prefix; it must stay untouched
        let other = e.hs.register_node("node-2", "ops", &random_node_key());
        e.hs.announce_routes(other.id, &[net(POD), net("10.244.2.0/24")]);
        e.hs.set_approved(other.id, &[net("10.244.2.0/24")]);

        let b = backend(&e, api(&e.hs));
        let state = b.ensure_routes(&[net(POD)]).await.unwrap();
        let p = e.ts.prefs();
        assert_eq!(
            p.advertise_routes,
            vec![admin, unapproved, exit4, exit6, net(POD)]
        );
        assert!(p.route_all && p.no_snat, "repaired");
        let mine = e.hs.node(me).unwrap();
        let mut approved = mine.approved.clone();
        approved.sort();
        let mut want = vec![admin, net(POD)];
        want.sort();
        assert_eq!(
            approved, want,
            "{version:?}: only ours added, admin's kept, exit/unapproved not"
        );
        assert!(state.approved.contains(&admin) && !state.approved.contains(&exit4));
        assert_eq!(
            e.hs.node(other.id).unwrap().approved,
            vec![net("10.244.2.0/24")],
            "other node untouched"
        );
        // every write went to our node id only
        for x in e.hs.exchanges().iter().filter(|x| x.method == "POST") {
            match version {
                FakeApiVersion::V0_25 => {
                    assert!(x.path.starts_with("/api/v1/routes/") && x.path.ends_with("/enable"));
                }
                _ => assert_eq!(x.path, format!("/api/v1/node/{me}/approve_routes")),
            }
        }
        if version == FakeApiVersion::V0_29 {
            let sent =
                e.hs.exchanges()
                    .into_iter()
                    .find(|x| x.path.ends_with("/approve_routes"))
                    .unwrap();
            assert_eq!(
                sent.request_json.unwrap(),
                serde_json::json!({"routes": ["192.168.50.0/24", POD]}),
                "the union, nothing else"
            );
        }
        assert_spec_valid(&e.hs);
    }
}

#[tokio::test]
async fn concurrent_prefs_writers_are_merged_not_lost() {
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let b = backend(&e, api(&e.hs));
    // another writer adds a route between our read and our write
    e.ts.inject_concurrent_route_write(vec![net("10.99.0.0/24")]);
    // …and another replaces the list right after our PATCH
    e.ts.inject_overwrite_after_patch(vec![net("192.168.7.0/24")]);
    b.ensure_routes(&[net(POD)]).await.unwrap();
    let routes = e.ts.prefs().advertise_routes;
    assert!(routes.contains(&net(POD)), "{routes:?}");
    assert!(routes.contains(&net("192.168.7.0/24")), "{routes:?}");
    let patches =
        e.ts.requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count();
    assert!(patches >= 2, "re-read and retried: {patches}");
}

#[tokio::test]
async fn withdraw_removes_only_our_route() {
    for version in [FakeApiVersion::V0_29, FakeApiVersion::V0_25] {
        let admin = net("192.168.50.0/24");
        let prefs = Prefs {
            advertise_routes: vec![admin],
            ..default_prefs()
        };
        let e = env(version, vec![], prefs).await;
        let me = e.ts.node_id().unwrap();
        e.hs.set_approved(me, &[admin]);
        let b = backend(&e, api(&e.hs));
        b.ensure_routes(&[net(POD)]).await.unwrap();
        b.withdraw_routes(&[net(POD)]).await.unwrap();
        assert_eq!(e.ts.prefs().advertise_routes, vec![admin]);
        assert!(e.ts.prefs().route_all, "flags left alone");
        assert_eq!(e.hs.node(me).unwrap().approved, vec![admin], "{version:?}");
        assert!(
            e.hs.node(me)
                .unwrap()
                .primary
                .iter()
                .all(|p| *p != net(POD))
        );
        assert!(matches!(
            b.status().readiness,
            Readiness::NotReady {
                reason: NotReadyReason::Withdrawn,
                ..
            }
        ));
        // withdrawing again is a no-op
        b.withdraw_routes(&[net(POD)]).await.unwrap();
        assert_spec_valid(&e.hs);
    }
}

#[tokio::test]
async fn auto_approvers_approve_without_api_key() {
    for version in [FakeApiVersion::V0_29, FakeApiVersion::V0_25] {
        let e = env(version, vec![net("10.244.0.0/16")], default_prefs()).await;
        let b = backend(&e, ApprovalMode::AutoApprovers);
        let state = b.ensure_routes(&[net(POD)]).await.unwrap();
        assert_eq!(state.primary, vec![net(POD)]);
        assert_eq!(state.approved, vec![net(POD)]);
        assert!(
            e.hs.exchanges().is_empty(),
            "no Headscale API call without a key"
        );
        assert!(b.status().readiness.is_ready());
        assert_eq!(b.status().backend, "headscale/auto-approvers");
    }
}

#[tokio::test]
async fn auto_approvers_that_never_approve_give_a_clear_bounded_failure() {
    let e = env(
        FakeApiVersion::V0_29,
        vec![net("10.250.0.0/16")],
        default_prefs(),
    )
    .await;
    let mut o = opts();
    o.approval_timeout = Duration::from_millis(400);
    let b = TailnetBackend::new(
        LocalApiClient::new(e.ts.socket()),
        ApprovalMode::AutoApprovers,
        o,
    );
    let t0 = Instant::now();
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        t0.elapsed()
    );
    assert!(
        matches!(err, ControlPlaneError::NotApproved { ref routes, .. } if routes == &vec![net(POD)])
    );
    assert!(err.is_transient());
    let s = b.status();
    match &s.readiness {
        Readiness::NotReady { reason, detail } => {
            assert_eq!(*reason, NotReadyReason::NotApproved);
            assert!(detail.contains("autoApprovers"), "{detail}");
            assert!(detail.contains(POD), "{detail}");
        }
        r => panic!("unexpected {r:?}"),
    }
    assert_eq!(s.routes.advertised, vec![net(POD)], "advertised anyway");
    assert!(s.routes.primary.is_empty());
    // the node is user-owned: the status says which approver can match it (issue 10, item 2)
    assert!(
        s.notes.iter().any(|n| n.contains("no ACL tag")),
        "{:?}",
        s.notes
    );
    // the policy is fixed later: the next reconcile succeeds
    e.hs.set_policy(&auto_policy(FakeApiVersion::V0_29, &[net("10.244.0.0/16")]))
        .unwrap();
    b.ensure_routes(&[net(POD)]).await.unwrap();
    assert!(b.status().readiness.is_ready());
    assert!(b.status().notes.is_empty(), "{:?}", b.status().notes);
}

#[tokio::test]
async fn faults_are_retried_and_reported() {
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let b = backend(&e, api(&e.hs));
    // transient 500/503/timeouts: retried with backoff, then success
    e.hs.inject(Fault::ServerError, 1);
    e.hs.inject(Fault::Unavailable, 1);
    e.hs.inject(Fault::Delay(Duration::from_millis(800)), 1);
    b.ensure_routes(&[net(POD)]).await.unwrap();
    assert!(b.status().readiness.is_ready());
    assert!(e.hs.exchanges().iter().filter(|x| x.injected).count() >= 2);

    // a revoked API key: refused, not retried forever, reported as such
    b.withdraw_routes(&[net(POD)]).await.ok();
    e.hs.revoke_api_keys();
    let t0 = Instant::now();
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(err, ControlPlaneError::Refused { ref reason, .. } if reason.contains("unauthorized")),
        "{err}"
    );
    assert!(matches!(
        b.status().readiness,
        Readiness::NotReady {
            reason: NotReadyReason::Refused,
            ..
        }
    ));

    // Headscale down for good: Unreachable after the bounded retries
    e.hs.add_api_key(e.hs.api_key());
    e.hs.inject(Fault::ServerError, 1000);
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(
        matches!(err, ControlPlaneError::Unreachable { .. }),
        "{err}"
    );
    assert!(matches!(
        b.status().readiness,
        Readiness::NotReady {
            reason: NotReadyReason::Unreachable,
            ..
        }
    ));
    e.hs.clear_faults();
    b.ensure_routes(&[net(POD)]).await.unwrap();
    assert_spec_valid(&e.hs);
}

#[tokio::test]
async fn tailscaled_states_and_bad_input() {
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let b = backend(&e, api(&e.hs));
    e.ts.set_backend_state("Stopped");
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(matches!(err, ControlPlaneError::NotReady { .. }), "{err}");
    assert!(matches!(
        b.status().readiness,
        Readiness::NotReady {
            reason: NotReadyReason::AgentNotRunning,
            ..
        }
    ));
    e.ts.set_backend_state("Running");
    // unmasked / exit routes refused before any call
    assert!(matches!(
        b.ensure_routes(&[net("10.244.1.7/24")]).await,
        Err(ControlPlaneError::InvalidRoute { .. })
    ));
    assert!(matches!(
        b.ensure_routes(&[net("0.0.0.0/0")]).await,
        Err(ControlPlaneError::InvalidRoute { .. })
    ));
    // tailscaled gone: unreachable, bounded
    let gone = TailnetBackend::new(
        LocalApiClient::new(e.dir.path().join("absent.sock")),
        api(&e.hs),
        opts(),
    );
    let t0 = Instant::now();
    let err = gone.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(err, ControlPlaneError::Unreachable { .. }),
        "{err}"
    );
    // write access denied → refused
    e.ts.set_write_denied(true);
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(matches!(err, ControlPlaneError::Refused { .. }), "{err}");
}

#[tokio::test]
async fn identity_mismatch_blocks_approval() {
    // tailscaled is logged in to one Headscale, the API key belongs to another one where the
    // same node id is a different machine: never approve there.
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let wrong = FakeHeadscale::start(FakeHeadscaleOptions::default())
        .await
        .unwrap();
    let impostor = wrong.register_node("someone-else", "ops", &random_node_key());
    assert_eq!(impostor.id, e.ts.node_id().unwrap());
    let b = backend(&e, api(&wrong));
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(
        matches!(err, ControlPlaneError::Conflict { ref reason, .. } if reason.contains("identity mismatch")),
        "{err}"
    );
    assert!(matches!(
        b.status().readiness,
        Readiness::NotReady {
            reason: NotReadyReason::IdentityMismatch,
            ..
        }
    ));
    assert!(wrong.node(impostor.id).unwrap().approved.is_empty());
    assert!(wrong.exchanges().iter().all(|x| x.method == "GET"));
    assert_spec_valid(&wrong);
}

#[tokio::test]
async fn not_primary_when_another_node_serves_the_prefix() {
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let other = e.hs.register_node("stale-node", "ops", &random_node_key());
    e.hs.announce_routes(other.id, &[net(POD)]);
    e.hs.set_approved(other.id, &[net(POD)]);
    let mut o = opts();
    o.approval_timeout = Duration::from_millis(300);
    let b = TailnetBackend::new(LocalApiClient::new(e.ts.socket()), api(&e.hs), o);
    let err = b.ensure_routes(&[net(POD)]).await.unwrap_err();
    assert!(
        matches!(err, ControlPlaneError::NotApproved { .. }),
        "{err}"
    );
    assert!(matches!(
        b.status().readiness,
        Readiness::NotReady {
            reason: NotReadyReason::NotPrimary,
            ..
        }
    ));
    assert_eq!(
        e.hs.node(other.id).unwrap().approved,
        vec![net(POD)],
        "the other node is not touched"
    );
    // once the stale node goes away, ours becomes primary
    e.hs.set_online(other.id, false);
    b.ensure_routes(&[net(POD)]).await.unwrap();
    assert_spec_valid(&e.hs);
}

#[tokio::test]
async fn peers_pod_cidrs_are_visible() {
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let t2 = FakeTailscaled::start_logged_in(
        e.dir.path().join("n2.sock"),
        e.hs.control(),
        "node-2",
        "ops",
        default_prefs(),
    )
    .await
    .unwrap();
    let b1 = backend(&e, api(&e.hs));
    let b2 = TailnetBackend::new(LocalApiClient::new(t2.socket()), api(&e.hs), opts());
    b1.ensure_routes(&[net(POD)]).await.unwrap();
    b2.ensure_routes(&[net("10.244.2.0/24")]).await.unwrap();
    let peers = b1.peer_routes().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].name, "node-2");
    assert_eq!(peers[0].routes, vec![net("10.244.2.0/24")]);
    assert_eq!(peers[0].id, Some(t2.node_id().unwrap().to_string()));
    let observed = b2.observe(&[net("10.244.2.0/24")]).await;
    assert!(observed.readiness.is_ready(), "{:?}", observed.readiness);
    assert_eq!(observed.peers[0].routes, vec![net(POD)]);
    assert_eq!(observed.routes.approved, vec![net("10.244.2.0/24")]);
    let json = serde_json::to_value(&observed).unwrap();
    assert_eq!(json["readiness"]["state"], "ready");
    assert_spec_valid(&e.hs);
}

/// Issue 10, failure 5: tailscaled 1.62/1.64 (the clients Headscale 0.25–0.27 support) has no
/// `NoStatefulFiltering` pref; requiring it made every reconcile end in "AdvertiseRoutes kept
/// changing under concurrent writers". It is skipped there, and the status says so.
#[tokio::test]
async fn tailscaled_1_64_without_no_stateful_filtering_becomes_ready() {
    for version in [FakeApiVersion::V0_26, FakeApiVersion::V0_25] {
        let e = env(version, vec![], default_prefs()).await;
        e.ts.set_version(headcni_testkit::TailscaledVersion::V1_64);
        let b = backend(&e, api(&e.hs));
        let state = b.ensure_routes(&[net(POD)]).await.unwrap();
        assert_eq!(state.primary, vec![net(POD)], "{version:?}");
        let s = b.status();
        assert_eq!(s.readiness, Readiness::Ready, "{version:?}");
        assert!(
            s.notes.iter().any(|n| n.contains("NoStatefulFiltering")),
            "{:?}",
            s.notes
        );
        // a second reconcile writes nothing (the missing pref is not chased)
        let n = e.ts.requests().len();
        b.ensure_routes(&[net(POD)]).await.unwrap();
        assert!(
            !e.ts.requests()[n..].iter().any(|r| r.method == "PATCH"),
            "{version:?}: no prefs write once in place"
        );
    }
    // a current tailscaled has no such note
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let b = backend(&e, api(&e.hs));
    b.ensure_routes(&[net(POD)]).await.unwrap();
    assert!(b.status().notes.is_empty());
}

/// Issue 10, item 4: node-2's pod route is approved, but the policy's ACL does not let node-1
/// reach it, so node-1's netmap lacks it (Headscale ≥ 0.26 filters each peer's routes by the
/// ACL): node-1's status names node-2 and its route; with an ACL that covers the cluster CIDR
/// the list is empty.
#[tokio::test]
async fn peers_whose_pod_route_the_netmap_lacks_are_reported() {
    let e = env(FakeApiVersion::V0_29, vec![], default_prefs()).await;
    let narrow = r#"{"acls": [{"action": "accept", "src": ["ops@"], "dst": ["ops@:*"]}]}"#;
    e.hs.control().set_policy(narrow).unwrap();
    let t2 = FakeTailscaled::start_logged_in(
        e.dir.path().join("n2.sock"),
        e.hs.control(),
        "node-2",
        "ops",
        default_prefs(),
    )
    .await
    .unwrap();
    let mut o = opts();
    o.cluster_cidrs = vec![net("10.244.0.0/16")];
    let b1 = TailnetBackend::new(LocalApiClient::new(e.ts.socket()), api(&e.hs), o.clone());
    let b2 = TailnetBackend::new(LocalApiClient::new(t2.socket()), api(&e.hs), o);
    b2.ensure_routes(&[net("10.244.2.0/24")]).await.unwrap();
    b1.ensure_routes(&[net(POD)]).await.unwrap();
    let missing = b1.status().missing_peer_routes;
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0].name, "node-2");
    assert_eq!(missing[0].routes, vec![net("10.244.2.0/24")]);
    let json = serde_json::to_value(b1.status()).unwrap();
    assert_eq!(json["missing_peer_routes"][0]["routes"][0], "10.244.2.0/24");

    let wide = r#"{"acls": [{"action": "accept", "src": ["ops@", "10.244.0.0/16"], "dst": ["ops@:*", "10.244.0.0/16:*"]}]}"#;
    e.hs.control().set_policy(wide).unwrap();
    b1.ensure_routes(&[net(POD)]).await.unwrap();
    assert!(
        b1.status().missing_peer_routes.is_empty(),
        "{:?}",
        b1.status().missing_peer_routes
    );
}
