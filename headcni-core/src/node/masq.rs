//! The masquerade rule set of the node daemon, as data (no I/O).
//!
//! HeadCNI keeps its NAT rules in **one nftables table of its own** (family `inet`, default
//! name [`DEFAULT_TABLE`]), so installing is an atomic replace of that table and uninstalling
//! is a single table delete; no other table is ever read or written.
//!
//! The semantics follow flannel's `FLANNEL-POSTRTG` chain (the Go original installed no NAT
//! at all, see its weakness 6): one `nat` chain on the `postrouting` hook at priority
//! `srcnat` (100) with, per address family that has a pod CIDR,
//!
//! ```text
//! ip saddr @pod_v4 ip daddr != @nomasq_v4 masquerade fully-random
//! ```
//!
//! where `pod_v4` holds the node's pod CIDR(s) and `nomasq_v4` every destination that must
//! see the pod's own address: the cluster CIDR(s), the pod CIDR(s), the tailnet range
//! ([`TAILNET_V4`] / [`TAILNET_V6`]), multicast (`224.0.0.0/4` / `ff00::/8`) and any extra
//! exemptions. Pod → pod traffic, on the node or across the tailnet, therefore keeps its
//! source address; everything else leaving the node from a pod is masqueraded to the outgoing
//! interface's address. `fully-random` is nftables' spelling of iptables'
//! `--random-fully` (`NF_NAT_RANGE_PROTO_RANDOM_FULLY`: source ports fully randomised, which
//! avoids the conntrack insertion races of the sequential port search).
//!
//! [`plan`] validates a [`MasqueradeSpec`] and returns a [`MasqueradePlan`]: the table, its
//! sets with normalised elements (network addresses, sorted, no element contained in
//! another, so nftables accepts them in an interval set and lists them back unchanged), and
//! the chain with its rules. `headcni_netlink::nft` turns the plan into an `nft -j` batch.
//! The plan's [`Display`](std::fmt::Display) is the equivalent `nft -f` script (for logs,
//! docs and `headcni status`).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The Tailscale IPv4 range (CGNAT `100.64.0.0/10`, RFC 6598) tailnet addresses come from.
pub const TAILNET_V4: &str = "100.64.0.0/10";
/// The Tailscale IPv6 ULA range (`fd7a:115c:a1e0::/48`) tailnet addresses come from.
pub const TAILNET_V6: &str = "fd7a:115c:a1e0::/48";
/// IPv4 multicast (`224.0.0.0/4`, RFC 5771); never masqueraded.
pub const MULTICAST_V4: &str = "224.0.0.0/4";
/// IPv6 multicast (`ff00::/8`, RFC 4291); never masqueraded.
pub const MULTICAST_V6: &str = "ff00::/8";
/// Default name of HeadCNI's table ([`crate::defaults::NFT_TABLE`], family [`TABLE_FAMILY`]).
pub use crate::defaults::NFT_TABLE as DEFAULT_TABLE;
/// The nftables family of HeadCNI's table ([`crate::defaults::NFT_TABLE_FAMILY`]).
pub use crate::defaults::NFT_TABLE_FAMILY as TABLE_FAMILY;
/// Name of the NAT chain in the table.
pub const POSTROUTING_CHAIN: &str = "postrouting";
/// Priority of the NAT chain: `srcnat` (100), as for iptables' `nat POSTROUTING`.
pub const SRCNAT_PRIORITY: i32 = 100;
/// Longest table name [`validate_table_name`] accepts (nftables allows 255; HeadCNI keeps
/// names short and readable).
pub const MAX_TABLE_NAME_LEN: usize = 64;
/// Comment attached to every masquerade rule, shown by `nft list`.
pub const RULE_COMMENT: &str = "headcni: masquerade pod traffic leaving the cluster";

/// The default tailnet ranges, [`TAILNET_V4`] and [`TAILNET_V6`].
pub fn default_tailnet_cidrs() -> Vec<IpNetwork> {
    [TAILNET_V4, TAILNET_V6]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// What the masquerade table must do on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeSpec {
    /// Name of HeadCNI's table (family `inet`), e.g. [`DEFAULT_TABLE`]. Must pass
    /// [`validate_table_name`].
    pub table: String,
    /// The node's pod CIDR(s) (one per family for dual-stack); sources to masquerade. At
    /// least one is required; each must be a network address (no host bits).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The cluster CIDR(s) (all nodes' pod CIDRs); destinations that keep the pod's source.
    /// Optional; when a family has cluster CIDRs, that family's pod CIDRs must lie inside one.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Tailnet ranges; destinations that keep the pod's source (the tailnet carries pod
    /// addresses with tailscaled's `NoSNAT`). [`MasqueradeSpec::new`] uses
    /// [`default_tailnet_cidrs`].
    pub tailnet_cidrs: Vec<IpNetwork>,
    /// Further destinations that keep the pod's source (e.g. a service CIDR that is routed
    /// without kube-proxy). May be empty.
    pub extra_no_masq: Vec<IpNetwork>,
}

impl MasqueradeSpec {
    /// A spec for table [`DEFAULT_TABLE`] with the default tailnet ranges and no extra
    /// exemptions.
    pub fn new(pod_cidrs: Vec<IpNetwork>, cluster_cidrs: Vec<IpNetwork>) -> MasqueradeSpec {
        MasqueradeSpec {
            table: DEFAULT_TABLE.to_owned(),
            pod_cidrs,
            cluster_cidrs,
            tailnet_cidrs: default_tailnet_cidrs(),
            extra_no_masq: Vec::new(),
        }
    }
}

/// Which list of a [`MasqueradeSpec`] a CIDR came from (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrRole {
    /// [`MasqueradeSpec::pod_cidrs`].
    Pod,
    /// [`MasqueradeSpec::cluster_cidrs`].
    Cluster,
    /// [`MasqueradeSpec::tailnet_cidrs`].
    Tailnet,
    /// [`MasqueradeSpec::extra_no_masq`].
    ExtraNoMasq,
}

impl fmt::Display for CidrRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrRole::Pod => "pod CIDR",
            CidrRole::Cluster => "cluster CIDR",
            CidrRole::Tailnet => "tailnet CIDR",
            CidrRole::ExtraNoMasq => "no-masquerade CIDR",
        })
    }
}

/// Why a [`MasqueradeSpec`] cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasqError {
    /// The table name is empty, longer than [`MAX_TABLE_NAME_LEN`], does not start with a
    /// letter or `_`, or contains characters other than ASCII letters, digits, `_` and `-`.
    #[error("invalid nftables table name {0:?}: want [A-Za-z_][A-Za-z0-9_-]*, at most 64 bytes")]
    InvalidTableName(String),
    /// [`MasqueradeSpec::pod_cidrs`] is empty: there is nothing to masquerade.
    #[error("no pod CIDR given: nothing to masquerade")]
    NoPodCidr,
    /// A CIDR has host bits set (`10.244.1.5/24` instead of `10.244.1.0/24`).
    #[error("{role} {cidr} has host bits set (network address is {network})")]
    HostBits {
        /// The list it came from.
        role: CidrRole,
        /// The CIDR as given.
        cidr: IpNetwork,
        /// Its network address.
        network: IpAddr,
    },
    /// A pod CIDR overlaps a range that must never be a pod source: a tailnet range or
    /// multicast (this includes `/0`).
    #[error("pod CIDR {pod} overlaps the {what} range {reserved}")]
    PodOverlapsReserved {
        /// The pod CIDR.
        pod: IpNetwork,
        /// `"tailnet"` or `"multicast"`.
        what: &'static str,
        /// The range it overlaps.
        reserved: IpNetwork,
    },
    /// Cluster CIDRs are given for the pod CIDR's family, but none contains it: pod → pod
    /// traffic to other nodes would be masqueraded.
    #[error("pod CIDR {pod} is not inside any cluster CIDR of its family ({cluster})")]
    PodOutsideCluster {
        /// The pod CIDR.
        pod: IpNetwork,
        /// The cluster CIDRs of that family, comma-separated.
        cluster: String,
    },
}

/// An IP address family of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrFamily {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl AddrFamily {
    /// The family of a CIDR.
    pub fn of(net: &IpNetwork) -> AddrFamily {
        match net {
            IpNetwork::V4(_) => AddrFamily::Ipv4,
            IpNetwork::V6(_) => AddrFamily::Ipv6,
        }
    }

    /// The nftables payload protocol for this family's addresses: `ip` or `ip6`.
    pub fn nft_protocol(self) -> &'static str {
        match self {
            AddrFamily::Ipv4 => "ip",
            AddrFamily::Ipv6 => "ip6",
        }
    }

    /// The nftables set element type: `ipv4_addr` or `ipv6_addr`.
    pub fn nft_set_type(self) -> &'static str {
        match self {
            AddrFamily::Ipv4 => "ipv4_addr",
            AddrFamily::Ipv6 => "ipv6_addr",
        }
    }

    /// Suffix of the set names: `v4` or `v6`.
    pub fn suffix(self) -> &'static str {
        match self {
            AddrFamily::Ipv4 => "v4",
            AddrFamily::Ipv6 => "v6",
        }
    }

    fn multicast(self) -> Option<IpNetwork> {
        match self {
            AddrFamily::Ipv4 => MULTICAST_V4.parse().ok(),
            AddrFamily::Ipv6 => MULTICAST_V6.parse().ok(),
        }
    }
}

/// A named set of addresses in the table (`type ipv4_addr|ipv6_addr; flags interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    /// Set name, e.g. `pod_v4`, `nomasq_v6`.
    pub name: String,
    /// Address family of the elements.
    pub family: AddrFamily,
    /// Elements: network addresses with prefix, sorted by address, none contained in
    /// another (non-empty).
    pub elements: Vec<IpNetwork>,
}

/// One masquerade rule: `<proto> saddr @<source_set> <proto> daddr != @<exempt_set>
/// masquerade fully-random comment "<RULE_COMMENT>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqRule {
    /// Address family the rule matches (`ip` or `ip6` payload).
    pub family: AddrFamily,
    /// Name of the set the source address must be in (the pod CIDRs).
    pub source_set: String,
    /// Name of the set the destination must **not** be in (the no-masquerade destinations).
    pub exempt_set: String,
    /// `fully-random` port mapping (`--random-fully`); always `true` in plans from [`plan`].
    pub fully_random: bool,
    /// Rule comment, [`RULE_COMMENT`].
    pub comment: String,
}

/// The NAT base chain: `type nat hook postrouting priority <priority>; policy accept;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatChain {
    /// Chain name, [`POSTROUTING_CHAIN`].
    pub name: String,
    /// Hook priority, [`SRCNAT_PRIORITY`].
    pub priority: i32,
    /// The rules, in order (IPv4 first, then IPv6).
    pub rules: Vec<MasqRule>,
}

/// The complete content of HeadCNI's table, as data. Built by [`plan`]; applied by
/// `headcni_netlink::nft::apply`, which replaces the live table atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradePlan {
    /// Table name; the family is always [`TABLE_FAMILY`] (`inet`).
    pub table: String,
    /// The sets, in order: per family (IPv4 first) `pod_<v>` then `nomasq_<v>`.
    pub sets: Vec<AddrSet>,
    /// The postrouting NAT chain.
    pub chain: NatChain,
}

impl MasqueradePlan {
    /// The set called `name`, if the plan has one.
    pub fn set(&self, name: &str) -> Option<&AddrSet> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The address families the plan masquerades (those with a pod CIDR).
    pub fn families(&self) -> Vec<AddrFamily> {
        self.chain.rules.iter().map(|r| r.family).collect()
    }
}

/// Checks an nftables table name: 1 to [`MAX_TABLE_NAME_LEN`] bytes, first an ASCII letter
/// or `_`, then ASCII letters, digits, `_` or `-` (a subset of nft's identifier syntax, so
/// the name can also be given on the `nft` command line).
///
/// Errors: [`MasqError::InvalidTableName`].
pub fn validate_table_name(name: &str) -> Result<(), MasqError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= MAX_TABLE_NAME_LEN {
        Ok(())
    } else {
        Err(MasqError::InvalidTableName(name.to_owned()))
    }
}

/// Whether two CIDRs share at least one address (always `false` across families).
fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    AddrFamily::of(a) == AddrFamily::of(b) && (a.contains(b.network()) || b.contains(a.network()))
}

fn check_masked(role: CidrRole, nets: &[IpNetwork]) -> Result<(), MasqError> {
    for net in nets {
        if net.ip() != net.network() {
            return Err(MasqError::HostBits {
                role,
                cidr: *net,
                network: net.network(),
            });
        }
    }
    Ok(())
}

/// The CIDRs of `family` from `nets`, sorted by address (then broader first), with every
/// CIDR that another one contains removed. Inputs must be masked.
fn normalize<'a>(
    family: AddrFamily,
    nets: impl IntoIterator<Item = &'a IpNetwork>,
) -> Vec<IpNetwork> {
    let mut v: Vec<IpNetwork> = nets
        .into_iter()
        .filter(|n| AddrFamily::of(n) == family)
        .copied()
        .collect();
    v.sort_by(|a, b| {
        a.network()
            .cmp(&b.network())
            .then(a.prefix().cmp(&b.prefix()))
    });
    let mut out: Vec<IpNetwork> = Vec::with_capacity(v.len());
    for n in v {
        // Sorted by start address: anything containing `n` would be the last kept one.
        if out.last().is_some_and(|last| last.contains(n.network())) {
            continue;
        }
        out.push(n);
    }
    out
}

/// Builds the table for `spec`.
///
/// For each address family with a pod CIDR (IPv4 first): a set `pod_<v>` with the pod
/// CIDRs, a set `nomasq_<v>` with the pod, cluster, tailnet, multicast and extra CIDRs of
/// that family, and one rule in the `postrouting` chain. CIDRs of a family without pod CIDRs
/// are ignored (nothing of that family is masqueraded). Duplicates and CIDRs contained in
/// another are dropped.
///
/// Errors: [`MasqError::InvalidTableName`], [`MasqError::NoPodCidr`],
/// [`MasqError::HostBits`] (any list), [`MasqError::PodOverlapsReserved`] (a pod CIDR
/// overlapping a tailnet range or multicast, which includes `0.0.0.0/0`),
/// [`MasqError::PodOutsideCluster`].
pub fn plan(spec: &MasqueradeSpec) -> Result<MasqueradePlan, MasqError> {
    validate_table_name(&spec.table)?;
    if spec.pod_cidrs.is_empty() {
        return Err(MasqError::NoPodCidr);
    }
    check_masked(CidrRole::Pod, &spec.pod_cidrs)?;
    check_masked(CidrRole::Cluster, &spec.cluster_cidrs)?;
    check_masked(CidrRole::Tailnet, &spec.tailnet_cidrs)?;
    check_masked(CidrRole::ExtraNoMasq, &spec.extra_no_masq)?;

    for pod in &spec.pod_cidrs {
        let family = AddrFamily::of(pod);
        if let Some(t) = spec.tailnet_cidrs.iter().find(|t| overlaps(pod, t)) {
            return Err(MasqError::PodOverlapsReserved {
                pod: *pod,
                what: "tailnet",
                reserved: *t,
            });
        }
        if let Some(m) = family.multicast().filter(|m| overlaps(pod, m)) {
            return Err(MasqError::PodOverlapsReserved {
                pod: *pod,
                what: "multicast",
                reserved: m,
            });
        }
        let cluster: Vec<&IpNetwork> = spec
            .cluster_cidrs
            .iter()
            .filter(|c| AddrFamily::of(c) == family)
            .collect();
        if !cluster.is_empty()
            && !cluster
                .iter()
                .any(|c| c.contains(pod.network()) && c.prefix() <= pod.prefix())
        {
            return Err(MasqError::PodOutsideCluster {
                pod: *pod,
                cluster: cluster
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }

    let mut sets = Vec::new();
    let mut rules = Vec::new();
    for family in [AddrFamily::Ipv4, AddrFamily::Ipv6] {
        let pods = normalize(family, &spec.pod_cidrs);
        if pods.is_empty() {
            continue;
        }
        let multicast = family.multicast();
        let exempt = normalize(
            family,
            spec.pod_cidrs
                .iter()
                .chain(&spec.cluster_cidrs)
                .chain(&spec.tailnet_cidrs)
                .chain(multicast.iter())
                .chain(&spec.extra_no_masq),
        );
        let pod_set = format!("pod_{}", family.suffix());
        let exempt_set = format!("nomasq_{}", family.suffix());
        sets.push(AddrSet {
            name: pod_set.clone(),
            family,
            elements: pods,
        });
        sets.push(AddrSet {
            name: exempt_set.clone(),
            family,
            elements: exempt,
        });
        rules.push(MasqRule {
            family,
            source_set: pod_set,
            exempt_set,
            fully_random: true,
            comment: RULE_COMMENT.to_owned(),
        });
    }

    Ok(MasqueradePlan {
        table: spec.table.clone(),
        sets,
        chain: NatChain {
            name: POSTROUTING_CHAIN.to_owned(),
            priority: SRCNAT_PRIORITY,
            rules,
        },
    })
}

/// An element as nftables writes it: a host prefix (/32, /128) as the bare address.
fn nft_element(net: &IpNetwork) -> String {
    let host = match net {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    };
    if net.prefix() == host {
        net.network().to_string()
    } else {
        format!("{}/{}", net.network(), net.prefix())
    }
}

impl fmt::Display for MasqRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.family.nft_protocol();
        write!(
            f,
            "{p} saddr @{} {p} daddr != @{} masquerade",
            self.source_set, self.exempt_set
        )?;
        if self.fully_random {
            f.write_str(" fully-random")?;
        }
        write!(f, " comment {:?}", self.comment)
    }
}

/// The plan as an `nft -f` script: the table with its sets and chain (the layout of
/// `nft list table inet <name>`, elements on one line).
impl fmt::Display for MasqueradePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {TABLE_FAMILY} {} {{", self.table)?;
        for set in &self.sets {
            let elements: Vec<String> = set.elements.iter().map(nft_element).collect();
            writeln!(f, "\tset {} {{", set.name)?;
            writeln!(f, "\t\ttype {}", set.family.nft_set_type())?;
            writeln!(f, "\t\tflags interval")?;
            writeln!(f, "\t\telements = {{ {} }}", elements.join(", "))?;
            writeln!(f, "\t}}")?;
            writeln!(f)?;
        }
        writeln!(f, "\tchain {} {{", self.chain.name)?;
        let prio = if self.chain.priority == SRCNAT_PRIORITY {
            "srcnat".to_owned()
        } else {
            self.chain.priority.to_string()
        };
        writeln!(
            f,
            "\t\ttype nat hook postrouting priority {prio}; policy accept;"
        )?;
        for rule in &self.chain.rules {
            writeln!(f, "\t\t{rule}")?;
        }
        writeln!(f, "\t}}")?;
        writeln!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    /// Pods reach tailscaled's MagicDNS at quad-100 (tailscale `net/tsaddr`
    /// `TailscaleServiceIP`, `fd7a:115c:a1e0::53` for IPv6) with their own address:
    /// tailscaled answers whatever the source (`wgengine/netstack` `handleLocalPackets`), so
    /// no masquerade is needed, and none may happen (docs/operations.md "MagicDNS for pods").
    #[test]
    fn magic_dns_service_ips_keep_the_pods_source() {
        let spec = MasqueradeSpec::new(
            nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
        );
        let p = plan(&spec).unwrap();
        for (set, ip) in [
            ("nomasq_v4", "100.100.100.100"),
            ("nomasq_v6", "fd7a:115c:a1e0::53"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(
                p.set(set).unwrap().elements.iter().any(|n| n.contains(ip)),
                "{ip} must be in {set}"
            );
        }
    }

    #[test]
    fn ipv4_single_stack_snapshot() {
        let spec = MasqueradeSpec::new(nets(&["10.244.1.0/24"]), nets(&["10.244.0.0/16"]));
        let p = plan(&spec).unwrap();
        assert_eq!(
            p.to_string(),
            "table inet headcni {
\tset pod_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.244.1.0/24 }
\t}

\tset nomasq_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.244.0.0/16, 100.64.0.0/10, 224.0.0.0/4 }
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr @pod_v4 ip daddr != @nomasq_v4 masquerade fully-random comment \"headcni: masquerade pod traffic leaving the cluster\"
\t}
}
"
        );
        assert_eq!(p.families(), vec![AddrFamily::Ipv4]);
        assert_eq!(p.chain.priority, 100);
    }

    #[test]
    fn dual_stack_snapshot() {
        let mut spec = MasqueradeSpec::new(
            nets(&["fd00:10:244:1::/64", "10.244.1.0/24"]),
            nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
        );
        spec.table = "hc_test-1".into();
        spec.extra_no_masq = nets(&["10.96.0.0/12", "192.0.2.7/32", "2001:db8::1/128"]);
        let p = plan(&spec).unwrap();
        assert_eq!(
            p.to_string(),
            "table inet hc_test-1 {
\tset pod_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.244.1.0/24 }
\t}

\tset nomasq_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.96.0.0/12, 10.244.0.0/16, 100.64.0.0/10, 192.0.2.7, 224.0.0.0/4 }
\t}

\tset pod_v6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { fd00:10:244:1::/64 }
\t}

\tset nomasq_v6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { 2001:db8::1, fd00:10:244::/56, fd7a:115c:a1e0::/48, ff00::/8 }
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr @pod_v4 ip daddr != @nomasq_v4 masquerade fully-random comment \"headcni: masquerade pod traffic leaving the cluster\"
\t\tip6 saddr @pod_v6 ip6 daddr != @nomasq_v6 masquerade fully-random comment \"headcni: masquerade pod traffic leaving the cluster\"
\t}
}
"
        );
        assert_eq!(p.families(), vec![AddrFamily::Ipv4, AddrFamily::Ipv6]);
        let r6 = &p.chain.rules[1];
        assert_eq!(
            (r6.source_set.as_str(), r6.exempt_set.as_str()),
            ("pod_v6", "nomasq_v6")
        );
    }

    #[test]
    fn without_cluster_cidr_the_pod_cidr_is_still_exempt() {
        let p = plan(&MasqueradeSpec::new(nets(&["10.244.1.0/24"]), vec![])).unwrap();
        assert_eq!(
            p.set("nomasq_v4").unwrap().elements,
            nets(&["10.244.1.0/24", "100.64.0.0/10", "224.0.0.0/4"])
        );
    }

    #[test]
    fn elements_are_deduplicated_sorted_and_not_nested() {
        let mut spec = MasqueradeSpec::new(
            nets(&["10.244.1.0/24", "10.244.1.0/24", "10.244.1.0/25"]),
            nets(&["10.244.0.0/16", "10.0.0.0/8"]),
        );
        spec.extra_no_masq = nets(&["100.100.0.0/16", "9.0.0.0/8", "10.1.0.0/16"]);
        let p = plan(&spec).unwrap();
        assert_eq!(p.set("pod_v4").unwrap().elements, nets(&["10.244.1.0/24"]));
        assert_eq!(
            p.set("nomasq_v4").unwrap().elements,
            nets(&["9.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "224.0.0.0/4"])
        );
        // No set holds an element contained in another.
        for set in &p.sets {
            for (i, a) in set.elements.iter().enumerate() {
                for b in &set.elements[i + 1..] {
                    assert!(!overlaps(a, b), "{a} and {b} overlap in {}", set.name);
                }
            }
        }
    }

    #[test]
    fn other_family_cidrs_without_pods_are_ignored() {
        let p = plan(&MasqueradeSpec::new(
            nets(&["10.244.1.0/24"]),
            nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
        ))
        .unwrap();
        assert_eq!(p.sets.len(), 2);
        assert!(p.set("nomasq_v6").is_none());
        assert_eq!(p.chain.rules.len(), 1);
    }

    #[test]
    fn ipv6_only() {
        let p = plan(&MasqueradeSpec::new(nets(&["fd00:1::/64"]), vec![])).unwrap();
        assert_eq!(p.families(), vec![AddrFamily::Ipv6]);
        assert_eq!(
            p.set("nomasq_v6").unwrap().elements,
            nets(&["fd00:1::/64", "fd7a:115c:a1e0::/48", "ff00::/8"])
        );
    }

    #[test]
    fn errors() {
        let ok = || MasqueradeSpec::new(nets(&["10.244.1.0/24"]), nets(&["10.244.0.0/16"]));

        let mut s = ok();
        s.pod_cidrs.clear();
        assert_eq!(plan(&s), Err(MasqError::NoPodCidr));

        let mut s = ok();
        s.pod_cidrs = nets(&["10.244.1.5/24"]);
        let e = plan(&s).unwrap_err();
        assert!(matches!(
            e,
            MasqError::HostBits {
                role: CidrRole::Pod,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "pod CIDR 10.244.1.5/24 has host bits set (network address is 10.244.1.0)"
        );

        let mut s = ok();
        s.cluster_cidrs = nets(&["10.244.0.1/16"]);
        assert!(matches!(
            plan(&s),
            Err(MasqError::HostBits {
                role: CidrRole::Cluster,
                ..
            })
        ));
        let mut s = ok();
        s.extra_no_masq = nets(&["192.0.2.1/24"]);
        assert!(matches!(
            plan(&s),
            Err(MasqError::HostBits {
                role: CidrRole::ExtraNoMasq,
                ..
            })
        ));
        let mut s = ok();
        s.tailnet_cidrs = nets(&["100.64.0.1/10"]);
        assert!(matches!(
            plan(&s),
            Err(MasqError::HostBits {
                role: CidrRole::Tailnet,
                ..
            })
        ));

        let mut s = ok();
        s.pod_cidrs = nets(&["100.100.1.0/24"]);
        s.cluster_cidrs = nets(&["100.100.0.0/16"]);
        assert!(matches!(
            plan(&s),
            Err(MasqError::PodOverlapsReserved {
                what: "tailnet",
                ..
            })
        ));

        let mut s = ok();
        s.pod_cidrs = nets(&["0.0.0.0/0"]);
        s.cluster_cidrs.clear();
        s.tailnet_cidrs.clear();
        assert!(matches!(
            plan(&s),
            Err(MasqError::PodOverlapsReserved {
                what: "multicast",
                ..
            })
        ));
        let mut s = ok();
        s.pod_cidrs = nets(&["::/0"]);
        assert!(matches!(
            plan(&s),
            Err(MasqError::PodOverlapsReserved { .. })
        ));

        let mut s = ok();
        s.pod_cidrs = nets(&["10.245.1.0/24"]);
        assert_eq!(
            plan(&s).unwrap_err().to_string(),
            "pod CIDR 10.245.1.0/24 is not inside any cluster CIDR of its family (10.244.0.0/16)"
        );
        // A cluster CIDR narrower than the pod CIDR does not contain it.
        let mut s = ok();
        s.pod_cidrs = nets(&["10.244.0.0/15"]);
        s.cluster_cidrs = nets(&["10.244.0.0/16"]);
        assert!(matches!(plan(&s), Err(MasqError::PodOutsideCluster { .. })));

        for bad in ["", "1abc", "a b", "x;flush ruleset", "ä", &"a".repeat(65)] {
            let mut s = ok();
            s.table = bad.to_owned();
            assert_eq!(
                plan(&s),
                Err(MasqError::InvalidTableName(bad.to_owned())),
                "{bad:?}"
            );
        }
        for good in ["headcni", "_x", "a-b_c9", &"a".repeat(64)] {
            assert!(validate_table_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn defaults() {
        let s = MasqueradeSpec::new(vec![], vec![]);
        assert_eq!(s.table, "headcni");
        assert_eq!(s.tailnet_cidrs, nets(&[TAILNET_V4, TAILNET_V6]));
        assert!(s.extra_no_masq.is_empty());
    }
}
