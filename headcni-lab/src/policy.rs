//! Policy routing for the tailscaled stand-in's data plane: routes in a numbered table
//! (Tailscale's table 52), `ip rule`s (`ip rule add pref 5270 lookup 52`), link MTU/up, and
//! the address listing it advertises as endpoints. Lab-only, so it lives here and not in
//! `headcni-netlink` (whose public API is what the plugin and the daemon need); it speaks
//! rtnetlink's request API directly. The layout follows tailscale v1.102.3
//! `wgengine/router/osrouter/router_linux.go` (table 52, rule priorities 52xx).

use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

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
    msg.header.table = u8::try_from(r.table).unwrap_or(0);
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
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
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

/// The errno of a netlink error answer (`NLMSG_ERROR` carries `-errno`).
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn link_name(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// An rtnetlink connection in one network namespace, driven by the current tokio runtime.
#[derive(Debug, Clone)]
pub struct Rtnl {
    nl: rtnetlink::Handle,
}

impl Rtnl {
    /// A connection in the calling thread's network namespace.
    ///
    /// Errors: the socket cannot be opened, or no tokio runtime is running.
    pub fn current() -> Result<Rtnl> {
        let sock = Socket::new(NETLINK_ROUTE).context("open a NETLINK_ROUTE socket")?;
        Rtnl::from_socket(sock)
    }

    /// A connection in the network namespace `path` (the socket is opened on a thread inside
    /// it, then driven from the current runtime).
    ///
    /// Errors: `path` is not a network namespace, the socket cannot be opened, no runtime.
    pub fn for_netns(path: &Path) -> Result<Rtnl> {
        let sock = headcni_netlink::netns::run_in_netns(path, || Socket::new(NETLINK_ROUTE))
            .map_err(|e| anyhow!("{e}"))?
            .context("open a NETLINK_ROUTE socket")?;
        Rtnl::from_socket(sock)
    }

    fn from_socket(sock: Socket) -> Result<Rtnl> {
        let rt = tokio::runtime::Handle::try_current().context("rtnetlink needs a runtime")?;
        let raw = sock.into_raw_fd();
        // SAFETY: `raw` is a valid, owned netlink socket fd just released by `Socket`.
        let tokio_sock = unsafe { TokioSocket::from_raw_fd(raw) };
        let (conn, nl, _unsolicited) = rtnetlink::from_socket(tokio_sock);
        rt.spawn(conn);
        Ok(Rtnl { nl })
    }

    async fn link_index(&self, name: &str) -> Result<u32> {
        let mut links = self.nl.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(l.header.index),
            Ok(None) => Err(anyhow!("link {name} not found")),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Err(anyhow!("link {name} not found")),
            Err(e) => Err(anyhow!("get link {name}: {e}")),
        }
    }

    async fn link_name_by_index(&self, index: u32) -> Option<String> {
        let mut links = self.nl.link().get().match_index(index).execute();
        links
            .try_next()
            .await
            .ok()
            .flatten()
            .and_then(|l| link_name(&l))
    }

    /// Sets the MTU of link `name` (when given) and brings it up (`ip link set NAME mtu M up`).
    ///
    /// Errors: the link does not exist; netlink errors.
    pub async fn set_link_up(&self, name: &str, mtu: Option<u32>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.link_index(name).await?;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        self.nl
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("set {name} mtu/up"))
    }

    /// The rules of one family (`ip [-6] rule show`) that look up a table, as [`RuleSpec`]s
    /// (rules with other actions are skipped).
    pub async fn rules(&self, ipv6: bool) -> Result<Vec<RuleSpec>> {
        let version = if ipv6 {
            rtnetlink::IpVersion::V6
        } else {
            rtnetlink::IpVersion::V4
        };
        let replies: Vec<RuleMessage> = self
            .nl
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .context("dump rules")?;
        let mut out = Vec::new();
        for r in replies {
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
    pub async fn ensure_rule(&self, rule: &RuleSpec) -> Result<bool> {
        if self.rules(rule.ipv6).await?.contains(rule) {
            return Ok(false);
        }
        let mut req = self.nl.rule().add();
        *req.message_mut() = rule_message(rule);
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(anyhow!("add rule pref {}: {e}", rule.priority)),
        }
    }

    /// Deletes every rule equal to `rule` (`ip rule del`, repeated). Returns how many.
    pub async fn delete_rule(&self, rule: &RuleSpec) -> Result<usize> {
        let mut n = 0;
        for _ in 0..16 {
            match self.nl.rule().del(rule_message(rule)).execute().await {
                Ok(()) => n += 1,
                Err(e) if errno(&e) == Some(libc::ENOENT) => break,
                Err(e) => return Err(anyhow!("delete rule pref {}: {e}", rule.priority)),
            }
        }
        Ok(n)
    }

    /// The destinations of the unicast routes in `table` (both families), with the name of
    /// their output interface when it resolves (`ip route show table T`).
    pub async fn table_routes(&self, table: u32) -> Result<Vec<(IpNetwork, Option<String>)>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = fam;
            req.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
            req.attributes.push(RouteAttribute::Table(table));
            let replies: Vec<RouteMessage> =
                match self.nl.route().get(req).execute().try_collect().await {
                    Ok(r) => r,
                    Err(e) if errno(&e) == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(anyhow!("dump table {table}: {e}")),
                };
            for r in replies {
                let mut rt_table = u32::from(r.header.table);
                let (mut dst_ip, mut oif) = (None, None);
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Table(t) => rt_table = *t,
                        RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                            dst_ip = Some(IpAddr::V4(*v4))
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                            dst_ip = Some(IpAddr::V6(*v6))
                        }
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                if rt_table != table || r.header.kind != RouteType::Unicast {
                    continue;
                }
                let dst_ip = dst_ip.unwrap_or(if fam == AddressFamily::Inet6 {
                    IpAddr::from([0u16; 8])
                } else {
                    IpAddr::from([0u8; 4])
                });
                let Ok(dst) = IpNetwork::new(dst_ip, r.header.destination_prefix_length) else {
                    continue;
                };
                let dev = match oif {
                    Some(i) => self.link_name_by_index(i).await,
                    None => None,
                };
                out.push((dst, dev));
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a route to `dst` via link `dev` in `table`
    /// (`ip route replace DST dev DEV table T`).
    pub async fn replace_table_route(&self, dst: IpNetwork, dev: &str, table: u32) -> Result<()> {
        let oif = self.link_index(dev).await?;
        let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
        self.nl
            .route()
            .add(table_route(dst, table, oif))
            .replace()
            .execute()
            .await
            .with_context(|| format!("add route {dst} dev {dev} table {table}"))
    }

    /// Deletes the route to `dst` in `table` (any device). Returns false when it was absent.
    pub async fn delete_table_route(&self, dst: IpNetwork, table: u32) -> Result<bool> {
        let mut msg = table_route(dst, table, 0);
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        match self.nl.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(false),
            Err(e) => Err(anyhow!("delete route {dst} table {table}: {e}")),
        }
    }

    /// Every configured address with the name of its link (`ip addr show`), both families.
    pub async fn all_addresses(&self) -> Result<Vec<(String, IpNetwork)>> {
        let replies: Vec<AddressMessage> = self
            .nl
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .context("dump addresses")?;
        let mut out = Vec::new();
        for a in replies {
            let Some(net) = headcni_netlink::configured_address(&a) else {
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
