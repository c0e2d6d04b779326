//! The doubles refuse what the real servers refuse (issue 10, "Strict doubles", non-policy
//! part). Each case names the server source it follows; requests go straight to the request
//! handlers ([`HeadscaleControl::handle`], [`LocalApi::handle`]), no sockets.

use bytes::Bytes;
use headcni_testkit::server::Req;
use headcni_testkit::{
    FakeApiVersion, FakeHeadscaleOptions, HeadscaleControl, LocalApi, LocalApiInit,
    TailscaledVersion, default_prefs, random_node_key,
};
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

fn req(method: Method, uri: &str, key: Option<&str>, body: Option<Value>) -> Req {
    let mut headers = HeaderMap::new();
    if let Some(k) = key {
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {k}")).unwrap(),
        );
    }
    Req {
        method,
        uri: uri.parse().unwrap(),
        headers,
        body: body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    }
}

/// (status, content type, body as JSON or as a string).
async fn call(c: &HeadscaleControl, r: Req) -> (u16, String, Value) {
    let resp = c.clone().handle(r).await;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, ct, v)
}

fn hs(version: FakeApiVersion) -> (HeadscaleControl, String) {
    HeadscaleControl::new(
        &FakeHeadscaleOptions {
            version,
            ..Default::default()
        },
        None,
        "http://127.0.0.1:1".into(),
    )
}

#[tokio::test]
async fn approve_routes_on_unknown_node_is_400_before_main_404_on_main() {
    // hscontrol/grpcv1.go SetApprovedRoutes → status.Error(codes.InvalidArgument, err)
    for (v, status, message) in [
        (FakeApiVersion::V0_26, 400, json!("record not found")),
        (
            FakeApiVersion::V0_29,
            400,
            json!("node no longer exists in NodeStore: 42"),
        ),
    ] {
        let (c, key) = hs(v);
        let body = json!({"routes": ["10.244.1.0/24"]});
        let r = req(
            Method::POST,
            "/api/v1/node/42/approve_routes",
            Some(&key),
            Some(body),
        );
        let (st, ct, b) = call(&c, r).await;
        assert_eq!(st, status, "{v:?}: {b}");
        assert_eq!(ct, "application/json");
        assert_eq!(b["code"], 3, "{v:?}");
        assert_eq!(b["message"], message, "{v:?}");
    }
    // main: hscontrol/api/v1/nodes.go mapError("setting approved routes", ErrNodeNotInNodeStore)
    let (c, key) = hs(FakeApiVersion::V0_30);
    let r = req(
        Method::POST,
        "/api/v1/node/42/approve_routes",
        Some(&key),
        Some(json!({"routes": []})),
    );
    let (st, ct, b) = call(&c, r).await;
    assert_eq!(st, 404);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(b["title"], "Not Found");
    assert_eq!(b["status"], 404);
    assert_eq!(b["detail"], "setting approved routes");
    assert_eq!(
        b["errors"][0]["message"],
        "node no longer exists in NodeStore: 42"
    );
    assert!(b.get("code").is_none());
}

#[tokio::test]
async fn list_nodes_for_unknown_user_is_an_error() {
    // hscontrol/grpcv1.go ListNodes returns GetUserByName's plain error: gRPC Unknown → 500.
    for v in [
        FakeApiVersion::V0_25,
        FakeApiVersion::V0_26,
        FakeApiVersion::V0_29,
    ] {
        let (c, key) = hs(v);
        c.register_node("n1", "alice", &random_node_key());
        let (st, _, b) = call(
            &c,
            req(Method::GET, "/api/v1/node?user=nope", Some(&key), None),
        )
        .await;
        assert_eq!(st, 500, "{v:?}");
        assert_eq!(
            b,
            json!({"code": 2, "message": "user not found", "details": []})
        );
        let (st, _, b) = call(
            &c,
            req(Method::GET, "/api/v1/node?user=alice", Some(&key), None),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(b["nodes"].as_array().unwrap().len(), 1);
    }
    let (c, key) = hs(FakeApiVersion::V0_30);
    let (st, ct, b) = call(
        &c,
        req(Method::GET, "/api/v1/node?user=nope", Some(&key), None),
    )
    .await;
    assert_eq!((st, ct.as_str()), (404, "application/problem+json"));
    assert_eq!(b["detail"], "listing nodes");
    assert_eq!(b["errors"][0]["message"], "user not found");
}

#[tokio::test]
async fn version_endpoint_per_version() {
    // hscontrol/handlers.go VersionHandler (≥ 0.27), types/version.go VersionInfo.
    for (v, want) in [
        (FakeApiVersion::V0_29, Some("v0.29.2")),
        (FakeApiVersion::V0_30, Some("dev")),
        (FakeApiVersion::V0_26, None),
        (FakeApiVersion::V0_25, None),
    ] {
        let (c, _) = hs(v);
        let (st, _, b) = call(&c, req(Method::GET, "/version", None, None)).await;
        match want {
            Some(ver) => {
                assert_eq!(st, 200, "{v:?}");
                assert_eq!(b["version"], ver);
                for k in ["commit", "buildTime", "dirty"] {
                    assert!(b.get(k).is_some(), "{v:?} {k}");
                }
                assert!(b["go"]["version"].is_string());
            }
            None => assert_eq!(st, 404, "{v:?}"),
        }
    }
}

#[tokio::test]
async fn main_answers_problem_json_for_auth_and_plain_404_for_unknown_paths() {
    // hscontrol/api/v1/api.go authMiddleware → huma.WriteErr(401, "Unauthorized").
    let (c, key) = hs(FakeApiVersion::V0_30);
    let (st, ct, b) = call(&c, req(Method::GET, "/api/v1/node", Some("wrong"), None)).await;
    assert_eq!((st, ct.as_str()), (401, "application/problem+json"));
    assert_eq!(b["detail"], "Unauthorized");
    // no /api/v1/routes operation on main: chi's plain 404
    let (st, _, b) = call(&c, req(Method::GET, "/api/v1/routes", Some(&key), None)).await;
    assert_eq!(st, 404);
    assert_eq!(b, json!("404 page not found\n"));
    // missing node: huma.Error404NotFound("node not found")
    let (st, _, b) = call(&c, req(Method::GET, "/api/v1/node/9", Some(&key), None)).await;
    assert_eq!(st, 404);
    assert_eq!(b["detail"], "node not found");
}

#[tokio::test]
async fn preauth_key_request_shape_per_version() {
    // validateTag (hscontrol/grpcv1.go; main hscontrol/api/v1/tags.go): 400.
    for v in [
        FakeApiVersion::V0_25,
        FakeApiVersion::V0_26,
        FakeApiVersion::V0_29,
    ] {
        let (c, key) = hs(v);
        let uid = c.create_user("alice");
        let user = if v.approves() {
            json!(uid.to_string())
        } else {
            json!("alice")
        };
        for (tag, msg) in [
            ("headcni", "tag must start with the string 'tag:'"),
            ("tag:HeadCNI", "tag should be lowercase"),
            ("tag:a b", "tags must not contain spaces"),
        ] {
            let body =
                json!({"user": user, "aclTags": [tag], "expiration": "2099-01-01T00:00:00Z"});
            let (st, _, b) = call(
                &c,
                req(Method::POST, "/api/v1/preauthkey", Some(&key), Some(body)),
            )
            .await;
            assert_eq!(st, 400, "{v:?} {tag}");
            assert_eq!(b["message"], msg);
        }
        let body =
            json!({"user": user, "aclTags": ["tag:headcni"], "expiration": "2099-01-01T00:00:00Z"});
        let (st, _, b) = call(
            &c,
            req(Method::POST, "/api/v1/preauthkey", Some(&key), Some(body)),
        )
        .await;
        assert_eq!(st, 200, "{v:?} {b}");
        assert_eq!(b["preAuthKey"]["aclTags"], json!(["tag:headcni"]));
    }
    // 0.26–0.29: protojson uint64 takes a number too; 0.26 has no owner-less keys.
    let (c, key) = hs(FakeApiVersion::V0_29);
    let uid = c.create_user("alice");
    let body = json!({"user": uid, "expiration": "2099-01-01T00:00:00Z"});
    let (st, _, b) = call(
        &c,
        req(Method::POST, "/api/v1/preauthkey", Some(&key), Some(body)),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (c26, key26) = hs(FakeApiVersion::V0_26);
    let body = json!({"aclTags": ["tag:headcni"], "expiration": "2099-01-01T00:00:00Z"});
    let (st, _, b) = call(
        &c26,
        req(Method::POST, "/api/v1/preauthkey", Some(&key26), Some(body)),
    )
    .await;
    assert_eq!((st, b["message"].clone()), (500, json!("user not found")));
    // main: `user` is a JSON string (huma schema: a number is 422); unknown user 404.
    let (c, key) = hs(FakeApiVersion::V0_30);
    let uid = c.create_user("alice");
    let body = json!({"user": uid, "expiration": "2099-01-01T00:00:00Z"});
    let (st, ct, _) = call(
        &c,
        req(Method::POST, "/api/v1/preauthkey", Some(&key), Some(body)),
    )
    .await;
    assert_eq!((st, ct.as_str()), (422, "application/problem+json"));
    let body = json!({"user": "77", "expiration": "2099-01-01T00:00:00Z"});
    let (st, _, b) = call(
        &c,
        req(Method::POST, "/api/v1/preauthkey", Some(&key), Some(body)),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(b["detail"], "creating pre-auth key");
    let body = json!({"user": uid.to_string(), "aclTags": ["Tag:x"]});
    let (st, _, b) = call(
        &c,
        req(Method::POST, "/api/v1/preauthkey", Some(&key), Some(body)),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(b["detail"], "invalid tag");
}

#[tokio::test]
async fn registration_with_preauth_key_refuses_tag_requests_from_0_28() {
    // hscontrol/state/state.go HandleNodeFromPreAuthKey (v0.28.0, v0.29.2, main).
    let tags = vec!["tag:headcni".to_string()];
    for (v, refused) in [
        (FakeApiVersion::V0_29, true),
        (FakeApiVersion::V0_30, true),
        (FakeApiVersion::V0_26, false),
        (FakeApiVersion::V0_25, false),
    ] {
        let (c, _) = hs(v);
        let key = c.generate_preauth_key();
        c.ensure_preauth_key(
            &key,
            "alice",
            true,
            false,
            headcni_headscale::time::unix_now() + 3600,
        );
        let r = c.register_with_auth_key_requesting_tags(&key, "n1", &random_node_key(), &tags);
        if refused {
            assert_eq!(
                r.unwrap_err(),
                "requested tags [tag:headcni] are invalid or not permitted",
                "{v:?}"
            );
            assert!(c.nodes().is_empty());
        } else {
            assert!(r.is_ok(), "{v:?}");
        }
        // without tag requests the same key registers
        assert!(
            c.register_with_auth_key(&key, "n2", &random_node_key())
                .is_ok()
        );
    }
}

fn localapi(version: TailscaledVersion) -> LocalApi {
    let api = LocalApi::new(LocalApiInit {
        prefs: default_prefs(),
        node_key: random_node_key(),
        node_id: None,
        backend_state: "NeedsLogin".into(),
        hostname: "n".into(),
        control: None,
    });
    api.set_version(version);
    api
}

async fn lcall(api: &LocalApi, method: Method, body: Option<Value>) -> (u16, Value) {
    let resp = api
        .handle(req(method, "/localapi/v0/prefs", None, body))
        .await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

#[tokio::test]
async fn prefs_patch_follows_go_json() {
    let api = localapi(TailscaledVersion::V1_102);
    // types/opt/bool.go UnmarshalJSON: only true/false/null
    for bad in [json!("true"), json!(1), json!("")] {
        let (st, b) = lcall(
            &api,
            Method::PATCH,
            Some(json!({"NoStatefulFilteringSet": true, "NoStatefulFiltering": bad})),
        )
        .await;
        assert_eq!(st, 400, "{bad}");
        assert!(
            b.as_str().unwrap().starts_with("invalid opt.Bool value"),
            "{b}"
        );
    }
    // mistyped bool, even without its Set flag (the whole body is decoded first)
    let (st, _) = lcall(&api, Method::PATCH, Some(json!({"RouteAll": "true"}))).await;
    assert_eq!(st, 400);
    let (st, _) = lcall(
        &api,
        Method::PATCH,
        Some(json!({"RouteAllSet": "true", "RouteAll": true})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(!api.prefs().route_all, "nothing applied");
    // case-insensitive keys and unknown keys as encoding/json treats them
    let (st, b) = lcall(
        &api,
        Method::PATCH,
        Some(json!({"routeall": true, "RouteAllSet": true, "NoSuchPref": 1})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["RouteAll"], true);
    assert!(b.get("NoSuchPref").is_none());
    let (st, b) = lcall(
        &api,
        Method::PATCH,
        Some(json!({"NoStatefulFilteringSet": true, "NoStatefulFiltering": true})),
    )
    .await;
    assert_eq!((st, b["NoStatefulFiltering"].clone()), (200, json!(true)));
}

#[tokio::test]
async fn tailscaled_1_64_has_no_no_stateful_filtering() {
    // ipn/prefs.go: the field appears in v1.66.0 (absent at v1.62.1, v1.64.2).
    let api = localapi(TailscaledVersion::V1_64);
    let (st, b) = lcall(&api, Method::GET, None).await;
    assert_eq!(st, 200);
    assert!(b.get("NoStatefulFiltering").is_none(), "{b}");
    assert!(b.get("RouteAll").is_some());
    // a PATCH of it is an unknown key: 200, nothing changes, still absent
    let (st, b) = lcall(
        &api,
        Method::PATCH,
        Some(json!({"NoStatefulFilteringSet": true, "NoStatefulFiltering": true, "RouteAllSet": true, "RouteAll": true})),
    )
    .await;
    assert_eq!(st, 200);
    assert!(b.get("NoStatefulFiltering").is_none(), "{b}");
    assert_eq!(b["RouteAll"], true);
    assert_eq!(
        api.prefs().no_stateful_filtering,
        headcni_headscale::localapi::OptBool::Unset
    );
    // and 1.102 shows it
    let api = localapi(TailscaledVersion::V1_102);
    let (_, b) = lcall(&api, Method::GET, None).await;
    assert!(b.get("NoStatefulFiltering").is_some());
}
