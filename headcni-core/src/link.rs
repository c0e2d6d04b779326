//! Link and route management traits (no I/O). `headcni-netlink` implements them on
//! rtnetlink; tests use recording fakes. Netlink types never appear here.
//!
//! A manager value is bound to one network namespace: the host's, or a container's opened
//! from its path. Names are Linux interface names (≤ 15 bytes).

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::cni::{CniError, ErrorCode};

/// What HeadCNI knows about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index in its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MAC address, lower-case `aa:bb:cc:dd:ee:ff`, if the link has one.
    pub mac: Option<String>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the master (bridge) link, if enslaved.
    pub master: Option<u32>,
    /// Link kind (`bridge`, `veth`, ...), if reported.
    pub kind: Option<String>,
    /// The link's alias (`IFLA_IFALIAS`, at most 255 bytes), if set and not empty. HeadCNI marks the host
    /// veth of an attachment with it (`headcni_core::plugin::attachment_mark`).
    pub alias: Option<String>,
    /// For a veth: the ifindex of its peer (`IFLA_LINK`), in the namespace named by
    /// `link_netnsid` when that is set, else in this one.
    pub peer_index: Option<u32>,
    /// The peer's namespace as this namespace's id for it (`IFLA_LINK_NETNSID`); `None` when
    /// the peer is in the same namespace or the link has no peer.
    pub link_netnsid: Option<i32>,
}

/// A bridge to create or adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Bridge name, e.g. `headcni0`.
    pub name: String,
    /// MTU in bytes; `None` keeps the kernel's / existing value.
    pub mtu: Option<u32>,
    /// Addresses to ensure on the bridge (gateway addresses with the subnet prefix).
    pub addresses: Vec<IpNetwork>,
}

/// A veth pair whose peer is created directly inside a container namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// Host-side name (e.g. `veth1a2b3c4d`).
    pub host_name: String,
    /// Container-side name (`CNI_IFNAME`).
    pub container_name: String,
    /// Path of the container's network namespace (`CNI_NETNS`).
    pub container_netns: PathBuf,
    /// MTU for both ends; `None` for the kernel default.
    pub mtu: Option<u32>,
    /// MAC address for the container end, `None` for a random one.
    pub container_mac: Option<String>,
    /// Bridge to attach the host end to.
    pub master: Option<String>,
    /// Hairpin mode on the bridge port.
    pub hairpin: bool,
}

/// The two ends of a created veth pair, both up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// Host end (in this manager's namespace).
    pub host: LinkInfo,
    /// Container end (in the container namespace).
    pub container: LinkInfo,
}

/// Route scope (rtnetlink `rt_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteScope {
    /// 0: universe.
    Global,
    /// 253: link.
    Link,
    /// 254: host.
    Host,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface name.
    pub dev: Option<String>,
    /// Table; `None` = main (254).
    pub table: Option<u32>,
    /// Metric / priority.
    pub metric: Option<u32>,
    /// Scope; `None` lets the kernel pick.
    pub scope: Option<RouteScope>,
    /// Route MTU in bytes.
    pub mtu: Option<u32>,
}

impl RouteSpec {
    /// A main-table route to `dst` via `gateway` on `dev`.
    pub fn new(dst: IpNetwork, gateway: Option<IpAddr>, dev: Option<&str>) -> RouteSpec {
        RouteSpec {
            dst,
            gateway,
            dev: dev.map(str::to_owned),
            table: None,
            metric: None,
            scope: None,
            mtu: None,
        }
    }
}

/// Errors of link, route and namespace operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A link of that name already exists (`EEXIST` on create).
    #[error("link {0:?} already exists")]
    Exists(String),
    /// No link of that name.
    #[error("link {0:?} not found")]
    NotFound(String),
    /// The network namespace path does not exist or is not a netns.
    #[error("network namespace {path}: {reason}")]
    Netns {
        /// The path.
        path: PathBuf,
        /// Why it could not be entered.
        reason: String,
    },
    /// A netlink request failed.
    #[error("netlink {op}: {reason}")]
    Netlink {
        /// The operation, e.g. `create veth`.
        op: String,
        /// The kernel's or library's message.
        reason: String,
    },
    /// A sysctl or other I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl LinkError {
    /// The CNI error code of this error: 102 for [`LinkError::Exists`], 11 for
    /// [`LinkError::Netns`], else 103 (HeadCNI's netlink code).
    pub fn cni_code(&self) -> ErrorCode {
        match self {
            LinkError::Exists(_) => ErrorCode::InterfaceExists,
            LinkError::Netns { .. } => ErrorCode::UnknownContainer,
            _ => ErrorCode::Netlink,
        }
    }
}

impl From<LinkError> for CniError {
    fn from(e: LinkError) -> CniError {
        CniError::new(e.cni_code(), e.to_string())
    }
}

/// Link operations in one network namespace.
#[async_trait]
pub trait LinkManager: Send + Sync {
    /// The link named `name`, or `None`.
    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError>;
    /// Creates the bridge if missing (adopts an existing one), sets the MTU if given, adds
    /// missing `addresses` and brings it up. Errors if `name` exists and is not a bridge.
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkInfo, LinkError>;
    /// Creates a veth pair with the peer created directly in the container namespace under
    /// its final name, sets MTU/MAC, attaches the host end to `master` with `hairpin`, and
    /// brings both ends up. [`LinkError::Exists`] if either name is taken; on any error
    /// nothing of the pair is left behind.
    async fn create_veth(&self, spec: &VethSpec) -> Result<VethPair, LinkError>;
    /// Deletes a link; `Ok(false)` if it did not exist.
    async fn delete_link(&self, name: &str) -> Result<bool, LinkError>;
    /// Sets the alias (`IFLA_IFALIAS`, rtnetlink(7); `ip link set NAME alias ALIAS`) of link
    /// `name`: the ownership mark of an attachment's host veth. `alias` is 1–254 bytes
    /// without NUL (the kernel's `IFALIASZ` is 256 with the request's and its own NUL),
    /// else [`LinkError::Netlink`];
    /// [`LinkError::NotFound`] if there is no such link. Needs `CAP_NET_ADMIN`.
    async fn set_alias(&self, name: &str, alias: &str) -> Result<(), LinkError>;
    /// Every link of this namespace whose alias is exactly `alias` (one `RTM_GETLINK` dump,
    /// filtered here: the kernel has no alias filter). Empty if none.
    async fn links_with_alias(&self, alias: &str) -> Result<Vec<LinkInfo>, LinkError>;
    /// Adds an address (with prefix) to a link; an identical existing address is not an error.
    async fn add_address(&self, link: &str, addr: IpNetwork) -> Result<(), LinkError>;
    /// The addresses of a link (with prefix), permanent ones only.
    async fn addresses(&self, link: &str) -> Result<Vec<IpNetwork>, LinkError>;
    /// The links whose master is `bridge`.
    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<LinkInfo>, LinkError>;
    /// Whether hairpin mode is on for a bridge port.
    async fn hairpin(&self, port: &str) -> Result<bool, LinkError>;
    /// Enables IPv4 (`net.ipv4.ip_forward`) and/or IPv6 (`net.ipv6.conf.all.forwarding`)
    /// forwarding in this namespace; writes only when the value differs.
    async fn enable_forwarding(&self, ipv4: bool, ipv6: bool) -> Result<(), LinkError>;
}

/// Route operations in one network namespace.
#[async_trait]
pub trait RouteManager: Send + Sync {
    /// Adds a route; an identical existing route is not an error.
    async fn add_route(&self, route: &RouteSpec) -> Result<(), LinkError>;
    /// Deletes a route; `Ok(false)` if it did not exist.
    async fn delete_route(&self, route: &RouteSpec) -> Result<bool, LinkError>;
    /// The routes of the main table whose output device is `dev` (all if `None`).
    async fn routes(&self, dev: Option<&str>) -> Result<Vec<RouteSpec>, LinkError>;
}
