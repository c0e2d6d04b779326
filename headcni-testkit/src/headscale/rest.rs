//! The `/api/v1/…` REST operations of every generation: the dispatch table (which operation
//! exists in which generation, with its swagger template) and the node, user and pre-auth key
//! handlers. The route operations are in [`super::routes_api`].

use std::collections::BTreeMap;

use headcni_headscale::time::{format_unix, parse_rfc3339};
use http::Method;
use serde_json::{Value, json};

use http::StatusCode;

use super::json::Fail;
use super::state::{FKey, State, ZERO_TIME, now, rand_hex};

/// A handler's answer: the JSON body, or a [`Fail`] rendered per generation.
pub(super) type HResult = Result<Value, Fail>;

/// Headscale's `validateTag` for pre-auth key ACL tags (0.25–0.29 `hscontrol/grpcv1.go`,
/// main `hscontrol/api/v1/tags.go`): `tag:` prefix, lower case, no spaces.
fn validate_tag(tag: &str) -> Result<(), &'static str> {
    if !tag.starts_with("tag:") {
        Err("tag must start with the string 'tag:'")
    } else if tag.to_lowercase() != tag {
        Err("tag should be lowercase")
    } else if tag.split_whitespace().count() > 1 {
        Err("tags must not contain spaces")
    } else {
        Ok(())
    }
}

impl State {
    /// A request field of the wrong JSON type: protojson's decode error (HTTP 400
    /// InvalidArgument, grpc-gateway) or huma's schema validation (HTTP 422, main).
    fn bad_field(&self, field: &str, expected: &'static str) -> Fail {
        Fail::from((
            3,
            format!("proto: syntax error: invalid value for field {field}"),
        ))
        .with_huma(StatusCode::UNPROCESSABLE_ENTITY, expected)
    }

    /// The `{nodeId}` path parameter of an existing node ([`State::missing_node`] else).
    pub(super) fn node_by_path(&self, id: &str) -> Result<u64, Fail> {
        let id = self.parse_node_id(id)?;
        if self.nodes.contains_key(&id) {
            Ok(id)
        } else {
            Err(self.missing_node())
        }
    }

    /// The `{nodeId}` path parameter as a uint64 (HTTP 400 otherwise, every version).
    pub(super) fn parse_node_id(&self, id: &str) -> Result<u64, Fail> {
        // grpc-gateway `runtime.Uint64` / main `parseNodeID`: the strconv error in the message.
        let id: u64 = id.parse().map_err(|_| {
            Fail::from((
                3,
                format!(
                    "type mismatch, parameter: node_id, error: strconv.ParseUint: parsing {id:?}: invalid syntax"
                ),
            ))
        })?;
        Ok(id)
    }

    /// `GET /api/v1/node[?user=NAME]`. An unknown user is an error, not an empty list:
    /// `GetUserByName`'s `user not found` returned as a plain error — gRPC Unknown, HTTP 500 —
    /// on 0.25–0.29 (`hscontrol/grpcv1.go` `ListNodes`, `hscontrol/db/users.go`), and
    /// `mapError("listing nodes", ErrUserNotFound)` — HTTP 404 — on main
    /// (`hscontrol/api/v1/nodes.go`).
    pub(super) fn list_nodes(&self, user: Option<&str>) -> HResult {
        if let Some(u) = user.filter(|u| !u.is_empty())
            && !self.users.iter().any(|x| x.name == u)
        {
            return Err(Fail::from((2, "user not found".to_string()))
                .with_huma(StatusCode::NOT_FOUND, "listing nodes"));
        }
        let nodes: Vec<Value> = self
            .nodes
            .values()
            .filter(|n| {
                user.is_none_or(|u| self.users.iter().any(|x| x.id == n.user_id && x.name == u))
            })
            .map(|n| self.node_json(n, true))
            .collect();
        Ok(json!({ "nodes": nodes }))
    }

    pub(super) fn create_user(&mut self, body: &Value) -> HResult {
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            return Err((3, "user name must not be empty".to_string()).into());
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err((
                2,
                "creating user: UNIQUE constraint failed: users.name".to_string(),
            )
                .into());
        }
        let id = self.user_id_by_name(name);
        Ok(json!({ "user": self.user_json(id) }))
    }

    pub(super) fn list_users(&self, q: &BTreeMap<String, String>) -> HResult {
        let users: Vec<Value> = self
            .users
            .iter()
            .filter(|u| q.get("name").is_none_or(|n| n.is_empty() || *n == u.name))
            .filter(|u| {
                q.get("id")
                    .is_none_or(|i| i.is_empty() || *i == u.id.to_string())
            })
            .map(|u| self.user_json(u.id))
            .collect();
        Ok(json!({ "users": users }))
    }

    /// `POST /api/v1/preauthkey` `{user, reusable, ephemeral, expiration, aclTags}`, per
    /// version (`hscontrol/grpcv1.go` `CreatePreAuthKey` at v0.25.1/v0.26.1/v0.28.0/v0.29.2,
    /// main `hscontrol/api/v1/preauthkeys.go`, `hscontrol/db/preauth_keys.go`):
    /// - every `aclTags` entry is checked first ([`validate_tag`]: HTTP 400 InvalidArgument;
    ///   main 400 `invalid tag`);
    /// - `user` is the user **name** on ≤ 0.25 (a JSON string); a protojson uint64 (decimal
    ///   string or number) on 0.26–0.29; a JSON **string** holding the id on main (a number
    ///   fails huma's schema: 422), where a non-decimal string is 400 `invalid user id`;
    /// - an unknown user is `user not found` (gRPC Unknown → 500; main 404 `creating pre-auth
    ///   key`);
    /// - no user (`0` or absent): 0.26–0.27 look up user 0 (`user not found`); from 0.28 only a
    ///   tagged key may have no owner (`auth-key must be either tagged or owned by user`, 500;
    ///   main 400).
    pub(super) fn create_preauth_key(&mut self, body: &Value) -> HResult {
        let acl_tags: Vec<String> = match body.get("aclTags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => {
                let mut tags = Vec::with_capacity(a.len());
                for t in a {
                    let Some(t) = t.as_str() else {
                        return Err(self.bad_field("aclTags", "expected string"));
                    };
                    tags.push(t.to_string());
                }
                tags
            }
            Some(_) => return Err(self.bad_field("aclTags", "expected array")),
        };
        for t in &acl_tags {
            if let Err(m) = validate_tag(t) {
                return Err(Fail::from((3, m.to_string()))
                    .with_huma(StatusCode::BAD_REQUEST, "invalid tag"));
            }
        }
        let user_not_found = || {
            Fail::from((2, "user not found".to_string()))
                .with_huma(StatusCode::NOT_FOUND, "creating pre-auth key")
        };
        let raw = body.get("user").cloned().unwrap_or(Value::Null);
        let user_id = if self.version.approves() {
            let id: u64 = match (&raw, self.version.problem_errors()) {
                (Value::Null, _) => 0,
                (Value::String(s), _) if s.is_empty() => 0,
                (Value::String(s), true) => s.parse().map_err(|_| {
                    Fail::from((
                        3,
                        format!("strconv.ParseUint: parsing {s:?}: invalid syntax"),
                    ))
                    .with_huma(StatusCode::BAD_REQUEST, "invalid user id")
                })?,
                (Value::String(s), false) => s.parse().map_err(|_| {
                    Fail::from((3, format!("invalid value for uint64 field user: {s:?}")))
                })?,
                (Value::Number(n), false) => n.as_u64().ok_or_else(|| {
                    Fail::from((3, format!("invalid value for uint64 field user: {n}")))
                })?,
                _ => return Err(self.bad_field("user", "expected string")),
            };
            if id == 0 {
                if !self.version.at_least_0_28() {
                    return Err(user_not_found());
                }
                if acl_tags.is_empty() {
                    return Err(Fail::from((
                        2,
                        "auth-key must be either tagged or owned by user".to_string(),
                    ))
                    .with_huma(StatusCode::BAD_REQUEST, "creating pre-auth key"));
                }
                None
            } else if self.users.iter().any(|u| u.id == id) {
                Some(id)
            } else {
                return Err(user_not_found());
            }
        } else {
            let name = match &raw {
                Value::Null => "",
                Value::String(s) => s.as_str(),
                _ => return Err(self.bad_field("user", "expected string")),
            };
            match self
                .users
                .iter()
                .find(|u| !name.is_empty() && u.name == name)
            {
                Some(u) => Some(u.id),
                None => return Err(user_not_found()),
            }
        };
        // Without `expiration` Headscale stores the zero time: the key is born expired.
        let expiration = match body.get("expiration").and_then(Value::as_str) {
            Some(e) => {
                let secs = parse_rfc3339(e)
                    .ok_or_else(|| Fail::from((3, format!("bad expiration {e:?}"))))?;
                format_unix(secs)
            }
            None => ZERO_TIME.to_string(),
        };
        let key = if self.version.at_least_0_28() {
            format!("hskey-auth-{}-{}", rand_hex(6), rand_hex(24))
        } else {
            rand_hex(24)
        };
        let id = self.id();
        let k = FKey {
            id,
            key,
            user_id,
            reusable: body
                .get("reusable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ephemeral: body
                .get("ephemeral")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            used: false,
            expiration,
            created_at: now(),
            acl_tags,
        };
        let v = self.key_json(&k, true);
        self.keys.push(k);
        Ok(json!({ "preAuthKey": v }))
    }

    pub(super) fn list_preauth_keys(&self, q: &BTreeMap<String, String>) -> HResult {
        let filter_user = if self.version.approves() {
            None
        } else {
            q.get("user").cloned()
        };
        let keys: Vec<Value> = self
            .keys
            .iter()
            .filter(|k| {
                filter_user.as_ref().is_none_or(|name| {
                    self.users
                        .iter()
                        .any(|u| Some(u.id) == k.user_id && &u.name == name)
                })
            })
            .map(|k| self.key_json(k, false))
            .collect();
        Ok(json!({ "preAuthKeys": keys }))
    }

    /// Dispatches an authenticated `/api/v1/…` request; returns (swagger template, result).
    pub(super) fn api(
        &mut self,
        method: &Method,
        segs: &[&str],
        q: &BTreeMap<String, String>,
        body: &Value,
    ) -> (Option<&'static str>, HResult) {
        let v = self.version;
        let approves = v.approves();
        let not_found = Err((5, "Not Found".to_string()).into());
        match (method.as_str(), segs) {
            ("GET", ["node"]) => (
                Some("/api/v1/node"),
                self.list_nodes(q.get("user").map(String::as_str)),
            ),
            ("GET", ["node", id]) => (
                Some("/api/v1/node/{nodeId}"),
                self.node_by_path(id).and_then(|id| {
                    let n = self.nodes.get(&id).ok_or_else(|| self.missing_node())?;
                    Ok(json!({ "node": self.node_json(n, false) }))
                }),
            ),
            ("DELETE", ["node", id]) => (
                Some("/api/v1/node/{nodeId}"),
                self.node_by_path(id).map(|id| {
                    self.nodes.remove(&id);
                    self.rows.retain(|r| r.node_id != id);
                    self.recompute();
                    json!({})
                }),
            ),
            ("POST", ["node", id, "approve_routes"]) if approves => (
                Some("/api/v1/node/{nodeId}/approve_routes"),
                self.parse_node_id(id)
                    .and_then(|id| self.approve_routes(id, body)),
            ),
            ("GET", ["node", id, "routes"]) if !approves => (
                Some("/api/v1/node/{nodeId}/routes"),
                self.node_by_path(id).map(|id| {
                    let rows: Vec<Value> = self
                        .rows
                        .iter()
                        .filter(|r| r.node_id == id)
                        .map(|r| self.route_json(r))
                        .collect();
                    json!({ "routes": rows })
                }),
            ),
            ("GET", ["routes"]) if !approves => {
                let rows: Vec<Value> = self.rows.iter().map(|r| self.route_json(r)).collect();
                (Some("/api/v1/routes"), Ok(json!({ "routes": rows })))
            }
            ("POST", ["routes", id, "enable"]) if !approves => (
                Some("/api/v1/routes/{routeId}/enable"),
                self.enable_route(id, true),
            ),
            ("POST", ["routes", id, "disable"]) if !approves => (
                Some("/api/v1/routes/{routeId}/disable"),
                self.enable_route(id, false),
            ),
            ("DELETE", ["routes", id]) if !approves => {
                let r = match id.parse::<u64>() {
                    Ok(rid) if self.rows.iter().any(|r| r.id == rid) => {
                        self.rows.retain(|r| r.id != rid);
                        self.recompute();
                        Ok(json!({}))
                    }
                    _ => Err((2, "record not found".to_string()).into()),
                };
                (Some("/api/v1/routes/{routeId}"), r)
            }
            ("GET", ["user"]) => (Some("/api/v1/user"), self.list_users(q)),
            ("POST", ["user"]) => (Some("/api/v1/user"), self.create_user(body)),
            ("GET", ["preauthkey"]) => (Some("/api/v1/preauthkey"), self.list_preauth_keys(q)),
            ("POST", ["preauthkey"]) => (Some("/api/v1/preauthkey"), self.create_preauth_key(body)),
            ("GET", ["health"]) if v.at_least_0_28() => (
                Some("/api/v1/health"),
                if self.healthy {
                    Ok(json!({"databaseConnectivity": true}))
                } else {
                    Err((2, "database ping failed".to_string()).into())
                },
            ),
            _ => (None, not_found),
        }
    }
}
