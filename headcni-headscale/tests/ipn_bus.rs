//! The LocalAPI client's IPN bus against FakeTailscaled (which serves it as tailscaled
//! v1.102 / v1.64 do, or not at all as tailscaled < 1.34), and the backend's
//! `ApprovalCheck::TrustPrimary`: no Headscale request while the routes are primary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fast_backoff, net};
use headcni_core::control::bus::{BusChange, BusView};
use headcni_core::control::{ApprovalCheck, ControlPlaneBackend};
use headcni_headscale::backend::{ApprovalMode, BackendOptions, TailnetBackend};
use headcni_headscale::headscale::{HeadscaleClient, HeadscaleConfig};
use headcni_headscale::localapi::{IpnBusStream, LocalApiClient, NotifyWatchOpt};
use headcni_headscale::secret::Secret;
use headcni_testkit::{
    FakeHeadscale, FakeHeadscaleOptions, FakeTailscaled, TailscaledVersion, default_prefs,
    random_node_key,
};

const POD: &str = "10.244.1.0/24";
const PEER_POD: &str = "10.244.2.0/24";
/// A bound for each expected message (the fake sends at once; this only stops a hang).
const WITHIN: Duration = Duration::from_secs(10);

async fn env() -> (tempfile::TempDir, FakeHeadscale, FakeTailscaled) {
    let dir = tempfile::tempdir().unwrap();
    let hs = FakeHeadscale::start(FakeHeadscaleOptions::default())
        .await
        .unwrap();
    let mut prefs = default_prefs();
    prefs.advertise_routes = vec![net(POD)];
    let ts = FakeTailscaled::start_logged_in(
        dir.path().join("tailscaled.sock"),
        hs.control(),
        "node-1",
        "ops",
        prefs,
    )
    .await
    .unwrap();
    (dir, hs, ts)
}

/// Reads notifications until one makes `view` report `want`.
async fn until(stream: &mut IpnBusStream, view: &mut BusView, want: BusChange) {
    tokio::time::timeout(WITHIN, async {
        loop {
            let n = stream.next().await.expect("a notification");
            if view.apply(&n.to_bus_event()).contains(&want) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} notification"));
}

async fn follows_prefs_and_peer_routes(version: TailscaledVersion) {
    let (_dir, hs, ts) = env().await;
    ts.set_version(version);
    let client = LocalApiClient::new(ts.socket());
    let mut stream = client.watch_ipn_bus(NotifyWatchOpt::HEADCNI).await.unwrap();
    let first = stream.next().await.unwrap();
    assert_eq!(first.state, Some(6), "{version:?}: Running");
    assert!(first.prefs.is_some() && first.net_map.is_some());
    let mut view = BusView::new();
    view.apply(&first.to_bus_event());

    // A peer's pod route appears in the netmap.
    let peer = hs.register_node("node-2", "ops", &random_node_key());
    hs.announce_routes(peer.id, &[net(PEER_POD)]);
    hs.set_approved(peer.id, &[net(PEER_POD)]);
    until(&mut stream, &mut view, BusChange::PeerRoutes).await;

    // AdvertiseRoutes loses the PodCIDR behind the daemon's back.
    let mut p = ts.prefs();
    p.advertise_routes.clear();
    ts.set_prefs(p);
    until(&mut stream, &mut view, BusChange::Prefs).await;

    // The backend state changes.
    ts.set_backend_state("Stopped");
    until(&mut stream, &mut view, BusChange::State).await;
    assert!(
        ts.requests()
            .iter()
            .any(|r| r.path == "/localapi/v0/watch-ipn-bus?mask=4126" && r.status == 200)
    );
}

#[tokio::test]
async fn the_bus_follows_prefs_state_and_peer_routes_v1_102() {
    follows_prefs_and_peer_routes(TailscaledVersion::V1_102).await;
}

#[tokio::test]
async fn the_bus_follows_prefs_state_and_peer_routes_v1_64_whole_netmaps() {
    follows_prefs_and_peer_routes(TailscaledVersion::V1_64).await;
}

#[tokio::test]
async fn a_tailscaled_without_the_bus_answers_404() {
    let (_dir, _hs, ts) = env().await;
    ts.set_ipn_bus(false);
    let err = LocalApiClient::new(ts.socket())
        .watch_ipn_bus(NotifyWatchOpt::HEADCNI)
        .await
        .unwrap_err();
    assert!(err.is_absent(), "{err}");
}

#[tokio::test]
async fn rate_limit_with_peer_changes_is_refused() {
    let (_dir, _hs, ts) = env().await;
    let err = LocalApiClient::new(ts.socket())
        .watch_ipn_bus(NotifyWatchOpt::HEADCNI | NotifyWatchOpt::RATE_LIMIT)
        .await
        .unwrap_err();
    assert!(!err.is_absent(), "{err}");
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn trusting_primary_asks_headscale_nothing_until_approval_is_needed() {
    let (_dir, hs, ts) = env().await;
    let mut cfg = HeadscaleConfig::new(hs.url(), Some(Secret::new(hs.api_key())));
    cfg.request_timeout = Duration::from_millis(400);
    let approval = ApprovalMode::Api(Arc::new(HeadscaleClient::new(cfg).unwrap()));
    let b = TailnetBackend::new(
        LocalApiClient::new(ts.socket()),
        approval,
        BackendOptions {
            backoff: fast_backoff(),
            approval_timeout: Duration::from_secs(3),
            poll_interval: Duration::from_millis(20),
            peer_check_interval: Duration::from_secs(3600),
            ..BackendOptions::default()
        },
    );
    let routes = [net(POD)];
    b.ensure_routes(&routes).await.unwrap();
    let after_verify = hs.exchanges().len();
    assert!(after_verify > 0, "the verifying pass asks Headscale");
    for _ in 0..5 {
        let s = b
            .ensure_routes_checked(&routes, ApprovalCheck::TrustPrimary)
            .await
            .unwrap();
        assert_eq!(s.primary, vec![net(POD)]);
    }
    assert_eq!(
        hs.exchanges().len(),
        after_verify,
        "routes primary: no Headscale request"
    );
    // The approval is revoked in Headscale: not primary any more, so the trusting pass takes
    // the approval path and approves again.
    let me = ts.node_id().unwrap();
    hs.set_approved(me, &[]);
    let s = b
        .ensure_routes_checked(&routes, ApprovalCheck::TrustPrimary)
        .await
        .unwrap();
    assert_eq!(s.approved, vec![net(POD)]);
    assert!(
        hs.exchanges().len() > after_verify,
        "approval needed: asked"
    );
    assert_eq!(hs.node(me).unwrap().approved, vec![net(POD)]);
}
