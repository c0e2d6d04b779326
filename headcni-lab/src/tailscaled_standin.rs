//! The tailscaled stand-in process (a **test double**, see `docs/lab-standins.md`).
//!
//! `tailscaled-standin --tun=NAME --socket=PATH --statedir=DIR --port=N
//! [--no-logs-no-support] [--wireguard-go PATH] [--login-server URL --authkey-file PATH]
//! [--hostname NAME]`
//!
//! - the LocalAPI on `--socket` is [`headcni_testkit::LocalApi`] (the same rules
//!   and JSON as `FakeTailscaled`, the IPN bus included: `watch-ipn-bus` follows each new
//!   netmap; `--no-ipn-bus` answers 404 as tailscaled < 1.34), coordinated over
//!   [`crate::coord`];
//! - the data plane as tailscaled on Linux (tailscale v1.102.3, control-plane-apis.md §2.6):
//!   `wireguard-go -f NAME` configured over its UAPI socket, the tun with the node's
//!   `100.64.0.N/32` and MTU 1280 (`TS_DEBUG_MTU`), peers' AllowedIPs = tailnet IPs plus their
//!   primary routes only with `RouteAll`, the same prefixes in table 52 with rule 5270, and the
//!   `ts-*` netfilter chains ([`netfilter`]);
//! - state (`<statedir>/tailscaled.state`, 0600): the WireGuard private key (its public key is
//!   the node key), the node id and the prefs, so a restart keeps the identity;
//! - start-up cleanup of leftovers, full cleanup on SIGTERM/SIGINT, exit 0. Never logs keys;
//! - LocalAPI requests counted by route, served on the same socket at
//!   `GET /lab/debug/requests` ([`crate::request_stats`], for `bench/scale.sh`).

pub mod dns;
#[cfg(test)]
mod lock_order_tests;
pub mod netfilter;
pub mod uapi;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::policy::{Rtnl, RuleSpec};
use anyhow::Context;
use headcni_core::link::{LinkManager, RouteManager};
use headcni_headscale::localapi::{NetfilterMode, Prefs};
use headcni_netlink::NetlinkHandle;
use headcni_testkit::server::{BoxFut, Handler, Req, unix_loop};
use headcni_testkit::{
    LocalApi, LocalApiInit, LoginOutcome, NodeView, TailnetControl, TailscaledVersion,
    default_prefs,
};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::coord::{CoordClient, Hostinfo, Netmap, NetmapNode, RegisterRequest};
use crate::headscale_standin::{wait_for_signal, write_private};
use crate::request_stats::RequestStats;

/// Tailscale's route table (router_linux.go@v1.102.3).
pub const ROUTE_TABLE: u32 = 52;
/// The rule "all → table 52" (base 5200 + 70).
pub const RULE_PRIORITY: u32 = 5270;
/// Default TUN MTU (net/tstun/mtu.go@v1.102.3).
pub const DEFAULT_MTU: u32 = 1280;

/// Command line of `tailscaled-standin`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tailscaled-standin",
    about = "Test double of tailscaled for HeadCNI's lab"
)]
pub struct Args {
    /// TUN interface name.
    #[arg(long)]
    pub tun: String,
    /// LocalAPI unix socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// State directory (`tailscaled.state`, 0600).
    #[arg(long)]
    pub statedir: PathBuf,
    /// WireGuard UDP port.
    #[arg(long)]
    pub port: u16,
    /// Accepted for compatibility (no logs are uploaded anyway).
    #[arg(long)]
    pub no_logs_no_support: bool,
    /// wireguard-go binary.
    #[arg(long, default_value = "wireguard-go")]
    pub wireguard_go: PathBuf,
    /// Log in to this control server at start (`tailscale up --login-server`).
    #[arg(long, requires = "authkey_file")]
    pub login_server: Option<String>,
    /// Pre-auth key file (`tailscale up --auth-key file:PATH`).
    #[arg(long, requires = "login_server")]
    pub authkey_file: Option<PathBuf>,
    /// Host name reported to control (default: the OS host name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Imitated tailscaled: `1.102` (default) or `1.64` (no `NoStatefulFiltering` pref; see
    /// [`TailscaledVersion`]). From the environment too, since `headcni daemon` starts it with
    /// tailscaled's own flags only.
    #[arg(long, env = "HEADCNI_STANDIN_TAILSCALE_VERSION", default_value = "1.102", value_parser = parse_version)]
    pub tailscale_version: TailscaledVersion,
    /// Write `<statedir>/tailscaled.state` at start-up, before any login, as real tailscaled
    /// does (`cmd/tailscaled/tailscaled.go` → `ipn/store/stores.go` `New` creates the file).
    /// Off by default for now: `headcni daemon` still decides whether to mint a pre-auth key
    /// from that file's existence (issue 10 item 1).
    #[arg(long, env = "HEADCNI_STANDIN_WRITE_STATE_AT_START")]
    pub write_state_at_start: bool,
    /// Answer `GET /localapi/v0/watch-ipn-bus` with 404, as a tailscaled older than v1.34.0
    /// (`ipn/localapi/localapi.go` has no such route there): the daemon then polls.
    #[arg(long, env = "HEADCNI_STANDIN_NO_IPN_BUS")]
    pub no_ipn_bus: bool,
}

fn parse_version(s: &str) -> Result<TailscaledVersion, String> {
    match s {
        "1.102" | "1.102.3" => Ok(TailscaledVersion::V1_102),
        "1.62" | "1.64" | "1.64.2" => Ok(TailscaledVersion::V1_64),
        other => Err(format!("{other}: expected 1.102 or 1.64")),
    }
}

/// `<statedir>/tailscaled.state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    private_key: String,
    node_id: Option<u64>,
    prefs: Prefs,
}

fn random_secret() -> [u8; 32] {
    use rand::Rng;
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b);
    b
}

fn node_key_of(secret: &[u8; 32]) -> String {
    let s = x25519_dalek::StaticSecret::from(*secret);
    let p = x25519_dalek::PublicKey::from(&s);
    format!("nodekey:{}", uapi::hex(p.as_bytes()))
}

#[derive(Debug, Default)]
struct Shared {
    secret: [u8; 32],
    netmap: Option<Netmap>,
    client: Option<CoordClient>,
    pending_login: Option<(String, String, String)>,
    attach: bool,
    logout: Option<String>,
    routes: Vec<IpNetwork>,
    pushed: Option<(Vec<IpNetwork>, Vec<SocketAddr>)>,
}

/// The stand-in's side of [`TailnetControl`]: non-blocking, backed by the latest netmap; the
/// network calls happen in the control loop.
#[derive(Debug)]
struct Control {
    shared: Mutex<Shared>,
    wake: Notify,
    netmap_gen: watch::Sender<u64>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn view(n: &NetmapNode) -> NodeView {
    NodeView {
        id: n.id,
        name: n.hostname.clone(),
        user: String::new(),
        node_key: n.node_key.clone(),
        ips: n.tailnet_ips.clone(),
        announced: Vec::new(),
        approved: Vec::new(),
        primary: n.primary_routes.clone(),
        online: n.online,
        tags: Vec::new(),
    }
}

#[derive(Debug)]
struct ControlRef(Arc<Control>);

impl TailnetControl for ControlRef {
    /// The tags travel in the hostinfo of the `register` call (read from the prefs there).
    fn login(
        &self,
        url: &str,
        auth_key: &str,
        hostname: &str,
        _node_key: &str,
        _request_tags: &[String],
    ) -> LoginOutcome {
        if url.is_empty() {
            return LoginOutcome::Failed("no ControlURL".to_string());
        }
        self.0.lock().pending_login =
            Some((url.to_string(), auth_key.to_string(), hostname.to_string()));
        self.0.wake.notify_one();
        LoginOutcome::Pending
    }

    fn announce_routes(&self, _node_id: u64, routes: &[IpNetwork]) {
        self.0.lock().routes = routes.to_vec();
        self.0.wake.notify_one();
    }

    fn logout(&self, _node_id: u64) {
        let mut s = self.0.lock();
        s.logout = Some(node_key_of(&s.secret));
        s.netmap = None;
        s.pushed = None;
        drop(s);
        self.0.netmap_gen.send_modify(|g| *g += 1);
        self.0.wake.notify_one();
    }

    fn node(&self, id: u64) -> Option<NodeView> {
        let s = self.0.lock();
        s.netmap
            .as_ref()
            .filter(|m| m.self_node.id == id)
            .map(|m| view(&m.self_node))
    }

    fn peers_of(&self, id: u64) -> Vec<NodeView> {
        let s = self.0.lock();
        s.netmap
            .as_ref()
            .filter(|m| m.self_node.id == id)
            .map(|m| m.peers.iter().map(view).collect())
            .unwrap_or_default()
    }

    fn new_node_key(&self) -> String {
        let mut s = self.0.lock();
        s.secret = random_secret();
        node_key_of(&s.secret)
    }

    /// The IPN bus (`headcni_testkit::LocalApi`) follows each new netmap.
    fn netmap_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.0.netmap_gen.subscribe())
    }
}

/// What `tailscaled.state` holds now.
///
/// Lock order: the LocalAPI's state lock is taken before [`Control`]'s (the LocalAPI calls
/// [`TailnetControl`] with its lock held, e.g. `status` → `node`), so the [`Control`] lock is
/// never held here while the LocalAPI is asked. Holding it across `api.node_id()` (the
/// secret's guard living to the end of a struct literal) deadlocked the stand-in once two
/// threads met there: the lab's 28- and 32-node cliff (`docs/performance.md`).
fn snapshot(control: &Control, api: &LocalApi) -> Persisted {
    let secret = control.lock().secret;
    Persisted {
        private_key: uapi::hex(&secret),
        node_id: api.node_id(),
        prefs: api.prefs(),
    }
}

struct Standin {
    args: Args,
    hostname: String,
    api: LocalApi,
    control: Arc<Control>,
    nl: NetlinkHandle,
    /// Table 52, rule 5270, link up/MTU, the address listing.
    rtnl: Rtnl,
    uapi: PathBuf,
    mtu: u32,
    /// quad-100 ([`dns`]).
    magic_dns: dns::MagicDns,
}

impl Standin {
    fn state_path(&self) -> PathBuf {
        self.args.statedir.join("tailscaled.state")
    }

    fn persist(&self) {
        let p = snapshot(&self.control, &self.api);
        match serde_json::to_vec_pretty(&p) {
            Ok(b) => {
                if let Err(e) = write_private(&self.state_path(), &b) {
                    eprintln!("tailscaled-standin: saving state failed: {e:#}");
                }
            }
            Err(e) => eprintln!("tailscaled-standin: encoding state failed: {e}"),
        }
    }

    /// The node's IPv4 addresses with the WireGuard port (not the tun's, not loopback, not
    /// CGNAT), those of the default route's interface first: peers use the first endpoint
    /// (the stand-in has no disco to find a working path, as tailscaled's magicsock does), and
    /// a subnet router's other addresses (e.g. its pod bridge) are not reachable from peers.
    async fn endpoints(&self) -> Vec<SocketAddr> {
        let cgnat: IpNetwork = IpNetwork::V4(
            ipnetwork::Ipv4Network::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 10)
                .unwrap_or_else(|_| ipnetwork::Ipv4Network::from(std::net::Ipv4Addr::LOCALHOST)),
        );
        let default_dev = match self.nl.routes(None).await {
            Ok(routes) => routes
                .into_iter()
                .find(|r| {
                    r.dst.is_ipv4() && r.dst.prefix() == 0 && r.table.is_none_or(|t| t == 254)
                })
                .and_then(|r| r.dev),
            Err(e) => {
                eprintln!("tailscaled-standin: listing routes failed: {e}");
                None
            }
        };
        let mut out: Vec<(bool, SocketAddr)> = match self.rtnl.all_addresses().await {
            Ok(a) => a
                .into_iter()
                .filter(|(dev, net)| {
                    dev != &self.args.tun
                        && matches!(net.ip(), IpAddr::V4(v4) if !v4.is_loopback())
                        && !cgnat.contains(net.ip())
                })
                .map(|(dev, net)| {
                    (
                        default_dev.as_deref() != Some(dev.as_str()),
                        SocketAddr::new(net.ip(), self.args.port),
                    )
                })
                .collect(),
            Err(e) => {
                eprintln!("tailscaled-standin: listing addresses failed: {e}");
                Vec::new()
            }
        };
        out.sort();
        out.dedup();
        out.into_iter().map(|(_, a)| a).collect()
    }

    async fn hostinfo(&self) -> Hostinfo {
        let (node_key, routes) = {
            let s = self.control.lock();
            (node_key_of(&s.secret), s.routes.clone())
        };
        let prefs = self.api.prefs();
        let mut endpoints = self.endpoints().await;
        if endpoints.is_empty() {
            // A failed address listing must not withdraw the endpoints peers are using.
            if let Some((_, prev)) = &self.control.lock().pushed {
                endpoints = prev.clone();
            }
        }
        Hostinfo {
            node_key,
            hostname: if prefs.hostname.is_empty() {
                self.hostname.clone()
            } else {
                prefs.hostname
            },
            endpoints,
            routable_ips: routes,
            request_tags: prefs.advertise_tags,
        }
    }

    /// Login, re-attach, logout and hostinfo pushes.
    async fn control_loop(self: Arc<Self>) {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.control.wake.notified())
                .await;
            let (login, attach, logout) = {
                let mut s = self.control.lock();
                (s.pending_login.take(), s.attach, s.logout.take())
            };
            if let Some(old_key) = logout {
                let client = self.control.lock().client.clone();
                if let Some(c) = client {
                    let info = Hostinfo {
                        node_key: old_key,
                        ..Hostinfo::default()
                    };
                    if let Err(e) = c.logout(&info).await {
                        eprintln!("tailscaled-standin: logout: {e}");
                    }
                }
                self.persist();
            }
            if let Some((url, key, hostname)) = login {
                let client = CoordClient::new(&url);
                let mut info = self.hostinfo().await;
                if !hostname.is_empty() {
                    info.hostname = hostname;
                }
                let req = RegisterRequest {
                    auth_key: key,
                    hostinfo: info.clone(),
                };
                match client.register(&req).await {
                    Ok(r) => {
                        eprintln!("tailscaled-standin: registered as node {}", r.node_id);
                        {
                            let mut s = self.control.lock();
                            s.client = Some(client);
                            s.pushed = Some((info.routable_ips.clone(), info.endpoints.clone()));
                        }
                        self.api.complete_login(Ok(r.node_id));
                    }
                    Err(e) => {
                        eprintln!("tailscaled-standin: login failed: {e}");
                        let msg = match e {
                            crate::coord::CoordError::Refused { message, .. } => message,
                            other => other.to_string(),
                        };
                        self.api.complete_login(Err(msg));
                    }
                }
                self.persist();
                continue;
            }
            if attach {
                let url = self.api.prefs().control_url;
                let client = CoordClient::new(&url);
                let info = self.hostinfo().await;
                match client.attach(&info).await {
                    Ok(r) => {
                        eprintln!("tailscaled-standin: re-attached as node {}", r.node_id);
                        {
                            let mut s = self.control.lock();
                            s.client = Some(client);
                            s.attach = false;
                            s.pushed = Some((info.routable_ips.clone(), info.endpoints.clone()));
                        }
                        self.api.complete_login(Ok(r.node_id));
                        self.persist();
                    }
                    Err(e) if e.is_not_found() => {
                        self.control.lock().attach = false;
                        self.api.complete_login(Err("node not found".to_string()));
                        self.persist();
                    }
                    Err(e) => {
                        eprintln!("tailscaled-standin: re-attach: {e} (retrying)");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                continue;
            }
            // Hostinfo: push when routes or endpoints changed.
            let client = self.control.lock().client.clone();
            if let (Some(c), Some(_)) = (client, self.api.node_id()) {
                let info = self.hostinfo().await;
                let cur = (info.routable_ips.clone(), info.endpoints.clone());
                if self.control.lock().pushed.as_ref() != Some(&cur) {
                    match c.hostinfo(&info).await {
                        Ok(_) => self.control.lock().pushed = Some(cur),
                        Err(e) => eprintln!("tailscaled-standin: hostinfo: {e} (retrying)"),
                    }
                }
            }
            self.persist();
        }
    }

    /// Map long-poll: keeps the netmap current.
    async fn map_loop(self: Arc<Self>) {
        let mut since = u64::MAX;
        loop {
            let (client, key) = {
                let s = self.control.lock();
                (s.client.clone(), node_key_of(&s.secret))
            };
            let (Some(c), Some(_)) = (client, self.api.node_id()) else {
                since = u64::MAX;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match c.map(&key, since).await {
                Ok(nm) => {
                    since = nm.generation;
                    let changed = {
                        let mut s = self.control.lock();
                        if s.netmap.as_ref() != Some(&nm) {
                            s.netmap = Some(nm);
                            true
                        } else {
                            false
                        }
                    };
                    if changed {
                        self.control.netmap_gen.send_modify(|g| *g += 1);
                    }
                }
                Err(e) => {
                    if e.is_not_found() && self.api.node_id().is_some() {
                        eprintln!("tailscaled-standin: node deleted by control");
                        self.control.lock().netmap = None;
                        self.api.complete_login(Err("node deleted".to_string()));
                        self.control.netmap_gen.send_modify(|g| *g += 1);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Applies prefs + netmap to the kernel whenever either changes.
    async fn dataplane_loop(self: Arc<Self>) {
        let mut prefs_rx = self.api.subscribe();
        let mut nm_rx = self.control.netmap_gen.subscribe();
        let mut applied = Applied::default();
        loop {
            if let Err(e) = self.apply(&mut applied).await {
                eprintln!("tailscaled-standin: data plane: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            tokio::select! {
                _ = prefs_rx.changed() => {}
                _ = nm_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    async fn apply(&self, applied: &mut Applied) -> anyhow::Result<()> {
        let prefs = self.api.prefs();
        let (netmap, secret) = {
            let s = self.control.lock();
            (s.netmap.clone(), s.secret)
        };
        let running = self.api.node_id().is_some() && prefs.want_running;
        let netmap = netmap.filter(|_| running);
        // Addresses on the tun.
        if let Some(nm) = &netmap {
            let have = self.nl.addresses(&self.args.tun).await.unwrap_or_default();
            for ip in &nm.self_node.tailnet_ips {
                let net = host_prefix(*ip);
                if !have.iter().any(|h| h.ip() == *ip) {
                    self.nl
                        .add_address(&self.args.tun, net)
                        .await
                        .with_context(|| format!("add {net} to {}", self.args.tun))?;
                }
            }
        }
        // Peers and routes.
        let mut peers = Vec::new();
        let mut routes = BTreeSet::new();
        for p in netmap.iter().flat_map(|m| m.peers.iter()) {
            let Some(pk) = p.node_key.strip_prefix("nodekey:").and_then(uapi::unhex32) else {
                continue;
            };
            let mut allowed: Vec<IpNetwork> =
                p.tailnet_ips.iter().map(|i| host_prefix(*i)).collect();
            if prefs.route_all {
                allowed.extend(p.primary_routes.iter().copied());
            }
            routes.extend(allowed.iter().copied());
            peers.push(uapi::PeerConfig {
                public_key: pk,
                endpoint: p.endpoints.first().copied(),
                allowed_ips: allowed,
            });
        }
        let keys: BTreeSet<[u8; 32]> = peers.iter().map(|p| p.public_key).collect();
        let removed: Vec<[u8; 32]> = applied.peers.difference(&keys).copied().collect();
        let wg = (secret, peers.clone(), removed.clone());
        if applied.wg.as_ref() != Some(&wg) {
            let body = uapi::set_body(&secret, self.args.port, &peers, &removed);
            uapi::set(&self.uapi, &body).await?;
            applied.peers = keys;
            applied.wg = Some(wg);
        }
        // MagicDNS: the quad-100 route in table 52 and the resolver ([`dns`]).
        routes.extend(dns::MagicDns::route(netmap.as_ref()));
        self.magic_dns.apply(&self.nl, netmap.as_ref()).await?;
        // Table 52 and rule 5270.
        let live = self.rtnl.table_routes(ROUTE_TABLE).await?;
        for (dst, _) in &live {
            if !routes.contains(dst) {
                self.rtnl.delete_table_route(*dst, ROUTE_TABLE).await?;
            }
        }
        for dst in &routes {
            if !live
                .iter()
                .any(|(d, dev)| d == dst && dev.as_deref() == Some(&self.args.tun))
            {
                self.rtnl
                    .replace_table_route(*dst, &self.args.tun, ROUTE_TABLE)
                    .await?;
            }
        }
        for ipv6 in [false, true] {
            let rule = rule(ipv6);
            if running {
                self.rtnl.ensure_rule(&rule).await?;
            } else {
                self.rtnl.delete_rule(&rule).await?;
            }
        }
        // Netfilter.
        let nf = (prefs.netfilter_mode != NetfilterMode::Off).then(|| netfilter::NetfilterConfig {
            tun: self.args.tun.clone(),
            no_snat: prefs.no_snat,
            stateful: prefs.no_stateful_filtering.get() == Some(false),
        });
        if applied.nf.as_ref() != Some(&nf) {
            match &nf {
                Some(cfg) => tokio::task::block_in_place(|| netfilter::apply(cfg))?,
                None => tokio::task::block_in_place(netfilter::remove)?,
            }
            eprintln!("tailscaled-standin: netfilter {nf:?}");
            applied.nf = Some(nf);
        }
        Ok(())
    }

    /// Removes everything this process creates (tailscaled's `router.CleanUp`).
    async fn cleanup(&self) {
        if let Err(e) = tokio::task::block_in_place(netfilter::remove) {
            eprintln!("tailscaled-standin: cleanup nft: {e}");
        }
        for ipv6 in [false, true] {
            let _ = self.rtnl.delete_rule(&rule(ipv6)).await;
        }
        if let Ok(routes) = self.rtnl.table_routes(ROUTE_TABLE).await {
            for (dst, _) in routes {
                let _ = self.rtnl.delete_table_route(dst, ROUTE_TABLE).await;
            }
        }
        let _ = self.nl.delete_link(&self.args.tun).await;
        self.magic_dns.cleanup().await;
    }
}

/// The last WireGuard configuration sent: private key, peers, removed peers.
type WgConfig = ([u8; 32], Vec<uapi::PeerConfig>, Vec<[u8; 32]>);

#[derive(Debug, Default)]
struct Applied {
    peers: BTreeSet<[u8; 32]>,
    wg: Option<WgConfig>,
    nf: Option<Option<netfilter::NetfilterConfig>>,
}

fn rule(ipv6: bool) -> RuleSpec {
    RuleSpec {
        ipv6,
        priority: RULE_PRIORITY,
        table: ROUTE_TABLE,
        fwmark: None,
    }
}

fn host_prefix(ip: IpAddr) -> IpNetwork {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, len).unwrap_or_else(|_| IpNetwork::from(ip))
}

/// Prefs as `tailscale up --login-server U` sets them on Linux (up.go@v1.102.3): WantRunning,
/// RouteAll false, NoSNAT false, NoStatefulFiltering true, CorpDNS true, NetfilterMode on.
pub fn up_prefs(control_url: &str, hostname: &str) -> Prefs {
    let mut p = default_prefs();
    p.control_url = control_url.to_string();
    p.want_running = true;
    p.route_all = false;
    p.no_snat = false;
    p.no_stateful_filtering = true.into();
    p.corp_dns = true;
    p.netfilter_mode = NetfilterMode::On;
    p.hostname = hostname.to_string();
    p
}

fn spawn_wireguard_go(bin: &Path, tun: &str) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("-f").arg(tun);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawn {} -f {tun}", bin.display()))
}

fn os_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".to_string())
}

/// Runs the stand-in until SIGTERM/SIGINT (then cleans up and returns `Ok(())`). Must run
/// on the main thread of a multi-threaded runtime (wireguard-go dies with that thread).
///
/// Errors: bad state dir or files, wireguard-go failing to start, netlink errors at start.
pub async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.statedir)
        .with_context(|| format!("create {}", args.statedir.display()))?;
    let state_path = args.statedir.join("tailscaled.state");
    let persisted: Option<Persisted> = match std::fs::read(&state_path) {
        Ok(b) => Some(serde_json::from_slice(&b).context("parse tailscaled.state")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("read tailscaled.state"),
    };
    let secret = persisted
        .as_ref()
        .and_then(|p| uapi::unhex32(&p.private_key))
        .unwrap_or_else(random_secret);
    let hostname = args.hostname.clone().unwrap_or_else(os_hostname);
    let mtu = std::env::var("TS_DEBUG_MTU")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_MTU);
    let nl = NetlinkHandle::current().await.context("netlink")?;
    let rtnl = Rtnl::current().context("rtnetlink")?;
    let (nm_tx, _) = watch::channel(0u64);
    let control = Arc::new(Control {
        shared: Mutex::new(Shared {
            secret,
            ..Shared::default()
        }),
        wake: Notify::new(),
        netmap_gen: nm_tx,
    });
    let (prefs, node_id) = match &persisted {
        Some(p) => (p.prefs.clone(), p.node_id),
        None => (default_prefs(), None),
    };
    let reattach = node_id.is_some() && !prefs.control_url.is_empty();
    control.lock().attach = reattach;
    let api = LocalApi::new(LocalApiInit {
        prefs,
        node_key: node_key_of(&secret),
        node_id,
        backend_state: if reattach { "Starting" } else { "NeedsLogin" }.to_string(),
        hostname: hostname.clone(),
        control: Some(Arc::new(ControlRef(control.clone()))),
    });
    let standin = Arc::new(Standin {
        uapi: PathBuf::from(format!("/run/wireguard/{}.sock", args.tun)),
        args: args.clone(),
        hostname: hostname.clone(),
        api: api.clone(),
        control: control.clone(),
        nl,
        rtnl,
        mtu,
        magic_dns: dns::MagicDns::default(),
    });
    api.set_version(args.tailscale_version);
    api.set_ipn_bus(!args.no_ipn_bus);
    if args.write_state_at_start && persisted.is_none() {
        // A fresh identity, no node id: the file exists although nothing is logged in.
        standin.persist();
    }
    // router.CleanUp: leftovers of a previous run.
    standin.cleanup().await;
    let _ = std::fs::remove_file(&standin.uapi);
    let mut wg = spawn_wireguard_go(&args.wireguard_go, &args.tun)?;
    let mut up = false;
    for _ in 0..100 {
        if standin.uapi.exists() && standin.nl.link(&args.tun).await.ok().flatten().is_some() {
            up = true;
            break;
        }
        if let Ok(Some(st)) = wg.try_wait() {
            anyhow::bail!("wireguard-go exited: {st}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        let _ = wg.kill();
        anyhow::bail!(
            "wireguard-go did not create {} and its UAPI socket",
            args.tun
        );
    }
    standin
        .rtnl
        .set_link_up(&args.tun, Some(standin.mtu))
        .await
        .context("tun up")?;
    let _ = std::fs::remove_file(&args.socket);
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("bind {}", args.socket.display()))?;
    let stats = Arc::new(RequestStats::new());
    let localapi = api.handler();
    let handler: Handler = Arc::new(move |req: Req| -> BoxFut {
        let stats = stats.clone();
        let localapi = localapi.clone();
        Box::pin(async move {
            match stats.observe(&req) {
                Some(resp) => resp,
                None => localapi(req).await,
            }
        })
    });
    let server = tokio::spawn(unix_loop(listener, handler));
    let tasks = [
        tokio::spawn(standin.clone().control_loop()),
        tokio::spawn(standin.clone().map_loop()),
        tokio::spawn(standin.clone().dataplane_loop()),
    ];
    if reattach {
        control.wake.notify_one();
    }
    eprintln!(
        "tailscaled-standin: tun {} mtu {} port {} socket {} ({})",
        args.tun,
        standin.mtu,
        args.port,
        args.socket.display(),
        if reattach { "re-attaching" } else { "fresh" }
    );
    // `tailscale up --login-server U --auth-key file:F`.
    if let (Some(url), Some(file)) = (&args.login_server, &args.authkey_file)
        && api.node_id().is_none()
    {
        let key = std::fs::read_to_string(file)
            .with_context(|| format!("read {}", file.display()))?
            .trim()
            .to_string();
        let body = serde_json::json!({"AuthKey": key, "UpdatePrefs": up_prefs(url, &hostname)});
        for (path, body) in [
            ("/localapi/v0/start", body.to_string()),
            ("/localapi/v0/login-interactive", String::new()),
        ] {
            let req = Req {
                method: http::Method::POST,
                uri: http::Uri::from_static("/"),
                headers: http::HeaderMap::new(),
                body: bytes::Bytes::from(body),
            };
            let req = Req {
                uri: path.parse().unwrap_or_else(|_| http::Uri::from_static("/")),
                ..req
            };
            let resp = api.handle(req).await;
            if !resp.status().is_success() {
                eprintln!("tailscaled-standin: {path}: {}", resp.status());
            }
        }
    }
    wait_for_signal().await?;
    eprintln!("tailscaled-standin: stopping");
    server.abort();
    for t in &tasks {
        t.abort();
    }
    standin.persist();
    let _ = wg.kill();
    let _ = wg.wait();
    standin.cleanup().await;
    let _ = std::fs::remove_file(&args.socket);
    eprintln!("tailscaled-standin: stopped");
    Ok(())
}
