//! Tailscale API v2 client ⇄ FakeTailscaleApi: approval of exactly the PodCIDR (union with the
//! device's other enabled routes, never an exit route or another advertised route), withdraw,
//! the OAuth token cache, typed errors, the credentials file, and the fake's own strictness.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use headcni_headscale::retry::Retryable;
use headcni_headscale::secret::{Secret, SecretError};
use headcni_headscale::tailscale_api::{
    NodeRef, OAuthCredentials, TailscaleApi, TailscaleApiConfig, TailscaleApiError,
};
use headcni_testkit::random_node_key;
use headcni_testkit::tailscale_api::{FakeTailscaleApi, FakeTailscaleApiOptions};
use ipnetwork::IpNetwork;
use serde_json::json;

const POD: &str = "10.244.1.0/24";
const LAN: &str = "192.168.50.0/24";
const OTHER: &str = "10.99.0.0/24";

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn nets(v: &[&str]) -> Vec<IpNetwork> {
    v.iter().map(|s| n(s)).collect()
}

async fn fake(opts: FakeTailscaleApiOptions) -> FakeTailscaleApi {
    FakeTailscaleApi::start(opts)
        .await
        .expect("fake tailscale API")
}

fn config(api: &FakeTailscaleApi) -> TailscaleApiConfig {
    let creds = OAuthCredentials::new(api.client_id(), Secret::new(api.client_secret()));
    let mut cfg = TailscaleApiConfig::new(creds);
    cfg.base_url = api.url();
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

fn client(api: &FakeTailscaleApi) -> TailscaleApi {
    TailscaleApi::new(config(api)).expect("client")
}

/// A device advertising the PodCIDR, a LAN route, another route and both exit routes, with
/// only the LAN route enabled; plus a second device advertising the same PodCIDR.
fn node_with_routes(api: &FakeTailscaleApi) -> (NodeRef, String) {
    let key = random_node_key();
    let d = api.add_device(
        "node-a",
        &key,
        &nets(&[LAN, OTHER, "0.0.0.0/0", "::/0", POD]),
        &nets(&[LAN]),
    );
    api.add_device("node-b", &random_node_key(), &nets(&[POD]), &[]);
    (NodeRef::new(key, d.node_id.clone()), d.node_id)
}

fn posts(api: &FakeTailscaleApi, device: &str) -> Vec<serde_json::Value> {
    api.requests_to("POST", &format!("/api/v2/device/{device}/routes"))
        .into_iter()
        .map(|r| r.body.expect("JSON body"))
        .collect()
}

#[tokio::test]
async fn approves_exactly_the_pod_cidr_keeping_other_enabled_routes() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let (node, id) = node_with_routes(&api);
    let c = client(&api);
    let enabled = c.approve(&node, &[n(POD)]).await.unwrap();
    assert_eq!(enabled, nets(&[POD, LAN]), "sorted by the server");
    // One POST, carrying the full set: the LAN route kept, ours added, nothing else.
    assert_eq!(posts(&api, &id), vec![json!({"routes": [LAN, POD]})]);
    let dev = api.device(&id).unwrap();
    assert_eq!(dev.enabled, nets(&[POD, LAN]));
    assert!(
        !dev.enabled.iter().any(|r| r.prefix() == 0),
        "exit route enabled"
    );
    assert!(
        !dev.enabled.contains(&n(OTHER)),
        "another advertised route enabled"
    );
    // The other device advertising the same PodCIDR is untouched.
    let other = api
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/routes") && !r.path.contains(&id))
        .count();
    assert_eq!(other, 0);
}

#[tokio::test]
async fn approve_by_node_key_alone_and_by_numeric_id() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let key = random_node_key();
    let d = api.add_device("node-a", &key, &nets(&[POD]), &[]);
    let c = client(&api);
    assert_eq!(
        c.approve(&NodeRef::by_node_key(key), &[n(POD)])
            .await
            .unwrap(),
        nets(&[POD])
    );
    // Headscale's v2 API uses the decimal node id as `nodeId` (and tailscaled's Self.ID).
    assert_eq!(
        c.find_device(&NodeRef::by_stable_id(d.id.clone()))
            .await
            .unwrap()
            .node_key,
        d.node_key
    );
}

#[tokio::test]
async fn no_post_when_already_enabled() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let key = random_node_key();
    let d = api.add_device("node-a", &key, &nets(&[LAN, POD]), &nets(&[POD, LAN]));
    let c = client(&api);
    let node = NodeRef::new(key, d.node_id.clone());
    assert_eq!(
        c.approve(&node, &[n(POD)]).await.unwrap(),
        nets(&[POD, LAN])
    );
    assert!(posts(&api, &d.node_id).is_empty());
    // ...and a second approve after a real change is idempotent too.
    let c2 = client(&api);
    c2.approve(&node, &[n(POD)]).await.unwrap();
    assert!(posts(&api, &d.node_id).is_empty());
}

#[tokio::test]
async fn withdraw_keeps_other_enabled_routes() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let key = random_node_key();
    let d = api.add_device(
        "node-a",
        &key,
        &nets(&[LAN, POD, "0.0.0.0/0", "::/0"]),
        &nets(&[LAN, POD, "0.0.0.0/0", "::/0"]),
    );
    let c = client(&api);
    let node = NodeRef::new(key, d.node_id.clone());
    let after = c.withdraw(&node, &[n(POD)]).await.unwrap();
    assert_eq!(after, nets(&["0.0.0.0/0", LAN, "::/0"]));
    assert_eq!(
        posts(&api, &d.node_id),
        vec![json!({"routes": [LAN, "0.0.0.0/0", "::/0"]})]
    );
    // Nothing of ours left: no second POST.
    c.withdraw(&node, &[n(POD)]).await.unwrap();
    assert_eq!(posts(&api, &d.node_id).len(), 1);
}

#[tokio::test]
async fn exit_and_unmasked_routes_are_refused_before_any_request() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let (node, _) = node_with_routes(&api);
    let c = client(&api);
    for bad in ["0.0.0.0/0", "::/0", "10.244.1.7/24"] {
        let e = c.approve(&node, &[n(bad)]).await.unwrap_err();
        assert!(
            matches!(e, TailscaleApiError::InvalidRoute { .. }),
            "{bad}: {e}"
        );
    }
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn not_advertised_is_a_retryable_typed_error_without_post() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let key = random_node_key();
    let d = api.add_device("node-a", &key, &nets(&[LAN]), &[]);
    let c = client(&api);
    let node = NodeRef::new(key, d.node_id.clone());
    let e = c.approve(&node, &[n(POD)]).await.unwrap_err();
    assert!(
        matches!(&e, TailscaleApiError::NotAdvertised { routes, .. } if routes == &nets(&[POD])),
        "{e}"
    );
    assert!(e.is_retryable());
    assert!(posts(&api, &d.node_id).is_empty());
    // Once tailscaled announces it, the same call succeeds.
    api.set_advertised(&d.node_id, &nets(&[LAN, POD]));
    assert_eq!(c.approve(&node, &[n(POD)]).await.unwrap(), nets(&[POD]));
}

#[tokio::test]
async fn unknown_device_and_identity_mismatch_are_typed_errors() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let (node, id) = node_with_routes(&api);
    let c = client(&api);
    let e = c
        .approve(&NodeRef::new(random_node_key(), "nNOPECNTRL"), &[n(POD)])
        .await
        .unwrap_err();
    assert!(matches!(e, TailscaleApiError::DeviceNotFound { .. }), "{e}");
    assert!(!e.is_retryable());
    let e = c.device_routes("nNOPECNTRL").await.unwrap_err();
    assert!(
        matches!(e, TailscaleApiError::NotFound { ref message, .. } if message == "device not found"),
        "{e}"
    );
    assert!(!e.is_retryable());
    // This node's key with another device's stable id: nothing is changed.
    let other = api.add_device("node-c", &random_node_key(), &nets(&[POD]), &[]);
    let mixed = NodeRef::new(node.node_key.clone().unwrap(), other.node_id.clone());
    let e = c.approve(&mixed, &[n(POD)]).await.unwrap_err();
    assert!(
        matches!(e, TailscaleApiError::IdentityMismatch { .. }),
        "{e}"
    );
    assert!(posts(&api, &id).is_empty() && posts(&api, &other.node_id).is_empty());
}

/// Token reuse and refresh, on tokio's paused clock (the fake's token expiry uses the same
/// clock): the clock is advanced only between operations, never while a request is open.
#[tokio::test]
async fn token_reused_then_refreshed_before_expiry() {
    let api = fake(FakeTailscaleApiOptions {
        token_lifetime: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let (node, _) = node_with_routes(&api);
    let c = client(&api); // refresh margin 60 s
    c.approve(&node, &[n(POD)]).await.unwrap();
    c.list_devices().await.unwrap();
    assert_eq!(api.tokens_minted(), 1, "one token for several requests");
    let skip = |secs| async move {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(secs)).await;
        tokio::time::resume();
    };
    skip(3000).await; // t = 3000 s: 600 s left, reused
    c.list_devices().await.unwrap();
    assert_eq!(api.tokens_minted(), 1);
    skip(560).await; // t = 3560 s: 40 s left < 60 s margin: replaced while still valid
    c.list_devices().await.unwrap();
    assert_eq!(api.tokens_minted(), 2);
    let reqs = api.requests();
    let api_reqs: Vec<_> = reqs
        .iter()
        .filter(|r| !r.path.ends_with("/oauth/token"))
        .collect();
    assert!(
        api_reqs.iter().all(|r| r.token_valid && r.status == 200),
        "{reqs:?}"
    );
    assert_eq!(
        api_reqs.last().unwrap().token,
        Some(1),
        "the new token was used"
    );
    // The token request is form-encoded and asks for the default scopes; recorded without body.
    assert!(
        reqs.iter()
            .filter(|r| r.path.ends_with("/oauth/token"))
            .all(|r| r.body.is_none())
    );
}

#[tokio::test]
async fn expired_token_is_rejected_then_renewed_once() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let (node, _) = node_with_routes(&api);
    let c = client(&api);
    c.list_devices().await.unwrap();
    api.revoke_tokens();
    c.approve(&node, &[n(POD)]).await.unwrap();
    assert_eq!(api.tokens_minted(), 2);
    let statuses: Vec<(u16, Option<usize>)> = api
        .requests()
        .iter()
        .filter(|r| !r.path.ends_with("/oauth/token"))
        .map(|r| (r.status, r.token))
        .collect();
    assert_eq!(statuses[1], (401, Some(0)), "{statuses:?}");
    assert_eq!(statuses[2], (200, Some(1)), "{statuses:?}");
}

#[tokio::test]
async fn bad_credentials_are_a_typed_non_retryable_error() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let mut cfg = config(&api);
    let wrong = format!("{}x", api.client_secret());
    cfg.credentials = OAuthCredentials::new(api.client_id(), Secret::new(wrong.clone()));
    let c = TailscaleApi::new(cfg).unwrap();
    let e = c.list_devices().await.unwrap_err();
    assert!(
        matches!(&e, TailscaleApiError::TokenRejected { status: 401, error, .. } if error == "invalid_client"),
        "{e}"
    );
    assert!(!e.is_retryable());
    assert!(!format!("{e} {e:?}").contains(&wrong));
    assert_eq!(api.tokens_minted(), 0);
    // The wrong client id with the right secret is refused as well.
    let mut cfg = config(&api);
    cfg.credentials = OAuthCredentials::new("kOTHER", Secret::new(api.client_secret()));
    let e = TailscaleApi::new(cfg)
        .unwrap()
        .list_devices()
        .await
        .unwrap_err();
    assert!(
        matches!(e, TailscaleApiError::TokenRejected { status: 401, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn missing_scopes_are_typed_errors() {
    let api = fake(FakeTailscaleApiOptions {
        client_scopes: vec!["devices:core:read".into()],
        ..Default::default()
    })
    .await;
    let (node, id) = node_with_routes(&api);
    // The default token request asks for devices:routes, which this client does not hold.
    let e = client(&api).list_devices().await.unwrap_err();
    assert!(
        matches!(&e, TailscaleApiError::TokenRejected { status: 400, error, .. } if error == "invalid_scope"),
        "{e}"
    );
    assert!(!e.is_retryable());
    // Without a scope parameter the token gets the client's grant: the POST is forbidden.
    let mut cfg = config(&api);
    cfg.scopes.clear();
    let c = TailscaleApi::new(cfg).unwrap();
    let e = c.approve(&node, &[n(POD)]).await.unwrap_err();
    // GET routes needs devices:routes:read, which devices:core:read does not grant.
    assert!(
        matches!(&e, TailscaleApiError::Forbidden { message, .. } if message.contains("devices:routes")),
        "{e}"
    );
    assert!(!e.is_retryable());
    assert!(posts(&api, &id).is_empty());
}

fn write_file(dir: &std::path::Path, text: &str, mode: u32) -> std::path::PathBuf {
    let p = dir.join("tailscale-oauth");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[tokio::test]
async fn credentials_file_0644_refused_0600_works() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "# HeadCNI\nclient_id={}\nclient_secret={}\n",
        api.client_id(),
        api.client_secret()
    );
    let p = write_file(dir.path(), &text, 0o644);
    let e = OAuthCredentials::from_file(&p).unwrap_err();
    assert!(
        matches!(
            e,
            TailscaleApiError::Secret(SecretError::InsecurePermissions { mode: 0o644, .. })
        ),
        "{e}"
    );
    assert!(!format!("{e} {e:?}").contains(&api.client_secret()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let creds = OAuthCredentials::from_file(&p).unwrap();
    let mut cfg = TailscaleApiConfig::new(creds);
    cfg.base_url = api.url();
    TailscaleApi::new(cfg)
        .unwrap()
        .list_devices()
        .await
        .unwrap();
}

#[tokio::test]
async fn secret_never_in_debug_display_or_errors() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let secret = api.client_secret();
    let cfg = config(&api);
    let c = TailscaleApi::new(cfg.clone()).unwrap();
    c.list_devices().await.unwrap();
    let token = api.token_values().remove(0);
    let mut shown = vec![
        format!("{cfg:?}"),
        format!("{c:?}"),
        format!("{:?}", cfg.credentials),
    ];
    // Errors of every kind, from a server that quotes a key in its message.
    api.revoke_tokens();
    let mut bad = config(&api);
    bad.credentials = OAuthCredentials::new(api.client_id(), Secret::new(format!("{secret}-x")));
    let e = TailscaleApi::new(bad)
        .unwrap()
        .list_devices()
        .await
        .unwrap_err();
    shown.push(format!("{e} {e:?}"));
    let e = c.device_routes("nNOPE").await.unwrap_err();
    shown.push(format!("{e} {e:?}"));
    for s in &shown {
        assert!(!s.contains(&secret), "client secret leaked: {s}");
        assert!(!s.contains(&token), "access token leaked: {s}");
    }
    assert!(shown[0].contains("<redacted>"), "{}", shown[0]);
}

// ---- the fake's own strictness (a double must fail where the server fails) ----

async fn raw_token(
    api: &FakeTailscaleApi,
    body: String,
    content_type: &str,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/oauth/token", api.url()))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn form(api: &FakeTailscaleApi) -> String {
    format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        api.client_id(),
        api.client_secret()
    )
}

#[tokio::test]
async fn fake_token_endpoint_is_strict() {
    let api = fake(FakeTailscaleApiOptions::default()).await;
    let (s, v) = raw_token(&api, form(&api), "application/x-www-form-urlencoded").await;
    assert_eq!(s, 200);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    // JSON instead of a form: the form is empty, so the client is missing.
    let as_json = json!({"client_id": api.client_id(), "client_secret": api.client_secret()});
    let (s, v) = raw_token(&api, as_json.to_string(), "application/json").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    let (s, v) = raw_token(
        &api,
        "client_id=%zz".into(),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    let (s, v) = raw_token(
        &api,
        form(&api).replace("client_credentials", "password"),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (s, v) = raw_token(
        &api,
        format!("{}&scope=all", form(&api)),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn fake_api_requires_valid_tokens_and_validates_route_bodies() {
    let api = fake(FakeTailscaleApiOptions {
        token_lifetime: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let key = random_node_key();
    let d = api.add_device("node-a", &key, &nets(&[POD]), &[]);
    let (_, v) = raw_token(&api, form(&api), "application/x-www-form-urlencoded").await;
    let token = v["access_token"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let routes_url = format!("{}/api/v2/device/{}/routes", api.url(), d.node_id);
    let post = |body: String, ct: &'static str, tok: String| {
        http.post(&routes_url)
            .bearer_auth(tok)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    // No token, a made-up token.
    assert_eq!(status(http.get(&routes_url).send().await.unwrap()), 401);
    assert_eq!(
        status(
            http.get(&routes_url)
                .bearer_auth("tskey-made-up")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    for (body, ct, want) in [
        (
            json!({"routes": [POD]}).to_string(),
            "application/json",
            200,
        ),
        (
            json!({"routes": ["10.0.0.0/8"]}).to_string(),
            "application/json",
            400,
        ),
        (
            json!({"routes": ["not-a-prefix"]}).to_string(),
            "application/json",
            400,
        ),
        (
            json!({"routes": ["10.244.1.1/24"]}).to_string(),
            "application/json",
            400,
        ),
        (json!({"routes": null}).to_string(), "application/json", 422),
        (
            json!({"routes": [], "extra": 1}).to_string(),
            "application/json",
            422,
        ),
        (json!({"routes": [1]}).to_string(), "application/json", 422),
        (
            "routes=10.244.1.0/24".to_string(),
            "application/x-www-form-urlencoded",
            415,
        ),
        ("{".to_string(), "application/json", 400),
    ] {
        let r = post(body.clone(), ct, token.clone()).await.unwrap();
        let got = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(got, want, "{body}: {v}");
        if want != 200 {
            assert!(v["message"].is_string() && v["status"] == want, "{v}");
        }
    }
    assert_eq!(api.device(&d.node_id).unwrap().enabled, nets(&[POD]));
    // Unknown device; unknown tailnet.
    let r = http
        .get(format!("{}/api/v2/device/nNOPE/routes", api.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 404);
    let r = http
        .get(format!("{}/api/v2/tailnet/other.org/devices", api.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 404);
    // Route fields only with fields=all.
    let list = |q: &'static str| {
        http.get(format!("{}/api/v2/tailnet/-/devices{q}", api.url()))
            .bearer_auth(&token)
            .send()
    };
    let v: serde_json::Value = list("").await.unwrap().json().await.unwrap();
    assert!(v["devices"][0].get("enabledRoutes").is_none(), "{v}");
    let v: serde_json::Value = list("?fields=all").await.unwrap().json().await.unwrap();
    assert_eq!(v["devices"][0]["enabledRoutes"], json!([POD]));
    // Expired: the same token after its lifetime (tokio's paused clock, advanced between
    // requests only).
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::resume();
    let r = http
        .get(&routes_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 401);
}
