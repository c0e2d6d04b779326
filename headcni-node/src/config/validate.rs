//! Validation: every problem of a loaded [`Config`] at once ([`Config::validate_with`]), and the
//! legal but suspicious settings ([`Config::warnings`], [`cidr_warnings`]).

use headcni_headscale::secret::redact_url;
use ipnetwork::IpNetwork;

use super::error::{ConfigError, Problem};
use super::schema::{API_KEY_ENV, Approval, Config, Mode};
use headcni_core::defaults;
use headcni_core::node::podcidr as fmt_cidr;

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

    pub(super) fn problems(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
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
            ("node.service_cidr", &n.service_cidr),
            ("node.no_masquerade_cidrs", &n.no_masquerade_cidrs),
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
                Some(t) if t == defaults::PLUGIN_TYPE || t == defaults::IPAM_TYPE => bad(
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
        for t in &h.acl_tags {
            // Headscale's own check of a pre-auth key's tags (hscontrol/types: `tag:` prefix,
            // lower case, no spaces).
            let name = t.strip_prefix("tag:").unwrap_or_default();
            if name.is_empty()
                || t.len() > 256
                || name.chars().any(|c| c.is_whitespace() || c.is_uppercase())
            {
                bad(
                    "headscale.acl_tags",
                    format!(
                        "{t:?} is not an ACL tag (`tag:` then a lower-case name without spaces)"
                    ),
                );
            }
        }
        if h.timeout_secs == 0 {
            bad("headscale.timeout_secs", "must be at least 1".into());
        }
        if h.resync_secs < super::schema::MIN_RESYNC_SECS {
            bad(
                "headscale.resync_secs",
                format!("must be at least {}", super::schema::MIN_RESYNC_SECS),
            );
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

        if h.approval == Approval::TailscaleApi {
            for (key, message) in self.tailscale_api_problems() {
                bad(key, message);
            }
        }
        for (key, message) in self.magic_dns.problems() {
            bad(key, message);
        }
        p
    }

    /// `[tailscale_api]` with `approval = "tailscale-api"`: `url` an `http(s)://host` URL
    /// without credentials in it, `tailnet` not empty, `oauth_file` given as an absolute path.
    fn tailscale_api_problems(&self) -> Vec<(&'static str, String)> {
        let a = &self.tailscale_api;
        let mut out = Vec::new();
        match check_url(&a.url) {
            Err(e) => out.push(("tailscale_api.url", e)),
            Ok(()) if url_has_userinfo(&a.url) => out.push((
                "tailscale_api.url",
                format!(
                    "{:?} must not hold credentials (the OAuth client file does)",
                    redact_url(&a.url)
                ),
            )),
            Ok(()) => {}
        }
        if a.tailnet.trim().is_empty() {
            out.push((
                "tailscale_api.tailnet",
                "is empty (use \"-\" for the OAuth client's own tailnet)".into(),
            ));
        }
        match &a.oauth_file {
            Some(f) if f.as_os_str().is_empty() => {
                out.push(("tailscale_api.oauth_file", "is empty".into()))
            }
            Some(f) if !f.is_absolute() => out.push((
                "tailscale_api.oauth_file",
                format!("{} is not an absolute path", f.display()),
            )),
            Some(_) => {}
            None => out.push((
                "tailscale_api.oauth_file",
                "approval = \"tailscale-api\" needs the OAuth client file (client_id=…, \
                 client_secret=…): set tailscale_api.oauth_file or \
                 HEADCNI_TAILSCALE_API_OAUTH_FILE"
                    .into(),
            )),
        }
        out
    }

    /// Legal but suspicious settings, each as a [`Problem`] naming its key: a PodCIDR or
    /// cluster CIDR overlapping the tailnet's range, `0.0.0.0/8`, loopback or multicast
    /// ([`cidr_warnings`]); a `/0` cluster CIDR; a non-loopback `daemon.listen` without
    /// `daemon.expose_to_network = true`.
    pub fn warnings(&self) -> Vec<Problem> {
        let n = &self.node;
        let mut w = cidr_warnings("node.pod_cidr", &n.pod_cidr);
        w.extend(cidr_warnings("node.cluster_cidr", &n.cluster_cidr));
        for (key, list) in [
            ("node.service_cidr", &n.service_cidr),
            ("node.no_masquerade_cidrs", &n.no_masquerade_cidrs),
        ] {
            for c in list.iter().filter(|c| c.prefix() == 0) {
                w.push(Problem {
                    key: key.into(),
                    message: format!(
                        "{c} excludes every destination from masquerade: pod traffic to the \
                         internet leaves with pod source addresses"
                    ),
                });
            }
        }
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
}

/// For `headcni config check`: when `approval = "api"` and a key source is configured (the
/// file, or `HEADSCALE_API_KEY` in `env`), whether the key can actually be read
/// ([`headcni_headscale::Secret::load_api_key`]; the key is read and dropped, never shown).
/// `None` when it can, or when no key is needed or configured (that is a [`Config::validate_with`]
/// error already).
pub fn api_key_problem(cfg: &Config, env: &dyn Fn(&str) -> Option<String>) -> Option<Problem> {
    let h = &cfg.headscale;
    if h.approval != Approval::Api || (h.api_key_file.is_none() && env(API_KEY_ENV).is_none()) {
        return None;
    }
    let e = headcni_headscale::Secret::load_api_key(h.api_key_file.as_deref()).err()?;
    Some(Problem {
        key: "headscale.api_key_file".into(),
        message: e.to_string(),
    })
}

/// For `headcni config check`: with `approval = "tailscale-api"` and an OAuth client file
/// configured, whether it can actually be used
/// ([`headcni_headscale::tailscale_api::OAuthCredentials::from_file`]: permissions, owner,
/// format; the secret is read and dropped, never shown). `None` when it can, or when it is not
/// needed or not configured (that is a [`Config::validate_with`] error already).
pub fn oauth_file_problem(cfg: &Config) -> Option<Problem> {
    if cfg.headscale.approval != Approval::TailscaleApi {
        return None;
    }
    let f = cfg.tailscale_api.oauth_file.as_deref()?;
    let e = headcni_headscale::tailscale_api::OAuthCredentials::from_file(f).err()?;
    Some(Problem {
        key: "tailscale_api.oauth_file".into(),
        message: e.to_string(),
    })
}

/// Whether `u` names a user or password before its host (`https://user:pw@host`).
fn url_has_userinfo(u: &str) -> bool {
    u.parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.as_str().contains('@')))
        .unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_subdomain("node-1.example"));
        assert!(!is_dns_subdomain("Node_1"));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_subdomain(""));
    }
}
