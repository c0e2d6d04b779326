//! The lab's IPv6 plan (`headcni lab up --dual-stack`): addresses and prefixes only, no I/O.
//!
//! ```text
//!   <name>-inet    eth0 fd00:77::fd/64 (the nodes' IPv6 gateway), 2001:db8::1/128 on lo
//!                  (RFC 3849 documentation prefix: "the IPv6 internet"), a route to each
//!                  node's IPv6 PodCIDR via the node (so un-masqueraded pod traffic gets an
//!                  answer, as when a network routes a node's delegated prefix)
//!   <name>-node-N  eth0 fd00:77::N/64 (default via fd00:77::fd); IPv6 PodCIDR
//!                  fd00:10:244:N::/64 inside the cluster CIDR fd00:10:244::/56, beside
//!                  10.244.N.0/24; a tailnet IPv6 fd7a:115c:a1e0::/48 address from the
//!                  Headscale stand-in
//! ```
//!
//! N is written in hexadecimal in IPv6 text (node 10 is `fd00:10:244:a::/64`); the /56 has
//! room for the lab's 200 nodes.

use std::net::Ipv6Addr;

use ipnetwork::{IpNetwork, Ipv6Network};

/// The IPv6 cluster CIDR; node N gets [`pod_cidr_v6`].
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";
/// The underlay's IPv6 prefix length (`fd00:77::/64`).
pub const UNDERLAY_V6_PREFIX: u8 = 64;
/// The "internet" namespace's underlay IPv6 address (the nodes' IPv6 default gateway).
pub const INET_GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0xfd);
/// The IPv6 address a pod reaches "on the internet" (RFC 3849 documentation prefix, on the
/// inet namespace's lo).
pub const INET_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Node N's IPv6 PodCIDR: `fd00:10:244:N::/64` (N in hex), inside [`CLUSTER_CIDR_V6`].
///
/// Errors: N above 255 (outside the /56).
pub fn pod_cidr_v6(n: u32) -> Result<Ipv6Network, String> {
    let n = u8::try_from(n).map_err(|_| format!("node {n}: the IPv6 plan has room for 255"))?;
    Ipv6Network::new(
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, 0),
        64,
    )
    .map_err(|e| e.to_string())
}

/// Node N's underlay IPv6 address `fd00:77::N` (prefix [`UNDERLAY_V6_PREFIX`]).
pub fn underlay_v6(n: u32) -> Result<Ipv6Addr, String> {
    let n = u16::try_from(n).map_err(|_| format!("node {n}: too large"))?;
    if n == 0 || n >= 0xfd {
        return Err(format!(
            "node {n}: fd00:77::{n:x} is not a node address (1..=252)"
        ));
    }
    Ok(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, n))
}

/// `addr` with the underlay prefix, as an interface address.
pub fn underlay_v6_net(addr: Ipv6Addr) -> IpNetwork {
    IpNetwork::V6(Ipv6Network::new(addr, UNDERLAY_V6_PREFIX).unwrap_or(Ipv6Network::from(addr)))
}

/// The cluster CIDR(s) the nodes' daemons are configured with: the IPv4 one, and with
/// dual-stack [`CLUSTER_CIDR_V6`] after it.
pub fn cluster_cidrs(v4: &str, dual_stack: bool) -> Vec<String> {
    let mut out = vec![v4.to_string()];
    if dual_stack {
        out.push(CLUSTER_CIDR_V6.to_string());
    }
    out
}

/// A TOML array of strings: `["a", "b"]`.
pub fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_prefixes_are_inside_the_cluster_cidr_and_distinct() {
        let cluster: IpNetwork = CLUSTER_CIDR_V6.parse().unwrap();
        assert_eq!(pod_cidr_v6(1).unwrap().to_string(), "fd00:10:244:1::/64");
        assert_eq!(pod_cidr_v6(10).unwrap().to_string(), "fd00:10:244:a::/64");
        let all: Vec<_> = (1..=200).map(|n| pod_cidr_v6(n).unwrap()).collect();
        for (i, c) in all.iter().enumerate() {
            assert!(cluster.contains(c.network().into()), "{c}");
            assert!(!all[..i].contains(c), "{c} twice");
        }
        assert!(pod_cidr_v6(256).is_err());
    }

    #[test]
    fn underlay_addresses_avoid_the_gateway() {
        assert_eq!(underlay_v6(2).unwrap().to_string(), "fd00:77::2");
        assert_eq!(underlay_v6_net(underlay_v6(2).unwrap()).prefix(), 64);
        assert!(underlay_v6(0).is_err());
        assert!(underlay_v6(0xfd).is_err(), "the inet gateway's address");
        assert_eq!(INET_GW_V6.to_string(), "fd00:77::fd");
        assert_eq!(INET_ADDR_V6.to_string(), "2001:db8::1");
    }

    #[test]
    fn daemon_config_lists() {
        assert_eq!(cluster_cidrs("10.244.0.0/16", false), ["10.244.0.0/16"]);
        assert_eq!(
            toml_list(&cluster_cidrs("10.244.0.0/16", true)),
            r#"["10.244.0.0/16", "fd00:10:244::/56"]"#
        );
    }
}
