//! LocalAPI client ⇄ FakeTailscaled: the real rules (Host, Referer/Origin, MaskedPrefs,
//! lists replaced, start replaces prefs), typed errors, timeouts; daemon-mode login.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_spec_valid, fast_backoff, net};
use headcni_core::control::ControlPlaneError;
use headcni_headscale::daemon::{self, DaemonPrefs};
use headcni_headscale::headscale::{HeadscaleClient, HeadscaleConfig};
use headcni_headscale::localapi::{
    LocalApiClient, LocalApiError, MaskedPrefs, NetfilterMode, OptBool, Prefs, StartOptions,
};
use headcni_headscale::retry::Retryable;
use headcni_headscale::secret::Secret;
use headcni_testkit::{
    FakeApiVersion, FakeHeadscale, FakeHeadscaleOptions, FakeTailscaled, default_prefs,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a raw HTTP/1.1 request (to control every header) and returns (status, body).
async fn raw(socket: &Path, head: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

async fn setup() -> (tempfile::TempDir, FakeHeadscale, FakeTailscaled) {
    let dir = tempfile::tempdir().unwrap();
    let hs = FakeHeadscale::start(FakeHeadscaleOptions::default())
        .await
        .unwrap();
    let ts = FakeTailscaled::start_logged_in(
        dir.path().join("tailscaled.sock"),
        hs.control(),
        "node-1",
        "headcni",
        default_prefs(),
    )
    .await
    .unwrap();
    (dir, hs, ts)
}

#[tokio::test]
async fn host_and_referer_rules() {
    let (_d, _hs, ts) = setup().await;
    let sock = ts.socket();
    let (st, body) = raw(
        sock,
        "GET /localapi/v0/status HTTP/1.1\r\nHost: evil.example",
        "",
    )
    .await;
    assert_eq!(st, 403);
    assert!(body.contains("invalid localapi Host header"), "{body}");
    let (st, _) = raw(
        sock,
        "GET /localapi/v0/status HTTP/1.1\r\nHost: local-tailscaled.sock\r\nReferer: http://x/",
        "",
    )
    .await;
    assert_eq!(st, 403);
    let (st, body) = raw(
        sock,
        "GET /localapi/v0/prefs HTTP/1.1\r\nHost: local-tailscaled.sock\r\nOrigin: http://x",
        "",
    )
    .await;
    assert_eq!(st, 403);
    assert!(body.contains("invalid localapi request"));
    let (st, _) = raw(
        sock,
        "GET /localapi/v0/status HTTP/1.1\r\nHost: local-tailscaled.sock",
        "",
    )
    .await;
    assert_eq!(st, 200);

    // the client sends exactly the accepted Host and never Referer/Origin
    let c = LocalApiClient::new(sock);
    c.status().await.unwrap();
    c.prefs().await.unwrap();
    c.patch_prefs(&MaskedPrefs {
        route_all: Some(true),
        ..Default::default()
    })
    .await
    .unwrap();
    let mine: Vec<_> = ts
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert!(mine.len() >= 4);
    for r in mine.iter().skip(1) {
        assert_eq!(r.host, "local-tailscaled.sock");
        assert!(!r.had_referer_or_origin);
    }
}

#[tokio::test]
async fn masked_prefs_semantics() {
    let (_d, hs, ts) = setup().await;
    let c = LocalApiClient::new(ts.socket());
    let before = c.prefs().await.unwrap();
    assert_eq!(before.netfilter_mode, NetfilterMode::On);
    assert!(before.other.contains_key("ExitNodeID"));

    // an unmasked prefix → 400 {"Error":…}, nothing applied
    let e = c
        .patch_prefs(&MaskedPrefs {
            advertise_routes: Some(vec![net("10.244.1.5/24")]),
            route_all: Some(true),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, LocalApiError::BadRequest { ref message, .. } if message.contains("10.244.1.0/24")),
        "{e}"
    );
    assert!(!e.is_retryable());
    assert_eq!(c.prefs().await.unwrap(), before);

    // fields without <Field>Set are ignored
    let (st, body) = raw(
        ts.socket(),
        "PATCH /localapi/v0/prefs HTTP/1.1\r\nHost: local-tailscaled.sock\r\nContent-Type: application/json",
        r#"{"RouteAll":true,"NoSNAT":true,"NoSNATSet":true}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let p = c.prefs().await.unwrap();
    assert!(
        !p.route_all,
        "RouteAll sent without RouteAllSet must not apply"
    );
    assert!(p.no_snat);

    // lists are replaced, not merged; the answer is the full new prefs
    c.patch_prefs(&MaskedPrefs {
        advertise_routes: Some(vec![net("192.168.50.0/24"), net("10.244.1.0/24")]),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = c
        .patch_prefs(&MaskedPrefs {
            advertise_routes: Some(vec![net("10.244.2.0/24")]),
            no_stateful_filtering: Some(OptBool::True),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.advertise_routes, vec![net("10.244.2.0/24")]);
    assert_eq!(p.no_stateful_filtering, OptBool::True);
    assert!(p.no_snat, "untouched fields survive");
    assert_eq!(p.other, before.other, "unmodelled prefs survive");
    // the node announces what it advertises
    let id = ts.node_id().unwrap();
    assert_eq!(hs.node(id).unwrap().announced, vec![net("10.244.2.0/24")]);

    // the body on the wire: Go names, <Field>Set flags, opt.Bool as JSON bool
    let last = ts
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        last.body.unwrap(),
        json!({"AdvertiseRoutes": ["10.244.2.0/24"], "AdvertiseRoutesSet": true,
               "NoStatefulFiltering": true, "NoStatefulFilteringSet": true})
    );
}

#[tokio::test]
async fn status_with_and_without_peers() {
    let (dir, hs, ts) = setup().await;
    let other = FakeTailscaled::start_logged_in(
        dir.path().join("other.sock"),
        hs.control(),
        "node-2",
        "headcni",
        Prefs {
            advertise_routes: vec![net("10.244.2.0/24")],
            ..default_prefs()
        },
    )
    .await
    .unwrap();
    hs.set_approved(other.node_id().unwrap(), &[net("10.244.2.0/24")]);
    let c = LocalApiClient::new(ts.socket());
    let st = c.status().await.unwrap();
    assert!(st.is_running() && st.have_node_key);
    let me = st.self_.clone().unwrap();
    assert_eq!(me.id, ts.node_id().unwrap().to_string());
    assert_eq!(me.node_id as u64, ts.node_id().unwrap());
    assert_eq!(me.public_key, ts.node_key());
    assert!(me.public_key.starts_with("nodekey:"));
    assert_eq!(st.peer.len(), 1);
    let peer = st.peer.get(&other.node_key()).unwrap();
    assert_eq!(peer.primary_routes, vec![net("10.244.2.0/24")]);
    assert!(
        st.health.iter().any(|h| h.contains("--accept-routes")),
        "RouteAll=false warning: {:?}",
        st.health
    );
    let st = c.status_without_peers().await.unwrap();
    assert!(st.peer.is_empty());
    assert!(
        ts.requests()
            .iter()
            .any(|r| r.path == "/localapi/v0/status?peers=false")
    );
}

#[tokio::test]
async fn start_replaces_all_prefs_and_errors_are_typed() {
    let (_d, _hs, ts) = setup().await;
    let c = LocalApiClient::new(ts.socket());
    c.patch_prefs(&MaskedPrefs {
        route_all: Some(true),
        advertise_routes: Some(vec![net("192.168.50.0/24")]),
        ..Default::default()
    })
    .await
    .unwrap();
    // UpdatePrefs missing fields (raw) → zero values, as Go decodes into a Prefs struct
    let (st, _) = raw(
        ts.socket(),
        "POST /localapi/v0/start HTTP/1.1\r\nHost: local-tailscaled.sock\r\nContent-Type: application/json",
        r#"{"AuthKey":"","UpdatePrefs":{"WantRunning":true,"ControlURL":"http://hs"}}"#,
    )
    .await;
    assert_eq!(st, 204);
    let p = c.prefs().await.unwrap();
    assert!(!p.route_all && p.advertise_routes.is_empty() && !p.corp_dns);
    assert_eq!(
        p.netfilter_mode,
        NetfilterMode::Off,
        "omitted NetfilterMode = 0 = off"
    );
    assert_eq!(p.no_stateful_filtering, OptBool::Unset);
    // …which is why ours sends every field
    let full = daemon::start_options(
        &DaemonPrefs {
            control_url: "http://hs".into(),
            hostname: "node-1".into(),
            routes: vec![net("10.244.1.0/24")],
            advertise_tags: vec![],
            netfilter_mode: NetfilterMode::On,
        },
        None,
    );
    c.start(&full).await.unwrap();
    let p = c.prefs().await.unwrap();
    assert!(p.route_all && p.no_snat && p.want_running && !p.corp_dns);
    assert_eq!(p.netfilter_mode, NetfilterMode::On);
    assert_eq!(p.no_stateful_filtering, OptBool::True);
    assert_eq!(p.advertise_routes, vec![net("10.244.1.0/24")]);

    // 403 for writes by a non-privileged caller
    ts.set_write_denied(true);
    let e = c.logout().await.unwrap_err();
    assert!(matches!(e, LocalApiError::Forbidden { .. }), "{e}");
    ts.set_write_denied(false);

    // timeouts and a missing socket are retryable
    ts.set_delay(Some(Duration::from_millis(300)));
    let e = c
        .clone()
        .with_timeout(Duration::from_millis(50))
        .status()
        .await
        .unwrap_err();
    assert!(
        matches!(e, LocalApiError::Timeout { .. }) && e.is_retryable(),
        "{e}"
    );
    ts.set_delay(None);
    let e = LocalApiClient::new("/nonexistent/tailscaled.sock")
        .status()
        .await
        .unwrap_err();
    assert!(
        matches!(e, LocalApiError::Connect { .. }) && e.is_retryable(),
        "{e}"
    );
    // unknown endpoint
    let (st, _) = raw(
        ts.socket(),
        "GET /localapi/v0/nope HTTP/1.1\r\nHost: local-tailscaled.sock",
        "",
    )
    .await;
    assert_eq!(st, 404);
    // logout works
    c.logout().await.unwrap();
    let st = c.status_without_peers().await.unwrap();
    assert_eq!(st.backend_state, "NeedsLogin");
    assert!(!st.have_node_key);
}

fn body_of<'a>(ts: &'a [headcni_testkit::LocalApiRequest], path: &str) -> &'a Value {
    ts.iter()
        .find(|r| r.path == path)
        .and_then(|r| r.body.as_ref())
        .unwrap()
}

/// A fake Headscale of `version`, a fresh FakeTailscaled logged in to it, an API client and
/// the daemon prefs of `node-N` with `10.244.N.0/24`.
struct DaemonEnv {
    _dir: tempfile::TempDir,
    hs: FakeHeadscale,
    ts: FakeTailscaled,
    la: LocalApiClient,
    api: HeadscaleClient,
    prefs: DaemonPrefs,
}

async fn daemon_env(version: FakeApiVersion, n: u8) -> DaemonEnv {
    let dir = tempfile::tempdir().unwrap();
    let hs = FakeHeadscale::start(FakeHeadscaleOptions {
        version,
        ..Default::default()
    })
    .await
    .unwrap();
    let ts = FakeTailscaled::start(dir.path().join("headcni.sock"), Some(hs.control()))
        .await
        .unwrap();
    let la = LocalApiClient::new(ts.socket());
    let api = HeadscaleClient::new(HeadscaleConfig::new(
        hs.url(),
        Some(Secret::new(hs.api_key())),
    ))
    .unwrap();
    let prefs = DaemonPrefs {
        control_url: hs.url().to_string(),
        hostname: format!("node-{n}"),
        routes: vec![net(&format!("10.244.{n}.0/24"))],
        advertise_tags: vec![],
        netfilter_mode: NetfilterMode::On,
    };
    DaemonEnv {
        _dir: dir,
        hs,
        ts,
        la,
        api,
        prefs,
    }
}

impl DaemonEnv {
    async fn login(
        &self,
        api: bool,
        tags: &[String],
    ) -> Result<daemon::LoginStep, ControlPlaneError> {
        daemon::ensure_logged_in(
            &self.la,
            api.then_some(&self.api),
            &self.prefs,
            "headcni",
            tags,
            Duration::from_secs(2),
            &fast_backoff(),
        )
        .await
    }
}

#[tokio::test]
async fn daemon_login_with_bootstrap_key_both_generations() {
    for version in [FakeApiVersion::V0_29, FakeApiVersion::V0_25] {
        let e = daemon_env(version, 7).await;
        // a key is needed and no API key is configured → refused with a reason
        let err = e.login(false, &[]).await.unwrap_err();
        assert!(matches!(err, ControlPlaneError::Refused { .. }), "{err}");

        let step = e.login(true, &[]).await.unwrap();
        assert_eq!(step, daemon::LoginStep::Start { mint_key: true });
        let st = e.la.status_without_peers().await.unwrap();
        assert!(st.is_running());
        let id = e.ts.node_id().unwrap();
        assert_eq!(st.self_.unwrap().id, id.to_string());
        let node = e.hs.node(id).unwrap();
        assert_eq!(node.name, "node-7");
        assert_eq!(node.user, "headcni");
        assert_eq!(node.announced, vec![net("10.244.7.0/24")]);
        let keys = e.hs.preauth_keys();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].used && !keys[0].reusable && !keys[0].ephemeral && !keys[0].expired);

        let reqs = e.ts.requests();
        let start = body_of(&reqs, "/localapi/v0/start");
        assert!(start["AuthKey"].as_str().is_some_and(|k| !k.is_empty()));
        let up = start["UpdatePrefs"].as_object().unwrap();
        for k in [
            "ControlURL",
            "WantRunning",
            "RouteAll",
            "CorpDNS",
            "AdvertiseRoutes",
            "NoSNAT",
            "NoStatefulFiltering",
            "NetfilterMode",
            "Hostname",
        ] {
            assert!(up.contains_key(k), "start without {k}");
        }
        assert!(
            reqs.iter()
                .any(|r| r.path == "/localapi/v0/login-interactive")
        );

        // running: nothing to do, no new key
        assert_eq!(
            e.login(true, &[]).await.unwrap(),
            daemon::LoginStep::Running
        );
        assert_eq!(e.hs.preauth_keys().len(), 1);
        assert!(daemon::tailscaled_answers(e.ts.socket()).await);
        assert!(!daemon::tailscaled_answers(&e._dir.path().join("absent.sock")).await);
        assert_spec_valid(&e.hs);
    }
}

/// A tailscaled left in `NeedsLogin` by a bad key (the old daemon could not recover from
/// this: it decided from the state file) gets a fresh bootstrap key and logs in; without an
/// API key the answer is a prompt refusal, not a wait.
#[tokio::test]
async fn a_tailscaled_stuck_on_a_bad_key_gets_a_fresh_one() {
    let e = daemon_env(FakeApiVersion::V0_29, 8).await;
    e.la.start(&StartOptions {
        auth_key: Some(Secret::new("not-a-key")),
        update_prefs: default_prefs(),
    })
    .await
    .unwrap();
    e.la.login_interactive().await.unwrap();
    let st = e.la.status_without_peers().await.unwrap();
    assert_eq!(st.backend_state, "NeedsLogin");
    assert!(st.health.iter().any(|h| h.contains("invalid authkey")));
    let t0 = std::time::Instant::now();
    let err = e.login(false, &[]).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "bounded");
    assert!(matches!(err, ControlPlaneError::Refused { .. }), "{err}");
    assert_eq!(
        e.login(true, &[]).await.unwrap(),
        daemon::LoginStep::Start { mint_key: true }
    );
    assert_eq!(e.ts.backend_state(), "Running");
}

/// Issue 10, failure 1: a first bootstrap that fails while Headscale is down is retried by
/// the next reconcile pass, decided from the LocalAPI status (not from a state file that
/// real tailscaled writes at start-up), and succeeds once Headscale is back.
#[tokio::test]
async fn a_bootstrap_that_fails_while_headscale_is_down_succeeds_on_a_later_pass() {
    let e = daemon_env(FakeApiVersion::V0_29, 9).await;
    let tags = vec!["tag:headcni".to_owned()];
    e.hs.control()
        .inject(headcni_testkit::Fault::Unavailable, 1000);
    let err = e.login(true, &tags).await.unwrap_err();
    assert!(
        matches!(err, ControlPlaneError::Unreachable { .. }),
        "{err}"
    );
    assert_eq!(e.ts.backend_state(), "NeedsLogin");
    assert!(e.ts.node_id().is_none());

    e.hs.control().clear_faults();
    let step = e.login(true, &tags).await.unwrap();
    assert_eq!(step, daemon::LoginStep::Start { mint_key: true });
    assert_eq!(e.ts.backend_state(), "Running");
    let keys = e.hs.preauth_keys();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].used);
    // the key carries the configured ACL tags (a tag alias in autoApprovers resolves only
    // tagged nodes, headscale `hscontrol/policy/v2/types.go`)
    let create =
        e.hs.control()
            .exchanges()
            .into_iter()
            .rfind(|x| x.method == "POST" && x.path == "/api/v1/preauthkey" && x.status == 200)
            .unwrap();
    assert_eq!(
        create.request_json.unwrap()["aclTags"],
        json!(["tag:headcni"])
    );

    // the next pass finds it running and does nothing
    assert_eq!(
        e.login(true, &tags).await.unwrap(),
        daemon::LoginStep::Running
    );
    assert_eq!(
        e.hs.preauth_keys().len(),
        1,
        "no key minted for a running node"
    );
}
