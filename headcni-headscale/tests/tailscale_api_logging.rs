//! The Tailscale OAuth client secret and access tokens never appear in logs. Alone in its own
//! test binary, like `secret_logging.rs`: tracing's per-callsite interest cache is
//! process-wide, so a thread-scoped subscriber only sees everything when no other test runs.

#[path = "common/capture.rs"]
mod capture;

use capture::Capture;
use headcni_headscale::secret::Secret;
use headcni_headscale::tailscale_api::{
    NodeRef, OAuthCredentials, TailscaleApi, TailscaleApiConfig,
};
use headcni_testkit::random_node_key;
use headcni_testkit::tailscale_api::{FakeTailscaleApi, FakeTailscaleApiOptions};

#[tokio::test]
async fn client_secret_and_tokens_never_in_logs() {
    let api = FakeTailscaleApi::start(FakeTailscaleApiOptions::default())
        .await
        .unwrap();
    let capture = Capture::default();
    let _guard = capture.install();

    let secret = api.client_secret();
    let mut cfg = TailscaleApiConfig::new(OAuthCredentials::new(
        api.client_id(),
        Secret::new(secret.clone()),
    ));
    cfg.base_url = api.url();
    let c = TailscaleApi::new(cfg.clone()).unwrap();
    tracing::debug!(?cfg, client = ?c, "constructed");
    let key = random_node_key();
    let pod = "10.244.1.0/24".parse().unwrap();
    let d = api.add_device("node-a", &key, &[pod], &[]);
    let node = NodeRef::new(key, d.node_id);
    c.approve(&node, &[pod]).await.unwrap();
    api.revoke_tokens(); // a 401, then a new token
    c.withdraw(&node, &[pod]).await.unwrap();
    let e = c.device_routes("nNOPE").await.unwrap_err();
    tracing::warn!(error = %e, debug = ?e, "expected failure");

    let logs = capture.text();
    assert!(
        logs.contains("tailscale API request") && logs.contains("renewing the access token"),
        "logging was captured: {logs}"
    );
    assert!(logs.contains("<redacted>"));
    assert!(!logs.contains(&secret), "client secret leaked into logs");
    let tokens = api.token_values();
    assert_eq!(tokens.len(), 2);
    for t in tokens {
        assert!(!logs.contains(&t), "access token leaked into logs");
    }
}
