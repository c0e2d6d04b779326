//! [`FakeHeadscale`]: a test double of Headscale's REST API on `127.0.0.1:<ephemeral>`.
//!
//! Follows the behaviour documented in control-plane-apis.md §1 (Headscale v0.29.2 and
//! v0.25.1): Bearer API-key auth (401 plain text `Unauthorized`), protojson bodies (camelCase,
//! uint64 as strings, every field present, `null` for unset messages), grpc-gateway error bodies
//! `{code,message,details}`, `approve_routes` replace semantics, `subnetRoutes` only in
//! list-nodes and approve_routes, the ≤ 0.25 route rows (enable refused unless advertised,
//! un-announcing disables), pre-auth keys with the zero-time expiration pitfall, optional
//! autoApprovers, fault injection, and a coordination hook ([`HeadscaleControl`]) for
//! [`super::FakeTailscaled`].

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, StatusCode, header};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::server::{BoxFut, Handler, Req, Resp, json as json_resp, respond, tcp_loop, text};
use crate::time::{format_unix, parse_rfc3339, unix_now};

/// Which Headscale the fake imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeApiVersion {
    /// v0.29.2 (default): `/version`, `approve_routes`, `/api/v1/health`, pre-auth key `user`
    /// by id, `hskey-auth-…` keys, 404 for a missing node.
    V0_29,
    /// 0.26.x: `approve_routes` but no `/version` (and no `/api/v1/routes`).
    V0_26,
    /// v0.25.1: route rows (`/api/v1/routes`, enable/disable), pre-auth key `user` by name,
    /// HTTP 500 `record not found` for a missing node.
    V0_25,
}

impl FakeApiVersion {
    /// True for the ≥ 0.26 route model.
    pub fn approves(self) -> bool {
        !matches!(self, FakeApiVersion::V0_25)
    }

    /// The swagger file that describes this generation's JSON (`headscale-<ver>.swagger.json`).
    pub fn spec_version(self) -> &'static str {
        match self {
            FakeApiVersion::V0_25 => "0.25.1",
            _ => "0.29.2",
        }
    }
}

/// A fault applied to the next request(s) before normal handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with a grpc-gateway body `{"code":2,"message":"injected failure","details":[]}`.
    ServerError,
    /// HTTP 503 with a plain-text body, as a reverse proxy in front of Headscale answers.
    Unavailable,
    /// HTTP 401 `Unauthorized` (plain text) even with a valid key.
    Unauthorized,
    /// Sleep this long, then answer normally (drives client timeouts).
    Delay(Duration),
}

/// One request/response pair seen by the fake (the `Authorization` header is never recorded).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query, if any.
    pub query: Option<String>,
    /// The swagger path template that matched (`/api/v1/node/{nodeId}`), if any.
    pub operation: Option<&'static str>,
    /// The request body parsed as JSON (`None` when empty).
    pub request_json: Option<Value>,
    /// True when a non-empty request body was not JSON.
    pub request_not_json: bool,
    /// Response status.
    pub status: u16,
    /// The response body parsed as JSON (`None` for plain text).
    pub response_json: Option<Value>,
    /// True when a [`Fault`] produced this answer.
    pub injected: bool,
}

/// Snapshot of a fake node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node id.
    pub id: u64,
    /// Host name.
    pub name: String,
    /// Owner's user name.
    pub user: String,
    /// `nodekey:<hex>`.
    pub node_key: String,
    /// Tailnet addresses.
    pub ips: Vec<IpAddr>,
    /// Routes the node announces (`availableRoutes`).
    pub announced: Vec<IpNetwork>,
    /// Approved routes (≥ 0.26 `approvedRoutes`; ≤ 0.25 the enabled rows).
    pub approved: Vec<IpNetwork>,
    /// Routes this node serves as primary.
    pub primary: Vec<IpNetwork>,
    /// Online.
    pub online: bool,
}

/// Snapshot of a fake pre-auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthKeyView {
    /// Key id.
    pub id: u64,
    /// Owner's user id.
    pub user_id: Option<u64>,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral.
    pub ephemeral: bool,
    /// Used.
    pub used: bool,
    /// RFC 3339 expiration as stored (`0001-01-01T00:00:00Z` when none was sent).
    pub expiration: String,
    /// Expired now.
    pub expired: bool,
}

/// Options of a [`FakeHeadscale`].
#[derive(Debug, Clone)]
pub struct FakeHeadscaleOptions {
    /// API generation.
    pub version: FakeApiVersion,
    /// `autoApprovers.routes` prefixes (any approver alias matches in the fake).
    pub auto_approvers: Vec<IpNetwork>,
    /// Listen address; default `127.0.0.1:0` (ephemeral port). The lab sets a fixed one.
    pub listen: SocketAddr,
    /// The valid API key; `None` generates one in the version's format.
    pub api_key: Option<String>,
    /// Record every exchange (default true; a long-running stand-in turns it off).
    pub record_exchanges: bool,
}

impl Default for FakeHeadscaleOptions {
    fn default() -> Self {
        FakeHeadscaleOptions {
            version: FakeApiVersion::V0_29,
            auto_approvers: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            record_exchanges: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FUser {
    id: u64,
    name: String,
    created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FNode {
    id: u64,
    name: String,
    user_id: u64,
    machine_key: String,
    node_key: String,
    disco_key: String,
    announced: Vec<IpNetwork>,
    approved: Vec<IpNetwork>,
    online: bool,
    created_at: String,
    pre_auth_key: Option<u64>,
    register_method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FKey {
    id: u64,
    key: String,
    user_id: Option<u64>,
    reusable: bool,
    ephemeral: bool,
    used: bool,
    expiration: String,
    created_at: String,
    acl_tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FRoute {
    id: u64,
    node_id: u64,
    prefix: IpNetwork,
    advertised: bool,
    enabled: bool,
    created_at: String,
    updated_at: String,
}

#[derive(Debug)]
struct State {
    version: FakeApiVersion,
    api_keys: Vec<String>,
    users: Vec<FUser>,
    nodes: BTreeMap<u64, FNode>,
    keys: Vec<FKey>,
    rows: Vec<FRoute>,
    primaries: BTreeMap<IpNetwork, u64>,
    auto_approvers: Vec<IpNetwork>,
    faults: VecDeque<Fault>,
    exchanges: Vec<Exchange>,
    healthy: bool,
    next_id: u64,
    /// Node ids have their own sequence (a table of their own in Headscale): node N gets
    /// 100.64.0.N.
    next_node_id: u64,
    record_exchanges: bool,
}

/// The durable part of a fake Headscale's state (users, nodes with keys and routes, pre-auth
/// keys, API keys, route rows, primaries, autoApprovers, the id counter), as JSON-serializable
/// data: what a stand-in persists and reloads. Opaque to callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedState {
    api_keys: Vec<String>,
    users: Vec<FUser>,
    nodes: Vec<FNode>,
    keys: Vec<FKey>,
    rows: Vec<FRoute>,
    primaries: Vec<(IpNetwork, u64)>,
    auto_approvers: Vec<IpNetwork>,
    next_id: u64,
    #[serde(default)]
    next_node_id: u64,
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn now() -> String {
    format_unix(unix_now())
}

fn rand_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// A fresh `nodekey:<64 hex>`.
pub fn random_node_key() -> String {
    format!("nodekey:{}", rand_hex(32))
}

fn is_exit(p: &IpNetwork) -> bool {
    p.prefix() == 0
}

fn contains(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

fn node_ips(id: u64) -> Vec<IpAddr> {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + id as u32);
    let v6 = Ipv6Addr::from(
        u128::from(
            "fd7a:115c:a1e0::"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::UNSPECIFIED),
        ) + id as u128,
    );
    vec![IpAddr::V4(v4), IpAddr::V6(v6)]
}

fn rpc(code: i32, message: &str) -> Value {
    json!({"code": code, "message": message, "details": []})
}

fn grpc_status(code: i32) -> StatusCode {
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

type HResult = Result<Value, (i32, String)>;

impl State {
    fn new(opts: &FakeHeadscaleOptions) -> Self {
        State {
            version: opts.version,
            api_keys: Vec::new(),
            users: Vec::new(),
            nodes: BTreeMap::new(),
            keys: Vec::new(),
            rows: Vec::new(),
            primaries: BTreeMap::new(),
            auto_approvers: opts.auto_approvers.clone(),
            faults: VecDeque::new(),
            exchanges: Vec::new(),
            healthy: true,
            next_id: 1,
            next_node_id: 1,
            record_exchanges: opts.record_exchanges,
        }
    }

    fn export(&self) -> PersistedState {
        PersistedState {
            api_keys: self.api_keys.clone(),
            users: self.users.clone(),
            nodes: self.nodes.values().cloned().collect(),
            keys: self.keys.clone(),
            rows: self.rows.clone(),
            primaries: self.primaries.iter().map(|(p, n)| (*p, *n)).collect(),
            auto_approvers: self.auto_approvers.clone(),
            next_id: self.next_id,
            next_node_id: self.next_node_id,
        }
    }

    fn import(&mut self, p: PersistedState) {
        self.api_keys = p.api_keys;
        self.users = p.users;
        self.nodes = p.nodes.into_iter().map(|n| (n.id, n)).collect();
        self.keys = p.keys;
        self.rows = p.rows;
        self.primaries = p.primaries.into_iter().collect();
        self.auto_approvers = p.auto_approvers;
        self.next_id = p.next_id.max(1);
        let after_nodes = self.nodes.keys().max().map_or(1, |m| m + 1);
        self.next_node_id = p.next_node_id.max(after_nodes);
    }

    fn id(&mut self) -> u64 {
        let i = self.next_id;
        self.next_id += 1;
        i
    }

    // ---- route model ----

    fn approved_of(&self, n: &FNode) -> Vec<IpNetwork> {
        if self.version.approves() {
            n.approved.clone()
        } else {
            self.rows
                .iter()
                .filter(|r| r.node_id == n.id && r.enabled)
                .map(|r| r.prefix)
                .collect()
        }
    }

    fn primary_of(&self, id: u64) -> Vec<IpNetwork> {
        self.primaries
            .iter()
            .filter(|(_, n)| **n == id)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Headscale types/node.go: a subnet route is served when announced ∩ approved; per prefix
    /// one online node is primary (the current one while it stays eligible, else the lowest id).
    fn recompute(&mut self) {
        let mut candidates: BTreeMap<IpNetwork, Vec<u64>> = BTreeMap::new();
        for n in self.nodes.values() {
            if !n.online {
                continue;
            }
            let approved = self.approved_of(n);
            for p in n
                .announced
                .iter()
                .filter(|p| !is_exit(p) && approved.contains(p))
            {
                candidates.entry(*p).or_default().push(n.id);
            }
        }
        let mut prim = BTreeMap::new();
        for (p, ids) in candidates {
            let keep = self
                .primaries
                .get(&p)
                .filter(|cur| ids.contains(cur))
                .copied();
            if let Some(id) = keep.or_else(|| ids.iter().min().copied()) {
                prim.insert(p, id);
            }
        }
        self.primaries = prim;
    }

    fn auto_approve(&mut self, node_id: u64) {
        let approvers = self.auto_approvers.clone();
        if approvers.is_empty() {
            return;
        }
        let Some(n) = self.nodes.get(&node_id) else {
            return;
        };
        let eligible: Vec<IpNetwork> = n
            .announced
            .iter()
            .filter(|p| !is_exit(p) && approvers.iter().any(|a| contains(a, p)))
            .copied()
            .collect();
        if self.version.approves() {
            if let Some(n) = self.nodes.get_mut(&node_id) {
                for p in eligible {
                    if !n.approved.contains(&p) {
                        n.approved.push(p);
                    }
                }
            }
        } else {
            let t = now();
            for r in self
                .rows
                .iter_mut()
                .filter(|r| r.node_id == node_id && r.advertised && !r.enabled)
            {
                if eligible.contains(&r.prefix) {
                    r.enabled = true;
                    r.updated_at = t.clone();
                }
            }
        }
    }

    fn announce(&mut self, node_id: u64, routes: &[IpNetwork]) {
        let Some(n) = self.nodes.get_mut(&node_id) else {
            return;
        };
        n.announced = routes.to_vec();
        if !self.version.approves() {
            // db/routes.go SaveNodeRoutes: new prefixes get a row (advertised, disabled);
            // prefixes no longer announced become advertised=false AND enabled=false.
            let t = now();
            for r in self.rows.iter_mut().filter(|r| r.node_id == node_id) {
                let adv = routes.contains(&r.prefix);
                if r.advertised != adv || (!adv && r.enabled) {
                    r.advertised = adv;
                    if !adv {
                        r.enabled = false;
                    }
                    r.updated_at = t.clone();
                }
            }
            for p in routes {
                if !self
                    .rows
                    .iter()
                    .any(|r| r.node_id == node_id && r.prefix == *p)
                {
                    let id = self.id();
                    self.rows.push(FRoute {
                        id,
                        node_id,
                        prefix: *p,
                        advertised: true,
                        enabled: false,
                        created_at: t.clone(),
                        updated_at: t.clone(),
                    });
                }
            }
        }
        self.auto_approve(node_id);
        self.recompute();
    }

    fn add_node(&mut self, name: &str, user_id: u64, node_key: String, key: Option<u64>) -> u64 {
        let id = self.next_node_id;
        self.next_node_id += 1;
        self.nodes.insert(
            id,
            FNode {
                id,
                name: name.to_string(),
                user_id,
                machine_key: format!("mkey:{}", rand_hex(32)),
                node_key,
                disco_key: format!("discokey:{}", rand_hex(32)),
                announced: Vec::new(),
                approved: Vec::new(),
                online: true,
                created_at: now(),
                pre_auth_key: key,
                register_method: if key.is_some() {
                    "REGISTER_METHOD_AUTH_KEY"
                } else {
                    "REGISTER_METHOD_CLI"
                }
                .to_string(),
            },
        );
        id
    }

    fn user_id_by_name(&mut self, name: &str) -> u64 {
        if let Some(u) = self.users.iter().find(|u| u.name == name) {
            return u.id;
        }
        let id = self.id();
        self.users.push(FUser {
            id,
            name: name.to_string(),
            created_at: now(),
        });
        id
    }

    fn view(&self, n: &FNode) -> NodeView {
        NodeView {
            id: n.id,
            name: n.name.clone(),
            user: self
                .users
                .iter()
                .find(|u| u.id == n.user_id)
                .map(|u| u.name.clone())
                .unwrap_or_default(),
            node_key: n.node_key.clone(),
            ips: node_ips(n.id),
            announced: n.announced.clone(),
            approved: self.approved_of(n),
            primary: self.primary_of(n.id),
            online: n.online,
        }
    }

    // ---- JSON (protojson shapes per generation) ----

    fn user_json(&self, id: u64) -> Value {
        match self.users.iter().find(|u| u.id == id) {
            Some(u) => json!({
                "id": u.id.to_string(), "name": u.name, "createdAt": u.created_at,
                "displayName": "", "email": "", "providerId": "", "provider": "cli",
                "profilePicUrl": ""
            }),
            None => Value::Null,
        }
    }

    fn key_json(&self, k: &FKey, full_key: bool) -> Value {
        let shown = if full_key || !matches!(self.version, FakeApiVersion::V0_29) {
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

    fn node_json(&self, n: &FNode, with_subnet_routes: bool) -> Value {
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

    fn route_json(&self, r: &FRoute) -> Value {
        let node = self
            .nodes
            .get(&r.node_id)
            .map(|n| self.node_json(n, false))
            .unwrap_or(Value::Null);
        json!({
            "id": r.id.to_string(), "node": node, "prefix": r.prefix.to_string(),
            "advertised": r.advertised, "enabled": r.enabled,
            "isPrimary": self.primaries.get(&r.prefix) == Some(&r.node_id),
            "createdAt": r.created_at, "updatedAt": r.updated_at, "deletedAt": Value::Null
        })
    }

    fn missing_node(&self) -> (i32, String) {
        if self.version.approves() {
            (5, "node not found".to_string())
        } else {
            (2, "record not found".to_string())
        }
    }

    // ---- handlers ----

    fn node_by_path(&self, id: &str) -> Result<u64, (i32, String)> {
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

    fn list_nodes(&self, user: Option<&str>) -> HResult {
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

    fn approve_routes(&mut self, id: u64, body: &Value) -> HResult {
        let mut routes = Vec::new();
        let list = body
            .get("routes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for r in list {
            let s = r.as_str().unwrap_or_default();
            let p: IpNetwork = s
                .parse()
                .map_err(|e| (2, format!("parsing route: netip.ParsePrefix({s:?}): {e}")))?;
            // 0.0.0.0/0 or ::/0 expands to both exit routes.
            let expanded: Vec<IpNetwork> = if is_exit(&p) {
                vec![
                    "0.0.0.0/0"
                        .parse()
                        .map_err(|_| (13, "internal".to_string()))?,
                    "::/0".parse().map_err(|_| (13, "internal".to_string()))?,
                ]
            } else {
                vec![p]
            };
            for e in expanded {
                if !routes.contains(&e) {
                    routes.push(e);
                }
            }
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.approved = routes;
        }
        self.recompute();
        let n = self.nodes.get(&id).ok_or_else(|| self.missing_node())?;
        Ok(json!({ "node": self.node_json(n, true) }))
    }

    fn enable_route(&mut self, rid: &str, enable: bool) -> HResult {
        let rid: u64 = rid.parse().map_err(|_| (3, "bad route id".to_string()))?;
        let Some(idx) = self.rows.iter().position(|r| r.id == rid) else {
            return Err((2, "record not found".to_string()));
        };
        let (node_id, prefix, advertised) = {
            let r = &self.rows[idx];
            (r.node_id, r.prefix, r.advertised)
        };
        if enable && !advertised {
            return Err((
                2,
                format!(
                    "route {prefix} is not available on node {node_id}: route is not advertised"
                ),
            ));
        }
        let t = now();
        for r in self.rows.iter_mut().filter(|r| {
            r.node_id == node_id && (r.id == rid || (is_exit(&prefix) && is_exit(&r.prefix)))
        }) {
            r.enabled = enable;
            r.updated_at = t.clone();
        }
        self.recompute();
        Ok(json!({}))
    }

    fn create_user(&mut self, body: &Value) -> HResult {
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

    fn list_users(&self, q: &BTreeMap<String, String>) -> HResult {
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

    fn create_preauth_key(&mut self, body: &Value) -> HResult {
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

    fn list_preauth_keys(&self, q: &BTreeMap<String, String>) -> HResult {
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
    fn api(
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

/// Cloneable handle on a [`FakeHeadscale`]'s state: the coordination hook a fake tailscaled
/// (or a test) uses to register nodes, announce routes and read primaries and peers.
#[derive(Clone, Debug)]
pub struct HeadscaleControl {
    state: Arc<Mutex<State>>,
    url: String,
    changes: Arc<watch::Sender<u64>>,
}

impl HeadscaleControl {
    /// A control state without a server (the caller serves [`HeadscaleControl::handle`],
    /// e.g. a stand-in process on its own listener): `url` is what [`HeadscaleControl::url`]
    /// reports; `persisted` (from [`HeadscaleControl::export_state`]) is loaded when given.
    /// The API key `opts.api_key` (generated in the version's format when `None`) is added to
    /// the valid keys and returned.
    pub fn new(
        opts: &FakeHeadscaleOptions,
        persisted: Option<PersistedState>,
        url: String,
    ) -> (HeadscaleControl, String) {
        let api_key = match (&opts.api_key, opts.version) {
            (Some(k), _) => k.clone(),
            (None, FakeApiVersion::V0_29) => {
                format!("hskey-api-{}-{}", rand_hex(6), rand_hex(24))
            }
            (None, _) => format!("{}.{}", rand_hex(5), rand_hex(24)),
        };
        let mut state = State::new(opts);
        if let Some(p) = persisted {
            state.import(p);
        }
        if !state.api_keys.contains(&api_key) {
            state.api_keys.push(api_key.clone());
        }
        let (tx, _rx) = watch::channel(0u64);
        let control = HeadscaleControl {
            state: Arc::new(Mutex::new(state)),
            url,
            changes: Arc::new(tx),
        };
        (control, api_key)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bumps the change generation (see [`HeadscaleControl::subscribe`]).
    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver of the change generation: bumped after every state change (any non-GET
    /// REST request, and every mutating method of this handle). Stand-ins use it to persist
    /// the state and to wake map long-polls.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The current change generation.
    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// The durable state (see [`PersistedState`]).
    pub fn export_state(&self) -> PersistedState {
        self.lock().export()
    }

    /// The node whose `nodeKey` is `node_key`, if registered.
    pub fn node_by_key(&self, node_key: &str) -> Option<NodeView> {
        let s = self.lock();
        s.nodes
            .values()
            .find(|n| n.node_key == node_key)
            .map(|n| s.view(n))
    }

    /// Makes sure the pre-auth key `key` exists (a key read from a file: inserted when the
    /// state does not know it) for user `user` (created when missing), with these flags and
    /// `expiration` (Unix seconds). An existing key is left as it is. Returns its id.
    pub fn ensure_preauth_key(
        &self,
        key: &str,
        user: &str,
        reusable: bool,
        ephemeral: bool,
        expiration: i64,
    ) -> u64 {
        let mut s = self.lock();
        if let Some(k) = s.keys.iter().find(|k| k.key == key) {
            return k.id;
        }
        let uid = s.user_id_by_name(user);
        let id = s.id();
        s.keys.push(FKey {
            id,
            key: key.to_string(),
            user_id: Some(uid),
            reusable,
            ephemeral,
            used: false,
            expiration: format_unix(expiration),
            created_at: now(),
            acl_tags: Vec::new(),
        });
        drop(s);
        self.changed();
        id
    }

    /// A fresh pre-auth key string in the imitated version's format (`hskey-auth-…` for
    /// 0.29, 48 hex digits before); not stored (see [`HeadscaleControl::ensure_preauth_key`]).
    pub fn generate_preauth_key(&self) -> String {
        match self.lock().version {
            FakeApiVersion::V0_29 => format!("hskey-auth-{}-{}", rand_hex(6), rand_hex(24)),
            _ => rand_hex(24),
        }
    }

    /// A request handler serving the REST API (for [`super::server::tcp_loop`]).
    pub fn handler(&self) -> Handler {
        let c2 = self.clone();
        Arc::new(move |req: Req| -> BoxFut {
            let c = c2.clone();
            Box::pin(c.handle(req))
        })
    }

    /// The fake's base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The imitated generation.
    pub fn version(&self) -> FakeApiVersion {
        self.lock().version
    }

    /// Creates (or finds) a user; returns its id.
    pub fn create_user(&self, name: &str) -> u64 {
        let id = self.lock().user_id_by_name(name);
        self.changed();
        id
    }

    /// Registers a node directly (as `headscale nodes register` would); the user is created
    /// when missing. Returns the new node.
    pub fn register_node(&self, hostname: &str, user: &str, node_key: &str) -> NodeView {
        let mut s = self.lock();
        let uid = s.user_id_by_name(user);
        let id = s.add_node(hostname, uid, node_key.to_string(), None);
        let n = s.nodes.get(&id).cloned();
        let v = n.map(|n| s.view(&n)).unwrap_or_else(|| empty_view(id));
        drop(s);
        self.changed();
        v
    }

    /// Registers a node with a pre-auth key, as the control protocol does: the key must exist,
    /// be unexpired, and unused unless reusable. Errors carry Headscale's messages.
    pub fn register_with_auth_key(
        &self,
        key: &str,
        hostname: &str,
        node_key: &str,
    ) -> Result<NodeView, String> {
        let mut s = self.lock();
        let now = unix_now();
        let Some(idx) = s.keys.iter().position(|k| k.key == key) else {
            return Err("invalid authkey".to_string());
        };
        let k = s.keys[idx].clone();
        if parse_rfc3339(&k.expiration).is_none_or(|e| e <= now) {
            return Err("authkey expired".to_string());
        }
        if k.used && !k.reusable {
            return Err("authkey already used".to_string());
        }
        s.keys[idx].used = true;
        let uid = match k.user_id {
            Some(u) => u,
            None => s.user_id_by_name("tagged-devices"),
        };
        let id = s.add_node(hostname, uid, node_key.to_string(), Some(k.id));
        let n = s.nodes.get(&id).cloned();
        let v = n.map(|n| s.view(&n)).unwrap_or_else(|| empty_view(id));
        drop(s);
        self.changed();
        Ok(v)
    }

    /// The node announces `routes` (its `Hostinfo.RoutableIPs`, i.e. tailscaled's
    /// `AdvertiseRoutes`). Runs auto-approval and primary election.
    pub fn announce_routes(&self, node_id: u64, routes: &[IpNetwork]) {
        self.lock().announce(node_id, routes);
        self.changed();
    }

    /// Admin approval outside the API (≥ 0.26: replaces `approvedRoutes`; ≤ 0.25: enables the
    /// node's advertised rows for these prefixes and disables the others).
    pub fn set_approved(&self, node_id: u64, routes: &[IpNetwork]) {
        let mut s = self.lock();
        if s.version.approves() {
            if let Some(n) = s.nodes.get_mut(&node_id) {
                n.approved = routes.to_vec();
            }
        } else {
            for r in s.rows.iter_mut().filter(|r| r.node_id == node_id) {
                r.enabled = r.advertised && routes.contains(&r.prefix);
            }
        }
        s.recompute();
        drop(s);
        self.changed();
    }

    /// Marks a node online/offline (offline nodes lose their primaries).
    pub fn set_online(&self, node_id: u64, online: bool) {
        let mut s = self.lock();
        if let Some(n) = s.nodes.get_mut(&node_id) {
            n.online = online;
        }
        s.recompute();
        drop(s);
        self.changed();
    }

    /// Replaces the policy's `autoApprovers.routes` and re-runs auto-approval for every node
    /// (as a policy reload does).
    pub fn set_auto_approvers(&self, prefixes: &[IpNetwork]) {
        let mut s = self.lock();
        s.auto_approvers = prefixes.to_vec();
        let ids: Vec<u64> = s.nodes.keys().copied().collect();
        for id in ids {
            s.auto_approve(id);
        }
        s.recompute();
        drop(s);
        self.changed();
    }

    /// A node snapshot.
    pub fn node(&self, id: u64) -> Option<NodeView> {
        let s = self.lock();
        s.nodes.get(&id).map(|n| s.view(n))
    }

    /// All nodes, by id.
    pub fn nodes(&self) -> Vec<NodeView> {
        let s = self.lock();
        s.nodes.values().map(|n| s.view(n)).collect()
    }

    /// Every node except `id` (no ACLs in the fake: all peers are visible).
    pub fn peers_of(&self, id: u64) -> Vec<NodeView> {
        let s = self.lock();
        s.nodes
            .values()
            .filter(|n| n.id != id)
            .map(|n| s.view(n))
            .collect()
    }

    /// Pre-auth keys.
    pub fn preauth_keys(&self) -> Vec<PreAuthKeyView> {
        let s = self.lock();
        let now = unix_now();
        s.keys
            .iter()
            .map(|k| PreAuthKeyView {
                id: k.id,
                user_id: k.user_id,
                reusable: k.reusable,
                ephemeral: k.ephemeral,
                used: k.used,
                expiration: k.expiration.clone(),
                expired: parse_rfc3339(&k.expiration).is_none_or(|e| e <= now),
            })
            .collect()
    }

    /// Queues `count` copies of `fault` for the next requests (any path).
    pub fn inject(&self, fault: Fault, count: usize) {
        let mut s = self.lock();
        for _ in 0..count {
            s.faults.push_back(fault.clone());
        }
    }

    /// Drops queued faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every exchange so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.lock().exchanges.clone()
    }

    /// Forgets recorded exchanges.
    pub fn clear_exchanges(&self) {
        self.lock().exchanges.clear();
    }

    /// Adds a valid API key.
    pub fn add_api_key(&self, key: &str) {
        self.lock().api_keys.push(key.to_string());
        self.changed();
    }

    /// Revokes every API key (all authenticated calls answer 401 afterwards).
    pub fn revoke_api_keys(&self) {
        self.lock().api_keys.clear();
        self.changed();
    }

    /// Database health for `/health` and `/api/v1/health`.
    pub fn set_healthy(&self, healthy: bool) {
        self.lock().healthy = healthy;
    }

    /// Answers one REST request (`/health`, `/version`, `/api/v1/…`) exactly as the fake's
    /// own server does; records the exchange when enabled; bumps the change generation after
    /// every non-GET request.
    pub async fn handle(self, req: Req) -> Resp {
        let fault = self.lock().faults.pop_front();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(String::from);
        let request_json: Option<Value> = if req.body.is_empty() {
            None
        } else {
            serde_json::from_slice(&req.body).ok()
        };
        let request_not_json = !req.body.is_empty() && request_json.is_none();
        let mut ex = Exchange {
            method: req.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            operation: None,
            request_json: request_json.clone(),
            request_not_json,
            status: 0,
            response_json: None,
            injected: false,
        };
        let resp = match fault {
            Some(Fault::ServerError) => {
                ex.injected = true;
                json_resp(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &rpc(2, "injected failure"),
                )
            }
            Some(Fault::Unavailable) => {
                ex.injected = true;
                text(StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable")
            }
            Some(Fault::Unauthorized) => {
                ex.injected = true;
                text(StatusCode::UNAUTHORIZED, "Unauthorized")
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.route(&req, &path, query.as_deref(), request_json, &mut ex)
            }
            None => self.route(&req, &path, query.as_deref(), request_json, &mut ex),
        };
        ex.status = resp.status().as_u16();
        if ex.injected && resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
            ex.response_json = Some(rpc(2, "injected failure"));
        }
        {
            let mut s = self.lock();
            if s.record_exchanges {
                s.exchanges.push(ex);
            }
        }
        if req.method != Method::GET {
            self.changed();
        }
        resp
    }

    fn route(
        &self,
        req: &Req,
        path: &str,
        query: Option<&str>,
        body: Option<Value>,
        ex: &mut Exchange,
    ) -> Resp {
        let mut s = self.lock();
        if path == "/health" && req.method == Method::GET {
            let (st, v) = if s.healthy {
                (StatusCode::OK, json!({"status": "pass"}))
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"status": "fail"}))
            };
            return respond(st, "application/health+json", v.to_string());
        }
        if path == "/version" && req.method == Method::GET {
            if matches!(s.version, FakeApiVersion::V0_29) {
                let v = json!({
                    "version": "v0.29.2", "commit": "8eea89488c642f3d5f617fab5493d5f51f6f4ad0",
                    "buildTime": "2026-07-01T00:00:00Z",
                    "go": {"version": "go1.25", "os": "linux", "arch": "amd64"}, "dirty": false
                });
                return json_resp(StatusCode::OK, &v);
            }
            return text(StatusCode::NOT_FOUND, "404 page not found");
        }
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return text(StatusCode::NOT_FOUND, "404 page not found");
        };
        let authorized = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| s.api_keys.iter().any(|x| x == k));
        if !authorized {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let segs: Vec<&str> = rest.split('/').filter(|x| !x.is_empty()).collect();
        let q: BTreeMap<String, String> = query
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (pct_decode(k), pct_decode(v))
            })
            .collect();
        let body = body.unwrap_or_else(|| json!({}));
        let (op, res) = s.api(&req.method, &segs, &q, &body);
        ex.operation = op;
        let (status, v) = match res {
            Ok(v) => (StatusCode::OK, v),
            Err((code, msg)) => (grpc_status(code), rpc(code, &msg)),
        };
        ex.response_json = Some(v.clone());
        json_resp(status, &v)
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn empty_view(id: u64) -> NodeView {
    NodeView {
        id,
        name: String::new(),
        user: String::new(),
        node_key: String::new(),
        ips: Vec::new(),
        announced: Vec::new(),
        approved: Vec::new(),
        primary: Vec::new(),
        online: false,
    }
}

/// A fake Headscale REST server (test double). Stops when dropped.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use headcni_headscale::testing::{FakeHeadscale, FakeHeadscaleOptions};
/// let hs = FakeHeadscale::start(FakeHeadscaleOptions::default()).await?;
/// let url = hs.url().to_string(); // http://127.0.0.1:<port>
/// let key = hs.api_key().to_string(); // a valid Bearer key
/// # let _ = (url, key); Ok(()) }
/// ```
pub struct FakeHeadscale {
    control: HeadscaleControl,
    addr: SocketAddr,
    api_key: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeHeadscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHeadscale")
            .field("addr", &self.addr)
            .finish()
    }
}

impl std::ops::Deref for FakeHeadscale {
    type Target = HeadscaleControl;
    fn deref(&self) -> &HeadscaleControl {
        &self.control
    }
}

impl Drop for FakeHeadscale {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHeadscale {
    /// Binds [`FakeHeadscaleOptions::listen`] (default `127.0.0.1:0`) and serves in a
    /// background task of the current tokio runtime. Unless given, a valid API key is
    /// generated (see [`FakeHeadscale::api_key`]).
    pub async fn start(opts: FakeHeadscaleOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let (control, api_key) = HeadscaleControl::new(&opts, None, format!("http://{addr}"));
        let task = tokio::spawn(tcp_loop(listener, control.handler()));
        Ok(FakeHeadscale {
            control,
            addr,
            api_key,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A valid API key (a test value, not a [`crate::secret::Secret`]).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// A cloneable handle on the state (for a [`super::FakeTailscaled`]).
    pub fn control(&self) -> HeadscaleControl {
        self.control.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(pct_decode("a%20b+c"), "a b c");
        assert_eq!(pct_decode("100%"), "100%");
        assert_eq!(pct_decode("%zz"), "%zz");
    }

    #[test]
    fn containment() {
        let a: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let b: IpNetwork = "10.244.1.0/24".parse().unwrap();
        assert!(contains(&a, &b));
        assert!(!contains(&b, &a));
    }
}
