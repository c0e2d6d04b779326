//! [`HeadscaleControl`]: the coordination hook on the fake's state that a fake tailscaled, a
//! stand-in process or a test uses (register nodes, announce routes, approvals, policy).

use std::sync::{Arc, Mutex, MutexGuard};

use headcni_headscale::time::{format_unix, parse_rfc3339, unix_now};
use ipnetwork::IpNetwork;
use tokio::sync::watch;

use super::acl::{Policy, PolicyRefused};
use super::options::{FakeApiVersion, FakeHeadscaleOptions, NodeView, PreAuthKeyView};
use super::state::{FKey, PersistedState, State, empty_view, now, rand_hex};
use crate::server::{BoxFut, Handler, Req};

/// Cloneable handle on a [`FakeHeadscale`](super::FakeHeadscale)'s state: the coordination hook a fake tailscaled
/// (or a test) uses to register nodes, announce routes and read primaries and peers.
#[derive(Clone, Debug)]
pub struct HeadscaleControl {
    pub(super) state: Arc<Mutex<State>>,
    pub(super) url: String,
    pub(super) changes: Arc<watch::Sender<u64>>,
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
            (None, v) if v.at_least_0_28() => {
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bumps the change generation (see [`HeadscaleControl::subscribe`]).
    pub(super) fn changed(&self) {
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

    /// A fresh pre-auth key string in the imitated version's format (`hskey-auth-…` from
    /// 0.28 on, 48 hex digits before); not stored (see [`HeadscaleControl::ensure_preauth_key`]).
    pub fn generate_preauth_key(&self) -> String {
        if self.lock().version.at_least_0_28() {
            format!("hskey-auth-{}-{}", rand_hex(6), rand_hex(24))
        } else {
            rand_hex(24)
        }
    }

    /// A request handler serving the REST API (for [`crate::server::tcp_loop`]).
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
    /// be unexpired, and unused unless reusable. Errors carry Headscale's messages. The node
    /// requests no tags (see [`HeadscaleControl::register_with_auth_key_requesting_tags`]).
    pub fn register_with_auth_key(
        &self,
        key: &str,
        hostname: &str,
        node_key: &str,
    ) -> Result<NodeView, String> {
        self.register_with_auth_key_requesting_tags(key, hostname, node_key, &[])
    }

    /// [`HeadscaleControl::register_with_auth_key`] for a node whose `Hostinfo.RequestTags`
    /// (tailscaled's `AdvertiseTags` pref, `tailscale up --advertise-tags`) is `request_tags`.
    /// From 0.28 on Headscale refuses any tag request with a pre-auth key — the key's own
    /// `aclTags` decide — with `requested tags [tag:a tag:b] are invalid or not permitted`
    /// (`hscontrol/state/state.go` `HandleNodeFromPreAuthKey` at v0.28.0/v0.29.2/main,
    /// `ErrRequestedTagsInvalidOrNotPermitted` in `hscontrol/state/tags.go`). Before 0.28 the
    /// request is accepted at registration (tags are then checked against `tagOwners`, which
    /// this fake does not model).
    pub fn register_with_auth_key_requesting_tags(
        &self,
        key: &str,
        hostname: &str,
        node_key: &str,
        request_tags: &[String],
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
        if s.version.at_least_0_28() && !request_tags.is_empty() {
            return Err(format!(
                "requested tags [{}] are invalid or not permitted",
                request_tags.join(" ")
            ));
        }
        s.keys[idx].used = true;
        let uid = match k.user_id {
            Some(u) => u,
            None => s.user_id_by_name("tagged-devices"),
        };
        let id = s.add_node(hostname, uid, node_key.to_string(), Some(k.id));
        // The key's aclTags become the node's tags (Headscale `auth.go`).
        if let Some(n) = s.nodes.get_mut(&id) {
            n.tags = k.acl_tags.clone();
        }
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

    /// Loads a Headscale policy (HuJSON) as the server does on start or reload: parsed and
    /// validated for the fake's policy generation (an invalid policy is refused and the
    /// current one kept, as Headscale keeps serving the old policy), then auto-approval runs
    /// for every node.
    ///
    /// Errors: [`PolicyRefused`] with Headscale's reason.
    pub fn set_policy(&self, text: &str) -> Result<(), PolicyRefused> {
        let mut s = self.lock();
        let policy = Policy::parse(text, s.policy_version)?;
        s.policy = Some(policy);
        s.policy_text = Some(text.to_string());
        let ids: Vec<u64> = s.nodes.keys().copied().collect();
        for id in ids {
            s.auto_approve(id);
        }
        s.recompute();
        drop(s);
        self.changed();
        Ok(())
    }

    /// Removes the policy (no auto-approval; every peer and route visible). Approvals already
    /// made stay, as in Headscale.
    pub fn clear_policy(&self) {
        let mut s = self.lock();
        s.policy = None;
        s.policy_text = None;
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

    /// The peers node `id` sees in its netmap, filtered by the policy's ACL: peers either
    /// side may reach, each with only the primary routes `id` may reach (Headscale ≥ 0.26;
    /// `hscontrol/policy/policy.go` `ReduceRoutes`). Without a policy: every other node.
    pub fn peers_of(&self, id: u64) -> Vec<NodeView> {
        self.lock().peers_view(id)
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
}
