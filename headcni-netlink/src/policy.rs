//! Policy routing for a tailscaled-like data plane: routes in a numbered table (Tailscale's
//! table 52), `ip rule`s (`ip rule add pref 5270 lookup 52`), and link MTU/up changes.
//!
//! Used by the lab's tailscaled stand-in (crate headcni-lab); the layout follows tailscale
//! v1.102.3 `wgengine/router/osrouter/router_linux.go` (table 52, rule priorities 52xx).
//! Netlink types stay inside this crate: the API speaks `ipnetwork`/std types only.

use std::net::IpAddr;

use headcni_core::link::LinkError;
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::NetlinkHandle;
use crate::convert;

/// One `ip rule`: `pref <priority> [fwmark <mark>/<mask>] lookup <table>` for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    /// IPv6 (`ip -6 rule`) instead of IPv4.
    pub ipv6: bool,
    /// Priority (`pref`), e.g. 5270.
    pub priority: u32,
    /// Table looked up, e.g. 52.
    pub table: u32,
    /// Optional `fwmark` match as (mark, mask).
    pub fwmark: Option<(u32, u32)>,
}

fn family(ipv6: bool) -> AddressFamily {
    if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn rule_message(r: &RuleSpec) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = family(r.ipv6);
    msg.header.action = RuleAction::ToTable;
    match u8::try_from(r.table) {
        Ok(t) => msg.header.table = t,
        Err(_) => msg.header.table = 0,
    }
    msg.attributes.push(RuleAttribute::Table(r.table));
    msg.attributes.push(RuleAttribute::Priority(r.priority));
    if let Some((mark, mask)) = r.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::FwMask(mask));
    }
    msg
}

fn table_route(dst: IpNetwork, table: u32, oif: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(dst.is_ipv6());
    msg.header.destination_prefix_length = dst.prefix();
    match u8::try_from(table) {
        Ok(t) => msg.header.table = t,
        Err(_) => msg.header.table = RouteHeader::RT_TABLE_UNSPEC,
    }
    msg.attributes.push(RouteAttribute::Table(table));
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = RouteScope::Link;
    if dst.prefix() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                dst.network(),
            )));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg
}

impl NetlinkHandle {
    /// Sets the MTU of link `name` (when given) and brings it up (`ip link set NAME mtu M up`).
    ///
    /// Errors: [`LinkError::NotFound`] when the link does not exist, [`LinkError::Netlink`]
    /// otherwise.
    pub async fn set_link_up(&self, name: &str, mtu: Option<u32>) -> Result<(), LinkError> {
        let index = self.require_link(name, "set link up").await?.index;
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.header.index = index;
        if let Some(m) = mtu {
            msg.attributes
                .push(rtnetlink::packet_route::link::LinkAttribute::Mtu(m));
        }
        self.ack(RouteNetlinkMessage::NewLink(msg), 0)
            .await
            .map_err(|e| e.on_link(format!("set {name} mtu/up"), name))
    }

    /// The rules of one family (`ip [-6] rule show`) that look up a table, as [`RuleSpec`]s
    /// (rules with other actions are skipped).
    ///
    /// Errors: [`LinkError::Netlink`].
    pub async fn rules(&self, ipv6: bool) -> Result<Vec<RuleSpec>, LinkError> {
        let mut req = RuleMessage::default();
        req.header.family = family(ipv6);
        let replies = self
            .dump(RouteNetlinkMessage::GetRule(req))
            .await
            .map_err(|e| e.into_link_error("dump rules"))?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            if r.header.action != RuleAction::ToTable {
                continue;
            }
            let mut spec = RuleSpec {
                ipv6,
                priority: 0,
                table: u32::from(r.header.table),
                fwmark: None,
            };
            let (mut mark, mut mask) = (None, None);
            for a in &r.attributes {
                match a {
                    RuleAttribute::Priority(p) => spec.priority = *p,
                    RuleAttribute::Table(t) => spec.table = *t,
                    RuleAttribute::FwMark(m) => mark = Some(*m),
                    RuleAttribute::FwMask(m) => mask = Some(*m),
                    _ => {}
                }
            }
            if let Some(m) = mark {
                spec.fwmark = Some((m, mask.unwrap_or(u32::MAX)));
            }
            out.push(spec);
        }
        Ok(out)
    }

    /// Adds `rule` unless an identical one exists (`ip rule add`). Returns true when added.
    ///
    /// Errors: [`LinkError::Netlink`].
    pub async fn ensure_rule(&self, rule: &RuleSpec) -> Result<bool, LinkError> {
        if self.rules(rule.ipv6).await?.contains(rule) {
            return Ok(false);
        }
        match self
            .ack(
                RouteNetlinkMessage::NewRule(rule_message(rule)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::EEXIST) => Ok(false),
            Err(e) => Err(e.into_link_error(format!("add rule pref {}", rule.priority))),
        }
    }

    /// Deletes every rule equal to `rule` (`ip rule del`, repeated). Returns how many.
    ///
    /// Errors: [`LinkError::Netlink`].
    pub async fn delete_rule(&self, rule: &RuleSpec) -> Result<usize, LinkError> {
        let mut n = 0;
        for _ in 0..16 {
            match self
                .ack(RouteNetlinkMessage::DelRule(rule_message(rule)), 0)
                .await
            {
                Ok(()) => n += 1,
                Err(e) if e.is(libc::ENOENT) => break,
                Err(e) => {
                    return Err(e.into_link_error(format!("delete rule pref {}", rule.priority)));
                }
            }
        }
        Ok(n)
    }

    /// The destinations of the unicast routes in `table` (both families), with the name of
    /// their output interface when it resolves (`ip route show table T`).
    ///
    /// Errors: [`LinkError::Netlink`].
    pub async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<(IpNetwork, Option<String>)>, LinkError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = fam;
            match u8::try_from(table) {
                Ok(t) => req.header.table = t,
                Err(_) => req.header.table = RouteHeader::RT_TABLE_UNSPEC,
            }
            req.attributes.push(RouteAttribute::Table(table));
            let replies = match self.dump(RouteNetlinkMessage::GetRoute(req)).await {
                Ok(r) => r,
                Err(e) if e.is(libc::ENOENT) => continue,
                Err(e) => return Err(e.into_link_error(format!("dump table {table}"))),
            };
            for m in replies {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if convert::route_table(&r) != table || r.header.kind != RouteType::Unicast {
                    continue;
                }
                let dst_ip = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Destination(d) => convert::route_address_ip(d),
                        _ => None,
                    })
                    .unwrap_or(if fam == AddressFamily::Inet6 {
                        IpAddr::from([0u16; 8])
                    } else {
                        IpAddr::from([0u8; 4])
                    });
                let Ok(dst) = IpNetwork::new(dst_ip, r.header.destination_prefix_length) else {
                    continue;
                };
                let dev = match convert::route_oif(&r) {
                    Some(i) => self.link_name_by_index(i).await,
                    None => None,
                };
                out.push((dst, dev));
            }
        }
        Ok(out)
    }

    async fn link_name_by_index(&self, index: u32) -> Option<String> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let replies = self.get(RouteNetlinkMessage::GetLink(msg)).await.ok()?;
        replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => convert::link_name(&l).map(String::from),
            _ => None,
        })
    }

    /// Adds (or replaces) a route to `dst` via link `dev` in `table`
    /// (`ip route replace DST dev DEV table T`).
    ///
    /// Errors: [`LinkError::NotFound`] for a missing `dev`, [`LinkError::Netlink`].
    pub async fn replace_table_route(
        &self,
        dst: IpNetwork,
        dev: &str,
        table: u32,
    ) -> Result<(), LinkError> {
        let oif = self.require_link(dev, "table route").await?.index;
        let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
        self.ack(
            RouteNetlinkMessage::NewRoute(table_route(dst, table, oif)),
            NLM_F_CREATE | rtnetlink::packet_core::NLM_F_REPLACE,
        )
        .await
        .map_err(|e| e.into_link_error(format!("add route {dst} dev {dev} table {table}")))
    }

    /// Deletes the route to `dst` in `table` (any device). Returns false when it was absent.
    ///
    /// Errors: [`LinkError::Netlink`].
    pub async fn delete_table_route(&self, dst: IpNetwork, table: u32) -> Result<bool, LinkError> {
        let mut msg = table_route(dst, table, 0);
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0).await {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ESRCH) || e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e.into_link_error(format!("delete route {dst} table {table}"))),
        }
    }
}

impl NetlinkHandle {
    /// Every configured address with the name of its link (`ip addr show`), both families.
    ///
    /// Errors: [`LinkError::Netlink`].
    pub async fn all_addresses(&self) -> Result<Vec<(String, IpNetwork)>, LinkError> {
        use rtnetlink::packet_route::address::AddressMessage;
        let replies = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .await
            .map_err(|e| e.into_link_error("dump addresses"))?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let Some(net) = convert::configured_address(&a) else {
                continue;
            };
            let name = self
                .link_name_by_index(a.header.index)
                .await
                .unwrap_or_default();
            out.push((name, net));
        }
        Ok(out)
    }
}
