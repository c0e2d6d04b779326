//! The `/api/v1/…` REST operations of every generation: the dispatch table (which operation
//! exists in which generation, with its swagger template) and the node, user and pre-auth key
//! handlers. The route operations are in [`super::routes_api`].

use std::collections::BTreeMap;

use headcni_headscale::time::{format_unix, parse_rfc3339};
use http::Method;
use serde_json::{Value, json};

use super::options::FakeApiVersion;
use super::state::{FKey, State, ZERO_TIME, now, rand_hex};

/// A handler's answer: the JSON body, or a gRPC (code, message).
pub(super) type HResult = Result<Value, (i32, String)>;

impl State {
    pub(super) fn node_by_path(&self, id: &str) -> Result<u64, (i32, String)> {
        let id: u64 = id.parse().map_err(|_| {
            (
                3,
                format!("type mismatch, parameter: node_id, error: {id:?}"),
            )
        })?;
        if self.nodes.contains_key(&id) {
            Ok(id)
        } else {
            Err(self.missing_node())
        }
    }

    pub(super) fn list_nodes(&self, user: Option<&str>) -> HResult {
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
            return Err((3, "user name must not be empty".to_string()));
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err((
                2,
                "creating user: UNIQUE constraint failed: users.name".to_string(),
            ));
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

    pub(super) fn create_preauth_key(&mut self, body: &Value) -> HResult {
        let user = body.get("user").and_then(Value::as_str).unwrap_or_default();
        let acl_tags: Vec<String> = body
            .get("aclTags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let user_id = if self.version.approves() {
            if user.is_empty() || user == "0" {
                if acl_tags.is_empty() || !matches!(self.version, FakeApiVersion::V0_29) {
                    return Err((
                        2,
                        "auth-key must be either tagged or owned by user".to_string(),
                    ));
                }
                None
            } else {
                let id: u64 = user
                    .parse()
                    .map_err(|_| (3, format!("invalid value for uint64 field user: {user:?}")))?;
                if !self.users.iter().any(|u| u.id == id) {
                    return Err((2, "user not found".to_string()));
                }
                Some(id)
            }
        } else {
            match self.users.iter().find(|u| u.name == user) {
                Some(u) => Some(u.id),
                None => return Err((2, "user not found".to_string())),
            }
        };
        // Without `expiration` Headscale stores the zero time: the key is born expired.
        let expiration = match body.get("expiration").and_then(Value::as_str) {
            Some(e) => {
                let secs = parse_rfc3339(e).ok_or_else(|| (3, format!("bad expiration {e:?}")))?;
                format_unix(secs)
            }
            None => ZERO_TIME.to_string(),
        };
        let key = match self.version {
            FakeApiVersion::V0_29 => format!("hskey-auth-{}-{}", rand_hex(6), rand_hex(24)),
            _ => rand_hex(24),
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
        let not_found = Err((5, "Not Found".to_string()));
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
                self.node_by_path(id)
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
                    _ => Err((2, "record not found".to_string())),
                };
                (Some("/api/v1/routes/{routeId}"), r)
            }
            ("GET", ["user"]) => (Some("/api/v1/user"), self.list_users(q)),
            ("POST", ["user"]) => (Some("/api/v1/user"), self.create_user(body)),
            ("GET", ["preauthkey"]) => (Some("/api/v1/preauthkey"), self.list_preauth_keys(q)),
            ("POST", ["preauthkey"]) => (Some("/api/v1/preauthkey"), self.create_preauth_key(body)),
            ("GET", ["health"]) if matches!(v, FakeApiVersion::V0_29) => (
                Some("/api/v1/health"),
                if self.healthy {
                    Ok(json!({"databaseConnectivity": true}))
                } else {
                    Err((2, "database ping failed".to_string()))
                },
            ),
            _ => (None, not_found),
        }
    }
}
