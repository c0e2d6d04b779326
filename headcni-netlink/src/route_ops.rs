//! [`RouteManager`] for [`NetlinkHandle`] (rtnetlink(7) `RTM_NEWROUTE` / `RTM_DELROUTE` /
//! `RTM_GETROUTE`).

use std::collections::HashMap;
use std::fmt::Write as _;

use async_trait::async_trait;
use headcni_core::link::{LinkError, RouteManager, RouteSpec};
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope as NlScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::convert::{self, RT_TABLE_MAIN};
use crate::error::NlError;
use crate::handle::NetlinkHandle;

/// `ip route`-like text for error messages.
fn describe(r: &RouteSpec) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        let _ = write!(s, " via {gw}");
    }
    if let Some(dev) = &r.dev {
        let _ = write!(s, " dev {dev}");
    }
    if let Some(t) = r.table {
        let _ = write!(s, " table {t}");
    }
    if let Some(m) = r.metric {
        let _ = write!(s, " metric {m}");
    }
    s
}

/// The destination with host bits cleared (the kernel rejects IPv4 prefixes with host bits).
fn normalized(dst: IpNetwork) -> IpNetwork {
    IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst)
}

fn family(dst: &IpNetwork) -> AddressFamily {
    match dst {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    }
}

/// Sets the table the iproute2 way: ids < 256 in the header, larger ones in `RTA_TABLE`.
fn set_table(msg: &mut RouteMessage, table: u32) {
    match u8::try_from(table) {
        Ok(t) => msg.header.table = t,
        Err(_) => {
            msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
            msg.attributes.push(RouteAttribute::Table(table));
        }
    }
}

/// A main/other-table dump request for one family (strict-check compatible header).
fn dump_request(family: AddressFamily, table: u32, oif: Option<u32>) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    set_table(&mut msg, table);
    if let Some(i) = oif {
        msg.attributes.push(RouteAttribute::Oif(i));
    }
    RouteNetlinkMessage::GetRoute(msg)
}

impl NetlinkHandle {
    /// Builds the `RTM_NEWROUTE` / `RTM_DELROUTE` message for `r`, resolving `dev`.
    /// For deletion, protocol/type are left unspecified and the scope is `RT_SCOPE_NOWHERE`
    /// (match any) unless given, like `ip route del`.
    async fn route_message(
        &self,
        r: &RouteSpec,
        for_delete: bool,
        op: &str,
    ) -> Result<RouteMessage, LinkError> {
        let dst = normalized(r.dst);
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&dst);
        msg.header.destination_prefix_length = dst.prefix();
        set_table(&mut msg, r.table.unwrap_or(RT_TABLE_MAIN));
        if for_delete {
            msg.header.protocol = RouteProtocol::Unspec;
            msg.header.kind = RouteType::Unspec;
            msg.header.scope = r.scope.map_or(NlScope::NoWhere, convert::scope_to_nl);
        } else {
            msg.header.protocol = RouteProtocol::Boot;
            msg.header.kind = RouteType::Unicast;
            msg.header.scope = match r.scope {
                Some(s) => convert::scope_to_nl(s),
                None if r.gateway.is_some() => NlScope::Universe,
                None => NlScope::Link,
            };
        }
        if dst.prefix() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.ip())));
        }
        if let Some(gw) = r.gateway {
            if gw.is_ipv4() != dst.is_ipv4() {
                return Err(LinkError::Netlink {
                    op: op.to_owned(),
                    reason: format!("gateway {gw} is not of the destination's address family"),
                });
            }
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(dev) = &r.dev {
            let index = self.require_link(dev, op).await?.index;
            msg.attributes.push(RouteAttribute::Oif(index));
        }
        if let Some(m) = r.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        if let Some(mtu) = r.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        Ok(msg)
    }

    /// Unicast, non-cloned routes of `table` in the given families, optionally filtered by
    /// output interface (kernel-side with strict checking, and client-side).
    async fn dump_routes(
        &self,
        families: &[AddressFamily],
        table: u32,
        oif: Option<u32>,
    ) -> Result<Vec<RouteMessage>, NlError> {
        let dumps = families
            .iter()
            .map(|f| self.dump(dump_request(*f, table, oif)));
        let mut out = Vec::new();
        for result in futures::future::join_all(dumps).await {
            let replies = match result {
                Ok(r) => r,
                // IPv4 answers ENOENT when the table does not exist (yet).
                Err(e) if e.is(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            out.extend(replies.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if convert::route_table(&r) == table
                        && r.header.kind == RouteType::Unicast
                        && !r.header.flags.contains(RouteFlags::Cloned)
                        && oif.is_none_or(|i| convert::route_oif(&r) == Some(i)) =>
                {
                    Some(r)
                }
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Whether a route equal to `r` in the fields `r` specifies is installed.
    async fn route_present(&self, r: &RouteSpec, oif: Option<u32>) -> Result<bool, NlError> {
        let dst = normalized(r.dst);
        let table = r.table.unwrap_or(RT_TABLE_MAIN);
        let routes = self.dump_routes(&[family(&dst)], table, oif).await?;
        Ok(routes.iter().any(|m| {
            convert::route_spec(m, None).is_some_and(|have| {
                have.dst == dst
                    && have.gateway == r.gateway
                    && r.metric.is_none_or(|want| have.metric == Some(want))
                    && r.mtu.is_none_or(|want| have.mtu == Some(want))
            })
        }))
    }
}

fn oif_of(msg: &RouteMessage) -> Option<u32> {
    convert::route_oif(msg)
}

#[async_trait]
impl RouteManager for NetlinkHandle {
    /// `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_EXCL`, protocol `boot`, scope `link` for
    /// gateway-less routes unless given. `EEXIST` is success when an identical route (dst,
    /// gateway, dev, and metric / MTU if given) is installed; otherwise
    /// [`LinkError::Netlink`]. A missing `dev` is [`LinkError::NotFound`].
    async fn add_route(&self, route: &RouteSpec) -> Result<(), LinkError> {
        let op = format!("add route {}", describe(route));
        let msg = self.route_message(route, false, &op).await?;
        let oif = oif_of(&msg);
        match self
            .ack(
                RouteNetlinkMessage::NewRoute(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is(libc::EEXIST) => {
                if self
                    .route_present(route, oif)
                    .await
                    .map_err(|e| e.into_link_error(&op))?
                {
                    Ok(())
                } else {
                    Err(LinkError::Netlink {
                        op,
                        reason: "a different route to that destination exists (EEXIST)".to_owned(),
                    })
                }
            }
            Err(e) => Err(e.into_link_error(op)),
        }
    }

    /// `RTM_DELROUTE`; `Ok(false)` on `ESRCH`/`ENOENT` or when `dev` does not exist.
    async fn delete_route(&self, route: &RouteSpec) -> Result<bool, LinkError> {
        let op = format!("delete route {}", describe(route));
        let msg = match self.route_message(route, true, &op).await {
            Ok(m) => m,
            Err(LinkError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0).await {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ESRCH) || e.is(libc::ENOENT) || e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e.into_link_error(op)),
        }
    }

    /// IPv4 and IPv6 `RTM_GETROUTE` dumps of the main table (kernel-side filter by table
    /// and `RTA_OIF` thanks to `NETLINK_GET_STRICT_CHK`, re-checked client-side); unicast,
    /// non-cloned routes only. `table` is `None` in the results (main), `scope` is the
    /// kernel's (IPv6 routes always report global). [`LinkError::NotFound`] if `dev` does
    /// not exist.
    async fn routes(&self, dev: Option<&str>) -> Result<Vec<RouteSpec>, LinkError> {
        let oif = match dev {
            Some(d) => Some(self.require_link(d, "list routes").await?.index),
            None => None,
        };
        let msgs = self
            .dump_routes(
                &[AddressFamily::Inet, AddressFamily::Inet6],
                RT_TABLE_MAIN,
                oif,
            )
            .await
            .map_err(|e| e.into_link_error("list routes"))?;
        let names: HashMap<u32, String> = match dev {
            Some(_) => HashMap::new(),
            None => self
                .dump_links(None)
                .await
                .map_err(|e| e.into_link_error("list routes: list links"))?
                .iter()
                .map(|l| {
                    (
                        l.header.index,
                        convert::link_name(l).unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        };
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let name = match dev {
                    Some(d) => Some(d.to_owned()),
                    None => convert::route_oif(m).and_then(|i| names.get(&i).cloned()),
                };
                convert::route_spec(m, name)
            })
            .collect())
    }
}
