//! Headscale REST client ⇄ FakeHeadscale round trips (both API generations), every exchange
//! validated against the OpenAPI spec of its generation; error mapping and fault injection.

mod common;

use std::time::Duration;

use common::{Mode, assert_spec_valid, fast_backoff, net, spec};
use headcni_headscale::headscale::{
    ApiGeneration, HeadscaleClient, HeadscaleConfig, HeadscaleError, Health, PreAuthKeyOptions,
    PreAuthKeyOwner,
};
use headcni_headscale::retry::Retryable;
use headcni_headscale::secret::Secret;
use headcni_headscale::time::{parse_rfc3339, unix_now};
use headcni_testkit::{
    FakeApiVersion, FakeHeadscale, FakeHeadscaleOptions, Fault, random_node_key,
};
use serde_json::json;

async fn fake(version: FakeApiVersion) -> FakeHeadscale {
    FakeHeadscale::start(FakeHeadscaleOptions {
        version,
        ..Default::default()
    })
    .await
    .expect("fake headscale")
}

fn client(hs: &FakeHeadscale) -> HeadscaleClient {
    let mut cfg = HeadscaleConfig::new(hs.url(), Some(Secret::new(hs.api_key())));
    cfg.request_timeout = Duration::from_millis(500);
    HeadscaleClient::new(cfg).expect("client")
}

#[test]
fn validator_rejects_what_protojson_would_not_produce() {
    let s = spec("0.29.2");
    let good = json!({
        "id": "1", "name": "headcni", "createdAt": null, "displayName": "", "email": "",
        "providerId": "", "provider": "cli", "profilePicUrl": ""
    });
    s.validate_definition("v1User", &good, Mode::Response)
        .unwrap();
    // uint64 as a JSON number
    let mut bad = good.clone();
    bad["id"] = json!(1);
    assert!(
        s.validate_definition("v1User", &bad, Mode::Response)
            .is_err()
    );
    // uint64 string that is not decimal
    bad["id"] = json!("x1");
    assert!(
        s.validate_definition("v1User", &bad, Mode::Response)
            .is_err()
    );
    // snake_case key (protojson emits lowerCamelCase)
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("displayName");
    bad["display_name"] = json!("");
    assert!(
        s.validate_definition("v1User", &bad, Mode::Response)
            .is_err()
    );
    // a missing field in a response (EmitUnpopulated emits every field)
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("email");
    assert!(
        s.validate_definition("v1User", &bad, Mode::Response)
            .is_err()
    );
    // bad timestamp
    let mut bad = good.clone();
    bad["createdAt"] = json!("yesterday");
    assert!(
        s.validate_definition("v1User", &bad, Mode::Response)
            .is_err()
    );
    // nested messages are checked too (a node's user with a numeric id)
    let node = |uid: serde_json::Value| {
        json!({"nodes": [{
            "id": "1", "machineKey": "", "nodeKey": "", "discoKey": "", "ipAddresses": [],
            "name": "n", "user": {"id": uid, "name": "u", "createdAt": null, "displayName": "",
            "email": "", "providerId": "", "provider": "", "profilePicUrl": ""},
            "lastSeen": null, "expiry": null, "preAuthKey": null, "createdAt": null,
            "registerMethod": "REGISTER_METHOD_CLI", "givenName": "n", "online": false,
            "approvedRoutes": [], "availableRoutes": [], "subnetRoutes": [], "tags": []
        }]})
    };
    s.validate_definition("v1ListNodesResponse", &node(json!("7")), Mode::Response)
        .unwrap();
    assert!(
        s.validate_definition("v1ListNodesResponse", &node(json!(7)), Mode::Response)
            .is_err()
    );
    assert!(
        s.validate_definition(
            "v1ListNodesResponse",
            &json!({"nodes": [null]}),
            Mode::Response
        )
        .is_err(),
        "array items are never null"
    );
    // route fields do not exist in 0.25.1's v1Node
    let s25 = spec("0.25.1");
    assert!(
        s25.validate_definition("v1Node", &json!({"approvedRoutes": []}), Mode::Request)
            .is_err()
    );
    // pre-auth key `user`: id string on 0.29, name on 0.25
    s.validate_definition(
        "v1CreatePreAuthKeyRequest",
        &json!({"user": "3"}),
        Mode::Request,
    )
    .unwrap();
    assert!(
        s.validate_definition(
            "v1CreatePreAuthKeyRequest",
            &json!({"user": "headcni"}),
            Mode::Request
        )
        .is_err()
    );
    s25.validate_definition(
        "v1CreatePreAuthKeyRequest",
        &json!({"user": "headcni"}),
        Mode::Request,
    )
    .unwrap();
}

#[tokio::test]
async fn detects_each_generation() {
    for (v, generation, version) in [
        (
            FakeApiVersion::V0_29,
            ApiGeneration::ApprovedRoutes,
            Some("v0.29.2"),
        ),
        (FakeApiVersion::V0_26, ApiGeneration::ApprovedRoutes, None),
        (FakeApiVersion::V0_25, ApiGeneration::RouteRows, None),
    ] {
        let hs = fake(v).await;
        let c = client(&hs);
        let info = c.detect().await.unwrap();
        assert_eq!(info.generation, generation, "{v:?}");
        assert_eq!(info.version.as_deref(), version);
        assert_eq!(c.server_info(), Some(info));
        assert_spec_valid(&hs);
    }
}

#[tokio::test]
async fn detection_uses_version_and_probes_only_without_it() {
    // ≥ 0.27 (and main, whose `/version` says `dev`): one unauthenticated GET /version, no
    // route probe; 0.25/0.26: /version is 404, then the GET /api/v1/routes probe decides.
    for (v, generation, probed) in [
        (FakeApiVersion::V0_30, ApiGeneration::ApprovedRoutes, false),
        (FakeApiVersion::V0_29, ApiGeneration::ApprovedRoutes, false),
        (FakeApiVersion::V0_26, ApiGeneration::ApprovedRoutes, true),
        (FakeApiVersion::V0_25, ApiGeneration::RouteRows, true),
    ] {
        let hs = fake(v).await;
        let info = client(&hs).detect().await.unwrap();
        assert_eq!(info.generation, generation, "{v:?}");
        let paths: Vec<String> = hs.exchanges().into_iter().map(|e| e.path).collect();
        assert_eq!(paths[0], "/version", "{v:?}");
        assert_eq!(
            paths.iter().any(|p| p == "/api/v1/routes"),
            probed,
            "{v:?}: {paths:?}"
        );
        assert_eq!(paths.len(), if probed { 2 } else { 1 }, "{v:?}: {paths:?}");
    }
}

#[tokio::test]
async fn main_problem_json_errors_keep_their_message() {
    // headscale main answers RFC 7807 bodies (hscontrol/api/v1/errors.go mapError).
    let hs = fake(FakeApiVersion::V0_30).await;
    let c = client(&hs);
    let e = c.list_nodes(Some("nope")).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("listing nodes: user not found"),
        "{e}"
    );
    let e = c
        .approve_routes(42, &[net("10.244.1.0/24")])
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(
        e.to_string()
            .contains("setting approved routes: node no longer exists in NodeStore: 42"),
        "{e}"
    );
    let u = c.ensure_user("headcni").await.unwrap();
    let opts = PreAuthKeyOptions {
        acl_tags: vec!["Tag:Bad".into()],
        ..PreAuthKeyOptions::default()
    };
    match c.create_preauth_key(&u, &opts).await.unwrap_err() {
        HeadscaleError::Api {
            status: 400,
            code: None,
            message,
            ..
        } => assert_eq!(
            message,
            "invalid tag: tag must start with the string 'tag:'"
        ),
        other => panic!("{other}"),
    }
    // the success path is unchanged on main: user by id string, key created
    let k = c
        .create_preauth_key(&u, &PreAuthKeyOptions::default())
        .await
        .unwrap();
    assert!(k.key.expose().starts_with("hskey-auth-"));
}

#[tokio::test]
async fn approve_routes_on_a_deleted_node_is_not_found_on_0_26_and_0_29() {
    for v in [FakeApiVersion::V0_26, FakeApiVersion::V0_29] {
        let hs = fake(v).await;
        let e = client(&hs)
            .approve_routes(42, &[net("10.244.1.0/24")])
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                HeadscaleError::Api {
                    status: 400,
                    code: Some(3),
                    ..
                }
            ),
            "{v:?}: {e}"
        );
        assert!(e.is_not_found(), "{v:?}: {e}");
        assert_spec_valid(&hs);
    }
}

#[tokio::test]
async fn round_trip_v029() {
    let hs = fake(FakeApiVersion::V0_29).await;
    let c = client(&hs);
    assert_eq!(c.health().await.unwrap(), Health::Pass);
    assert!(c.api_health().await.unwrap());

    // users: ensure creates once, then finds
    assert!(c.get_user_by_name("headcni").await.unwrap().is_none());
    let u = c.ensure_user("headcni").await.unwrap();
    let again = c.ensure_user("headcni").await.unwrap();
    assert_eq!(u, again);
    assert!(u.id > 0);

    // pre-auth key: user by id string, expiration always sent
    let k = c
        .create_preauth_key(&u, &PreAuthKeyOptions::default())
        .await
        .unwrap();
    assert!(k.key.expose().starts_with("hskey-auth-"));
    assert!(!format!("{k:?}").contains(k.key.expose()));
    assert!(matches!(k.user, Some(PreAuthKeyOwner::User(ref o)) if o.id == u.id));
    let exp = parse_rfc3339(k.expiration.as_deref().unwrap()).unwrap();
    assert!(
        exp > unix_now() + 500 && exp <= unix_now() + 700,
        "ttl 10 min"
    );
    let sent = hs
        .exchanges()
        .into_iter()
        .find(|e| e.path == "/api/v1/preauthkey" && e.method == "POST")
        .unwrap();
    let body = sent.request_json.unwrap();
    assert_eq!(body["user"], json!(u.id.to_string()));
    assert!(body["expiration"].is_string());
    assert_eq!(body["reusable"], false);

    // a node registered with it; routes: approve_routes replaces
    let node = hs
        .register_with_auth_key(k.key.expose(), "node-1", &random_node_key())
        .unwrap();
    hs.announce_routes(node.id, &[net("10.244.1.0/24"), net("192.168.50.0/24")]);
    let n = c.get_node(node.id).await.unwrap();
    assert_eq!(n.node_key, node.node_key);
    assert_eq!(n.available_routes.len(), 2);
    assert!(
        n.subnet_routes.is_empty(),
        "GetNode leaves subnetRoutes empty"
    );
    let n = c
        .approve_routes(node.id, &[net("192.168.50.0/24")])
        .await
        .unwrap();
    assert_eq!(n.approved_routes, vec![net("192.168.50.0/24")]);
    assert_eq!(n.subnet_routes, vec![net("192.168.50.0/24")]);
    let n = c
        .approve_routes(node.id, &[net("10.244.1.0/24")])
        .await
        .unwrap();
    assert_eq!(
        n.approved_routes,
        vec![net("10.244.1.0/24")],
        "replace semantics: the earlier approval is gone"
    );
    let listed = c.list_nodes(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].subnet_routes, vec![net("10.244.1.0/24")]);
    assert_eq!(c.list_nodes(Some("headcni")).await.unwrap().len(), 1);
    // an unknown user is an error, not an empty list (hscontrol/grpcv1.go ListNodes: 500)
    let e = c.list_nodes(Some("nobody")).await.unwrap_err();
    assert!(
        matches!(
            e,
            HeadscaleError::Api {
                status: 500,
                code: Some(2),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("user not found"), "{e}");
    let n = c.approve_routes(node.id, &[]).await.unwrap();
    assert!(n.approved_routes.is_empty());

    // route-row operations do not exist on this generation
    assert!(matches!(
        c.node_routes(node.id).await,
        Err(HeadscaleError::Unsupported { .. })
    ));

    // delete, then 404 NotFound
    c.delete_node(node.id).await.unwrap();
    let e = c.get_node(node.id).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::NotFound { .. }), "{e}");
    assert!(e.is_not_found() && !e.is_retryable());
    let checked = assert_spec_valid(&hs);
    assert!(checked >= 15, "{checked}");
}

#[tokio::test]
async fn round_trip_v025_route_rows() {
    let hs = fake(FakeApiVersion::V0_25).await;
    let c = client(&hs);
    let u = c.ensure_user("headcni").await.unwrap();
    let k = c
        .create_preauth_key(&u, &PreAuthKeyOptions::default())
        .await
        .unwrap();
    assert!(matches!(k.user, Some(PreAuthKeyOwner::Name(ref n)) if n == "headcni"));
    let sent = hs
        .exchanges()
        .into_iter()
        .find(|e| e.path == "/api/v1/preauthkey" && e.method == "POST")
        .unwrap();
    assert_eq!(
        sent.request_json.unwrap()["user"],
        "headcni",
        "user by name on <=0.25"
    );

    let node = hs
        .register_with_auth_key(k.key.expose(), "node-1", &random_node_key())
        .unwrap();
    let p = net("10.244.1.0/24");
    assert!(c.node_routes(node.id).await.unwrap().is_empty());
    hs.announce_routes(node.id, &[p]);
    let rows = c.node_routes(node.id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].advertised && !rows[0].enabled);
    assert_eq!(rows[0].node.as_ref().unwrap().id, node.id);
    c.enable_route(rows[0].id).await.unwrap();
    let rows = c.node_routes(node.id).await.unwrap();
    assert!(rows[0].enabled && rows[0].is_primary);
    assert_eq!(c.list_routes().await.unwrap().len(), 1);

    // un-announcing disables the row; enabling a non-advertised row is refused
    hs.announce_routes(node.id, &[]);
    let rows = c.node_routes(node.id).await.unwrap();
    assert!(!rows[0].advertised && !rows[0].enabled);
    let e = c.enable_route(rows[0].id).await.unwrap_err();
    assert!(
        matches!(e, HeadscaleError::Api { status: 500, code: Some(2), ref message, .. } if message.contains("not available")),
        "{e}"
    );
    hs.announce_routes(node.id, &[p]);
    c.enable_route(rows[0].id).await.unwrap();
    c.disable_route(rows[0].id).await.unwrap();
    assert!(!c.node_routes(node.id).await.unwrap()[0].enabled);
    c.delete_route(rows[0].id).await.unwrap();

    // approve_routes does not exist here
    assert!(matches!(
        c.approve_routes(node.id, &[p]).await,
        Err(HeadscaleError::Unsupported { .. })
    ));
    // a missing node is HTTP 500 "record not found" on 0.25
    let e = c.get_node(999).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::Api { status: 500, .. }), "{e}");
    assert!(e.is_not_found() && !e.is_retryable());
    c.delete_node(node.id).await.unwrap();
    assert_spec_valid(&hs);
}

#[tokio::test]
async fn preauth_key_without_expiration_is_born_expired() {
    let hs = fake(FakeApiVersion::V0_29).await;
    let uid = hs.create_user("headcni");
    // What a client that forgets `expiration` sends (the Go original's pitfall).
    let raw = reqwest_post(
        &format!("{}/api/v1/preauthkey", hs.url()),
        hs.api_key(),
        &json!({"user": uid.to_string(), "reusable": false, "ephemeral": false}),
    )
    .await;
    let key = raw["preAuthKey"]["key"].as_str().unwrap().to_string();
    assert_eq!(raw["preAuthKey"]["expiration"], "0001-01-01T00:00:00Z");
    assert_eq!(
        hs.register_with_auth_key(&key, "n", &random_node_key()),
        Err("authkey expired".to_string())
    );
    // ours always sends one: usable once, then refused
    let c = client(&hs);
    let u = c.get_user_by_name("headcni").await.unwrap().unwrap();
    let k = c
        .create_preauth_key(&u, &PreAuthKeyOptions::default())
        .await
        .unwrap();
    hs.register_with_auth_key(k.key.expose(), "n1", &random_node_key())
        .unwrap();
    assert_eq!(
        hs.register_with_auth_key(k.key.expose(), "n2", &random_node_key()),
        Err("authkey already used".to_string())
    );
    assert!(hs.preauth_keys().iter().any(|k| k.expired));
    assert_spec_valid(&hs);
}

async fn reqwest_post(url: &str, key: &str, body: &serde_json::Value) -> serde_json::Value {
    headcni_headscale::tls::install_ring_provider();
    reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn typed_errors_and_faults() {
    let hs = fake(FakeApiVersion::V0_29).await;
    // wrong key → 401 plain text → Unauthorized, not retryable
    let bad = HeadscaleClient::new(HeadscaleConfig::new(
        hs.url(),
        Some(Secret::new("hskey-api-wrong-key")),
    ))
    .unwrap();
    let e = bad.list_nodes(None).await.unwrap_err();
    assert!(
        matches!(e, HeadscaleError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(!e.is_retryable());
    // no key → refused before any request
    let none = HeadscaleClient::new(HeadscaleConfig::new(hs.url(), None)).unwrap();
    assert!(matches!(
        none.list_nodes(None).await,
        Err(HeadscaleError::NoApiKey { .. })
    ));
    assert_eq!(
        none.health().await.unwrap(),
        Health::Pass,
        "health needs no key"
    );

    let c = client(&hs);
    hs.inject(Fault::ServerError, 1);
    let e = c.list_users(None).await.unwrap_err();
    assert!(
        matches!(
            e,
            HeadscaleError::Api {
                status: 500,
                code: Some(2),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_retryable());
    hs.inject(Fault::Unavailable, 1);
    let e = c.list_users(None).await.unwrap_err();
    assert!(
        matches!(
            e,
            HeadscaleError::Api {
                status: 503,
                code: None,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_retryable());
    hs.inject(Fault::Unauthorized, 1);
    let e = c.list_users(None).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::Unauthorized { .. }), "{e}");
    hs.inject(Fault::Delay(Duration::from_secs(2)), 1);
    let e = c.list_users(None).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::Timeout { .. }), "{e}");
    assert!(e.is_retryable());
    hs.set_healthy(false);
    assert_eq!(c.health().await.unwrap(), Health::Fail);
    assert!(c.api_health().await.is_err());
    hs.set_healthy(true);

    // route-row calls are refused client side on >=0.26 (no request is sent)
    let e = c.node_routes(1).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::Unsupported { .. }));

    // nothing listening → transport error, retryable
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = HeadscaleClient::new(HeadscaleConfig::new(
        format!("http://127.0.0.1:{port}"),
        Some(Secret::new("k")),
    ))
    .unwrap();
    let e = dead.list_nodes(None).await.unwrap_err();
    assert!(matches!(e, HeadscaleError::Transport { .. }), "{e}");
    assert!(e.is_retryable());
    assert_spec_valid(&hs);
}

#[tokio::test]
async fn retries_with_backoff_recover() {
    let hs = fake(FakeApiVersion::V0_29).await;
    let c = client(&hs);
    let u = c.ensure_user("headcni").await.unwrap();
    hs.clear_exchanges();
    hs.inject(Fault::ServerError, 2);
    hs.inject(Fault::Delay(Duration::from_secs(1)), 1);
    let users = fast_backoff()
        .retry("list users", || c.list_users(None))
        .await
        .unwrap();
    assert_eq!(users, vec![u]);
    // the delayed (timed-out) request is recorded when the fake finishes sleeping
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(hs.exchanges().len(), 4, "3 faults then success");
    // 401 is not retried
    hs.clear_exchanges();
    hs.inject(Fault::Unauthorized, 3);
    assert!(
        fast_backoff()
            .retry("list users", || c.list_users(None))
            .await
            .is_err()
    );
    assert_eq!(hs.exchanges().len(), 1);
    hs.clear_faults();
    // a server that stays down: bounded attempts, then the last error
    hs.clear_exchanges();
    hs.inject(Fault::ServerError, 100);
    let e = fast_backoff()
        .retry("list users", || c.list_users(None))
        .await
        .unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(hs.exchanges().len(), 5);
    hs.clear_faults();
}

#[test]
fn key_file_0644_refused_0600_accepted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("api-key");
    std::fs::write(&p, "hskey-api-abc-def\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Secret::load_api_key(Some(&p)).unwrap_err();
    assert!(e.to_string().contains("readable by group or others"), "{e}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        Secret::load_api_key(Some(&p)).unwrap().expose(),
        "hskey-api-abc-def"
    );
}
