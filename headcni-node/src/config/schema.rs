//! The configuration's schema: the sections' structs, their built-in defaults and the
//! resolution of mode-dependent defaults ([`Config::node_name`], [`Config::interface`],
//! [`Config::tailscale_socket`], [`Config::tailscaled_state_dir`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use headcni_core::ipam::Strategy;
use headcni_core::node::podcidr as fmt_cidr;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize};

/// The configuration file read when `--config` / `HEADCNI_CONFIG` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/headcni/config.toml";
/// The host tailscaled's LocalAPI socket (host mode default).
pub const HOST_TAILSCALE_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";
/// The dedicated tailscaled's LocalAPI socket (daemon mode default).
pub const DAEMON_TAILSCALE_SOCKET: &str = "/run/headcni/tailscaled.sock";
/// The host tailscaled's interface (host mode default).
pub const HOST_TAILSCALE_INTERFACE: &str = "tailscale0";
/// The dedicated tailscaled's TUN (daemon mode default).
pub const DAEMON_TAILSCALE_INTERFACE: &str = "headcni01";
/// The environment variable holding the Headscale API key when no file is configured.
pub const API_KEY_ENV: &str = "HEADSCALE_API_KEY";
/// The environment variable with the node name (Downward API), below the config.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// How HeadCNI reaches the tailnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Use the host's tailscaled (its prefs are read-modify-written).
    #[default]
    Host,
    /// Supervise a dedicated tailscaled.
    Daemon,
}

impl Mode {
    /// `host` or `daemon`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Daemon => "daemon",
        }
    }
}

/// How this node's route gets approved by the control server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// Through the Headscale API with an API key.
    #[default]
    Api,
    /// By the Headscale policy's `autoApprovers` (no API key on the node).
    AutoApprovers,
    /// Through the Tailscale API v2 with an OAuth client (`[tailscale_api]`): Tailscale SaaS,
    /// or a Headscale that serves `/api/v2`.
    TailscaleApi,
}

/// Daemon mode: the dedicated tailscaled's `NetfilterMode` pref (`[tailscale]
/// netfilter_mode`; tailscale `types/preftype/netfiltermode.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetfilterModeKind {
    /// `on`: tailscaled installs its `ts-*` chains and jumps to them (its Linux default): it
    /// accepts tunnel traffic in `ts-forward` and drops spoofed tailnet addresses in
    /// `ts-input`.
    #[default]
    On,
    /// `nodivert`: the `ts-*` chains without the jumps from the built-in chains (the
    /// operator hooks them in).
    Nodivert,
    /// `off`: no netfilter rules from tailscaled.
    Off,
}

/// Which firewall driver puts the masquerade rule set in place (`[node] firewall_driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallDriverKind {
    /// nftables: HeadCNI's own table `inet headcni` (`headcni_netlink::NftFirewall`).
    #[default]
    Nft,
    /// No firewall driver: masquerading is managed by someone else; HeadCNI neither writes
    /// nor requires the masquerade rule set, and uninstall leaves nftables alone.
    #[serde(rename = "none")]
    Unmanaged,
}

impl FirewallDriverKind {
    /// `nft` or `none` ([`headcni_core::node::firewall::NFT_DRIVER`],
    /// [`headcni_core::node::firewall::NONE_DRIVER`]).
    pub fn as_str(self) -> &'static str {
        match self {
            FirewallDriverKind::Nft => headcni_core::node::firewall::NFT_DRIVER,
            FirewallDriverKind::Unmanaged => headcni_core::node::firewall::NONE_DRIVER,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Node CIDR prefix lengths for the name-hash source. In TOML either an integer (the IPv4
/// prefix; IPv6 keeps 64) or a table `{ v4 = 24, v6 = 64 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeCidrPrefix {
    /// IPv4 node prefix (default 24).
    pub v4: u8,
    /// IPv6 node prefix (default 64).
    pub v6: u8,
}

impl Default for NodeCidrPrefix {
    fn default() -> Self {
        NodeCidrPrefix {
            v4: fmt_cidr::DEFAULT_NODE_PREFIX_V4,
            v6: fmt_cidr::DEFAULT_NODE_PREFIX_V6,
        }
    }
}

impl<'de> Deserialize<'de> for NodeCidrPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            V4(u8),
            Both {
                #[serde(default)]
                v4: Option<u8>,
                #[serde(default)]
                v6: Option<u8>,
            },
        }
        let def = NodeCidrPrefix::default();
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected an integer (IPv4 prefix) or a table { v4, v6 }")
        })? {
            Repr::V4(v4) => Ok(NodeCidrPrefix { v4, v6: def.v6 }),
            Repr::Both { v4, v6 } => Ok(NodeCidrPrefix {
                v4: v4.unwrap_or(def.v4),
                v6: v6.unwrap_or(def.v6),
            }),
        }
    }
}

/// A CIDR list that is a string (comma-separated allowed) or a list of strings in TOML.
/// Host bits are accepted here and reported by [`Config::validate`](Config::validate).
pub(super) fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        One(String),
        Many(Vec<String>),
    }
    let items = match Repr::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a CIDR string or a list of CIDRs"))?
    {
        Repr::One(s) => vec![s],
        Repr::Many(v) => v,
    };
    let mut out = Vec::new();
    for item in items.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if !item.contains('/') {
            return Err(serde::de::Error::custom(format!(
                "invalid CIDR {item:?}: no prefix length"
            )));
        }
        let n: IpNetwork = item
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid CIDR {item:?}: {e}")))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// The Kubernetes node name; see [`Config::node_name`] for the fallbacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The node's PodCIDR(s); when set, discovery is skipped.
    #[serde(deserialize_with = "de_cidrs")]
    pub pod_cidr: Vec<IpNetwork>,
    /// The cluster's pod CIDR(s): excluded from masquerade, and the name hash's space.
    #[serde(deserialize_with = "de_cidrs")]
    pub cluster_cidr: Vec<IpNetwork>,
    /// Opt-in last-resort PodCIDR source: a hash of the node name inside the cluster CIDR.
    /// Not coordinated with other nodes: two nodes can get the same subnet.
    pub pod_cidr_from_name_hash: bool,
    /// Node prefix lengths for the name hash; default: kube-controller-manager's flags when
    /// found in local files, else 24 / 64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_cidr_prefix: Option<NodeCidrPrefix>,
    /// A kubeconfig for the Node watch; default: in-cluster, `KUBECONFIG`, `~/.kube/config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The root under which kubelet/k3s files are read (`/` on a node; a fixture dir in tests).
    pub local_files_root: PathBuf,
    /// The firewall driver for the masquerade rule set: `nft` (default) or `none`.
    pub firewall_driver: FirewallDriverKind,
    /// Whether IPv6 pod traffic leaving the cluster is masqueraded (default `true`); `false`
    /// for a globally routed IPv6 PodCIDR, so pods reach the internet with their own IPv6
    /// addresses. Pod ↔ pod traffic is never masqueraded; IPv4 egress always is
    /// (`headcni_core::node::masq_ipv6`).
    pub masquerade_ipv6: bool,
    /// The cluster's Service CIDR(s) (kube-apiserver `--service-cluster-ip-range`): excluded
    /// from masquerade, so a pod reaching a Service that kube-proxy does not translate on
    /// this node keeps its own address. May be empty.
    #[serde(deserialize_with = "de_cidrs")]
    pub service_cidr: Vec<IpNetwork>,
    /// Further destinations excluded from masquerade (pods keep their own address towards
    /// them). May be empty.
    #[serde(deserialize_with = "de_cidrs")]
    pub no_masquerade_cidrs: Vec<IpNetwork>,
    /// Make sure what kube-proxy needs from the node is there: `br_netfilter` loaded and
    /// `net.bridge.bridge-nf-call-iptables` / `-ip6tables` set to 1, so bridged pod traffic
    /// passes its iptables rules (default `true`; `false` leaves them alone).
    pub bridge_netfilter: bool,
}

impl NodeConfig {
    /// Every destination HeadCNI's masquerade leaves alone besides the pod, cluster and
    /// tailnet ranges: [`NodeConfig::service_cidr`] then [`NodeConfig::no_masquerade_cidrs`].
    pub fn no_masq_destinations(&self) -> Vec<IpNetwork> {
        self.service_cidr
            .iter()
            .chain(&self.no_masquerade_cidrs)
            .copied()
            .collect()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            pod_cidr: Vec::new(),
            cluster_cidr: Vec::new(),
            pod_cidr_from_name_hash: false,
            node_cidr_prefix: None,
            kubeconfig: None,
            local_files_root: PathBuf::from("/"),
            firewall_driver: FirewallDriverKind::Nft,
            masquerade_ipv6: headcni_core::node::masq_ipv6::DEFAULT_MASQUERADE_IPV6,
            service_cidr: Vec::new(),
            no_masquerade_cidrs: Vec::new(),
            bridge_netfilter: true,
        }
    }
}

/// The default chained plugins: `portmap` (hostPort).
pub fn default_chained() -> Vec<serde_json::Value> {
    vec![serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})]
}

/// `[cni]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CniConfig {
    /// Where the conflist goes.
    pub conf_dir: PathBuf,
    /// Where `headcni install` puts the binaries.
    pub bin_dir: PathBuf,
    /// The IPAM store root (`dataDir`); the store is `<data_dir>/<network_name>`.
    pub data_dir: PathBuf,
    /// The bridge.
    pub bridge: String,
    /// Pod MTU; default: the tailnet interface's MTU (resolved by the daemon at runtime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The IPAM allocation strategy.
    pub ipam_strategy: Strategy,
    /// The conflist's file name (must end in `.conflist`).
    pub conflist_name: String,
    /// The conflist's network name.
    pub network_name: String,
    /// The daemon's event socket given to the plugin; an empty path disables plugin events.
    pub daemon_socket: PathBuf,
    /// Plugin objects appended after HeadCNI's in the conflist, in this order.
    pub chained: Vec<serde_json::Value>,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dir: PathBuf::from("/opt/cni/bin"),
            data_dir: PathBuf::from(headcni_core::ipam::DEFAULT_DATA_DIR),
            bridge: headcni_core::defaults::BRIDGE.to_owned(),
            mtu: None,
            ipam_strategy: Strategy::Sequential,
            conflist_name: "10-headcni.conflist".to_owned(),
            network_name: "headcni".to_owned(),
            daemon_socket: PathBuf::from("/run/headcni/daemon.sock"),
            chained: default_chained(),
        }
    }
}

impl CniConfig {
    /// The event socket, `None` when disabled (empty path).
    pub fn daemon_socket_path(&self) -> Option<&Path> {
        (!self.daemon_socket.as_os_str().is_empty()).then_some(self.daemon_socket.as_path())
    }

    /// `conf_dir/conflist_name`.
    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(&self.conflist_name)
    }
}

/// `[tailscale]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TailscaleConfig {
    /// `host` or `daemon`.
    pub mode: Mode,
    /// The LocalAPI socket; default depends on the mode ([`Config::tailscale_socket`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The tailnet interface; default depends on the mode ([`Config::interface`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Daemon mode: the tailscaled binary (a name is looked up in `PATH`).
    pub tailscaled_path: PathBuf,
    /// Daemon mode: tailscaled's `--statedir`; default `<daemon.state_dir>/tailscaled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Daemon mode: tailscaled's UDP `--port` (0 picks one).
    pub port: u16,
    /// Daemon mode: the dedicated tailscaled's `NetfilterMode` (`on`, `nodivert`, `off`;
    /// default `on`, tailscaled's own Linux default). Set deliberately on every start.
    pub netfilter_mode: NetfilterModeKind,
}

impl Default for TailscaleConfig {
    fn default() -> Self {
        TailscaleConfig {
            mode: Mode::Host,
            socket: None,
            interface: None,
            tailscaled_path: PathBuf::from("tailscaled"),
            state_dir: None,
            port: 41645,
            netfilter_mode: NetfilterModeKind::On,
        }
    }
}

/// `[headscale]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadscaleConfig {
    /// The Headscale server (`https://…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the API key (mode 0400/0600); else env `HEADSCALE_API_KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// `api` or `auto-approvers`.
    pub approval: Approval,
    /// Daemon mode: the Headscale user that owns this node's pre-auth key.
    pub user: String,
    /// Daemon mode: the ACL tags of the bootstrap pre-auth key (Headscale
    /// `PreAuthKey.aclTags`), e.g. `["tag:headcni"]`: the node is then tag-owned, which a
    /// `tag:` approver in `autoApprovers` needs (≥ 0.28 a tag resolves only to nodes carrying
    /// it). Each must be in the policy's `tagOwners`. Empty: a user-owned node.
    pub acl_tags: Vec<String>,
    /// Timeout of one Headscale or LocalAPI request, in seconds.
    pub timeout_secs: u64,
    /// The slow resync, in seconds (default 300, at least 30): how often Headscale (or the
    /// Tailscale API) is asked about this node's approval and every node's served routes
    /// while nothing changes. Each wait is stretched by up to a fifth at random
    /// (`headcni_core::control::bus::jittered`). Between two resyncs the daemon follows
    /// tailscaled's IPN bus and asks Headscale only when a route must be approved.
    pub resync_secs: u64,
}

impl Default for HeadscaleConfig {
    fn default() -> Self {
        HeadscaleConfig {
            url: None,
            api_key_file: None,
            approval: Approval::Api,
            user: "headcni".to_owned(),
            acl_tags: Vec::new(),
            timeout_secs: 10,
            resync_secs: DEFAULT_RESYNC_SECS,
        }
    }
}

/// Default of `[headscale] resync_secs`: 5 minutes.
pub const DEFAULT_RESYNC_SECS: u64 = 300;
/// Least `[headscale] resync_secs` accepted.
pub const MIN_RESYNC_SECS: u64 = 30;

impl HeadscaleConfig {
    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// `resync_secs` as a duration (before jitter).
    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_secs)
    }
}

/// `[tailscale_api]`: the Tailscale API v2 used with `[headscale] approval =
/// "tailscale-api"` (ignored otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TailscaleApiConfig {
    /// The API's base URL; requests go to `{url}/api/v2/…`. Default
    /// `https://api.tailscale.com` (Tailscale SaaS); a Headscale serving `/api/v2` is its own
    /// URL.
    pub url: String,
    /// The tailnet in `/api/v2/tailnet/{tailnet}/devices`. Default `-`: the OAuth client's
    /// own tailnet (the only value Headscale accepts).
    pub tailnet: String,
    /// The OAuth client file (`client_id=…` and `client_secret=…` lines; mode 0600 or 0400,
    /// owned by root or the daemon's user). Required with `approval = "tailscale-api"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_file: Option<PathBuf>,
}

impl Default for TailscaleApiConfig {
    fn default() -> Self {
        TailscaleApiConfig {
            url: headcni_headscale::tailscale_api::DEFAULT_BASE_URL.to_owned(),
            tailnet: headcni_headscale::tailscale_api::DEFAULT_TAILNET.to_owned(),
            oauth_file: None,
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonConfig {
    /// `/metrics`, `/healthz`, `/readyz`, `/status`.
    pub listen: SocketAddr,
    /// Acknowledges that a non-loopback [`DaemonConfig::listen`] is intended: `/status` and
    /// `/metrics` (node name, PodCIDRs, routes, peers, pods; no authentication) are then
    /// reachable from the network. Only silences that warning.
    pub expose_to_network: bool,
    /// Persistent state.
    pub state_dir: PathBuf,
    /// Periodic reconcile interval, in seconds.
    pub reconcile_interval_secs: u64,
    /// A level (`info`) or a tracing filter directive.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            expose_to_network: false,
            state_dir: PathBuf::from("/var/lib/headcni"),
            reconcile_interval_secs: 30,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
        }
    }
}

impl DaemonConfig {
    /// `reconcile_interval_secs` as a duration.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_secs)
    }
}

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[cni]`.
    pub cni: CniConfig,
    /// `[tailscale]`.
    pub tailscale: TailscaleConfig,
    /// `[headscale]`.
    pub headscale: HeadscaleConfig,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[tailscale_api]`.
    pub tailscale_api: TailscaleApiConfig,
    /// `[magic_dns]`.
    pub magic_dns: super::magic_dns::MagicDnsConfig,
}

impl Config {
    /// The node name: `[node] name` (or its env/flag), else `NODE_NAME`, else the host name
    /// (lower-cased), else `"localhost"`.
    pub fn node_name(&self) -> String {
        self.node
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::env::var(NODE_NAME_ENV)
                    .ok()
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
            })
            .or_else(hostname)
            .unwrap_or_else(|| "localhost".to_owned())
    }

    /// The tailnet interface: `[tailscale] interface`, else `tailscale0` (host mode) or
    /// `headcni01` (daemon mode).
    pub fn interface(&self) -> String {
        self.tailscale
            .interface
            .clone()
            .unwrap_or_else(|| match self.tailscale.mode {
                Mode::Host => HOST_TAILSCALE_INTERFACE.to_owned(),
                Mode::Daemon => DAEMON_TAILSCALE_INTERFACE.to_owned(),
            })
    }

    /// The LocalAPI socket: `[tailscale] socket`, else the host tailscaled's (host mode) or
    /// `/run/headcni/tailscaled.sock` (daemon mode).
    pub fn tailscale_socket(&self) -> PathBuf {
        self.tailscale
            .socket
            .clone()
            .unwrap_or_else(|| match self.tailscale.mode {
                Mode::Host => PathBuf::from(HOST_TAILSCALE_SOCKET),
                Mode::Daemon => PathBuf::from(DAEMON_TAILSCALE_SOCKET),
            })
    }

    /// Daemon mode's tailscaled `--statedir`: `[tailscale] state_dir`, else
    /// `<daemon.state_dir>/tailscaled`.
    pub fn tailscaled_state_dir(&self) -> PathBuf {
        self.tailscale
            .state_dir
            .clone()
            .unwrap_or_else(|| self.daemon.state_dir.join("tailscaled"))
    }

    /// The name hash's node prefixes `(v4, v6)` when configured.
    pub fn node_cidr_prefixes(&self) -> Option<(u8, u8)> {
        self.node.node_cidr_prefix.map(|p| (p.v4, p.v6))
    }
}

/// The host name as the kubelet uses it for the node name: trimmed and lower-cased.
pub fn hostname() -> Option<String> {
    let h = nix::unistd::gethostname().ok()?;
    let h = h.to_string_lossy().trim().to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}
