//! The daemon's configuration: a TOML file, environment and flag overrides, validation.
//!
//! # Layers
//!
//! Each key is resolved from, lowest to highest precedence:
//!
//! 1. the built-in default (some depend on `tailscale.mode`, see below);
//! 2. the TOML file (`--config PATH`, env `HEADCNI_CONFIG`, default
//!    [`DEFAULT_CONFIG_PATH`]). A missing file at the default path means "all defaults"; a
//!    missing file given explicitly is an error;
//! 3. the environment: `HEADCNI_<SECTION>_<KEY>` (e.g. `HEADCNI_NODE_POD_CIDR`,
//!    `HEADCNI_CNI_MTU`, `HEADCNI_TAILSCALE_MODE`). Empty values count as unset. Lists are
//!    comma-separated; `HEADCNI_CNI_CHAINED` is a JSON array;
//! 4. the command-line flags of [`DaemonFlags`].
//!
//! `node.name` has one more, lowest-precedence source: when neither the file, the env nor a
//! flag sets it, `NODE_NAME` (the Downward API's `spec.nodeName` in the DaemonSet) and then
//! the host name (lower-cased, as the kubelet does) are used — the public contract's
//! "default: NODE_NAME env, then the hostname".
//!
//! [`load`] is a pure function of the flags, the environment and the file, so the daemon
//! calls it again with the same [`DaemonFlags`] on SIGHUP and keeps every override (the Go
//! original dropped them on reload).
//!
//! Unknown keys inside a known section are accepted (a newer file on an older binary keeps
//! working) and logged once per key and process. An unknown section (`[daemonx]`) is an error:
//! a misspelled section header would silently drop every key under it.
//!
//! # Errors and warnings
//!
//! [`check_from`] reports everything in one pass: every value that does not parse, every
//! unknown section and every validation problem ([`Config::validate_with`]) are errors;
//! [`Config::warnings`] are legal but suspicious settings (a PodCIDR inside the tailnet's
//! `100.64.0.0/10`, `cluster_cidr = 0.0.0.0/0`, a non-loopback `daemon.listen`, ...).
//! `headcni config check` prints both; the daemon refuses to start on errors and logs the
//! warnings at start and on reload. Messages never quote a secret: URLs pass through
//! [`headcni_headscale::secret::redact_url`].
//!
//! # Keys
//!
//! ```toml
//! [node]
//! name = "node-1"                  # default: NODE_NAME env, then the hostname
//! pod_cidr = "10.244.1.0/24"       # optional: skips discovery; a list for dual-stack
//! cluster_cidr = "10.244.0.0/16"   # excluded from masquerade; a list for dual-stack
//! pod_cidr_from_name_hash = false  # opt-in last resort: hash the name inside cluster_cidr
//! node_cidr_prefix = 24            # for the hash: IPv4 prefix, or { v4 = 24, v6 = 64 }
//! kubeconfig = "/etc/headcni/kubeconfig"  # default: in-cluster, KUBECONFIG, ~/.kube/config
//! local_files_root = "/"           # where the kubelet/k3s files are looked up (tests)
//!
//! [cni]
//! conf_dir = "/etc/cni/net.d"
//! bin_dir = "/opt/cni/bin"
//! data_dir = "/var/lib/cni/networks"
//! bridge = "headcni0"
//! mtu = 1280                       # default: the tailnet interface's MTU
//! ipam_strategy = "sequential"     # sequential | random | dense-pack
//! conflist_name = "10-headcni.conflist"
//! network_name = "headcni"         # the conflist's name; the IPAM store is data_dir/<name>
//! daemon_socket = "/run/headcni/daemon.sock"   # plugin → daemon events; "" disables
//! chained = [{ type = "portmap", capabilities = { portMappings = true } }]
//!
//! [tailscale]
//! mode = "host"                    # host | daemon
//! socket = "/var/run/tailscale/tailscaled.sock"  # daemon mode: /run/headcni/tailscaled.sock
//! interface = "tailscale0"         # daemon mode default: headcni01
//! tailscaled_path = "tailscaled"   # daemon mode: the binary to supervise
//! state_dir = "/var/lib/headcni/tailscaled"      # daemon mode: <daemon.state_dir>/tailscaled
//! port = 41645                     # daemon mode: tailscaled's UDP port
//!
//! [headscale]
//! url = "https://headscale.example.com"
//! api_key_file = "/etc/headcni/api-key"   # or env HEADSCALE_API_KEY
//! approval = "api"                 # api | auto-approvers
//! user = "headcni"                 # daemon mode: the owner of pre-auth keys
//! timeout_secs = 10                # per Headscale/LocalAPI request
//!
//! [daemon]
//! listen = "127.0.0.1:8081"        # /metrics, /healthz, /readyz, /status
//! expose_to_network = false        # true: a non-loopback listen is intended (no warning)
//! state_dir = "/var/lib/headcni"
//! reconcile_interval_secs = 30
//! log_level = "info"               # or a tracing filter, e.g. "info,headcni_headscale=debug"
//! log_format = "text"              # text | json
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use headcni_core::ipam::Strategy;
use headcni_core::node::podcidr as fmt_cidr;
use headcni_headscale::secret::{REDACTED, looks_like_key, redact_url, redact_urls_in};
use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
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

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// How HeadCNI reaches the tailnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
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

/// How this node's route gets approved in Headscale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// Through the Headscale API with an API key.
    #[default]
    Api,
    /// By the Headscale policy's `autoApprovers` (no API key on the node).
    AutoApprovers,
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
/// Host bits are accepted here and reported by [`Config::validate`].
fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
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
            bridge: headcni_core::plugin::DEFAULT_BRIDGE.to_owned(),
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
    /// Timeout of one Headscale or LocalAPI request, in seconds.
    pub timeout_secs: u64,
}

impl Default for HeadscaleConfig {
    fn default() -> Self {
        HeadscaleConfig {
            url: None,
            api_key_file: None,
            approval: Approval::Api,
            user: "headcni".to_owned(),
            timeout_secs: 10,
        }
    }
}

impl HeadscaleConfig {
    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
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
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag (`--name`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "env {v}"),
            Origin::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `section.key`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Configuration errors. Every value error names its key and where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` / `HEADCNI_CONFIG` does not exist.
    #[error("config file {path} does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value has the wrong type or format.
    #[error("invalid value for {key} (from {origin}): {message}")]
    InvalidValue {
        /// `section.key` (or `section` when the section itself is not a table).
        key: String,
        /// Where the bad value came from.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// The file has a section this version does not know (e.g. a misspelled `[daemonx]`).
    #[error(
        "unknown section [{section}] in config file {path} (known: {}): a misspelled section \
         would silently drop every key under it",
        SECTIONS.join(", ")
    )]
    UnknownSection {
        /// The section's name.
        section: String,
        /// The file.
        path: PathBuf,
    },
    /// Several problems: values that do not parse, unknown sections (when there is more
    /// than one), or values that are well-formed but not usable together.
    #[error("invalid configuration: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The key a value or validation error is about (the first one for [`ConfigError::Invalid`]).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidValue { key, .. } => Some(key),
            ConfigError::UnknownSection { section, .. } => Some(section),
            ConfigError::Invalid { problems } => problems.first().map(|p| p.key.as_str()),
            _ => None,
        }
    }
}

impl ConfigError {
    /// This error as one [`Problem`] (its key, and the rest of the message).
    fn to_problem(&self) -> Problem {
        match self {
            ConfigError::InvalidValue {
                key,
                origin,
                message,
            } => Problem {
                key: key.clone(),
                message: format!("invalid value (from {origin}): {message}"),
            },
            ConfigError::UnknownSection { section, .. } => Problem {
                key: format!("[{section}]"),
                message: self.to_string(),
            },
            other => Problem {
                key: String::new(),
                message: other.to_string(),
            },
        }
    }

    /// One error for a list of load errors: the error itself when there is one, else
    /// [`ConfigError::Invalid`] with all of them.
    fn collect(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Invalid {
                problems: errors.iter().map(ConfigError::to_problem).collect(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The key registry
// ---------------------------------------------------------------------------------------------

/// How an environment variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Strings, paths, enums, addresses.
    Str,
    Bool,
    Int,
    /// Comma-separated CIDRs (kept a string; the CIDR parser splits it).
    Cidrs,
    /// `24` or `24,64`.
    Prefix,
    /// A JSON value.
    Json,
}

/// Every key: (section, key, env conversion). Kept in sync with the structs by a test.
const KEYS: &[(&str, &str, Kind)] = &[
    ("node", "name", Kind::Str),
    ("node", "pod_cidr", Kind::Cidrs),
    ("node", "cluster_cidr", Kind::Cidrs),
    ("node", "pod_cidr_from_name_hash", Kind::Bool),
    ("node", "node_cidr_prefix", Kind::Prefix),
    ("node", "kubeconfig", Kind::Str),
    ("node", "local_files_root", Kind::Str),
    ("cni", "conf_dir", Kind::Str),
    ("cni", "bin_dir", Kind::Str),
    ("cni", "data_dir", Kind::Str),
    ("cni", "bridge", Kind::Str),
    ("cni", "mtu", Kind::Int),
    ("cni", "ipam_strategy", Kind::Str),
    ("cni", "conflist_name", Kind::Str),
    ("cni", "network_name", Kind::Str),
    ("cni", "daemon_socket", Kind::Str),
    ("cni", "chained", Kind::Json),
    ("tailscale", "mode", Kind::Str),
    ("tailscale", "socket", Kind::Str),
    ("tailscale", "interface", Kind::Str),
    ("tailscale", "tailscaled_path", Kind::Str),
    ("tailscale", "state_dir", Kind::Str),
    ("tailscale", "port", Kind::Int),
    ("headscale", "url", Kind::Str),
    ("headscale", "api_key_file", Kind::Str),
    ("headscale", "approval", Kind::Str),
    ("headscale", "user", Kind::Str),
    ("headscale", "timeout_secs", Kind::Int),
    ("daemon", "listen", Kind::Str),
    ("daemon", "expose_to_network", Kind::Bool),
    ("daemon", "state_dir", Kind::Str),
    ("daemon", "reconcile_interval_secs", Kind::Int),
    ("daemon", "log_level", Kind::Str),
    ("daemon", "log_format", Kind::Str),
];

const SECTIONS: &[&str] = &["node", "cni", "tailscale", "headscale", "daemon"];

/// The environment variable that overrides `section.key`: `HEADCNI_<SECTION>_<KEY>`.
pub fn env_var_name(section: &str, key: &str) -> String {
    format!("HEADCNI_{}_{}", section, key).to_ascii_uppercase()
}

/// Every `section.key` of the configuration, in file order.
pub fn known_keys() -> impl Iterator<Item = String> {
    KEYS.iter().map(|(s, k, _)| format!("{s}.{k}"))
}

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

/// Command-line flags of `headcni daemon` and `headcni config`; they override the file and
/// the environment. Keep the same value for reloads ([`load`] is re-callable).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DaemonFlags {
    /// The configuration file (default: /etc/headcni/config.toml, where a missing file means
    /// defaults; a file given here or in HEADCNI_CONFIG must exist).
    #[arg(long, env = "HEADCNI_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The Kubernetes node name (config: node.name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The node's PodCIDR; repeat or comma-separate for dual-stack (config: node.pod_cidr).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub pod_cidr: Vec<IpNetwork>,
    /// The cluster CIDR; repeat or comma-separate for dual-stack (config: node.cluster_cidr).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNetwork>,
    /// host or daemon (config: tailscale.mode).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Address of /metrics, /healthz, /readyz (config: daemon.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log level or tracing filter (config: daemon.log_level).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// The Headscale URL (config: headscale.url).
    #[arg(long, value_name = "URL")]
    pub headscale_url: Option<String>,
    /// A file with the Headscale API key (config: headscale.api_key_file).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
}

/// `headcni config`.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigCmd {
    /// Load and validate the configuration; print every problem (non-zero exit if any).
    Check,
    /// Print the effective configuration (secrets redacted) and where overrides came from.
    Show,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// A loaded configuration and how it was put together.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The file that was read (`None` when the default path did not exist).
    pub file: Option<PathBuf>,
    /// Where every key that is not at its default came from (`section.key` → origin).
    pub origins: BTreeMap<String, Origin>,
    /// Keys of the file that this version does not know (`section.key` or `section`).
    pub unknown_keys: Vec<String>,
}

/// The merged raw values and their origins.
struct Layers {
    values: BTreeMap<(&'static str, &'static str), (toml::Value, Origin)>,
}

impl Layers {
    fn set(&mut self, section: &'static str, key: &'static str, v: toml::Value, o: Origin) {
        self.values.insert((section, key), (v, o));
    }

    fn get<T: DeserializeOwned>(
        &self,
        section: &'static str,
        key: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        let Some((v, origin)) = self.values.get(&(section, key)) else {
            return Ok(None);
        };
        v.clone()
            .try_into::<T>()
            .map(Some)
            .map_err(|e| ConfigError::InvalidValue {
                key: format!("{section}.{key}"),
                origin: origin.clone(),
                message: redact_urls_in(e.to_string().trim()),
            })
    }

    /// Like [`Layers::get`] for a field deserialized with a custom function.
    fn get_with<T>(
        &self,
        section: &'static str,
        key: &'static str,
        f: impl FnOnce(toml::Value) -> Result<T, toml::de::Error>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((v, origin)) = self.values.get(&(section, key)) else {
            return Ok(None);
        };
        f(v.clone())
            .map(Some)
            .map_err(|e| ConfigError::InvalidValue {
                key: format!("{section}.{key}"),
                origin: origin.clone(),
                message: redact_urls_in(e.to_string().trim()),
            })
    }
}

fn registry_entry(section: &str, key: &str) -> Option<&'static (&'static str, &'static str, Kind)> {
    KEYS.iter().find(|(s, k, _)| *s == section && *k == key)
}

fn static_section(section: &str) -> Option<&'static str> {
    SECTIONS.iter().copied().find(|s| *s == section)
}

/// Converts an environment value to a TOML value for `kind`.
fn env_value(kind: Kind, text: &str) -> Result<toml::Value, String> {
    let t = text.trim();
    Ok(match kind {
        Kind::Str | Kind::Cidrs => toml::Value::String(t.to_owned()),
        Kind::Bool => toml::Value::Boolean(match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("{t:?} is not a boolean (true/false)")),
        }),
        Kind::Int => toml::Value::Integer(
            t.parse::<i64>()
                .map_err(|_| format!("{t:?} is not an integer"))?,
        ),
        Kind::Prefix => match t.split_once(',') {
            None => toml::Value::Integer(
                t.parse::<i64>()
                    .map_err(|_| format!("{t:?} is not a prefix length (24 or 24,64)"))?,
            ),
            Some((a, b)) => {
                let mut tbl = toml::Table::new();
                for (name, s) in [("v4", a), ("v6", b)] {
                    let n = s
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{t:?} is not a prefix pair (24,64)"))?;
                    tbl.insert(name.into(), toml::Value::Integer(n));
                }
                toml::Value::Table(tbl)
            }
        },
        Kind::Json => {
            let j: serde_json::Value =
                serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?;
            toml::Value::try_from(j).map_err(|e| format!("not representable in TOML: {e}"))?
        }
    })
}

fn str_value(s: impl Into<String>) -> toml::Value {
    toml::Value::String(s.into())
}

fn warn_unknown_once(keys: &[String], file: &Path) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let new: Vec<&String> = keys.iter().filter(|k| seen.insert((*k).clone())).collect();
    if !new.is_empty() {
        tracing::warn!(
            file = %file.display(),
            keys = ?new,
            "ignoring unknown configuration keys (misspelled, or from a newer version)"
        );
    }
}

/// The host name as the kubelet uses it for the node name: trimmed and lower-cased.
pub fn hostname() -> Option<String> {
    let h = nix::unistd::gethostname().ok()?;
    let h = h.to_string_lossy().trim().to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

/// Loads the configuration: defaults → file → `HEADCNI_<SECTION>_<KEY>` env → flags. Call it
/// again with the same flags to reload.
pub fn load(flags: &DaemonFlags) -> Result<Config, ConfigError> {
    load_from(flags, &|k| std::env::var(k).ok()).map(|l| l.config)
}

/// [`load`] with an explicit environment lookup, returning the origins too.
///
/// Errors: [`ConfigError::NotFound`], [`ConfigError::Read`], [`ConfigError::Parse`] for the
/// file; a single bad value is [`ConfigError::InvalidValue`], a single unknown section
/// [`ConfigError::UnknownSection`], several of them one [`ConfigError::Invalid`] listing all.
/// Validation is separate ([`Config::validate_with`], or everything at once: [`check_from`]).
pub fn load_from(
    flags: &DaemonFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let (loaded, errors) = load_collecting(flags, env)?;
    match ConfigError::collect(errors) {
        None => Ok(loaded),
        Some(e) => Err(e),
    }
}

/// Loads, keeping the default of every value that does not parse and collecting those errors
/// (and unknown sections). `Err` only when the file itself cannot be used.
fn load_collecting(
    flags: &DaemonFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Loaded, Vec<ConfigError>), ConfigError> {
    let mut errors = Vec::new();
    let env_nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let (path, explicit) = match &flags.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut layers = Layers {
        values: BTreeMap::new(),
    };
    let mut unknown_keys = Vec::new();

    // 2. the file
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => {
            // The parser quotes the offending line, which may hold a URL with a password.
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: redact_urls_in(e.to_string().trim()),
            })?;
            for (section, value) in table {
                let Some(sec) = static_section(&section) else {
                    errors.push(ConfigError::UnknownSection {
                        section,
                        path: path.clone(),
                    });
                    continue;
                };
                let toml::Value::Table(keys) = value else {
                    errors.push(ConfigError::InvalidValue {
                        key: section,
                        origin: Origin::File(path.clone()),
                        message: format!("[{sec}] must be a table"),
                    });
                    continue;
                };
                for (key, v) in keys {
                    match registry_entry(sec, &key) {
                        Some((s, k, _)) => layers.set(s, k, v, Origin::File(path.clone())),
                        None => unknown_keys.push(format!("{sec}.{key}")),
                    }
                }
            }
            Some(path.clone())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::NotFound { path });
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    if !unknown_keys.is_empty() {
        warn_unknown_once(&unknown_keys, &path);
    }

    // 3. the environment
    for (section, key, kind) in KEYS {
        let var = env_var_name(section, key);
        if let Some(text) = env_nonempty(&var) {
            match env_value(*kind, &text) {
                Ok(v) => layers.set(section, key, v, Origin::Env(var)),
                Err(message) => errors.push(ConfigError::InvalidValue {
                    key: format!("{section}.{key}"),
                    origin: Origin::Env(var),
                    message: redact_urls_in(&message),
                }),
            }
        }
    }

    // 4. the flags
    let flag = |n: &str| Origin::Flag(format!("--{n}"));
    let cidrs =
        |v: &[IpNetwork]| toml::Value::Array(v.iter().map(|c| str_value(c.to_string())).collect());
    if let Some(v) = &flags.node_name {
        layers.set("node", "name", str_value(v), flag("node-name"));
    }
    if !flags.pod_cidr.is_empty() {
        layers.set("node", "pod_cidr", cidrs(&flags.pod_cidr), flag("pod-cidr"));
    }
    if !flags.cluster_cidr.is_empty() {
        layers.set(
            "node",
            "cluster_cidr",
            cidrs(&flags.cluster_cidr),
            flag("cluster-cidr"),
        );
    }
    if let Some(m) = flags.mode {
        layers.set("tailscale", "mode", str_value(m.as_str()), flag("mode"));
    }
    if let Some(l) = flags.listen {
        layers.set("daemon", "listen", str_value(l.to_string()), flag("listen"));
    }
    if let Some(l) = &flags.log_level {
        layers.set("daemon", "log_level", str_value(l), flag("log-level"));
    }
    if let Some(u) = &flags.headscale_url {
        layers.set("headscale", "url", str_value(u), flag("headscale-url"));
    }
    if let Some(p) = &flags.api_key_file {
        layers.set(
            "headscale",
            "api_key_file",
            str_value(p.to_string_lossy()),
            flag("api-key-file"),
        );
    }

    // 1b. node.name's own defaults: NODE_NAME, below every other layer.
    if !layers.values.contains_key(&("node", "name"))
        && let Some(n) = env_nonempty(NODE_NAME_ENV)
    {
        layers.set(
            "node",
            "name",
            str_value(n.trim()),
            Origin::Env(NODE_NAME_ENV.to_owned()),
        );
    }

    let config = build(&layers, &mut errors);
    let origins = layers
        .values
        .iter()
        .map(|((s, k), (_, o))| (format!("{s}.{k}"), o.clone()))
        .collect();
    let loaded = Loaded {
        config,
        file,
        origins,
        unknown_keys,
    };
    Ok((loaded, errors))
}

/// Everything [`check_from`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The configuration as loaded; a value that did not parse keeps its default.
    pub loaded: Loaded,
    /// Every error: values that do not parse, unknown sections, validation problems. The
    /// configuration is usable only when this is empty.
    pub errors: Vec<Problem>,
    /// Legal but suspicious settings ([`Config::warnings`]).
    pub warnings: Vec<Problem>,
}

impl Checked {
    /// The configuration when there is no error, else [`ConfigError::Invalid`] with all errors.
    pub fn into_result(self) -> Result<(Config, Vec<Problem>), ConfigError> {
        if self.errors.is_empty() {
            Ok((self.loaded.config, self.warnings))
        } else {
            Err(ConfigError::Invalid {
                problems: self.errors,
            })
        }
    }
}

/// Loads and validates in one pass, reporting every error and every warning.
///
/// Errors (`Err`): only [`ConfigError::NotFound`], [`ConfigError::Read`],
/// [`ConfigError::Parse`], when the file itself cannot be used. Everything else is in
/// [`Checked::errors`]; a validation problem about a key whose value did not parse is left
/// out (it would be about the default that stood in for it).
pub fn check_from(
    flags: &DaemonFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Checked, ConfigError> {
    let (loaded, load_errors) = load_collecting(flags, env)?;
    let mut errors: Vec<Problem> = load_errors.iter().map(ConfigError::to_problem).collect();
    let bad_keys: HashSet<String> = errors.iter().map(|p| p.key.clone()).collect();
    errors.extend(
        loaded
            .config
            .problems(env)
            .into_iter()
            .filter(|p| !bad_keys.contains(&p.key)),
    );
    let warnings = loaded.config.warnings();
    Ok(Checked {
        loaded,
        errors,
        warnings,
    })
}

fn de_cidr_value(v: toml::Value) -> Result<Vec<IpNetwork>, toml::de::Error> {
    de_cidrs(v)
}

/// The configuration from the layers; a value that does not parse keeps its default and its
/// error is added to `errors`.
fn build(l: &Layers, errors: &mut Vec<ConfigError>) -> Config {
    let mut c = Config::default();
    macro_rules! set {
        ($s:literal, $k:literal, $field:expr) => {
            match l.get($s, $k) {
                Ok(Some(v)) => $field = v,
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        };
        ($s:literal, $k:literal, Some $field:expr) => {
            match l.get($s, $k) {
                Ok(Some(v)) => $field = Some(v),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        };
    }
    set!("node", "name", Some c.node.name);
    for (key, field) in [
        ("pod_cidr", &mut c.node.pod_cidr),
        ("cluster_cidr", &mut c.node.cluster_cidr),
    ] {
        match l.get_with("node", key, de_cidr_value) {
            Ok(Some(v)) => *field = v,
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    set!(
        "node",
        "pod_cidr_from_name_hash",
        c.node.pod_cidr_from_name_hash
    );
    set!("node", "node_cidr_prefix", Some c.node.node_cidr_prefix);
    set!("node", "kubeconfig", Some c.node.kubeconfig);
    set!("node", "local_files_root", c.node.local_files_root);
    set!("cni", "conf_dir", c.cni.conf_dir);
    set!("cni", "bin_dir", c.cni.bin_dir);
    set!("cni", "data_dir", c.cni.data_dir);
    set!("cni", "bridge", c.cni.bridge);
    set!("cni", "mtu", Some c.cni.mtu);
    set!("cni", "ipam_strategy", c.cni.ipam_strategy);
    set!("cni", "conflist_name", c.cni.conflist_name);
    set!("cni", "network_name", c.cni.network_name);
    set!("cni", "daemon_socket", c.cni.daemon_socket);
    set!("cni", "chained", c.cni.chained);
    set!("tailscale", "mode", c.tailscale.mode);
    set!("tailscale", "socket", Some c.tailscale.socket);
    set!("tailscale", "interface", Some c.tailscale.interface);
    set!("tailscale", "tailscaled_path", c.tailscale.tailscaled_path);
    set!("tailscale", "state_dir", Some c.tailscale.state_dir);
    set!("tailscale", "port", c.tailscale.port);
    set!("headscale", "url", Some c.headscale.url);
    set!("headscale", "api_key_file", Some c.headscale.api_key_file);
    set!("headscale", "approval", c.headscale.approval);
    set!("headscale", "user", c.headscale.user);
    set!("headscale", "timeout_secs", c.headscale.timeout_secs);
    set!("daemon", "listen", c.daemon.listen);
    set!("daemon", "expose_to_network", c.daemon.expose_to_network);
    set!("daemon", "state_dir", c.daemon.state_dir);
    set!(
        "daemon",
        "reconcile_interval_secs",
        c.daemon.reconcile_interval_secs
    );
    set!("daemon", "log_level", c.daemon.log_level);
    set!("daemon", "log_format", c.daemon.log_format);
    c
}

// ---------------------------------------------------------------------------------------------
// Resolution, validation, display
// ---------------------------------------------------------------------------------------------

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_plugin_type(s: &str) -> bool {
    headcni_core::cni::validate_plugin_type(s).is_ok()
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

    /// Validates with the process environment (for `HEADSCALE_API_KEY`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(&|k| std::env::var(k).ok())
    }

    /// Validates the configuration; every problem is reported at once.
    pub fn validate_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let problems = self.problems(env);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    fn problems(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| {
            p.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let n = &self.node;
        if let Some(name) = &n.name
            && !is_dns_subdomain(name)
        {
            bad(
                "node.name",
                format!("{name:?} is not a Kubernetes node name (lower-case DNS subdomain)"),
            );
        }
        for (key, list) in [
            ("node.pod_cidr", &n.pod_cidr),
            ("node.cluster_cidr", &n.cluster_cidr),
        ] {
            for c in list {
                if !fmt_cidr::is_masked(c) {
                    bad(
                        key,
                        format!(
                            "{c} has host bits set (did you mean {}?)",
                            fmt_cidr::masked(*c)
                        ),
                    );
                }
            }
        }
        if let Err(e) = fmt_cidr::node_cidrs(&n.pod_cidr) {
            bad(
                "node.pod_cidr",
                format!("{e}: a node has at most one IPv4 and one IPv6 CIDR"),
            );
        }
        for c in &n.pod_cidr {
            let max = if c.is_ipv4() {
                fmt_cidr::MAX_NODE_PREFIX_V4
            } else {
                fmt_cidr::MAX_NODE_PREFIX_V6
            };
            if c.prefix() > max {
                bad(
                    "node.pod_cidr",
                    format!("{c} is too small to allocate pod addresses from (max /{max})"),
                );
            }
            let same: Vec<&IpNetwork> = n
                .cluster_cidr
                .iter()
                .filter(|k| k.is_ipv4() == c.is_ipv4())
                .collect();
            if !same.is_empty()
                && !same
                    .iter()
                    .any(|k| k.contains(c.network()) && k.prefix() <= c.prefix())
            {
                bad(
                    "node.pod_cidr",
                    format!("{c} is not inside node.cluster_cidr ({same:?})"),
                );
            }
        }
        if let Some(pre) = n.node_cidr_prefix {
            if pre.v4 == 0 || pre.v4 > fmt_cidr::MAX_NODE_PREFIX_V4 {
                bad(
                    "node.node_cidr_prefix",
                    format!("IPv4 prefix /{} is outside 1..=30", pre.v4),
                );
            }
            if pre.v6 == 0 || pre.v6 > fmt_cidr::MAX_NODE_PREFIX_V6 {
                bad(
                    "node.node_cidr_prefix",
                    format!("IPv6 prefix /{} is outside 1..=126", pre.v6),
                );
            }
            for c in &n.cluster_cidr {
                let want = if c.is_ipv4() { pre.v4 } else { pre.v6 };
                if want < c.prefix() {
                    bad(
                        "node.node_cidr_prefix",
                        format!("/{want} is larger than cluster CIDR {c}"),
                    );
                }
            }
        }
        if !n.local_files_root.is_absolute() {
            bad("node.local_files_root", "must be an absolute path".into());
        }
        if let Some(k) = &n.kubeconfig
            && k.as_os_str().is_empty()
        {
            bad("node.kubeconfig", "is empty".into());
        }

        let c = &self.cni;
        for (key, path) in [
            ("cni.conf_dir", &c.conf_dir),
            ("cni.bin_dir", &c.bin_dir),
            ("cni.data_dir", &c.data_dir),
        ] {
            if !path.is_absolute() {
                bad(key, format!("{} is not an absolute path", path.display()));
            }
        }
        if let Err(e) = headcni_core::cni::validate_ifname(&c.bridge) {
            bad("cni.bridge", e);
        }
        if let Some(mtu) = c.mtu {
            use headcni_core::plugin::{MAX_MTU, MIN_MTU};
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                bad("cni.mtu", format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"));
            } else if mtu < 1280 && n.pod_cidr.iter().any(IpNetwork::is_ipv6) {
                bad("cni.mtu", format!("{mtu} is below IPv6's minimum of 1280"));
            }
        }
        let stem = c.conflist_name.strip_suffix(".conflist").unwrap_or("");
        if stem.is_empty() || stem.starts_with('.') || c.conflist_name.contains('/') {
            bad(
                "cni.conflist_name",
                format!(
                    "{:?} must be a plain file name ending in .conflist (not hidden)",
                    c.conflist_name
                ),
            );
        }
        if !headcni_core::cni::is_valid_id(&c.network_name) {
            bad(
                "cni.network_name",
                format!(
                    "{:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
                    c.network_name
                ),
            );
        }
        if !c.daemon_socket.as_os_str().is_empty() && !c.daemon_socket.is_absolute() {
            bad(
                "cni.daemon_socket",
                "must be an absolute path (or empty to disable)".into(),
            );
        }
        for (i, plugin) in c.chained.iter().enumerate() {
            match plugin.get("type").and_then(|t| t.as_str()) {
                None => bad(
                    "cni.chained",
                    format!("plugin {i} is not an object with a string \"type\""),
                ),
                Some(t) if !is_plugin_type(t) => {
                    bad("cni.chained", format!("plugin {i}: invalid type {t:?}"))
                }
                Some(t) if t == "headcni" || t == "headcni-ipam" => bad(
                    "cni.chained",
                    format!("plugin {i}: {t:?} is HeadCNI itself (always first)"),
                ),
                Some(_) => {}
            }
        }

        let t = &self.tailscale;
        if let Some(i) = &t.interface
            && let Err(e) = headcni_core::cni::validate_ifname(i)
        {
            bad("tailscale.interface", e);
        }
        for (key, path) in [
            ("tailscale.socket", &t.socket),
            ("tailscale.state_dir", &t.state_dir),
        ] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                bad(key, format!("{} is not an absolute path", p.display()));
            }
        }
        if t.mode == Mode::Daemon && t.tailscaled_path.as_os_str().is_empty() {
            bad("tailscale.tailscaled_path", "is empty".into());
        }

        let h = &self.headscale;
        match &h.url {
            Some(u) => {
                if let Err(e) = check_url(u) {
                    bad("headscale.url", e);
                }
            }
            None if t.mode == Mode::Daemon => bad(
                "headscale.url",
                "required in daemon mode (the dedicated tailscaled logs in to it)".into(),
            ),
            None if h.approval == Approval::Api => bad(
                "headscale.url",
                "required for approval = \"api\" (or use approval = \"auto-approvers\")".into(),
            ),
            None => {}
        }
        if h.approval == Approval::Api {
            let env_key = env(API_KEY_ENV).is_some_and(|v| !v.trim().is_empty());
            match &h.api_key_file {
                Some(f) if f.as_os_str().is_empty() => {
                    bad("headscale.api_key_file", "is empty".into())
                }
                Some(_) => {}
                None if env_key => {}
                None => bad(
                    "headscale.api_key_file",
                    format!(
                        "approval = \"api\" needs an API key: set api_key_file or {API_KEY_ENV} \
                         (or use approval = \"auto-approvers\")"
                    ),
                ),
            }
        }
        if h.user.trim().is_empty() {
            bad("headscale.user", "is empty".into());
        }
        if h.timeout_secs == 0 {
            bad("headscale.timeout_secs", "must be at least 1".into());
        }

        let d = &self.daemon;
        if !d.state_dir.is_absolute() {
            bad(
                "daemon.state_dir",
                format!("{} is not an absolute path", d.state_dir.display()),
            );
        }
        if d.reconcile_interval_secs == 0 {
            bad(
                "daemon.reconcile_interval_secs",
                "must be at least 1".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&d.log_level) {
            bad("daemon.log_level", format!("{:?}: {e}", d.log_level));
        }
        p
    }

    /// Legal but suspicious settings, each as a [`Problem`] naming its key: a PodCIDR or
    /// cluster CIDR overlapping the tailnet's range, `0.0.0.0/8`, loopback or multicast
    /// ([`cidr_warnings`]); a `/0` cluster CIDR; a non-loopback `daemon.listen` without
    /// `daemon.expose_to_network = true`.
    pub fn warnings(&self) -> Vec<Problem> {
        let n = &self.node;
        let mut w = cidr_warnings("node.pod_cidr", &n.pod_cidr);
        w.extend(cidr_warnings("node.cluster_cidr", &n.cluster_cidr));
        for c in n.cluster_cidr.iter().filter(|c| c.prefix() == 0) {
            w.push(Problem {
                key: "node.cluster_cidr".into(),
                message: format!(
                    "{c} makes every destination part of the cluster: pod traffic to the \
                     internet is never masqueraded (it leaves with pod source addresses){}",
                    if n.pod_cidr_from_name_hash {
                        ", and the name hash may pick any subnet"
                    } else {
                        ""
                    }
                ),
            });
        }
        let d = &self.daemon;
        if !d.listen.ip().is_loopback() && !d.expose_to_network {
            w.push(Problem {
                key: "daemon.listen".into(),
                message: format!(
                    "{} is not a loopback address: /status and /metrics then expose node \
                     details (node name, PodCIDRs, routes, tailnet peers, pod names and \
                     addresses) to the network without authentication. Use 127.0.0.1:8081, or \
                     set daemon.expose_to_network = true (env \
                     HEADCNI_DAEMON_EXPOSE_TO_NETWORK=true) if this is intended and the port \
                     is firewalled",
                    d.listen
                ),
            });
        }
        w
    }

    /// Where the API key will come from, for people (never the key itself).
    pub fn api_key_source(&self) -> String {
        self.api_key_source_with(&|k| std::env::var(k).ok())
    }

    fn api_key_source_with(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        if self.headscale.approval == Approval::AutoApprovers {
            return "none needed (approval = \"auto-approvers\")".to_owned();
        }
        match &self.headscale.api_key_file {
            Some(f) => format!("file {}", f.display()),
            None if env(API_KEY_ENV).is_some_and(|v| !v.trim().is_empty()) => {
                format!("env {API_KEY_ENV} (set)")
            }
            None => format!("none (set headscale.api_key_file or {API_KEY_ENV})"),
        }
    }

    /// The effective configuration as TOML, mode-dependent defaults filled in, with anything
    /// secret-looking redacted and a comment naming the API key's source.
    pub fn to_redacted_toml(&self) -> String {
        self.to_redacted_toml_with(&|k| std::env::var(k).ok())
    }

    fn to_redacted_toml_with(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        let mut eff = self.clone();
        eff.node.name = Some(self.node_name());
        eff.tailscale.socket = Some(self.tailscale_socket());
        eff.tailscale.interface = Some(self.interface());
        eff.tailscale.state_dir = Some(self.tailscaled_state_dir());
        let mut value = match toml::Value::try_from(&eff) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        redact(&mut value, None);
        let body = toml::to_string_pretty(&value)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"));
        format!(
            "# HeadCNI effective configuration (secrets redacted)\n# API key: {}\n{body}",
            self.api_key_source_with(env)
        )
    }
}

/// Checks `headscale.url`. Every message shows the URL through [`redact_url`] (the parse error
/// too: a URL that does not parse is where a password used to be printed).
fn check_url(u: &str) -> Result<(), String> {
    let shown = redact_url(u);
    let uri: http::Uri = u
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") | Some("http") => {}
        _ => return Err(format!("{shown:?} must start with https:// (or http://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} has no host"));
    }
    Ok(())
}

/// Address ranges a PodCIDR or cluster CIDR should not overlap: (range, what it is, what
/// goes wrong).
const RESERVED_RANGES: &[(&str, &str)] = &[
    (
        "100.64.0.0/10",
        "the tailnet's CGNAT range (Tailscale node addresses): pod and tailnet peer \
         addresses would be ambiguous, and the masquerade exempts it",
    ),
    (
        "0.0.0.0/8",
        "\"this network\" (RFC 1122): not usable as a source or destination",
    ),
    (
        "127.0.0.0/8",
        "loopback: traffic to these pod addresses never leaves a host",
    ),
    ("224.0.0.0/4", "multicast: not unicast-routable"),
    (
        "fd7a:115c:a1e0::/48",
        "the tailnet's IPv6 range (Tailscale node addresses)",
    ),
    ("::1/128", "IPv6 loopback"),
    ("ff00::/8", "IPv6 multicast: not unicast-routable"),
];

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Warnings about `cidrs` (the value of `key`, `node.pod_cidr` or `node.cluster_cidr`): each
/// CIDR that overlaps a range in which pod addresses cannot work (the tailnet's
/// `100.64.0.0/10` and `fd7a:115c:a1e0::/48`, `0.0.0.0/8`, loopback, multicast). A `/0` is
/// left to [`Config::warnings`]. The daemon applies this to discovered PodCIDRs too.
pub fn cidr_warnings(key: &str, cidrs: &[IpNetwork]) -> Vec<Problem> {
    let mut out = Vec::new();
    for c in cidrs.iter().filter(|c| c.prefix() > 0) {
        for (range, why) in RESERVED_RANGES {
            let r: IpNetwork = range.parse().expect("a valid constant CIDR");
            if overlaps(c, &r) {
                out.push(Problem {
                    key: key.to_owned(),
                    message: format!("{c} overlaps {range}, {why}"),
                });
            }
        }
    }
    out
}

/// A key name that suggests a secret value (paths to secrets are fine).
fn secret_key_name(k: &str) -> bool {
    let l = k.to_ascii_lowercase();
    if l.ends_with("file") || l.ends_with("path") || l.ends_with("_dir") {
        return false;
    }
    [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "auth",
    ]
    .iter()
    .any(|w| l.contains(w))
}

fn redact(v: &mut toml::Value, key: Option<&str>) {
    match v {
        toml::Value::String(s) => {
            if key.is_some_and(secret_key_name) || looks_like_key(s) {
                *s = REDACTED.to_owned();
            } else if s.contains("://")
                || key.is_some_and(|k| k.to_ascii_lowercase().ends_with("url"))
            {
                *s = redact_url(s);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                redact(x, Some(k));
            }
        }
        toml::Value::Array(a) => {
            for x in a {
                redact(x, key);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// `headcni config check|show`
// ---------------------------------------------------------------------------------------------

/// `headcni config check` and `headcni config show`.
pub fn run_config(cmd: &ConfigCmd, flags: &DaemonFlags) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let source = |file: &Option<PathBuf>| match file {
        Some(f) => format!("{}", f.display()),
        None => format!("{DEFAULT_CONFIG_PATH} (absent: defaults)"),
    };
    match cmd {
        ConfigCmd::Check => {
            let checked = check_from(flags, &env).context("loading the configuration")?;
            let (loaded, mut problems) = (checked.loaded, checked.errors);
            let source = source(&loaded.file);
            let h = &loaded.config.headscale;
            // The key itself is only read to check it can be read; it is never printed.
            if h.approval == Approval::Api
                && (h.api_key_file.is_some() || env(API_KEY_ENV).is_some())
                && let Err(e) = headcni_headscale::Secret::load_api_key(h.api_key_file.as_deref())
            {
                problems.push(Problem {
                    key: "headscale.api_key_file".into(),
                    message: e.to_string(),
                });
            }
            for w in &checked.warnings {
                println!("warning: {w}");
            }
            for k in &loaded.unknown_keys {
                println!("warning: unknown key {k} (ignored)");
            }
            if problems.is_empty() {
                println!("configuration OK ({source})");
                Ok(())
            } else {
                for p in &problems {
                    println!("error: {p}");
                }
                bail!(
                    "configuration {source} has {} problem{}",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                )
            }
        }
        ConfigCmd::Show => {
            let loaded = load_from(flags, &env).context("loading the configuration")?;
            print!("{}", render_show(&loaded, &env));
            Ok(())
        }
    }
}

/// The text of `headcni config show`: the sources, then the redacted effective TOML.
pub fn render_show(loaded: &Loaded, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    match &loaded.file {
        Some(f) => out.push_str(&format!("# file: {}\n", f.display())),
        None => out.push_str(&format!(
            "# file: {DEFAULT_CONFIG_PATH} (absent: defaults)\n"
        )),
    }
    out.push_str("# values not at their defaults:\n");
    if loaded.origins.is_empty() {
        out.push_str("#   (none)\n");
    }
    for (k, o) in &loaded.origins {
        out.push_str(&format!("#   {k}: {o}\n"));
    }
    let c = &loaded.config;
    if !loaded.origins.contains_key("node.name") {
        out.push_str("#   node.name: hostname\n");
    }
    let mode = c.tailscale.mode.as_str();
    for (k, set) in [
        ("tailscale.socket", c.tailscale.socket.is_some()),
        ("tailscale.interface", c.tailscale.interface.is_some()),
    ] {
        if !set {
            out.push_str(&format!("#   {k}: default for mode {mode:?}\n"));
        }
    }
    for k in &loaded.unknown_keys {
        out.push_str(&format!("#   {k}: unknown key, ignored\n"));
    }
    for w in c.warnings() {
        out.push_str(&format!("# warning: {w}\n"));
    }
    out.push_str(&c.to_redacted_toml_with(env));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn registry_matches_the_structs() {
        // A config with every optional key present serializes to exactly the registry.
        let mut c = Config::default();
        c.node.name = Some("n".into());
        c.node.node_cidr_prefix = Some(NodeCidrPrefix::default());
        c.node.kubeconfig = Some("/k".into());
        c.cni.mtu = Some(1280);
        c.tailscale.socket = Some("/s".into());
        c.tailscale.interface = Some("i".into());
        c.tailscale.state_dir = Some("/d".into());
        c.headscale.url = Some("https://h".into());
        c.headscale.api_key_file = Some("/f".into());
        let v = toml::Value::try_from(&c).unwrap();
        let mut keys: Vec<String> = Vec::new();
        for (s, t) in v.as_table().unwrap() {
            for k in t.as_table().unwrap().keys() {
                keys.push(format!("{s}.{k}"));
            }
        }
        keys.sort();
        let mut reg: Vec<String> = known_keys().collect();
        reg.sort();
        assert_eq!(keys, reg);
        // and the derived Deserialize round-trips it
        let back: Config = v.try_into().unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn env_values() {
        assert_eq!(env_value(Kind::Bool, "YES"), Ok(toml::Value::Boolean(true)));
        assert!(env_value(Kind::Bool, "maybe").is_err());
        assert_eq!(
            env_value(Kind::Int, " 1400 "),
            Ok(toml::Value::Integer(1400))
        );
        assert!(env_value(Kind::Int, "big").is_err());
        let p = env_value(Kind::Prefix, "26,80").unwrap();
        let p: NodeCidrPrefix = p.try_into().unwrap();
        assert_eq!((p.v4, p.v6), (26, 80));
        let j = env_value(Kind::Json, r#"[{"type":"bandwidth"}]"#).unwrap();
        assert!(j.is_array());
        assert!(env_value(Kind::Json, "[null]").is_err());
        assert_eq!(env_var_name("node", "pod_cidr"), "HEADCNI_NODE_POD_CIDR");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://user:pw@hs.example.com/x?token=abc"),
            "https://<redacted>@hs.example.com/x?<redacted>"
        );
        assert_eq!(
            redact_url("https://hs.example.com"),
            "https://hs.example.com"
        );
        assert!(secret_key_name("apiKey") && secret_key_name("token"));
        assert!(!secret_key_name("api_key_file") && !secret_key_name("portMappings"));
        let mut c = Config::default();
        c.headscale.url = Some("https://admin:hunter2@hs.example.com".into());
        c.headscale.api_key_file = Some("/etc/headcni/api-key".into());
        c.cni.chained.push(serde_json::json!({
            "type": "x", "apiToken": "abc123", "nested": {"password": "pw1"},
            "args": ["hskey-api-leak"], "keyFile": "/etc/x.pem"
        }));
        let out = c.to_redacted_toml_with(&no_env);
        for secret in ["hunter2", "abc123", "pw1", "hskey-api-leak"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("/etc/headcni/api-key"));
        assert!(out.contains("/etc/x.pem"));
        assert!(out.contains("# API key: file /etc/headcni/api-key"));
        let env = |k: &str| (k == API_KEY_ENV).then(|| "hskey-api-secret".to_owned());
        c.headscale.api_key_file = None;
        let out = c.to_redacted_toml_with(&env);
        assert!(out.contains("env HEADSCALE_API_KEY (set)"));
        assert!(!out.contains("hskey-api-secret"));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_subdomain("node-1.example"));
        assert!(!is_dns_subdomain("Node_1"));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_subdomain(""));
    }
}
