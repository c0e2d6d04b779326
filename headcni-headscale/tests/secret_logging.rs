//! The API key and pre-auth keys never appear in Debug output or logs. Alone in its own test
//! binary: tracing's per-callsite interest cache is process-wide, so a thread-scoped
//! subscriber only sees everything when no other test runs beside it.

#[path = "common/capture.rs"]
mod capture;

use capture::Capture;
use headcni_headscale::headscale::{HeadscaleClient, HeadscaleConfig, PreAuthKeyOptions};
use headcni_headscale::secret::Secret;
use headcni_testkit::{FakeHeadscale, FakeHeadscaleOptions, Fault};

#[tokio::test]
async fn api_key_never_in_debug_or_logs() {
    let hs = FakeHeadscale::start(FakeHeadscaleOptions::default())
        .await
        .unwrap();
    let capture = Capture::default();
    let _guard = capture.install();

    let key = hs.api_key().to_string();
    let cfg = HeadscaleConfig::new(hs.url(), Some(Secret::new(key.clone())));
    let c = HeadscaleClient::new(cfg.clone()).unwrap();
    tracing::debug!(?cfg, client = ?c, "constructed");
    c.detect().await.unwrap();
    let u = c.ensure_user("headcni").await.unwrap();
    let k = c
        .create_preauth_key(&u, &PreAuthKeyOptions::default())
        .await
        .unwrap();
    tracing::info!(key = ?k, "created key");
    hs.inject(Fault::ServerError, 1);
    let e = c.list_nodes(None).await.unwrap_err();
    tracing::warn!(error = %e, debug = ?e, "expected failure");
    let bad = HeadscaleClient::new(HeadscaleConfig::new(
        hs.url(),
        Some(Secret::new(format!("{key}-tampered"))),
    ))
    .unwrap();
    let e = bad.list_nodes(None).await.unwrap_err();
    tracing::warn!(error = %e, debug = ?e, "expected 401");

    let logs = capture.text();
    assert!(
        logs.contains("headscale request"),
        "logging was captured: {logs}"
    );
    assert!(logs.contains("<redacted>"));
    assert!(!logs.contains(&key), "API key leaked into logs");
    assert!(
        !logs.contains(k.key.expose()),
        "pre-auth key leaked into logs"
    );
    for s in [
        format!("{cfg:?}"),
        format!("{c:?}"),
        format!("{e:?}"),
        format!("{e}"),
        format!("{k:?}"),
    ] {
        assert!(!s.contains(&key), "leak in {s}");
    }
}
