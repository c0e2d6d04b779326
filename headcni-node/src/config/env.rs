//! The key registry: every `section.key`, and how its `HEADCNI_<SECTION>_<KEY>` environment
//! value becomes a TOML value.

/// How an environment variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) const KEYS: &[(&str, &str, Kind)] = &[
    ("node", "name", Kind::Str),
    ("node", "pod_cidr", Kind::Cidrs),
    ("node", "cluster_cidr", Kind::Cidrs),
    ("node", "pod_cidr_from_name_hash", Kind::Bool),
    ("node", "node_cidr_prefix", Kind::Prefix),
    ("node", "kubeconfig", Kind::Str),
    ("node", "local_files_root", Kind::Str),
    ("node", "firewall_driver", Kind::Str),
    ("node", "masquerade_ipv6", Kind::Bool),
    ("node", "service_cidr", Kind::Cidrs),
    ("node", "no_masquerade_cidrs", Kind::Cidrs),
    ("node", "bridge_netfilter", Kind::Bool),
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
    ("tailscale", "netfilter_mode", Kind::Str),
    ("headscale", "url", Kind::Str),
    ("headscale", "api_key_file", Kind::Str),
    ("headscale", "approval", Kind::Str),
    ("headscale", "user", Kind::Str),
    ("headscale", "acl_tags", Kind::Json),
    ("headscale", "timeout_secs", Kind::Int),
    ("headscale", "resync_secs", Kind::Int),
    ("daemon", "listen", Kind::Str),
    ("daemon", "expose_to_network", Kind::Bool),
    ("daemon", "state_dir", Kind::Str),
    ("daemon", "reconcile_interval_secs", Kind::Int),
    ("daemon", "log_level", Kind::Str),
    ("daemon", "log_format", Kind::Str),
    ("tailscale_api", "url", Kind::Str),
    ("tailscale_api", "tailnet", Kind::Str),
    ("tailscale_api", "oauth_file", Kind::Str),
    ("magic_dns", "enable", Kind::Bool),
    ("magic_dns", "base_domain", Kind::Str),
    ("magic_dns", "nameservers", Kind::Json),
    ("magic_dns", "search_domains", Kind::Json),
];

pub(super) const SECTIONS: &[&str] = &[
    "node",
    "cni",
    "tailscale",
    "headscale",
    "daemon",
    "tailscale_api",
    "magic_dns",
];

/// The environment variable that overrides `section.key`: `HEADCNI_<SECTION>_<KEY>`.
pub fn env_var_name(section: &str, key: &str) -> String {
    format!("HEADCNI_{}_{}", section, key).to_ascii_uppercase()
}

/// Every `section.key` of the configuration, in file order.
pub fn known_keys() -> impl Iterator<Item = String> {
    KEYS.iter().map(|(s, k, _)| format!("{s}.{k}"))
}

pub(super) fn registry_entry(
    section: &str,
    key: &str,
) -> Option<&'static (&'static str, &'static str, Kind)> {
    KEYS.iter().find(|(s, k, _)| *s == section && *k == key)
}

pub(super) fn static_section(section: &str) -> Option<&'static str> {
    SECTIONS.iter().copied().find(|s| *s == section)
}

/// Converts an environment value to a TOML value for `kind`.
pub(super) fn env_value(kind: Kind, text: &str) -> Result<toml::Value, String> {
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

#[cfg(test)]
mod tests {
    use super::super::schema::{Config, NodeCidrPrefix};
    use super::*;

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
        c.tailscale_api.oauth_file = Some("/o".into());
        c.magic_dns.base_domain = Some("t.lab".into());
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
        assert_eq!(
            env_var_name("tailscale_api", "oauth_file"),
            "HEADCNI_TAILSCALE_API_OAUTH_FILE"
        );
    }
}
