//! [`LinkManager`] for [`NetlinkHandle`]: bridges, veth pairs, addresses, forwarding.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use async_trait::async_trait;
use headcni_core::link::{BridgeSpec, LinkError, LinkInfo, LinkManager, VethPair, VethSpec};
use headcni_core::sysctl::{ForwardingState, ForwardingSysctl};
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::convert;
use crate::error::NlError;
use crate::handle::NetlinkHandle;
use crate::netns;
use crate::sysctl;

/// Maximum interface name length in bytes (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;

fn check_ifname(name: &str, op: &str) -> Result<(), LinkError> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        return Err(LinkError::Netlink {
            op: op.to_owned(),
            reason: format!(
                "invalid interface name {name:?} (1-{IFNAME_MAX} bytes, no '/' or spaces)"
            ),
        });
    }
    Ok(())
}

/// Longest alias in bytes: `IFALIASZ` (256) less the NUL the kernel appends and the NUL
/// this crate's `IFLA_IFALIAS` attribute carries.
const ALIAS_MAX: usize = 254;

/// A link message that sets `IFF_UP`.
fn up_message() -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg
}

/// `RTM_NEWADDR` for `addr` on link `index`; IPv6 gets `IFA_F_NODAD` so it is usable at
/// once, IPv4 a broadcast address for prefixes shorter than /31.
fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix();
    msg.header.scope = AddressScope::Universe;
    match addr {
        IpNetwork::V4(v4) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes
                .push(AddressAttribute::Local(IpAddr::V4(v4.ip())));
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V4(v4.ip())));
            if v4.prefix() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        IpNetwork::V6(v6) => {
            msg.header.family = AddressFamily::Inet6;
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V6(v6.ip())));
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    msg
}

impl NetlinkHandle {
    /// The configured addresses of link `index` (see [`LinkManager::addresses`]).
    async fn addresses_of(&self, index: u32) -> Result<Vec<IpNetwork>, NlError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        let replies = self.dump(RouteNetlinkMessage::GetAddress(msg)).await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    convert::configured_address(a)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `addr` to link `index` (named `link` for messages). `EEXIST` is success when the
    /// identical address (same IP and prefix) is present.
    async fn add_address_index(
        &self,
        index: u32,
        link: &str,
        addr: IpNetwork,
    ) -> Result<(), LinkError> {
        let op = || format!("add address {addr} to {link}");
        match self
            .ack(
                RouteNetlinkMessage::NewAddress(address_message(index, addr)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is(libc::EEXIST) => {
                let present = self
                    .addresses_of(index)
                    .await
                    .map_err(|e| e.into_link_error(op()))?;
                if present.contains(&addr) {
                    Ok(())
                } else {
                    Err(LinkError::Netlink {
                        op: op(),
                        reason: format!(
                            "address {} already present on {link} with a different prefix",
                            addr.ip()
                        ),
                    })
                }
            }
            Err(e) if e.is(libc::ENODEV) => Err(LinkError::NotFound(link.to_owned())),
            Err(e) => Err(e.into_link_error(op())),
        }
    }

    /// `RTM_NEWLINK` on an existing link by index: optional MTU, optional `IFF_UP`.
    async fn change_link(&self, index: u32, mtu: Option<u32>, up: bool) -> Result<(), NlError> {
        let mut msg = if up {
            up_message()
        } else {
            LinkMessage::default()
        };
        msg.header.index = index;
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        self.ack(RouteNetlinkMessage::NewLink(msg), 0).await
    }

    /// Like [`LinkManager::create_veth`], but uses `container`, an already open handle of
    /// the container namespace, both as the `IFLA_NET_NS_FD` target of the peer and to read
    /// back the container end, instead of opening `spec.container_netns` again. Saves a
    /// thread spawn and a socket when the caller configures the container side anyway.
    /// `spec.container_netns` is then only used in messages.
    ///
    /// One `RTM_NEWLINK` (veth(4)) creates both ends with MTU, container MAC, the host end
    /// up and enslaved (`IFLA_MASTER`), and the peer directly in the container namespace
    /// (`IFLA_NET_NS_FD` in the peer's `ifinfomsg`) under its final name. Then, in
    /// parallel: on the host socket hairpin is set when requested (`IFLA_BRPORT_MODE` in
    /// the bridge-port slave data, as `ip link set ... type bridge_slave hairpin on`) and
    /// the host end read back; on the container socket the container end is set up and
    /// read back. The peer cannot be created up: the kernel opens it before the pair is
    /// linked (`veth_open` → `ENOTCONN`).
    ///
    /// Errors: [`LinkError::Exists`] naming the clashing end, [`LinkError::NotFound`] for a
    /// missing master, [`LinkError::Netlink`] otherwise. On any error after creation the pair
    /// is deleted.
    pub async fn create_veth_in(
        &self,
        spec: &VethSpec,
        container: &NetlinkHandle,
    ) -> Result<VethPair, LinkError> {
        let op = format!(
            "create veth {} <-> {} in {}",
            spec.host_name,
            spec.container_name,
            spec.container_netns.display()
        );
        check_ifname(&spec.host_name, &op)?;
        check_ifname(&spec.container_name, &op)?;
        let mac = match &spec.container_mac {
            Some(s) => Some(convert::parse_mac(s).ok_or_else(|| LinkError::Netlink {
                op: op.clone(),
                reason: format!("invalid MAC address {s:?}"),
            })?),
            None => None,
        };
        let master = match &spec.master {
            Some(name) => Some(self.require_link(name, &op).await?.index),
            None => None,
        };
        let ns_fd: Arc<OwnedFd> = match &container.ns {
            Some(ns) => ns.fd.clone(),
            None => Arc::new(netns::open(std::path::Path::new("/proc/self/ns/net"))?),
        };

        // The peer cannot be created up: veth_open() of the peer runs before the pair is
        // linked and fails with ENOTCONN. It is brought up through the container handle.
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.container_name.clone()));
        if let Some(m) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(mac) = mac {
            peer.attributes.push(LinkAttribute::Address(mac));
        }
        peer.attributes
            .push(LinkAttribute::NetNsFd(ns_fd.as_raw_fd()));

        let mut host = up_message();
        host.attributes
            .push(LinkAttribute::IfName(spec.host_name.clone()));
        if let Some(m) = spec.mtu {
            host.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(m) = master {
            host.attributes.push(LinkAttribute::Controller(m));
        }
        host.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Veth),
            NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));

        let created = self
            .ack(
                RouteNetlinkMessage::NewLink(host),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await;
        // The fd must stay open until the kernel has processed the request.
        drop(ns_fd);
        if let Err(e) = created {
            return Err(match e.errno() {
                Some(libc::EEXIST) => {
                    // The host name is checked first (in this namespace); otherwise the peer
                    // name clashed in the container namespace.
                    match self.link_msg(&spec.host_name).await {
                        Ok(Some(_)) => LinkError::Exists(spec.host_name.clone()),
                        _ => LinkError::Exists(spec.container_name.clone()),
                    }
                }
                _ => e.into_link_error(op),
            });
        }

        match self.finish_veth(spec, master, container, &op).await {
            Ok(pair) => Ok(pair),
            Err(e) => {
                if let Err(del) = self.delete_link(&spec.host_name).await {
                    tracing::warn!(error = %del, "rollback: deleting veth {} failed", spec.host_name);
                }
                Err(e)
            }
        }
    }

    /// After creation: hairpin and host read-back on this socket, container end up and
    /// read-back on the container socket, concurrently.
    async fn finish_veth(
        &self,
        spec: &VethSpec,
        master: Option<u32>,
        container: &NetlinkHandle,
        op: &str,
    ) -> Result<VethPair, LinkError> {
        let host_side = async {
            if spec.hairpin && master.is_some() {
                let mut port = LinkMessage::default();
                port.attributes
                    .push(LinkAttribute::IfName(spec.host_name.clone()));
                port.attributes.push(LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::PortKind(InfoPortKind::Bridge),
                    NlLinkInfo::PortData(InfoPortData::BridgePort(vec![
                        InfoBridgePort::HairpinMode(true),
                    ])),
                ]));
                self.ack(RouteNetlinkMessage::NewLink(port), 0)
                    .await
                    .map_err(|e| e.into_link_error(format!("{op}: set hairpin")))?;
            }
            self.require_link(&spec.host_name, op).await
        };
        let container_side = async {
            let mut up = up_message();
            up.attributes
                .push(LinkAttribute::IfName(spec.container_name.clone()));
            container
                .ack(RouteNetlinkMessage::NewLink(up), 0)
                .await
                .map_err(|e| e.into_link_error(format!("{op}: set container end up")))?;
            container.require_link(&spec.container_name, op).await
        };
        let (host, cont) = futures::future::join(host_side, container_side).await;
        let host = host?;
        let cont = cont?;
        Ok(VethPair {
            host,
            container: cont,
        })
    }
}

#[async_trait]
impl LinkManager for NetlinkHandle {
    /// `RTM_GETLINK` by name (rtnetlink(7)); `None` on `ENODEV`.
    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        self.link_msg(name)
            .await
            .map(|m| m.as_ref().map(convert::link_info))
            .map_err(|e| e.into_link_error(format!("get link {name}")))
    }

    /// Get, create (`RTM_NEWLINK` kind `bridge`, `NLM_F_EXCL`; `EEXIST` from a concurrent
    /// creator means adopt), fix MTU / `IFF_UP` in one `RTM_NEWLINK` if needed, then add
    /// the missing addresses. [`LinkError::Exists`] if `name` exists but is not a bridge.
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkInfo, LinkError> {
        let name = spec.name.as_str();
        let op = format!("ensure bridge {name}");
        check_ifname(name, &op)?;
        let mut created = false;
        let msg = match self
            .link_msg(name)
            .await
            .map_err(|e| e.into_link_error(&op))?
        {
            Some(m) => m,
            None => {
                let mut create = up_message();
                create
                    .attributes
                    .push(LinkAttribute::IfName(name.to_owned()));
                if let Some(m) = spec.mtu {
                    create.attributes.push(LinkAttribute::Mtu(m));
                }
                // An explicit MAC marks the address as set (NET_ADDR_SET): otherwise the
                // kernel gives the bridge the lowest MAC of its ports, which changes as pods
                // come and go and leaves every pod with a stale ARP entry for its gateway.
                create
                    .attributes
                    .push(LinkAttribute::Address(random_local_mac().to_vec()));
                create
                    .attributes
                    .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                        InfoKind::Bridge,
                    )]));
                match self
                    .ack(
                        RouteNetlinkMessage::NewLink(create),
                        NLM_F_CREATE | NLM_F_EXCL,
                    )
                    .await
                {
                    Ok(()) => created = true,
                    Err(e) if e.is(libc::EEXIST) => {
                        tracing::debug!("bridge {name} created concurrently, adopting it");
                    }
                    Err(e) => return Err(e.into_link_error(format!("{op}: create"))),
                }
                self.link_msg(name)
                    .await
                    .map_err(|e| e.into_link_error(&op))?
                    .ok_or_else(|| LinkError::NotFound(name.to_owned()))?
            }
        };
        if convert::link_kind(&msg).as_deref() != Some("bridge") {
            return Err(LinkError::Exists(name.to_owned()));
        }
        let mut info = convert::link_info(&msg);
        let mtu = spec.mtu.filter(|m| *m != info.mtu);
        if mtu.is_some() || !info.up {
            self.change_link(info.index, mtu, true)
                .await
                .map_err(|e| e.on_link(format!("{op}: set mtu/up"), name))?;
            info.up = true;
            if let Some(m) = mtu {
                info.mtu = m;
            }
        }
        if !spec.addresses.is_empty() {
            let present = if created {
                Vec::new()
            } else {
                self.addresses_of(info.index)
                    .await
                    .map_err(|e| e.into_link_error(format!("{op}: list addresses")))?
            };
            for addr in spec.addresses.iter().filter(|a| !present.contains(a)) {
                self.add_address_index(info.index, name, *addr).await?;
            }
        }
        Ok(info)
    }

    /// Opens a handle for `spec.container_netns` (see [`NetlinkHandle::for_netns`]) and
    /// calls [`NetlinkHandle::create_veth_in`].
    async fn create_veth(&self, spec: &VethSpec) -> Result<VethPair, LinkError> {
        let container = NetlinkHandle::for_netns(&spec.container_netns).await?;
        self.create_veth_in(spec, &container).await
    }

    /// `RTM_DELLINK` by name; `Ok(false)` on `ENODEV`. Deleting one end of a veth pair
    /// deletes both.
    async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.ack(RouteNetlinkMessage::DelLink(msg), 0).await {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENODEV) || e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e.into_link_error(format!("delete link {name}"))),
        }
    }

    /// `RTM_NEWLINK` on the existing link (by name, no `NLM_F_CREATE`) carrying
    /// `IFLA_IFALIAS`, as `ip link set NAME alias ALIAS`: the kernel applies an alias only to
    /// an existing link (`do_setlink`), not at creation. `alias` is 1–254 bytes without NUL
    /// (`IFALIASZ` 256 less this request's NUL and the kernel's), else
    /// [`LinkError::Netlink`] before anything is sent; [`LinkError::NotFound`] on `ENODEV`.
    async fn set_alias(&self, name: &str, alias: &str) -> Result<(), LinkError> {
        let op = format!("set alias of {name}");
        check_ifname(name, &op)?;
        if alias.is_empty() || alias.len() > ALIAS_MAX || alias.contains('\0') {
            return Err(LinkError::Netlink {
                op,
                reason: format!("invalid alias (1-{ALIAS_MAX} bytes, no NUL)"),
            });
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_owned()));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0)
            .await
            .map_err(|e| e.on_link(op, name))
    }

    /// `RTM_GETLINK` dump of every link, filtered here by `IFLA_IFALIAS` == `alias`.
    async fn links_with_alias(&self, alias: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let links = self
            .dump_links(None)
            .await
            .map_err(|e| e.into_link_error("list links by alias"))?;
        Ok(links
            .iter()
            .map(convert::link_info)
            .filter(|l| l.alias.as_deref() == Some(alias))
            .collect())
    }

    /// `RTM_NEWADDR` (`NLM_F_EXCL`); `EEXIST` is success when the identical address is
    /// present. IPv6 addresses get `IFA_F_NODAD`.
    async fn add_address(&self, link: &str, addr: IpNetwork) -> Result<(), LinkError> {
        let index = self
            .require_link(link, &format!("add address {addr}"))
            .await?
            .index;
        self.add_address_index(index, link, addr).await
    }

    /// `RTM_GETADDR` dump filtered by index. Kernel-generated addresses (IPv6 link-local,
    /// `IFA_PROTO` kernel_*) and non-permanent ones are left out.
    async fn addresses(&self, link: &str) -> Result<Vec<IpNetwork>, LinkError> {
        let index = self.require_link(link, "list addresses").await?.index;
        self.addresses_of(index)
            .await
            .map_err(|e| e.into_link_error(format!("list addresses of {link}")))
    }

    /// `RTM_GETLINK` dump filtered by `IFLA_MASTER` == the bridge's index.
    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let index = self.require_link(bridge, "list bridge ports").await?.index;
        let links = self
            .dump_links(Some(index))
            .await
            .map_err(|e| e.into_link_error(format!("list ports of {bridge}")))?;
        Ok(links.iter().map(convert::link_info).collect())
    }

    /// `IFLA_BRPORT_MODE` from the port's bridge slave data (`RTM_GETLINK`). Errors with
    /// [`LinkError::Netlink`] if `port` is not a bridge port.
    async fn hairpin(&self, port: &str) -> Result<bool, LinkError> {
        let msg = self
            .link_msg(port)
            .await
            .map_err(|e| e.into_link_error(format!("get link {port}")))?
            .ok_or_else(|| LinkError::NotFound(port.to_owned()))?;
        convert::hairpin_of(&msg).ok_or_else(|| LinkError::Netlink {
            op: format!("read hairpin of {port}"),
            reason: "not a bridge port".to_owned(),
        })
    }

    /// Writes `/proc/sys/net/ipv4/ip_forward` and `/proc/sys/net/ipv6/conf/all/forwarding`
    /// when different, from a thread inside this handle's namespace. Missing IPv6 sysctls
    /// are tolerated.
    async fn enable_forwarding(&self, ipv4: bool, ipv6: bool) -> Result<(), LinkError> {
        self.in_netns(move || sysctl::enable_forwarding(ipv4, ipv6))
            .await?
    }
}

/// Reads `/proc/sys/net/ipv4/ip_forward` and `/proc/sys/net/ipv6/conf/all/forwarding` in this
/// handle's namespace (on a thread inside it for a container namespace, on the calling thread
/// for [`NetlinkHandle::current`]).
#[async_trait]
impl ForwardingSysctl for NetlinkHandle {
    async fn forwarding(&self) -> Result<ForwardingState, LinkError> {
        self.in_netns(sysctl::forwarding).await?
    }
}

/// A random locally administered unicast MAC address (IEEE 802: bit 1 of the first octet set,
/// bit 0 clear), from getrandom(2); falls back to time and pid if that fails.
fn random_local_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[cfg(test)]
mod mac_tests {
    #[test]
    fn random_mac_is_local_unicast_and_varies() {
        let a = super::random_local_mac();
        let b = super::random_local_mac();
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast: {a:02x?}");
        assert_ne!(a, b);
    }
}
