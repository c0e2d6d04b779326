//! Both clients report every request to a RequestObserver with a templated endpoint label
//! and its outcome (the daemon's `headcni_control_plane_requests_total{endpoint,result}`).

use std::sync::{Arc, Mutex};

use headcni_headscale::{
    HeadscaleClient, HeadscaleConfig, LocalApiClient, RequestObserver, Secret,
};
use headcni_testkit::{FakeHeadscale, FakeHeadscaleOptions, FakeTailscaled};

/// What the observer saw: `(endpoint label, ok)` in order.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

fn recorder() -> (RequestObserver, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        RequestObserver::new(move |e, ok| s.lock().unwrap().push((e.to_owned(), ok))),
        seen,
    )
}

#[tokio::test(flavor = "current_thread")]
async fn clients_report_templated_endpoints_and_outcomes() {
    headcni_headscale::tls::install_ring_provider();
    let hs = FakeHeadscale::start(FakeHeadscaleOptions::default())
        .await
        .unwrap();
    let (obs, seen) = recorder();
    let client = HeadscaleClient::new(HeadscaleConfig::new(
        format!("http://{}", hs.addr()),
        Some(Secret::new(hs.api_key())),
    ))
    .unwrap()
    .with_observer(obs.clone());
    client.list_nodes(None).await.unwrap();
    assert!(client.get_node(4242).await.is_err());

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ts.sock");
    let _ts = FakeTailscaled::start(&sock, None).await.unwrap();
    let la = LocalApiClient::new(&sock).with_observer(obs);
    la.status_without_peers().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&("headscale GET /api/v1/node".to_owned(), true)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("headscale GET /api/v1/node/{id}".to_owned(), false)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("localapi GET /localapi/v0/status".to_owned(), true)),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(e, _)| !e.contains("4242")),
        "ids must not become labels: {seen:?}"
    );
}
