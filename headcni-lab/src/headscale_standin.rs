//! The Headscale stand-in process (a **test double**, see `docs/lab-standins.md`).
//!
//! `headscale-standin --listen ADDR:PORT --state-file PATH --api-key-file PATH
//! [--preauth-key-file PATH] [--user NAME] [--api main|0.29|0.26|0.25] [--policy PATH]
//! [--policy-version V]`
//!
//! - serves Headscale's REST API with the very code of
//!   [`headcni_testkit::FakeHeadscale`] ([`HeadscaleControl::handle`]), plus the
//!   coordination role ([`crate::coord`]) under `/lab/coord/v1/`;
//! - persists the whole state (fake state + node endpoints) to `--state-file` (0600, temp
//!   file + rename) after every change and reloads it at start;
//! - logs one line per request to stderr (method, path, status, duration; never headers or
//!   bodies, so never keys); SIGTERM/SIGINT: final save, exit 0;
//! - counts requests by route, served on `GET /lab/debug/requests`
//!   ([`crate::request_stats`], for `bench/scale.sh`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use headcni_testkit::server::{BoxFut, Handler, Req, Resp, json as json_resp, tcp_loop};
use headcni_testkit::{
    FakeApiVersion, FakeHeadscaleOptions, HeadscaleControl, NodeView, PersistedState,
};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::coord::{
    self, CoordErrorBody, Hostinfo, MAP_LONG_POLL, Netmap, NetmapNode, OFFLINE_AFTER,
    RegisterRequest, Registered,
};
use crate::request_stats::RequestStats;

/// Command line of `headscale-standin`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "headscale-standin",
    about = "Test double of Headscale for HeadCNI's lab"
)]
pub struct Args {
    /// Listen address (REST API and coordination), e.g. 10.99.0.1:8080.
    #[arg(long)]
    pub listen: SocketAddr,
    /// State file (JSON, 0600), reloaded at start.
    #[arg(long)]
    pub state_file: PathBuf,
    /// API key file: read when present, else a key is generated and written (0600).
    #[arg(long)]
    pub api_key_file: PathBuf,
    /// Pre-auth key file: reusable, non-ephemeral key for `--user`, 24 h; created when absent.
    #[arg(long)]
    pub preauth_key_file: Option<PathBuf>,
    /// User owning the pre-auth key.
    #[arg(long, default_value = "lab")]
    pub user: String,
    /// Imitated API generation: main (0.30), 0.29, 0.26 or 0.25.
    #[arg(long, default_value = "0.29")]
    pub api: String,
    /// Headscale policy file (HuJSON), validated and evaluated as the server of `--api`'s
    /// generation does (`--policy-version` overrides): autoApprovers, ACL-filtered peers and
    /// routes in the netmaps. An invalid policy stops the start.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The policy generation: 0.25, 0.26, 0.27, 0.28, 0.29 or main (default: `--api`'s).
    #[arg(long)]
    pub policy_version: Option<String>,
    /// Headscale `dns.base_domain`: node `N`'s MagicDNS name is `N.<base domain>`; carried
    /// in the netmaps' DNS config.
    #[arg(long)]
    pub base_domain: Option<String>,
    /// Headscale `dns.magic_dns` (tailcfg `DNSConfig.Proxied`). As Headscale
    /// (`dnsToTailcfgDNS`), refused at start without `--base-domain`.
    #[arg(long)]
    pub magic_dns: bool,
}

/// What `--state-file` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    headscale: PersistedState,
    /// Node id → underlay endpoints.
    endpoints: BTreeMap<u64, Vec<SocketAddr>>,
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file and a rename.
///
/// Errors: any I/O error, with the path.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

#[derive(Debug, Default)]
struct Session {
    active: usize,
    last: Option<Instant>,
}

/// The coordination side of the stand-in.
#[derive(Debug)]
struct Coord {
    control: HeadscaleControl,
    endpoints: Mutex<BTreeMap<u64, Vec<SocketAddr>>>,
    sessions: Mutex<BTreeMap<u64, Session>>,
    generation: watch::Sender<u64>,
    started: Instant,
    dns: crate::coord::NetmapDns,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn err(status: StatusCode, msg: &str) -> Resp {
    let body = serde_json::to_value(CoordErrorBody {
        error: msg.to_string(),
    })
    .unwrap_or(Value::Null);
    json_resp(status, &body)
}

fn ok<T: Serialize>(v: &T) -> Resp {
    json_resp(
        StatusCode::OK,
        &serde_json::to_value(v).unwrap_or(Value::Null),
    )
}

impl Coord {
    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn touch(&self, id: u64) {
        lock(&self.sessions).entry(id).or_default().last = Some(Instant::now());
    }

    fn netmap_node(&self, n: &NodeView) -> NetmapNode {
        NetmapNode {
            id: n.id,
            hostname: n.name.clone(),
            node_key: n.node_key.clone(),
            endpoints: lock(&self.endpoints)
                .get(&n.id)
                .cloned()
                .unwrap_or_default(),
            tailnet_ips: n.ips.clone(),
            primary_routes: n.primary.clone(),
            online: n.online,
        }
    }

    /// Applies a node's hostinfo: endpoints, routable IPs, online.
    fn apply_hostinfo(&self, id: u64, info: &Hostinfo) {
        let changed = {
            let mut eps = lock(&self.endpoints);
            let old = eps.insert(id, info.endpoints.clone());
            old.as_ref() != Some(&info.endpoints)
        };
        self.touch(id);
        let node = self.control.node(id);
        if node.as_ref().is_some_and(|n| !n.online) {
            self.control.set_online(id, true);
        }
        if node
            .as_ref()
            .is_none_or(|n| n.announced != info.routable_ips)
        {
            self.control.announce_routes(id, &info.routable_ips);
        }
        if changed {
            self.bump();
        }
    }

    fn body<T: serde::de::DeserializeOwned>(req: &Req) -> Result<T, Box<Resp>> {
        serde_json::from_slice(&req.body).map_err(|e| {
            Box::new(err(
                StatusCode::BAD_REQUEST,
                &format!("bad request body: {e}"),
            ))
        })
    }

    async fn handle(self: Arc<Self>, req: Req) -> Resp {
        let name = req
            .uri
            .path()
            .strip_prefix(coord::PREFIX)
            .unwrap_or_default()
            .to_string();
        match (req.method.clone(), name.as_str()) {
            (Method::POST, "register") => {
                let r: RegisterRequest = match Self::body(&req) {
                    Ok(r) => r,
                    Err(e) => return *e,
                };
                let id = match self.control.node_by_key(&r.hostinfo.node_key) {
                    Some(n) => n.id,
                    None => match self.control.register_with_auth_key_requesting_tags(
                        &r.auth_key,
                        &r.hostinfo.hostname,
                        &r.hostinfo.node_key,
                        &r.hostinfo.request_tags,
                    ) {
                        Ok(n) => n.id,
                        Err(e) => return err(StatusCode::FORBIDDEN, &e),
                    },
                };
                self.apply_hostinfo(id, &r.hostinfo);
                ok(&Registered { node_id: id })
            }
            (Method::POST, "attach" | "hostinfo") => {
                let info: Hostinfo = match Self::body(&req) {
                    Ok(r) => r,
                    Err(e) => return *e,
                };
                match self.control.node_by_key(&info.node_key) {
                    Some(n) => {
                        self.apply_hostinfo(n.id, &info);
                        ok(&Registered { node_id: n.id })
                    }
                    None => err(StatusCode::NOT_FOUND, "node not found"),
                }
            }
            (Method::POST, "logout") => {
                let info: Hostinfo = match Self::body(&req) {
                    Ok(r) => r,
                    Err(e) => return *e,
                };
                if let Some(n) = self.control.node_by_key(&info.node_key) {
                    self.control.announce_routes(n.id, &[]);
                    self.control.set_online(n.id, false);
                    lock(&self.sessions).remove(&n.id);
                }
                ok(&json!({}))
            }
            (Method::GET, "map") => self.map(&req).await,
            _ => err(StatusCode::NOT_FOUND, "unknown coordination call"),
        }
    }

    async fn map(self: Arc<Self>, req: &Req) -> Resp {
        let mut node_key = String::new();
        let mut since = None;
        for kv in req.uri.query().unwrap_or_default().split('&') {
            match kv.split_once('=') {
                Some(("node_key", v)) => node_key = v.to_string(),
                Some(("since", v)) => since = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let Some(me) = self.control.node_by_key(&node_key) else {
            return err(StatusCode::NOT_FOUND, "node not found");
        };
        {
            let mut s = lock(&self.sessions);
            let e = s.entry(me.id).or_default();
            e.active += 1;
            e.last = Some(Instant::now());
        }
        if !me.online {
            self.control.set_online(me.id, true);
        }
        let mut rx = self.generation.subscribe();
        if since == Some(*rx.borrow_and_update()) {
            let _ = tokio::time::timeout(MAP_LONG_POLL, rx.changed()).await;
        }
        let generation = *self.generation.borrow();
        {
            let mut s = lock(&self.sessions);
            let e = s.entry(me.id).or_default();
            e.active = e.active.saturating_sub(1);
            e.last = Some(Instant::now());
        }
        let Some(me) = self.control.node(me.id) else {
            return err(StatusCode::NOT_FOUND, "node not found");
        };
        let peers = self
            .control
            .peers_of(me.id)
            .iter()
            .map(|p| self.netmap_node(p))
            .collect();
        ok(&Netmap {
            generation,
            self_node: self.netmap_node(&me),
            peers,
            dns: self.dns.clone(),
        })
    }

    /// Marks nodes without map activity for [`OFFLINE_AFTER`] offline.
    fn reap(&self) {
        let now = Instant::now();
        for n in self.control.nodes() {
            if !n.online {
                continue;
            }
            let stale = {
                let s = lock(&self.sessions);
                match s.get(&n.id) {
                    Some(sess) if sess.active > 0 => false,
                    Some(sess) => sess
                        .last
                        .is_none_or(|l| now.duration_since(l) > OFFLINE_AFTER),
                    None => now.duration_since(self.started) > OFFLINE_AFTER,
                }
            };
            if stale {
                tracing::info!(node = n.id, "map session gone: node offline");
                self.control.set_online(n.id, false);
            }
        }
    }

    fn snapshot(&self) -> StateFile {
        StateFile {
            headscale: self.control.export_state(),
            endpoints: lock(&self.endpoints).clone(),
        }
    }
}

fn api_version(s: &str) -> anyhow::Result<FakeApiVersion> {
    Ok(match s.trim_start_matches('v') {
        "main" | "0.30" => FakeApiVersion::V0_30,
        "0.29" | "0.29.2" => FakeApiVersion::V0_29,
        "0.26" => FakeApiVersion::V0_26,
        "0.25" | "0.25.1" => FakeApiVersion::V0_25,
        other => bail!("--api {other}: expected main, 0.29, 0.26 or 0.25"),
    })
}

fn read_trimmed(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Runs the stand-in until SIGTERM/SIGINT (then returns `Ok(())`).
///
/// Errors: unreadable/invalid files, a listen address that cannot be bound.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let version = api_version(&args.api)?;
    if args.magic_dns && args.base_domain.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!("dns.base_domain must be set when using MagicDNS (dns.magic_dns)");
    }
    let persisted: Option<StateFile> = match std::fs::read(&args.state_file) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("parse state file {}", args.state_file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("read {}", args.state_file.display()));
        }
    };
    let api_key = read_trimmed(&args.api_key_file)?;
    let opts = FakeHeadscaleOptions {
        version,
        listen: args.listen,
        api_key: api_key.clone(),
        record_exchanges: false,
        policy_version: args
            .policy_version
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--policy-version: {e}"))?,
        ..FakeHeadscaleOptions::default()
    };
    // Bound now (the address goes into the state), but listening only once the key files are
    // written: a client that waits for the port may then read them at once (as Headscale's
    // operators read the key it printed before serving).
    let socket = if args.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("creating the listening socket")?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(args.listen)
        .with_context(|| format!("bind {}", args.listen))?;
    let addr = socket.local_addr()?;
    let (endpoints, hs_state) = match persisted {
        Some(p) => (p.endpoints, Some(p.headscale)),
        None => (BTreeMap::new(), None),
    };
    let reloaded = hs_state.is_some();
    let (control, key) = HeadscaleControl::new(&opts, hs_state, format!("http://{addr}"));
    if api_key.is_none() {
        write_private(&args.api_key_file, format!("{key}\n").as_bytes())?;
    }
    if let Some(policy) = &args.policy {
        let text = std::fs::read_to_string(policy)
            .with_context(|| format!("read policy {}", policy.display()))?;
        // Validated and evaluated as Headscale does; an invalid policy stops the start, as
        // it stops Headscale's.
        control
            .set_policy(&text)
            .map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.display()))?;
    }
    if let Some(path) = &args.preauth_key_file {
        let expiry = headcni_headscale_time_now() + 24 * 3600;
        match read_trimmed(path)? {
            Some(k) => {
                control.ensure_preauth_key(&k, &args.user, true, false, expiry);
            }
            None => {
                let k = control.generate_preauth_key();
                control.ensure_preauth_key(&k, &args.user, true, false, expiry);
                write_private(path, format!("{k}\n").as_bytes())?;
            }
        }
    }
    control.create_user(&args.user);
    let (gen_tx, _) = watch::channel(0u64);
    let coord = Arc::new(Coord {
        control: control.clone(),
        endpoints: Mutex::new(endpoints),
        sessions: Mutex::new(BTreeMap::new()),
        generation: gen_tx,
        started: Instant::now(),
        dns: crate::coord::NetmapDns {
            base_domain: args.base_domain.clone().filter(|d| !d.is_empty()),
            magic_dns: args.magic_dns,
        },
    });
    let state_file = args.state_file.clone();
    let save = {
        let coord = coord.clone();
        move || {
            let snap = coord.snapshot();
            match serde_json::to_vec_pretty(&snap) {
                Ok(b) => {
                    if let Err(e) = write_private(&state_file, &b) {
                        tracing::error!(error = %format!("{e:#}"), "saving state failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "encoding state failed"),
            }
        }
    };
    save();
    // Fake changes → coordination generation (wakes map long-polls) and persistence.
    {
        let coord = coord.clone();
        let mut rx = control.subscribe();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                coord.bump();
            }
        });
    }
    {
        let mut rx = coord.generation.subscribe();
        let save = save.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                rx.borrow_and_update();
                save();
            }
        });
    }
    {
        let coord = coord.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                coord.reap();
            }
        });
    }
    let rest = control.handler();
    let stats = Arc::new(RequestStats::new());
    let handler: Handler = Arc::new(move |req: Req| -> BoxFut {
        let coord = coord.clone();
        let rest = rest.clone();
        let stats = stats.clone();
        Box::pin(async move {
            if let Some(resp) = stats.observe(&req) {
                return resp;
            }
            let t0 = Instant::now();
            let method = req.method.clone();
            let path = req.uri.path().to_string();
            let resp = if path.starts_with(coord::PREFIX) {
                coord.handle(req).await
            } else {
                rest(req).await
            };
            eprintln!(
                "headscale-standin: {method} {path} -> {} ({} ms)",
                resp.status().as_u16(),
                t0.elapsed().as_millis()
            );
            resp
        })
    });
    let listener = socket
        .listen(1024)
        .with_context(|| format!("listen {addr}"))?;
    tracing::info!(%addr, reloaded, version = ?version, "headscale stand-in listening");
    eprintln!("headscale-standin: listening on {addr} (state reloaded: {reloaded})");
    let server = tokio::spawn(tcp_loop(listener, handler));
    wait_for_signal().await?;
    server.abort();
    save();
    eprintln!("headscale-standin: stopped");
    Ok(())
}

fn headcni_headscale_time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Waits for SIGTERM or SIGINT.
///
/// Errors: the signal handlers cannot be installed.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
