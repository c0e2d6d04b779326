//! `[magic_dns]`: tailnet names for pods whose runtime takes DNS settings from the CNI result.
//!
//! ```toml
//! [magic_dns]
//! enable = true
//! base_domain = "tailnet.example.com"   # Headscale dns.base_domain (MagicDNS suffix)
//! nameservers = ["100.100.100.100"]     # default with enable: quad-100
//! search_domains = ["tailnet.example.com"]  # default with enable: [base_domain]
//! ```
//!
//! With `enable`, the generated conflist carries `dns` (`nameservers`, `search`) on HeadCNI's
//! plugin object and the plugin returns it in the ADD result's `dns` (CNI spec 1.1.0
//! §Result): podman and other runtimes that honour it write it to the container's
//! `resolv.conf`. The kubelet ignores the CNI result's DNS; Kubernetes clusters use CoreDNS
//! with the server block `headcni dns coredns` prints (`base_domain` names the zone).
//!
//! `100.100.100.100` is tailscaled's MagicDNS resolver (tailscale `net/tsaddr`
//! `TailscaleServiceIP`); a pod reaches it through the node: tailscaled routes it into its
//! tun (table 52) and answers whatever the source address, and HeadCNI's masquerade keeps
//! the pod's address for the tailnet range that holds it.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// tailscaled's MagicDNS address (tailscale `net/tsaddr` `TailscaleServiceIP`).
pub const MAGIC_DNS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 100, 100, 100));
/// Most nameservers a `resolv.conf` uses (glibc `MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains HeadCNI passes on (glibc `MAXDNSRCH` before 2.26).
pub const MAX_SEARCH_DOMAINS: usize = 6;

/// `[magic_dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MagicDnsConfig {
    /// Put `dns` into the conflist (and so the ADD result). Default `false`.
    pub enable: bool,
    /// The tailnet's MagicDNS base domain (Headscale `dns.base_domain`, LocalAPI status
    /// `MagicDNSSuffix`), e.g. `tailnet.example.com`; no trailing dot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_domain: Option<String>,
    /// Nameserver addresses, in order, at most [`MAX_NAMESERVERS`]. Empty with `enable`:
    /// [`MAGIC_DNS_IP`].
    pub nameservers: Vec<IpAddr>,
    /// Search domains, at most [`MAX_SEARCH_DOMAINS`]. Empty with `enable`: `[base_domain]`
    /// when that is set.
    pub search_domains: Vec<String>,
}

/// A DNS domain name as `resolv.conf` takes it: labels of ASCII letters, digits and `-`
/// (not at either end), 1–63 bytes each, 253 in all, no trailing dot.
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl MagicDnsConfig {
    /// The conflist's `dns`: `None` unless `enable`; otherwise the nameservers and search
    /// domains with the defaults above applied.
    pub fn conflist_dns(&self) -> Option<headcni_core::cni::Dns> {
        if !self.enable {
            return None;
        }
        let nameservers = if self.nameservers.is_empty() {
            vec![MAGIC_DNS_IP]
        } else {
            self.nameservers.clone()
        };
        let search = if self.search_domains.is_empty() {
            self.base_domain.iter().cloned().collect()
        } else {
            self.search_domains.clone()
        };
        Some(headcni_core::cni::Dns {
            nameservers: nameservers.iter().map(ToString::to_string).collect(),
            search,
            ..Default::default()
        })
    }

    /// Validation problems as `(key, message)`: a base domain or search domain that is not a
    /// domain name, too many nameservers or search domains.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(d) = &self.base_domain
            && !is_domain(d)
        {
            p.push((
                "magic_dns.base_domain",
                format!("{d:?} is not a domain name (e.g. tailnet.example.com, no trailing dot)"),
            ));
        }
        if self.nameservers.len() > MAX_NAMESERVERS {
            p.push((
                "magic_dns.nameservers",
                format!(
                    "{} nameservers given; resolv.conf uses at most {MAX_NAMESERVERS}",
                    self.nameservers.len()
                ),
            ));
        }
        if self.search_domains.len() > MAX_SEARCH_DOMAINS {
            p.push((
                "magic_dns.search_domains",
                format!(
                    "{} search domains given; at most {MAX_SEARCH_DOMAINS}",
                    self.search_domains.len()
                ),
            ));
        }
        for d in &self.search_domains {
            if !is_domain(d) {
                p.push((
                    "magic_dns.search_domains",
                    format!("{d:?} is not a domain name"),
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_means_no_dns_and_enabled_defaults_to_quad_100_and_the_base_domain() {
        let mut c = MagicDnsConfig {
            base_domain: Some("tailnet.lab".into()),
            ..Default::default()
        };
        assert_eq!(c.conflist_dns(), None);
        c.enable = true;
        let d = c.conflist_dns().unwrap();
        assert_eq!(d.nameservers, vec!["100.100.100.100".to_string()]);
        assert_eq!(d.search, vec!["tailnet.lab".to_string()]);
        c.nameservers = vec!["10.96.0.10".parse().unwrap()];
        c.search_domains = vec!["svc.cluster.local".into()];
        let d = c.conflist_dns().unwrap();
        assert_eq!(d.nameservers, vec!["10.96.0.10".to_string()]);
        assert_eq!(d.search, vec!["svc.cluster.local".to_string()]);
        c.base_domain = None;
        c.search_domains.clear();
        assert!(c.conflist_dns().unwrap().search.is_empty());
    }

    #[test]
    fn bad_domains_and_too_many_entries_are_problems() {
        let ok = MagicDnsConfig {
            enable: true,
            base_domain: Some("Tailnet-1.example.com".into()),
            nameservers: vec![MAGIC_DNS_IP; 3],
            search_domains: vec!["a.b".into()],
        };
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let bad = MagicDnsConfig {
            enable: true,
            base_domain: Some("tailnet.lab.".into()),
            nameservers: vec![MAGIC_DNS_IP; 4],
            search_domains: vec!["-x".into(); 7],
        };
        let keys: Vec<&str> = bad.problems().iter().map(|(k, _)| *k).collect();
        assert!(keys.contains(&"magic_dns.base_domain"), "{keys:?}");
        assert!(keys.contains(&"magic_dns.nameservers"), "{keys:?}");
        assert_eq!(
            keys.iter()
                .filter(|k| **k == "magic_dns.search_domains")
                .count(),
            8
        );
    }
}
