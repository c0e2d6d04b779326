//! HeadCNI's fixed names, paths and rules, each with exactly one owner: every crate that needs
//! one of these refers to this module (directly or through a re-export), never to a copy of
//! the literal.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The main CNI plugin's `type` (NetConf `type`, and the binary's file name in the CNI bin
/// directory).
pub const PLUGIN_TYPE: &str = "headcni";

/// The in-process IPAM plugin's `type` (NetConf `ipam.type`), also the name of the
/// `headcni-ipam` symlink to the `headcni` binary in the CNI bin directory.
pub const IPAM_TYPE: &str = "headcni-ipam";

/// The default pod bridge (link) name: the plugin's NetConf `bridge` default and the node
/// agent's `[cni] bridge` default.
pub const BRIDGE: &str = "headcni0";

/// The nftables table HeadCNI owns (family [`NFT_TABLE_FAMILY`]: `inet headcni`); the node
/// agent's masquerade rules live there and nothing else.
pub const NFT_TABLE: &str = "headcni";

/// The nftables family of HeadCNI's table: `inet` (IPv4 and IPv6 in one table).
pub const NFT_TABLE_FAMILY: &str = "inet";

/// The tailnet's MTU when nothing else gives one: tailscaled's default TUN MTU (tailscale
/// `net/tstun/mtu.go`: `DefaultTUNMTU` returns `safeTUNMTU` = 1280 without `TS_DEBUG_MTU`), also the smallest tailnet interface MTU the node
/// agent uses for pods (IPv6's minimum link MTU, RFC 8200 §5).
pub const TAILNET_MTU: u32 = 1280;

/// The IPv4 forwarding sysctl (`net.ipv4.ip_forward`, Linux `Documentation/networking/
/// ip-sysctl.rst`); resolves against the network namespace of the thread that opens it.
pub const IPV4_FORWARDING_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";

/// The IPv6 forwarding sysctl (`net.ipv6.conf.all.forwarding`, Linux `Documentation/
/// networking/ip-sysctl.rst`); missing when IPv6 is disabled.
pub const IPV6_FORWARDING_SYSCTL: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// The default gateway of a pod subnet: its network address + 1 (`10.244.1.0/24` →
/// `10.244.1.1`, `fd00::/64` → `fd00::1`), as host-local's `gateway` default. headcni-ipam
/// never allocates it and the node agent puts it on the bridge.
///
/// `None` when the subnet is too small to hold a gateway and pods (fewer than 4 addresses:
/// IPv4 /31, /32, IPv6 /127, /128). Host bits in `subnet` are ignored (its network address
/// is used); callers that must refuse them check first.
pub fn gateway(subnet: &IpNetwork) -> Option<IpAddr> {
    match subnet.network() {
        IpAddr::V4(a) if subnet.prefix() <= 30 => Some(IpAddr::V4((u32::from(a) + 1).into())),
        IpAddr::V6(a) if subnet.prefix() <= 126 => Some(IpAddr::V6((u128::from(a) + 1).into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_network_plus_one() {
        let gw = |s: &str| gateway(&s.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(gw("10.244.1.0/24").as_deref(), Some("10.244.1.1"));
        assert_eq!(gw("10.0.0.0/30").as_deref(), Some("10.0.0.1"));
        assert_eq!(
            gw("fd00:10:244:1::/64").as_deref(),
            Some("fd00:10:244:1::1")
        );
        assert_eq!(gw("fd00::/126").as_deref(), Some("fd00::1"));
        for small in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            assert_eq!(gw(small), None, "{small}");
        }
    }
}
