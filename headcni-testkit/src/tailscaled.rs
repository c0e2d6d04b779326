//! [`FakeTailscaled`]: a test double of tailscaled's LocalAPI on a unix socket.
//!
//! Enforces the real rules (tailscale/tailscale v1.102.3 `ipn/localapi/localapi.go`,
//! `ipn/prefs.go`, `ipn/ipnlocal/local.go`): `Host` must be empty or `local-tailscaled.sock`
//! and requests with `Referer`/`Origin` are refused (403, text); `PATCH prefs` applies only
//! fields whose `<Field>Set` is true, replaces lists, and answers 400 `{"Error":…}` for an
//! unmasked `AdvertiseRoutes` prefix, and decodes bodies with Go's `encoding/json` rules
//! (`opt.Bool` only `true`/`false`/`null`, mistyped fields refused, unknown keys ignored:
//! `tailscaled_json`); `start` replaces all prefs except the identity; status
//! reports `Self.ID`/`PublicKey`/`PrimaryRoutes` and peers from the attached
//! [`crate::FakeHeadscale`].
//!
//! The rules live in [`LocalApi`] (a request handler over shared state and a
//! [`TailnetControl`]), so the lab's tailscaled stand-in process serves exactly the same
//! LocalAPI as [`FakeTailscaled`].

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, StatusCode, header};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::headscale::{HeadscaleControl, NodeView, random_node_key};
use crate::server::{BoxFut, Handler, Req, Resp, json as json_resp, no_content, text, unix_loop};
use headcni_headscale::localapi::{NetfilterMode, OptBool, Prefs};

#[path = "tailscaled_bus.rs"]
mod bus;

/// How many [`LocalApiRequest`]s a [`LocalApi`] keeps (the oldest are dropped).
const MAX_RECORDED: usize = 10_000;

/// Which tailscaled a [`LocalApi`] imitates: the prefs fields differ between releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TailscaledVersion {
    /// 1.62/1.64 (the clients Headscale 0.25–0.27 support): `ipn.Prefs` has no
    /// `NoStatefulFiltering` (added in 1.66.0 by tailscale commit c28f5767b, `ipn/prefs.go`;
    /// absent at v1.62.1 and v1.64.2). `GET prefs` omits it, and a `PATCH` carrying
    /// `NoStatefulFiltering`/`NoStatefulFilteringSet` succeeds without changing anything
    /// (unknown JSON keys are ignored by `encoding/json`).
    V1_64,
    /// v1.102.3 (default).
    #[default]
    V1_102,
}

impl TailscaledVersion {
    /// Prefs fields this version does not have.
    fn missing_fields(self) -> &'static [&'static str] {
        match self {
            TailscaledVersion::V1_64 => &["NoStatefulFiltering"],
            TailscaledVersion::V1_102 => &[],
        }
    }

    /// `Status.Version`.
    fn status_version(self) -> &'static str {
        match self {
            TailscaledVersion::V1_64 => "1.64.2-fake",
            TailscaledVersion::V1_102 => "1.102.3-fake",
        }
    }
}

/// The result of [`TailnetControl::login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Registered synchronously: this is the node.
    Registered(NodeView),
    /// Registration runs in the background; the control reports through
    /// [`LocalApi::complete_login`] (`BackendState` is `Starting` meanwhile).
    Pending,
    /// Refused (Headscale's message, e.g. `invalid authkey`).
    Failed(String),
}

/// What a LocalAPI needs from the coordination server: in-process for [`FakeTailscaled`]
/// ([`HeadscaleControl`]), over the lab's coordination protocol for the tailscaled stand-in.
/// Every method is called with the LocalAPI's state locked: it must not block on I/O.
pub trait TailnetControl: Send + Sync + std::fmt::Debug {
    /// Log in with a pre-auth key as `hostname` with `node_key` (`nodekey:<hex>`) at
    /// `control_url` (the `ControlURL` pref), requesting `request_tags` (the `AdvertiseTags`
    /// pref, sent as `Hostinfo.RequestTags`).
    fn login(
        &self,
        control_url: &str,
        auth_key: &str,
        hostname: &str,
        node_key: &str,
        request_tags: &[String],
    ) -> LoginOutcome;
    /// The node's hostinfo routable IPs changed (`AdvertiseRoutes` while `WantRunning`).
    fn announce_routes(&self, node_id: u64, routes: &[IpNetwork]);
    /// Logout: withdraw routes and go offline.
    fn logout(&self, node_id: u64);
    /// The latest view of the node itself.
    fn node(&self, id: u64) -> Option<NodeView>;
    /// The latest view of its peers.
    fn peers_of(&self, id: u64) -> Vec<NodeView>;
    /// A fresh node key after a logout (default: a random `nodekey:`).
    fn new_node_key(&self) -> String {
        random_node_key()
    }
    /// A receiver bumped whenever the netmap may have changed (the IPN bus follows it);
    /// `None`: the bus sees only the LocalAPI's own changes.
    fn netmap_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

impl TailnetControl for HeadscaleControl {
    fn login(
        &self,
        _url: &str,
        auth_key: &str,
        hostname: &str,
        node_key: &str,
        request_tags: &[String],
    ) -> LoginOutcome {
        match self.register_with_auth_key_requesting_tags(
            auth_key,
            hostname,
            node_key,
            request_tags,
        ) {
            Ok(n) => LoginOutcome::Registered(n),
            Err(e) => LoginOutcome::Failed(e),
        }
    }

    fn announce_routes(&self, node_id: u64, routes: &[IpNetwork]) {
        HeadscaleControl::announce_routes(self, node_id, routes);
    }

    fn logout(&self, node_id: u64) {
        HeadscaleControl::announce_routes(self, node_id, &[]);
        self.set_online(node_id, false);
    }

    fn node(&self, id: u64) -> Option<NodeView> {
        HeadscaleControl::node(self, id)
    }

    fn peers_of(&self, id: u64) -> Vec<NodeView> {
        HeadscaleControl::peers_of(self, id)
    }

    fn netmap_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.subscribe())
    }
}

/// One LocalAPI request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalApiRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Host` header (empty when absent).
    pub host: String,
    /// A `Referer` or `Origin` header was present.
    pub had_referer_or_origin: bool,
    /// The answer's status.
    pub status: u16,
    /// The request body as JSON, when it was JSON.
    pub body: Option<Value>,
}

#[derive(Debug)]
struct TsState {
    prefs: Prefs,
    backend_state: String,
    node_key: String,
    node_id: Option<u64>,
    hostname: String,
    headscale: Option<Arc<dyn TailnetControl>>,
    pending_auth_key: Option<String>,
    health: Vec<String>,
    requests: Vec<LocalApiRequest>,
    concurrent_writes: VecDeque<Vec<IpNetwork>>,
    overwrite_after_patch: VecDeque<Vec<IpNetwork>>,
    write_denied: bool,
    delay: Option<Duration>,
    version: TailscaledVersion,
    /// `watch-ipn-bus` is served (false: 404, a tailscaled older than v1.34).
    ipn_bus: bool,
}

/// The prefs of a fresh tailscaled on Linux (`ipn.NewPrefs`): `WantRunning` false until
/// `start`, `CorpDNS` true, `NetfilterMode` on, `NoStatefulFiltering` unset, and a few of the
/// fields HeadCNI does not model (kept untouched by PATCHes that do not set them).
pub fn default_prefs() -> Prefs {
    let mut other = BTreeMap::new();
    for (k, v) in [
        ("ExitNodeID", json!("")),
        ("ExitNodeIP", json!("")),
        ("ExitNodeAllowLANAccess", json!(false)),
        ("RunSSH", json!(false)),
        ("RunWebClient", json!(false)),
        ("LoggedOut", json!(false)),
        ("OperatorUser", json!("")),
        ("ProfileName", json!("")),
        ("AutoUpdate", json!({"Check": true, "Apply": null})),
        ("PostureChecking", json!(false)),
        ("AppConnector", json!({"Advertise": false})),
    ] {
        other.insert(k.to_string(), v);
    }
    Prefs {
        control_url: "https://controlplane.tailscale.com".to_string(),
        route_all: false,
        corp_dns: true,
        want_running: false,
        shields_up: false,
        advertise_tags: Vec::new(),
        hostname: String::new(),
        advertise_routes: Vec::new(),
        no_snat: false,
        no_stateful_filtering: OptBool::Unset,
        netfilter_mode: NetfilterMode::On,
        other,
    }
}

enum PatchError {
    /// JSON decode failure: 400 text (as `http.Error`).
    Decode(String),
    /// EditPrefs validation: 400 `{"Error":…}`.
    Edit(String),
}

fn check_prefs(p: &Prefs) -> Result<(), String> {
    for r in &p.advertise_routes {
        if r.ip() != r.network() {
            return Err(format!(
                "{r} has non-address bits set; expected {}/{}",
                r.network(),
                r.prefix()
            ));
        }
    }
    Ok(())
}

/// `ipn.MaskedPrefs.ApplyEdits` after Go's decoding of the body
/// ([`crate::tailscaled_json::decode_prefs`]: mistyped values refused, keys matched
/// case-insensitively, unknown keys ignored): for every known field whose `<Field>Set` is
/// true, take the field's value (its zero value when absent or `null`); lists are replaced.
fn apply_masked(
    prefs: &Prefs,
    body: &Value,
    version: TailscaledVersion,
) -> Result<Prefs, PatchError> {
    let obj = crate::tailscaled_json::decode_prefs(body, true, version.missing_fields())
        .map_err(PatchError::Decode)?;
    let cur = serde_json::to_value(prefs).map_err(|e| PatchError::Decode(e.to_string()))?;
    let Value::Object(mut map) = cur else {
        return Err(PatchError::Decode("prefs are not an object".into()));
    };
    let known: Vec<String> = map.keys().cloned().collect();
    for field in known {
        let set = obj
            .get(&format!("{field}Set"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if set {
            map.insert(
                field.clone(),
                obj.get(&field).cloned().unwrap_or(Value::Null),
            );
        }
    }
    let new: Prefs = serde_json::from_value(Value::Object(map))
        .map_err(|e| PatchError::Decode(format!("json: {e}")))?;
    check_prefs(&new).map_err(PatchError::Edit)?;
    Ok(new)
}

impl TsState {
    /// The prefs as this version's `GET prefs` shows them (fields it lacks omitted).
    fn prefs_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.prefs).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            for f in self.version.missing_fields() {
                o.remove(*f);
            }
        }
        v
    }

    /// A logged-in node settles: `Running` when `WantRunning`, else `Stopped`, and its routes
    /// are announced.
    fn settle(&mut self) {
        self.backend_state = if self.prefs.want_running {
            "Running"
        } else {
            "Stopped"
        }
        .to_string();
        self.announce();
    }

    /// A login (or re-attach) succeeded as node `id`.
    fn logged_in(&mut self, id: u64) {
        self.node_id = Some(id);
        self.health.clear();
        self.settle();
    }

    /// A login failed: back to `NeedsLogin`, the reason in `Health`.
    fn login_failed(&mut self, e: &str) {
        self.node_id = None;
        self.backend_state = "NeedsLogin".to_string();
        self.health = vec![format!("login failed: {e}")];
    }

    fn announce(&self) {
        if let (Some(hs), Some(id)) = (&self.headscale, self.node_id) {
            let routes = if self.prefs.want_running {
                self.prefs.advertise_routes.clone()
            } else {
                Vec::new()
            };
            hs.announce_routes(id, &routes);
        }
    }

    fn status_json(&self, with_peers: bool) -> Value {
        let logged_in = self.node_id.is_some() && self.headscale.is_some();
        let me = match (&self.headscale, self.node_id) {
            (Some(hs), Some(id)) => hs.node(id),
            _ => None,
        };
        let self_json = match &me {
            Some(n) => peer_json(n, self.prefs.want_running),
            None => json!({
                "ID": "", "PublicKey": if self.node_id.is_some() { self.node_key.clone() } else { String::new() },
                "HostName": self.hostname, "DNSName": "", "OS": "linux", "UserID": 0,
                "TailscaleIPs": null, "Online": false, "NodeID": 0
            }),
        };
        let peers = match (&self.headscale, self.node_id, with_peers) {
            (Some(hs), Some(id), true) => {
                let mut m = serde_json::Map::new();
                for p in hs.peers_of(id) {
                    m.insert(p.node_key.clone(), peer_json(&p, p.online));
                }
                Value::Object(m)
            }
            (_, _, true) => json!({}),
            _ => Value::Null,
        };
        let mut health = self.health.clone();
        if logged_in && !self.prefs.route_all {
            let any_routes = match (&self.headscale, self.node_id) {
                (Some(hs), Some(id)) => hs.peers_of(id).iter().any(|p| !p.primary.is_empty()),
                _ => false,
            };
            if any_routes {
                health.push(
                    "Some peers are advertising routes but --accept-routes is false".to_string(),
                );
            }
        }
        let ips: Value = me
            .as_ref()
            .map(|n| n.ips.iter().map(|i| i.to_string()).collect())
            .unwrap_or(Value::Null);
        // tailscaled goes Starting → Running when its first netmap arrives: "Running" always
        // comes with a Self node (a remote control may not have answered yet).
        let backend_state =
            if self.backend_state == "Running" && me.is_none() && self.headscale.is_some() {
                "Starting"
            } else {
                self.backend_state.as_str()
            };
        let mut v = json!({
            "Version": self.version.status_version(), "TUN": true, "BackendState": backend_state,
            "AuthURL": "", "TailscaleIPs": ips, "Self": self_json, "Health": health,
            "MagicDNSSuffix": "", "CurrentTailnet": null, "CertDomains": null, "Peer": peers,
            "User": null, "ClientVersion": null
        });
        if self.node_id.is_some()
            && let Some(o) = v.as_object_mut()
        {
            o.insert("HaveNodeKey".into(), json!(true));
        }
        v
    }
}

fn peer_json(n: &NodeView, online: bool) -> Value {
    let mut v = json!({
        "ID": n.id.to_string(), "PublicKey": n.node_key, "HostName": n.name,
        "DNSName": format!("{}.tailnet.example.", n.name), "OS": "linux", "UserID": 1,
        "TailscaleIPs": n.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "Online": online && n.online, "NodeID": n.id
    });
    let mut allowed: Vec<String> = n
        .ips
        .iter()
        .map(|i| match i {
            std::net::IpAddr::V4(a) => format!("{a}/32"),
            std::net::IpAddr::V6(a) => format!("{a}/128"),
        })
        .collect();
    allowed.extend(n.primary.iter().map(|p| p.to_string()));
    if let Some(o) = v.as_object_mut() {
        o.insert("AllowedIPs".into(), json!(allowed));
        if !n.tags.is_empty() {
            // `Tags` (omitempty): the node's ACL tags (tailscale `ipn/ipnstate/ipnstate.go`)
            o.insert("Tags".into(), json!(n.tags));
        }
        if !n.primary.is_empty() {
            // omitempty
            o.insert(
                "PrimaryRoutes".into(),
                json!(n.primary.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
            );
        }
    }
    v
}

/// How a [`LocalApi`] starts (identity and prefs as a tailscaled loads them from its state).
#[derive(Debug)]
pub struct LocalApiInit {
    /// Prefs (e.g. [`default_prefs`], or the ones persisted by a previous run).
    pub prefs: Prefs,
    /// `nodekey:<hex>` of this node.
    pub node_key: String,
    /// The Headscale node id when already registered (then `HaveNodeKey` is true).
    pub node_id: Option<u64>,
    /// `BackendState` to start in (`NeedsLogin`, `Starting`, `Running`, ...).
    pub backend_state: String,
    /// OS hostname (used when the `Hostname` pref is empty).
    pub hostname: String,
    /// The coordination server, if any.
    pub control: Option<Arc<dyn TailnetControl>>,
}

/// The LocalAPI rules over shared state: a cloneable handle serving requests
/// ([`LocalApi::handler`]) and exposing the state to the process that embeds it (the data
/// plane of the tailscaled stand-in subscribes to changes with [`LocalApi::subscribe`]).
#[derive(Clone)]
pub struct LocalApi {
    state: Arc<Mutex<TsState>>,
    changes: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for LocalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApi").finish_non_exhaustive()
    }
}

impl LocalApi {
    /// A LocalAPI in the state `init` describes. Announces the routes when logged in.
    pub fn new(init: LocalApiInit) -> LocalApi {
        let state = TsState {
            prefs: init.prefs,
            backend_state: init.backend_state,
            node_key: init.node_key,
            node_id: init.node_id,
            hostname: init.hostname,
            headscale: init.control,
            pending_auth_key: None,
            health: Vec::new(),
            requests: Vec::new(),
            concurrent_writes: VecDeque::new(),
            overwrite_after_patch: VecDeque::new(),
            write_denied: false,
            delay: None,
            version: TailscaledVersion::default(),
            ipn_bus: true,
        };
        state.announce();
        let (tx, _rx) = watch::channel(0u64);
        LocalApi {
            state: Arc::new(Mutex::new(state)),
            changes: Arc::new(tx),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver of the change generation, bumped after every write request (PATCH prefs,
    /// start, login-interactive, logout) and every state change made through this handle.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The request handler (for [`crate::server::unix_loop`]).
    pub fn handler(&self) -> Handler {
        let api = self.clone();
        Arc::new(move |req: Req| -> BoxFut {
            let api = api.clone();
            Box::pin(async move { api.handle(req).await })
        })
    }

    /// Answers one LocalAPI request (`/localapi/v0/...`) with the tailscaled rules;
    /// `watch-ipn-bus` is a streamed response ([`crate::server::Streamed`]).
    pub async fn handle(&self, req: Req) -> Resp {
        let write = req.method != Method::GET;
        let bus = req.uri.path() == "/localapi/v0/watch-ipn-bus";
        let query = req.uri.query().map(str::to_owned);
        let resp = handle(self.state.clone(), req).await;
        if bus {
            if resp.status() != StatusCode::OK {
                return resp;
            }
            let mask = bus::check(&self.lock(), query.as_deref()).unwrap_or_default();
            return self.watch(mask);
        }
        if write {
            self.changed();
        }
        resp
    }

    /// Serve the IPN bus (`true`, the default) or answer `watch-ipn-bus` with 404 as a
    /// tailscaled older than v1.34.0 does (`false`).
    pub fn set_ipn_bus(&self, served: bool) {
        self.lock().ipn_bus = served;
    }

    /// Imitate `version` from now on (default [`TailscaledVersion::V1_102`]). Switching to
    /// [`TailscaledVersion::V1_64`] drops the `NoStatefulFiltering` value.
    pub fn set_version(&self, version: TailscaledVersion) {
        {
            let mut s = self.lock();
            s.version = version;
            if version == TailscaledVersion::V1_64 {
                s.prefs.no_stateful_filtering = OptBool::Unset;
            }
        }
        self.changed();
    }

    /// Current prefs.
    pub fn prefs(&self) -> Prefs {
        self.lock().prefs.clone()
    }

    /// Replaces the prefs out of band (as `tailscale set` by an admin would) and announces.
    pub fn set_prefs(&self, prefs: Prefs) {
        {
            let mut s = self.lock();
            s.prefs = prefs;
            s.announce();
        }
        self.changed();
    }

    /// The Headscale node id once logged in.
    pub fn node_id(&self) -> Option<u64> {
        self.lock().node_id
    }

    /// This node's `nodekey:…`.
    pub fn node_key(&self) -> String {
        self.lock().node_key.clone()
    }

    /// `BackendState`.
    pub fn backend_state(&self) -> String {
        self.lock().backend_state.clone()
    }

    /// Forces `BackendState` (e.g. `Stopped`).
    pub fn set_backend_state(&self, state: &str) {
        self.lock().backend_state = state.to_string();
        self.changed();
    }

    /// Ends a [`LoginOutcome::Pending`] login (or a re-attach): `Ok(id)` makes the node
    /// logged in (`Running` when `WantRunning`, else `Stopped`) and announces its routes;
    /// `Err(msg)` returns to `NeedsLogin` with `login failed: msg` in `Health`.
    pub fn complete_login(&self, result: Result<u64, String>) {
        {
            let mut s = self.lock();
            match result {
                Ok(id) => s.logged_in(id),
                Err(e) => s.login_failed(&e),
            }
        }
        self.changed();
    }

    /// Requests seen so far (the last 10 000).
    pub fn requests(&self) -> Vec<LocalApiRequest> {
        self.lock().requests.clone()
    }
}

/// A fake tailscaled LocalAPI on a unix socket (test double). Stops and removes the socket
/// when dropped.
pub struct FakeTailscaled {
    api: LocalApi,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeTailscaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTailscaled")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Drop for FakeTailscaled {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl std::ops::Deref for FakeTailscaled {
    type Target = LocalApi;
    fn deref(&self) -> &LocalApi {
        &self.api
    }
}

impl FakeTailscaled {
    /// A fresh tailscaled (`NeedsLogin`, no node key, [`default_prefs`]) listening on `socket`
    /// (a stale socket file is replaced), coordinated by `headscale` when given.
    pub async fn start(
        socket: impl AsRef<Path>,
        headscale: Option<HeadscaleControl>,
    ) -> std::io::Result<Self> {
        let api = LocalApi::new(LocalApiInit {
            prefs: default_prefs(),
            node_key: random_node_key(),
            node_id: None,
            backend_state: "NeedsLogin".to_string(),
            hostname: "fake-node".to_string(),
            control: headscale.map(|h| Arc::new(h) as Arc<dyn TailnetControl>),
        });
        Self::serve(socket.as_ref(), api)
    }

    /// A tailscaled already logged in to `headscale` as `hostname` (user `user`), `Running`,
    /// with `prefs` (its `ControlURL` is set to the fake's URL) and announcing
    /// `prefs.AdvertiseRoutes`.
    pub async fn start_logged_in(
        socket: impl AsRef<Path>,
        headscale: HeadscaleControl,
        hostname: &str,
        user: &str,
        mut prefs: Prefs,
    ) -> std::io::Result<Self> {
        let node_key = random_node_key();
        let node = headscale.register_node(hostname, user, &node_key);
        prefs.control_url = headscale.url().to_string();
        prefs.want_running = true;
        let api = LocalApi::new(LocalApiInit {
            prefs,
            node_key,
            node_id: Some(node.id),
            backend_state: "Running".to_string(),
            hostname: hostname.to_string(),
            control: Some(Arc::new(headscale)),
        });
        Self::serve(socket.as_ref(), api)
    }

    /// A tailscaled in the state `init` describes (identity, prefs, `BackendState`, and the
    /// coordination server, e.g. a test's own [`TailnetControl`] that also feeds another
    /// double), listening on `socket`.
    pub async fn start_with(socket: impl AsRef<Path>, init: LocalApiInit) -> std::io::Result<Self> {
        Self::serve(socket.as_ref(), LocalApi::new(init))
    }

    fn serve(socket: &Path, api: LocalApi) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        let task = tokio::spawn(unix_loop(listener, api.handler()));
        Ok(FakeTailscaled {
            api,
            socket: socket.to_path_buf(),
            task,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Simulates another writer: right after the next `GET prefs` is answered, `routes` are
    /// appended to `AdvertiseRoutes` (and announced).
    pub fn inject_concurrent_route_write(&self, routes: Vec<IpNetwork>) {
        self.api.lock().concurrent_writes.push_back(routes);
    }

    /// Simulates a writer racing a PATCH: right after the next successful `PATCH prefs`,
    /// `AdvertiseRoutes` is replaced with `routes` (dropping whatever the PATCH added).
    pub fn inject_overwrite_after_patch(&self, routes: Vec<IpNetwork>) {
        self.api.lock().overwrite_after_patch.push_back(routes);
    }

    /// Refuse writes with 403 `prefs write access denied` (a non-root caller).
    pub fn set_write_denied(&self, denied: bool) {
        self.api.lock().write_denied = denied;
    }

    /// Delay every answer (drives client timeouts); `None` to stop.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.api.lock().delay = delay;
    }
}

async fn handle(state: Arc<Mutex<TsState>>, req: Req) -> Resp {
    let delay = state.lock().map(|s| s.delay).unwrap_or(None);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| req.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let had_ro =
        req.headers.contains_key(header::REFERER) || req.headers.contains_key(header::ORIGIN);
    let body: Option<Value> = if req.body.is_empty() {
        None
    } else {
        serde_json::from_slice(&req.body).ok()
    };
    let path_q = req
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let resp = route(&mut s, &req, &host, had_ro, body.as_ref());
    if s.requests.len() >= MAX_RECORDED {
        s.requests.remove(0);
    }
    s.requests.push(LocalApiRequest {
        method: req.method.to_string(),
        path: path_q,
        host,
        had_referer_or_origin: had_ro,
        status: resp.status().as_u16(),
        body,
    });
    resp
}

fn route(s: &mut TsState, req: &Req, host: &str, had_ro: bool, body: Option<&Value>) -> Resp {
    // ipn/localapi: validHost, then the Referer/Origin check.
    if !(host.is_empty() || host == headcni_headscale::localapi::LOCALAPI_HOST) {
        return text(StatusCode::FORBIDDEN, "invalid localapi Host header");
    }
    if had_ro {
        return text(StatusCode::FORBIDDEN, "invalid localapi request");
    }
    let path = req.uri.path();
    let Some(name) = path.strip_prefix("/localapi/v0/") else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    let is_write = req.method != Method::GET;
    if is_write && s.write_denied {
        return text(StatusCode::FORBIDDEN, "prefs write access denied");
    }
    match (req.method.as_str(), name) {
        ("GET", "status") => {
            let peers = !req
                .uri
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|kv| kv == "peers=false");
            json_resp(StatusCode::OK, &s.status_json(peers))
        }
        ("GET", "prefs") => {
            let v = s.prefs_json();
            if let Some(extra) = s.concurrent_writes.pop_front() {
                for r in extra {
                    if !s.prefs.advertise_routes.contains(&r) {
                        s.prefs.advertise_routes.push(r);
                    }
                }
                s.announce();
            }
            json_resp(StatusCode::OK, &v)
        }
        ("PATCH", "prefs") => {
            let Some(b) = body else {
                return text(StatusCode::BAD_REQUEST, "EOF");
            };
            match apply_masked(&s.prefs, b, s.version) {
                Ok(new) => {
                    s.prefs = new;
                    if let Some(over) = s.overwrite_after_patch.pop_front() {
                        let answer = s.prefs_json();
                        s.prefs.advertise_routes = over;
                        s.announce();
                        return json_resp(StatusCode::OK, &answer);
                    }
                    s.announce();
                    json_resp(StatusCode::OK, &s.prefs_json())
                }
                Err(PatchError::Decode(m)) => text(StatusCode::BAD_REQUEST, &m),
                Err(PatchError::Edit(m)) => {
                    json_resp(StatusCode::BAD_REQUEST, &json!({"Error": m}))
                }
            }
        }
        ("POST", "check-prefs") => {
            let r = body
                .ok_or_else(|| "EOF".to_string())
                .and_then(|b| serde_json::from_value::<Prefs>(b.clone()).map_err(|e| e.to_string()))
                .and_then(|p| check_prefs(&p));
            match r {
                Ok(()) => json_resp(StatusCode::OK, &json!({})),
                Err(e) => json_resp(StatusCode::OK, &json!({"Error": e})),
            }
        }
        ("POST", "start") => {
            let Some(b) = body else {
                return text(StatusCode::BAD_REQUEST, "EOF");
            };
            // ipn.Options: UpdatePrefs replaces every pref (missing fields = zero values).
            let up = b.get("UpdatePrefs").cloned().unwrap_or(Value::Null);
            let prefs: Prefs = if up.is_null() {
                s.prefs.clone()
            } else {
                let decoded =
                    crate::tailscaled_json::decode_prefs(&up, false, s.version.missing_fields())
                        .and_then(|m| {
                            serde_json::from_value(Value::Object(m))
                                .map_err(|e| format!("json: {e}"))
                        });
                match decoded {
                    Ok(p) => p,
                    Err(e) => return text(StatusCode::BAD_REQUEST, &e),
                }
            };
            if let Err(e) = check_prefs(&prefs) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, &e);
            }
            if let Some(h) = b
                .get("UpdatePrefs")
                .and_then(|u| u.get("Hostname"))
                .and_then(Value::as_str)
                && !h.is_empty()
            {
                s.hostname = h.to_string();
            }
            s.prefs = prefs;
            let key = b.get("AuthKey").and_then(Value::as_str).unwrap_or_default();
            if !key.is_empty() {
                s.pending_auth_key = Some(key.to_string());
            }
            if s.node_id.is_some() {
                s.settle();
            } else {
                s.backend_state = "NeedsLogin".to_string();
            }
            no_content()
        }
        ("POST", "login-interactive") => {
            if s.node_id.is_none() {
                match (s.pending_auth_key.take(), s.headscale.clone()) {
                    (Some(key), Some(hs)) => {
                        let hostname = if s.prefs.hostname.is_empty() {
                            s.hostname.clone()
                        } else {
                            s.prefs.hostname.clone()
                        };
                        let url = s.prefs.control_url.clone();
                        let tags = s.prefs.advertise_tags.clone();
                        match hs.login(&url, &key, &hostname, &s.node_key, &tags) {
                            LoginOutcome::Pending => {
                                s.backend_state = "Starting".to_string();
                            }
                            LoginOutcome::Registered(node) => s.logged_in(node.id),
                            // node_id is None here (checked above), as login_failed leaves it.
                            LoginOutcome::Failed(e) => s.login_failed(&e),
                        }
                    }
                    _ => s.backend_state = "NeedsLogin".to_string(),
                }
            }
            no_content()
        }
        ("POST", "logout") => {
            if let (Some(hs), Some(id)) = (s.headscale.clone(), s.node_id) {
                hs.logout(id);
            }
            s.node_id = None;
            s.node_key = match &s.headscale {
                Some(hs) => hs.new_node_key(),
                None => random_node_key(),
            };
            s.backend_state = "NeedsLogin".to_string();
            no_content()
        }
        // serveWatchIPNBus checks no method; the stream itself is LocalApi::watch's.
        (_, "watch-ipn-bus") => match bus::check(s, req.uri.query()) {
            Ok(_) => json_resp(StatusCode::OK, &Value::Null),
            Err((status, msg)) => text(status, msg),
        },
        (_, "status" | "prefs" | "start" | "login-interactive" | "logout" | "check-prefs") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "unsupported method")
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}
