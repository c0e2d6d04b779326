//! Conversions between netlink messages and `headcni_core::link` types.

use std::net::IpAddr;

use headcni_core::link::{LinkInfo, RouteScope, RouteSpec};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::address::{AddressMessage, AddressProtocol};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoPortData, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteScope as NlScope,
};

/// Main routing table id (`RT_TABLE_MAIN`).
pub(crate) const RT_TABLE_MAIN: u32 = 254;

/// Formats a hardware address as lower-case `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated) into 6 bytes.
pub(crate) fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

/// The link name carried by a link message.
pub(crate) fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The kind (`IFLA_INFO_KIND`) of a link message, e.g. `bridge`, `veth`.
pub(crate) fn link_kind(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            NlLinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

/// `IFLA_BRPORT_MODE` from the bridge-port slave data, `None` if not a bridge port.
pub(crate) fn hairpin_of(msg: &LinkMessage) -> Option<bool> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            NlLinkInfo::PortData(InfoPortData::BridgePort(port)) => Some(
                port.iter()
                    .any(|p| matches!(p, InfoBridgePort::HairpinMode(true))),
            ),
            _ => None,
        }),
        _ => None,
    })
}

/// Builds a [`LinkInfo`] from an `RTM_NEWLINK` reply: `IFLA_IFNAME`, `IFLA_ADDRESS`,
/// `IFLA_MTU`, `IFLA_MASTER`, `IFLA_IFALIAS` (an empty alias is none), `IFLA_LINK` (the
/// peer's index, when it is not the link's own) and `IFLA_LINK_NETNSID`.
pub(crate) fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        alias: None,
        peer_index: None,
        link_netnsid: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name.clone_from(n),
            LinkAttribute::Address(a) if !a.is_empty() => info.mac = Some(format_mac(a)),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Controller(m) if *m != 0 => info.master = Some(*m),
            LinkAttribute::IfAlias(a) if !a.is_empty() => info.alias = Some(a.clone()),
            LinkAttribute::Link(i) if *i != 0 && *i != msg.header.index => {
                info.peer_index = Some(*i)
            }
            LinkAttribute::LinkNetNsId(id) if *id >= 0 => info.link_netnsid = Some(*id),
            _ => {}
        }
    }
    info.kind = link_kind(msg);
    info
}

/// The address (with prefix) of an `RTM_NEWADDR` reply, if it is a user-configured
/// permanent address: kernel-generated ones (IPv6 link-local, loopback, RA; `IFA_PROTO`
/// kernel_*) and non-permanent (SLAAC, temporary) ones are skipped.
pub fn configured_address(msg: &AddressMessage) -> Option<IpNetwork> {
    let mut addr = None;
    let mut local = None;
    let mut permanent = msg.header.flags.contains(AddressHeaderFlags::Permanent);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Address(a) => addr = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Flags(f) => permanent = f.contains(AddressFlags::Permanent),
            AddressAttribute::Protocol(
                AddressProtocol::LinkLocal
                | AddressProtocol::Loopback
                | AddressProtocol::RouterAnnouncement,
            ) => return None,
            _ => {}
        }
    }
    if !permanent {
        return None;
    }
    // For IPv4 IFA_LOCAL is the interface address (IFA_ADDRESS is the peer on ptp links).
    let ip = local.or(addr)?;
    IpNetwork::new(ip, msg.header.prefix_len).ok()
}

pub(crate) fn scope_to_nl(scope: RouteScope) -> NlScope {
    match scope {
        RouteScope::Global => NlScope::Universe,
        RouteScope::Link => NlScope::Link,
        RouteScope::Host => NlScope::Host,
    }
}

fn scope_from_nl(scope: NlScope) -> Option<RouteScope> {
    match scope {
        NlScope::Universe => Some(RouteScope::Global),
        NlScope::Link => Some(RouteScope::Link),
        NlScope::Host => Some(RouteScope::Host),
        _ => None,
    }
}

pub(crate) fn route_address_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The table of a route message (`RTA_TABLE` wins over the 8-bit header field).
pub(crate) fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// The output interface index of a route message.
pub(crate) fn route_oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Builds a [`RouteSpec`] from an `RTM_NEWROUTE` reply; `dev` is the already resolved name
/// of the output interface. `table` is `None` for the main table.
pub(crate) fn route_spec(msg: &RouteMessage, dev: Option<String>) -> Option<RouteSpec> {
    let is_v6 = msg.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
    let mut dst_ip = None;
    let mut gateway = None;
    let mut metric = None;
    let mut mtu = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_ip = route_address_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_address_ip(a),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::Metrics(ms) => {
                mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let dst_ip = match dst_ip {
        Some(ip) => ip,
        None if is_v6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let dst = IpNetwork::new(dst_ip, msg.header.destination_prefix_length).ok()?;
    let table = route_table(msg);
    Some(RouteSpec {
        dst,
        gateway,
        dev,
        table: (table != RT_TABLE_MAIN).then_some(table),
        metric,
        scope: scope_from_nl(msg.header.scope),
        mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_info_reads_alias_and_peer() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = vec![
            LinkAttribute::IfName("veth0".into()),
            LinkAttribute::IfAlias("headcni:v1:ab".into()),
            LinkAttribute::Link(3),
            LinkAttribute::LinkNetNsId(2),
        ];
        let i = link_info(&m);
        assert_eq!(
            (i.alias.as_deref(), i.peer_index, i.link_netnsid),
            (Some("headcni:v1:ab"), Some(3), Some(2))
        );
        // a plain link: IFLA_LINK is its own index, no alias, netnsid -1 (none)
        m.attributes = vec![
            LinkAttribute::IfAlias(String::new()),
            LinkAttribute::Link(7),
            LinkAttribute::LinkNetNsId(-1),
        ];
        let i = link_info(&m);
        assert_eq!((i.alias, i.peer_index, i.link_netnsid), (None, None, None));
    }

    #[test]
    fn mac_round_trip() {
        let bytes = parse_mac("0A:1b:2c:3d:4e:5f").unwrap_or_default();
        assert_eq!(bytes, vec![0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(format_mac(&bytes), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b:2c:3d:4e").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:zz").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:5f5").is_none());
    }
}
