//! protojson shapes of users, pre-auth keys and nodes per API generation (camelCase, uint64
//! as strings, `null` for unset messages) and grpc-gateway error bodies.

use http::StatusCode;
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use super::options::FakeApiVersion;
use super::policy::is_exit;
use super::state::{FKey, FNode, State, node_ips, now};

pub(super) fn rpc(code: i32, message: &str) -> Value {
    json!({"code": code, "message": message, "details": []})
}

/// A refused request, rendered per generation by [`Fail::render`]: the gRPC (code, message)
/// that grpc-gateway turns into `{code,message,details}` (0.25–0.29), and, for main, huma's
/// status and `detail` context (`hscontrol/api/v1/errors.go` `mapError(msg, err)`:
/// `detail` = the context, `errors[0].message` = the cause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fail {
    /// gRPC code (grpc-gateway `runtime.HTTPStatusFromCode` gives the HTTP status).
    pub(super) code: i32,
    /// gRPC message; on main the cause (`errors[0].message`), or the `detail` itself when
    /// `huma` is `None`.
    pub(super) message: String,
    /// main: the HTTP status and the `detail` context (`huma.ErrorNNN(ctx, err)`); `None`
    /// renders `huma.ErrorNNN(message)` with the status of `code`.
    pub(super) huma: Option<(StatusCode, &'static str)>,
}

impl From<(i32, String)> for Fail {
    fn from((code, message): (i32, String)) -> Self {
        Fail {
            code,
            message,
            huma: None,
        }
    }
}

impl Fail {
    /// A failure whose main (huma) form is `status` with `detail` = `context` and the message
    /// as its single `errors[]` entry.
    pub(super) fn with_huma(mut self, status: StatusCode, context: &'static str) -> Self {
        self.huma = Some((status, context));
        self
    }

    /// (HTTP status, body, content type) for `version`.
    pub(super) fn render(&self, version: FakeApiVersion) -> (StatusCode, Value, &'static str) {
        if !version.problem_errors() {
            return (
                grpc_status(self.code),
                rpc(self.code, &self.message),
                "application/json",
            );
        }
        let (status, v) = match self.huma {
            Some((st, context)) => (
                st,
                json!({
                    "title": st.canonical_reason().unwrap_or_default(), "status": st.as_u16(),
                    "detail": context, "errors": [{"message": self.message}]
                }),
            ),
            None => {
                let st = grpc_status(self.code);
                (
                    st,
                    json!({
                        "title": st.canonical_reason().unwrap_or_default(),
                        "status": st.as_u16(), "detail": self.message
                    }),
                )
            }
        };
        (status, v, "application/problem+json")
    }
}

pub(super) fn grpc_status(code: i32) -> StatusCode {
    match code {
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        5 => StatusCode::NOT_FOUND,
        6 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl State {
    pub(super) fn user_json(&self, id: u64) -> Value {
        match self.users.iter().find(|u| u.id == id) {
            Some(u) => json!({
                "id": u.id.to_string(), "name": u.name, "createdAt": u.created_at,
                "displayName": "", "email": "", "providerId": "", "provider": "cli",
                "profilePicUrl": ""
            }),
            None => Value::Null,
        }
    }

    pub(super) fn key_json(&self, k: &FKey, full_key: bool) -> Value {
        let shown = if full_key || !self.version.at_least_0_28() {
            k.key.clone()
        } else {
            // 0.28+: keys are stored hashed; listings show the prefix only.
            k.key.rsplitn(2, '-').last().unwrap_or_default().to_string() + "-***"
        };
        let user = if self.version.approves() {
            k.user_id.map(|u| self.user_json(u)).unwrap_or(Value::Null)
        } else {
            let name = k
                .user_id
                .and_then(|u| self.users.iter().find(|x| x.id == u))
                .map(|u| u.name.clone())
                .unwrap_or_default();
            Value::String(name)
        };
        json!({
            "user": user, "id": k.id.to_string(), "key": shown, "reusable": k.reusable,
            "ephemeral": k.ephemeral, "used": k.used, "expiration": k.expiration,
            "createdAt": k.created_at, "aclTags": k.acl_tags
        })
    }

    pub(super) fn node_json(&self, n: &FNode, with_subnet_routes: bool) -> Value {
        let ips: Vec<String> = node_ips(n.id).iter().map(|i| i.to_string()).collect();
        let key = n
            .pre_auth_key
            .and_then(|k| self.keys.iter().find(|x| x.id == k))
            .map(|k| self.key_json(k, false))
            .unwrap_or(Value::Null);
        let mut v = json!({
            "id": n.id.to_string(), "machineKey": n.machine_key, "nodeKey": n.node_key,
            "discoKey": n.disco_key, "ipAddresses": ips, "name": n.name,
            "user": self.user_json(n.user_id),
            "lastSeen": if n.online { Value::String(now()) } else { Value::Null },
            "expiry": Value::Null, "preAuthKey": key, "createdAt": n.created_at,
            "registerMethod": n.register_method, "givenName": n.name, "online": n.online
        });
        let Some(obj) = v.as_object_mut() else {
            return v;
        };
        let strs = |r: &[IpNetwork]| -> Value { r.iter().map(|p| p.to_string()).collect() };
        if self.version.approves() {
            let subnet: Vec<IpNetwork> = if with_subnet_routes {
                let mut s = self.primary_of(n.id);
                s.extend(
                    n.announced
                        .iter()
                        .filter(|p| is_exit(p) && n.approved.contains(p)),
                );
                s
            } else {
                Vec::new()
            };
            obj.insert("approvedRoutes".into(), strs(&n.approved));
            obj.insert("availableRoutes".into(), strs(&n.announced));
            obj.insert("subnetRoutes".into(), strs(&subnet));
            obj.insert("tags".into(), json!([]));
        } else {
            obj.insert("forcedTags".into(), json!([]));
            obj.insert("invalidTags".into(), json!([]));
            obj.insert("validTags".into(), json!([]));
        }
        v
    }

    /// A missing node on `GET`/`DELETE /api/v1/node/{id}`: ≤ 0.25 HTTP 500 `record not found`
    /// (gorm), ≥ 0.26 HTTP 404 `node not found` (`hscontrol/grpcv1.go`; main
    /// `hscontrol/api/v1/nodes.go` `huma.Error404NotFound("node not found")`).
    pub(super) fn missing_node(&self) -> Fail {
        if self.version.approves() {
            (5, "node not found".to_string()).into()
        } else {
            (2, "record not found".to_string()).into()
        }
    }
}
