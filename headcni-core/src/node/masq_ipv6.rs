//! The IPv6 egress choice of a dual-stack node (`[node] masquerade_ipv6`), as a decision on
//! a planned masquerade rule set (no I/O).
//!
//! IPv4 pod CIDRs are private (RFC 1918 or similar), so IPv4 traffic leaving the cluster is
//! always masqueraded. IPv6 pod CIDRs may be globally routed (a GUA prefix the network
//! routes to each node): then pods should reach the internet with their own addresses and
//! the operator turns IPv6 masquerading off. With a ULA prefix (`fd00::/8`, the lab's
//! `fd00:10:244::/56`) nothing routes back to the pods, so the default is on, as for IPv4.
//!
//! Pod ↔ pod traffic is never masqueraded in either case: the exemption sets (cluster CIDRs,
//! tailnet ranges) of [`super::masq::plan`] are kept for the families that stay.

use super::masq::{AddrFamily, MasqueradePlan};

/// Default of `[node] masquerade_ipv6`: IPv6 traffic leaving the cluster is masqueraded.
pub const DEFAULT_MASQUERADE_IPV6: bool = true;

/// `plan` as it must be installed for the IPv6 choice `masquerade_ipv6`: unchanged when
/// `true`; when `false`, without the IPv6 rule and its two sets (`pod_v6`, `nomasq_v6`), so
/// IPv6 pod traffic leaves with the pod's own source address while IPv4 stays masqueraded.
/// A node with only an IPv6 PodCIDR and `masquerade_ipv6 = false` gets a table with an
/// empty chain (HeadCNI's table still exists, so readiness and uninstall do not change).
pub fn apply_ipv6_choice(mut plan: MasqueradePlan, masquerade_ipv6: bool) -> MasqueradePlan {
    if !masquerade_ipv6 {
        plan.sets.retain(|s| s.family != AddrFamily::Ipv6);
        plan.chain.rules.retain(|r| r.family != AddrFamily::Ipv6);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::masq::{MasqueradeSpec, plan};
    use ipnetwork::IpNetwork;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn dual() -> MasqueradePlan {
        plan(&MasqueradeSpec::new(
            nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
        ))
        .unwrap()
    }

    #[test]
    fn on_keeps_both_families() {
        let p = dual();
        assert_eq!(apply_ipv6_choice(p.clone(), true), p);
        assert_eq!(
            p.families(),
            vec![AddrFamily::Ipv4, AddrFamily::Ipv6],
            "the input is dual-stack"
        );
    }

    #[test]
    fn off_drops_the_ipv6_rule_and_sets_only() {
        let p = apply_ipv6_choice(dual(), false);
        assert_eq!(p.families(), vec![AddrFamily::Ipv4]);
        assert!(p.set("pod_v6").is_none() && p.set("nomasq_v6").is_none());
        // IPv4 keeps its rule and its pod ↔ pod exemptions.
        let nomasq = &p.set("nomasq_v4").unwrap().elements;
        assert!(
            nomasq.contains(&"10.244.0.0/16".parse().unwrap()),
            "{nomasq:?}"
        );
        assert_eq!(p.to_string().matches("masquerade fully-random").count(), 1);
        assert!(!p.to_string().contains("ip6"), "{p}");
    }

    #[test]
    fn off_on_an_ipv6_only_node_leaves_an_empty_chain() {
        let v6 = plan(&MasqueradeSpec::new(
            nets(&["fd00:10:244:1::/64"]),
            nets(&["fd00:10:244::/56"]),
        ))
        .unwrap();
        let p = apply_ipv6_choice(v6, false);
        assert!(p.sets.is_empty() && p.chain.rules.is_empty());
        assert_eq!(p.table, crate::defaults::NFT_TABLE);
    }

    #[test]
    fn off_on_an_ipv4_only_node_changes_nothing() {
        let v4 = plan(&MasqueradeSpec::new(
            nets(&["10.244.1.0/24"]),
            nets(&["10.244.0.0/16"]),
        ))
        .unwrap();
        assert_eq!(apply_ipv6_choice(v4.clone(), false), v4);
    }
}
