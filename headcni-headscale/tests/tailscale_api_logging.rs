//! The Tailscale OAuth client secret and access tokens never appear in logs. Alone in its own
//! test binary, like `secret_logging.rs`: tracing's per-callsite interest cache is
//! process-wide, so a thread-scoped subscriber only sees everything when no other test runs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use headcni_headscale::secret::Secret;
use headcni_headscale::tailscale_api::{
    NodeRef, OAuthCredentials, TailscaleApi, TailscaleApiConfig,
};
use headcni_testkit::random_node_key;
use headcni_testkit::tailscale_api::{FakeTailscaleApi, FakeTailscaleApiOptions};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn client_secret_and_tokens_never_in_logs() {
    let api = FakeTailscaleApi::start(FakeTailscaleApiOptions::default())
        .await
        .unwrap();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

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

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
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
