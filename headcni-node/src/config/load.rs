//! The layered loader: built-in defaults, the TOML file, `HEADCNI_<SECTION>_<KEY>`, then the
//! command-line [`DaemonFlags`] (see the [module docs](super) for the precedence rules).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use headcni_headscale::secret::redact_urls_in;
use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;

use super::env::{KEYS, env_value, env_var_name, registry_entry, static_section};
use super::error::{ConfigError, Origin, Problem};
use super::schema::{Config, DEFAULT_CONFIG_PATH, Mode, NODE_NAME_ENV, de_cidrs};

/// Command-line flags of `headcni daemon` and `headcni config`; they override the file and
/// the environment. Keep the same value for reloads ([`load`] is re-callable).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DaemonFlags {
    /// The configuration file (default: /etc/headcni/config.toml, where a missing file means
    /// defaults; a file given here or in HEADCNI_CONFIG must exist).
    #[cfg_attr(
        feature = "clap",
        arg(long, env = "HEADCNI_CONFIG", value_name = "PATH")
    )]
    pub config: Option<PathBuf>,
    /// The Kubernetes node name (config: node.name).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    pub node_name: Option<String>,
    /// The node's PodCIDR; repeat or comma-separate for dual-stack (config: node.pod_cidr).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "CIDR", value_delimiter = ',')
    )]
    pub pod_cidr: Vec<IpNetwork>,
    /// The cluster CIDR; repeat or comma-separate for dual-stack (config: node.cluster_cidr).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "CIDR", value_delimiter = ',')
    )]
    pub cluster_cidr: Vec<IpNetwork>,
    /// The Service CIDR, excluded from masquerade; repeat or comma-separate (config:
    /// node.service_cidr).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "CIDR", value_delimiter = ',')
    )]
    pub service_cidr: Vec<IpNetwork>,
    /// A destination excluded from masquerade; repeat or comma-separate (config:
    /// node.no_masquerade_cidrs).
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "no-masquerade-cidr",
            value_name = "CIDR",
            value_delimiter = ','
        )
    )]
    pub no_masquerade_cidrs: Vec<IpNetwork>,
    /// host or daemon (config: tailscale.mode).
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub mode: Option<Mode>,
    /// Address of /metrics, /healthz, /readyz (config: daemon.listen).
    #[cfg_attr(feature = "clap", arg(long, value_name = "ADDR"))]
    pub listen: Option<SocketAddr>,
    /// Log level or tracing filter (config: daemon.log_level).
    #[cfg_attr(feature = "clap", arg(long, value_name = "LEVEL"))]
    pub log_level: Option<String>,
    /// The Headscale URL (config: headscale.url).
    #[cfg_attr(feature = "clap", arg(long, value_name = "URL"))]
    pub headscale_url: Option<String>,
    /// A file with the Headscale API key (config: headscale.api_key_file).
    #[cfg_attr(feature = "clap", arg(long, value_name = "PATH"))]
    pub api_key_file: Option<PathBuf>,
    /// Masquerade IPv6 pod traffic leaving the cluster: true or false (config:
    /// node.masquerade_ipv6).
    #[cfg_attr(feature = "clap", arg(long, value_name = "BOOL"))]
    pub masquerade_ipv6: Option<bool>,
}

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
    if !flags.service_cidr.is_empty() {
        layers.set(
            "node",
            "service_cidr",
            cidrs(&flags.service_cidr),
            flag("service-cidr"),
        );
    }
    if !flags.no_masquerade_cidrs.is_empty() {
        layers.set(
            "node",
            "no_masquerade_cidrs",
            cidrs(&flags.no_masquerade_cidrs),
            flag("no-masquerade-cidr"),
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
    if let Some(b) = flags.masquerade_ipv6 {
        layers.set(
            "node",
            "masquerade_ipv6",
            toml::Value::Boolean(b),
            flag("masquerade-ipv6"),
        );
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
        ("service_cidr", &mut c.node.service_cidr),
        ("no_masquerade_cidrs", &mut c.node.no_masquerade_cidrs),
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
    set!("node", "firewall_driver", c.node.firewall_driver);
    set!("node", "masquerade_ipv6", c.node.masquerade_ipv6);
    set!("node", "bridge_netfilter", c.node.bridge_netfilter);
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
    set!("tailscale", "netfilter_mode", c.tailscale.netfilter_mode);
    set!("headscale", "url", Some c.headscale.url);
    set!("headscale", "api_key_file", Some c.headscale.api_key_file);
    set!("headscale", "approval", c.headscale.approval);
    set!("headscale", "user", c.headscale.user);
    set!("headscale", "acl_tags", c.headscale.acl_tags);
    set!("headscale", "timeout_secs", c.headscale.timeout_secs);
    set!("headscale", "resync_secs", c.headscale.resync_secs);
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
    set!("tailscale_api", "url", c.tailscale_api.url);
    set!("tailscale_api", "tailnet", c.tailscale_api.tailnet);
    set!("tailscale_api", "oauth_file", Some c.tailscale_api.oauth_file);
    set!("magic_dns", "enable", c.magic_dns.enable);
    set!("magic_dns", "base_domain", Some c.magic_dns.base_domain);
    set!("magic_dns", "nameservers", c.magic_dns.nameservers);
    set!("magic_dns", "search_domains", c.magic_dns.search_domains);
    c
}
