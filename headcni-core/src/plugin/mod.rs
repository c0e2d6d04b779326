//! The `headcni` main plugin's ADD, DEL, CHECK and GC, written over the [`crate::link`] traits
//! and an [`IpamClient`], so it runs on rtnetlink in production and on recording fakes in
//! tests. The binary (`headcni-cli`) only parses the request and wires the implementations.
//!
//! Semantics (CNI spec 1.1.0 §"ADD", §"DEL", §"CHECK", §"GC"; netavark's validate-then-mutate
//! and reverse rollback):
//! - ADD: IPAM ADD → bridge (with gateway addresses, forwarding) → veth with the peer
//!   created in the container netns → the host end marked with the attachment's
//!   [`attachment_mark`] (its alias) → container addresses → container routes. Any failure
//!   undoes, in reverse, what this ADD created (the veth, a fresh IP reservation) and
//!   returns the original error. A repeated ADD for a live attachment fails with code 102
//!   and leaves the live attachment untouched. When the host veth name ([`host_veth_name`])
//!   is held by another attachment's link (a hash collision), ADD uses the next
//!   [`host_veth_alt_name`] and never touches that link.
//! - Ownership: DEL, CHECK and GC delete or accept a host link only when it carries the
//!   attachment's mark (found under [`host_veth_name`], else by a dump for the mark). A link
//!   made by a version before the mark existed has no alias; DEL and CHECK accept it only if
//!   the container's CNI_IFNAME is its veth peer (see [`owned_host_link`]); otherwise it is
//!   left alone.
//! - DEL: idempotent. Deletes the veth pair by its owned host end (so the container's netns
//!   need not be entered; CNI_IFNAME in the netns only if no owned host end exists), then
//!   releases the IPAM reservation; succeeds when everything is already gone.
//! - CHECK: verifies the bridge, the owned host veth's port (master, hairpin), the container
//!   interface (MAC, MTU), addresses and routes listed in `prevResult`, and the IPAM
//!   reservation; reports every difference (code 106).
//! - GC: IPAM GC, then deletes the ports of the bridge marked for an attachment whose
//!   reservation IPAM GC released (see [`gc`]).

mod conf;
mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::net::IpAddr;
use std::path::Path;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

pub use conf::{
    BridgeConf, DEFAULT_BRIDGE, DEFAULT_DELEGATE_TIMEOUT_SECS, HOST_VETH_NAMES, MARK_PREFIX,
    MAX_DELEGATE_TIMEOUT_SECS, MAX_MTU, MIN_MTU, attachment_mark, host_veth_alt_name,
    host_veth_name,
};
pub use status::bridge_status;

use crate::cni::{CniError, CniResult, Dns, ErrorCode, GcAttachment, Interface, IpConfig, Route};
use crate::ipam::Attachment;
use crate::link::{
    BridgeSpec, LinkError, LinkInfo, LinkManager, RouteManager, RouteSpec, VethPair, VethSpec,
};

/// Opens link/route managers for the host namespace and for container namespaces.
#[async_trait]
pub trait Namespaces: Send + Sync {
    /// The manager type, bound to one namespace.
    type Handle: LinkManager + RouteManager;
    /// The namespace the plugin runs in (the node's).
    async fn host(&self) -> Result<Self::Handle, LinkError>;
    /// A container namespace by path; [`LinkError::Netns`] if it does not exist.
    async fn open(&self, netns: &Path) -> Result<Self::Handle, LinkError>;
    /// Whether `netns` is the plugin's own network namespace (which the CNI spec forbids
    /// configuring). Must not block on what `netns` names (a FIFO, a device).
    /// Errors: [`LinkError::Netns`] if `netns` is missing or not a network namespace.
    async fn is_own(&self, netns: &Path) -> Result<bool, LinkError>;
    /// Creates the veth pair of `spec` from `host`, with the peer in the namespace `container`
    /// is bound to. The default calls [`LinkManager::create_veth`]; implementations override it
    /// to reuse the already open container handle instead of opening the namespace again.
    async fn create_veth(
        &self,
        host: &Self::Handle,
        container: &Self::Handle,
        spec: &VethSpec,
    ) -> Result<crate::link::VethPair, LinkError> {
        let _ = container;
        host.create_veth(spec).await
    }
}

/// The result of an IPAM ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamAdd {
    /// The abbreviated IPAM result (no interfaces).
    pub result: CniResult,
    /// `false` when the attachment already held these reservations (a repeated ADD): a
    /// failing ADD must then not release them.
    pub fresh: bool,
}

/// IPAM for one request: in-process (`headcni-ipam`) or a delegated plugin exec'ed through
/// `CNI_PATH` (CNI spec 1.1.0 §"Delegated plugins").
#[async_trait]
pub trait IpamClient: Send + Sync {
    /// IPAM ADD for the request's attachment.
    async fn add(&self) -> Result<IpamAdd, CniError>;
    /// IPAM DEL for the request's attachment; succeeds when nothing is reserved.
    async fn del(&self) -> Result<(), CniError>;
    /// IPAM CHECK against the final ADD result.
    async fn check(&self, prev: &CniResult) -> Result<(), CniError>;
    /// IPAM GC: release everything not in `valid`. Returns the attachments whose
    /// reservations this call released, as far as the IPAM knows them (the in-process IPAM
    /// reads them from its reservation files; a delegated plugin's GC has no result, so it
    /// returns none). [`gc`] removes the host veths of exactly these attachments.
    async fn gc(&self, valid: &[GcAttachment]) -> Result<Vec<Attachment>, CniError>;
    /// IPAM STATUS: can ADD succeed?
    async fn status(&self) -> Result<(), CniError>;
}

/// An ADD request's attachment parameters.
#[derive(Debug, Clone)]
pub struct AddRequest<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// Requested MAC (`runtimeConfig.mac` or `CNI_ARGS` `MAC=`).
    pub mac: Option<&'a str>,
    /// The NetConf `dns` key, which overrides IPAM's DNS when non-empty.
    pub dns: Option<&'a Dns>,
}

/// A rollback step of a failed ADD that failed too (see [`add`]). The library never prints
/// it: [`AddError`] hands it to the caller (the `headcni` binary writes it to stderr).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The host namespace could not be opened to delete the veth this ADD created.
    #[error("rollback: opening the host namespace failed: {0}")]
    HostNamespace(LinkError),
    /// Deleting the host end of the veth pair this ADD created failed.
    #[error("rollback: deleting the host veth failed: {0}")]
    DeleteHostVeth(LinkError),
    /// Releasing the IP reservation this ADD made (IPAM DEL) failed.
    #[error("rollback: releasing the IP reservation failed: {0}")]
    ReleaseReservation(CniError),
}

/// A failed [`add`]: the error to answer the runtime with (CNI spec 1.1.0 §"Error") and
/// every rollback step that failed as well, in the order tried (empty when the rollback
/// succeeded or nothing needed undoing).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AddError {
    /// The original failure: what the runtime is told.
    pub error: CniError,
    /// Rollback failures, for the operator (never part of the error JSON).
    pub rollback_errors: Vec<RollbackError>,
    /// Warnings raised before the failure (see [`Added::warnings`]).
    pub warnings: Vec<AddWarning>,
}

impl From<CniError> for AddError {
    /// A failure before anything needed undoing.
    fn from(error: CniError) -> AddError {
        AddError {
            error,
            rollback_errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Something an ADD did that the operator may want to know, though the ADD went on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddWarning {
    /// The host veth name (the payload) is held by another attachment's or an unmarked link;
    /// ADD left that link alone and tried the next [`host_veth_alt_name`].
    #[error("host veth name held by another link, trying the next name: {0}")]
    HostVethNameTaken(String),
}

/// A successful [`add`]: the CNI result and the warnings, in the order they arose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The full ADD result (CNI spec 1.1.0 §"Success").
    pub result: CniResult,
    /// What the operator may want to know (never part of the result JSON).
    pub warnings: Vec<AddWarning>,
}

/// A failed [`gc`]: the error to answer with (the first failed deletion, or the failure
/// that stopped GC) and every host veth deletion that failed, in the order tried.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct GcError {
    /// What the runtime is told.
    pub error: CniError,
    /// Every failed deletion of a released attachment's host veth (the first is `error`).
    pub delete_errors: Vec<LinkError>,
}

impl From<CniError> for GcError {
    fn from(error: CniError) -> GcError {
        GcError {
            error,
            delete_errors: Vec::new(),
        }
    }
}

impl From<LinkError> for GcError {
    fn from(e: LinkError) -> GcError {
        CniError::from(e).into()
    }
}

/// The default route (`0.0.0.0/0` or `::/0`) of `addr`'s family.
fn default_route(addr: &IpNetwork) -> Option<IpNetwork> {
    let unspecified: IpAddr = match addr {
        IpNetwork::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpNetwork::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    IpNetwork::new(unspecified, 0).ok()
}

fn same_family(a: &IpAddr, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The container routes of an ADD: IPAM's routes, plus a default route per address family
/// via that family's gateway when `isDefaultGateway` is set (and IPAM did not already give one).
fn container_routes(conf: &BridgeConf, ipam: &CniResult) -> Vec<Route> {
    let mut routes = ipam.routes.clone();
    if conf.is_default_gateway {
        for ip in &ipam.ips {
            let (Some(gw), Some(dst)) = (ip.gateway, default_route(&ip.address)) else {
                continue;
            };
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route::new(dst, Some(gw)));
            }
        }
    }
    routes
}

/// The next hop of a result route: its own `gw`, else the gateway of the first address of
/// the same family (the spec lets the runtime do the same).
fn route_gateway(route: &Route, ips: &[IpConfig]) -> Option<IpAddr> {
    route.gw.or_else(|| {
        ips.iter()
            .find(|ip| ip.address.is_ipv4() == route.dst.is_ipv4())
            .and_then(|ip| ip.gateway)
    })
}

fn route_spec(route: &Route, ips: &[IpConfig], dev: &str) -> RouteSpec {
    RouteSpec {
        table: route.table,
        metric: route.priority,
        mtu: route.mtu,
        ..RouteSpec::new(route.dst, route_gateway(route, ips), Some(dev))
    }
}

/// The gateway addresses to put on the bridge: each address's gateway with the address's
/// prefix length, deduplicated.
fn bridge_addresses(conf: &BridgeConf, ipam: &CniResult) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    if !conf.gateway() {
        return out;
    }
    for ip in &ipam.ips {
        if let Some(gw) = ip.gateway
            && let Ok(n) = IpNetwork::new(gw, ip.address.prefix())
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

/// CNI ADD. Returns the full result (bridge, host veth, container interface; addresses on
/// interface 2) and its warnings. See the module docs for the rollback rules.
///
/// Errors: [`AddError`], whose `error` is the original failure and whose `rollback_errors`
/// lists the rollback steps that failed too (the library prints nothing: the caller decides
/// where warnings and rollback failures go).
pub async fn add<N, I>(
    ns: &N,
    ipam: &I,
    conf: &BridgeConf,
    req: &AddRequest<'_>,
) -> Result<Added, AddError>
where
    N: Namespaces + ?Sized,
    I: IpamClient + ?Sized,
{
    conf.validate()?;
    let IpamAdd {
        result: ipam_res,
        fresh,
    } = ipam.add().await?;
    let mut veth_created: Option<String> = None;
    let mut warnings = Vec::new();
    let outcome = add_links(ns, conf, req, &ipam_res, &mut veth_created, &mut warnings).await;
    match outcome {
        Ok(result) => Ok(Added { result, warnings }),
        Err(error) => {
            let mut rollback_errors = Vec::new();
            if let Some(host_name) = veth_created {
                match ns.host().await {
                    Ok(h) => {
                        if let Err(e) = h.delete_link(&host_name).await {
                            rollback_errors.push(RollbackError::DeleteHostVeth(e));
                        }
                    }
                    Err(e) => rollback_errors.push(RollbackError::HostNamespace(e)),
                }
            }
            if fresh && let Err(e) = ipam.del().await {
                rollback_errors.push(RollbackError::ReleaseReservation(e));
            }
            Err(AddError {
                error,
                rollback_errors,
                warnings,
            })
        }
    }
}

async fn add_links<N: Namespaces + ?Sized>(
    ns: &N,
    conf: &BridgeConf,
    req: &AddRequest<'_>,
    ipam_res: &CniResult,
    veth_created: &mut Option<String>,
    warnings: &mut Vec<AddWarning>,
) -> Result<CniResult, CniError> {
    if ipam_res.ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "IPAM returned no addresses",
        ));
    }
    if let Some(mtu) = conf.mtu
        && mtu < 1280
        && ipam_res.ips.iter().any(|ip| ip.address.is_ipv6())
    {
        return Err(CniError::new(ErrorCode::InvalidConfig, "invalid mtu")
            .with_details(format!("{mtu} is below 1280, the IPv6 minimum")));
    }
    let host = ns.host().await?;
    let bridge = host
        .ensure_bridge(&BridgeSpec {
            name: conf.bridge.clone(),
            mtu: conf.mtu,
            addresses: bridge_addresses(conf, ipam_res),
        })
        .await?;
    if conf.gateway() {
        let v4 = ipam_res.ips.iter().any(|i| i.address.is_ipv4());
        let v6 = ipam_res.ips.iter().any(|i| i.address.is_ipv6());
        host.enable_forwarding(v4, v6).await?;
    }
    let container = ns.open(req.netns).await?;
    let spec = VethSpec {
        host_name: String::new(),
        container_name: req.ifname.to_owned(),
        container_netns: req.netns.to_path_buf(),
        mtu: conf.mtu,
        container_mac: req.mac.map(str::to_owned),
        master: Some(conf.bridge.clone()),
        hairpin: conf.hairpin_mode,
    };
    let pair = create_marked_veth(ns, &host, &container, spec, req, veth_created, warnings).await?;

    for ip in &ipam_res.ips {
        container.add_address(req.ifname, ip.address).await?;
    }
    let routes = container_routes(conf, ipam_res);
    for r in &routes {
        container
            .add_route(&route_spec(r, &ipam_res.ips, req.ifname))
            .await?;
    }

    let sandbox = req.netns.to_string_lossy().into_owned();
    let dns = match req.dns {
        Some(d) if !d.is_empty() => d.clone(),
        _ => ipam_res.dns.clone(),
    };
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name,
                mac: bridge.mac,
                mtu: Some(bridge.mtu),
                ..Default::default()
            },
            Interface {
                name: pair.host.name,
                mac: pair.host.mac,
                mtu: Some(pair.host.mtu),
                ..Default::default()
            },
            Interface {
                name: pair.container.name,
                mac: pair.container.mac,
                mtu: Some(pair.container.mtu),
                sandbox: Some(sandbox),
                ..Default::default()
            },
        ],
        ips: ipam_res
            .ips
            .iter()
            .map(|ip| IpConfig {
                interface: Some(2),
                ..ip.clone()
            })
            .collect(),
        routes,
        dns,
    })
}

/// Code 102 for a name clash at veth creation.
fn interface_exists(name: &str, req: &AddRequest<'_>, host_name: &str) -> CniError {
    CniError::new(
        ErrorCode::InterfaceExists,
        format!("interface {name:?} already exists"),
    )
    .with_details(format!(
        "container {:?} interface {:?} (host end {host_name:?})",
        req.container_id, req.ifname
    ))
}

/// Creates the attachment's veth pair under the first free of its [`HOST_VETH_NAMES`] host
/// names and marks the host end with [`attachment_mark`]; `created` names the host end as
/// soon as it exists (for the rollback). A host name held by a link carrying this
/// attachment's mark is a repeated ADD (code 102); one held by any other link (another
/// attachment's, or an unmarked one) is skipped without touching it. Code 102 also when the
/// container already has CNI_IFNAME or every name is taken.
async fn create_marked_veth<N: Namespaces + ?Sized>(
    ns: &N,
    host: &N::Handle,
    container: &N::Handle,
    mut spec: VethSpec,
    req: &AddRequest<'_>,
    created: &mut Option<String>,
    warnings: &mut Vec<AddWarning>,
) -> Result<VethPair, CniError> {
    let mark = attachment_mark(req.container_id, req.ifname);
    for salt in 0..HOST_VETH_NAMES {
        spec.host_name = if salt == 0 {
            host_veth_name(req.container_id, req.ifname)
        } else {
            host_veth_alt_name(req.container_id, req.ifname, salt)
        };
        match ns.create_veth(host, container, &spec).await {
            Ok(pair) => {
                *created = Some(spec.host_name.clone());
                host.set_alias(&spec.host_name, &mark).await?;
                return Ok(pair);
            }
            Err(LinkError::Exists(name)) if name == spec.host_name => {
                let holder = host.link(&name).await?;
                if holder.is_some_and(|l| l.alias.as_deref() == Some(mark.as_str())) {
                    return Err(interface_exists(&name, req, &spec.host_name));
                }
                warnings.push(AddWarning::HostVethNameTaken(name));
            }
            Err(LinkError::Exists(name)) => {
                return Err(interface_exists(&name, req, &spec.host_name));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CniError::new(
        ErrorCode::InterfaceExists,
        "every host veth name of this attachment is taken",
    )
    .with_details(format!(
        "container {:?} interface {:?}: {HOST_VETH_NAMES} names held by other links",
        req.container_id, req.ifname
    )))
}

/// Opens a container namespace; `None` when it no longer exists ([`LinkError::Netns`]).
async fn open_if_present<N: Namespaces + ?Sized>(
    ns: &N,
    netns: &Path,
) -> Result<Option<N::Handle>, LinkError> {
    match ns.open(netns).await {
        Ok(c) => Ok(Some(c)),
        Err(LinkError::Netns { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The host veth of an attachment, if one provably belongs to it:
/// 1. the link named [`host_veth_name`] when its alias is the attachment's
///    [`attachment_mark`];
/// 2. when that link has no alias (made before marks existed), it is accepted only if the
///    container namespace `netns` is open (`container`, opened here at most once and kept
///    for the caller), both are veths, CNI_IFNAME's peer is in another namespace with this
///    link's index, and this link's peer index is CNI_IFNAME's index;
/// 3. else the one link in the namespace whose alias is the mark (an alternative name).
///
/// `None` when no link is proven: a link held by another attachment is never returned.
pub async fn owned_host_link<N: Namespaces + ?Sized>(
    ns: &N,
    host: &N::Handle,
    container: &mut Option<N::Handle>,
    container_id: &str,
    ifname: &str,
    netns: Option<&Path>,
) -> Result<Option<LinkInfo>, LinkError> {
    let mark = attachment_mark(container_id, ifname);
    if let Some(l) = host.link(&host_veth_name(container_id, ifname)).await? {
        match l.alias.as_deref() {
            Some(a) if a == mark => return Ok(Some(l)),
            None => {
                if container.is_none()
                    && let Some(p) = netns
                {
                    *container = open_if_present(ns, p).await?;
                }
                let veth = |x: &LinkInfo| x.kind.as_deref() == Some("veth");
                if veth(&l)
                    && let Some(c) = container.as_ref()
                    && let Some(peer) = c.link(ifname).await?
                    && veth(&peer)
                    && peer.peer_index == Some(l.index)
                    && peer.link_netnsid.is_some()
                    && l.peer_index == Some(peer.index)
                {
                    return Ok(Some(l));
                }
            }
            Some(_) => {}
        }
    }
    Ok(host.links_with_alias(&mark).await?.into_iter().next())
}

/// A DEL request's attachment parameters.
#[derive(Debug, Clone)]
pub struct DelRequest<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS`; `None` when the runtime sent it empty.
    pub netns: Option<&'a Path>,
}

/// CNI DEL: idempotent; succeeds when the netns, the interface or the reservation is
/// already gone. The reservation is released only once the interface is gone (any error
/// deleting it is returned and the reservation kept), so an address is never handed out
/// while a live interface still holds it.
pub async fn del<N, I>(ns: &N, ipam: &I, req: &DelRequest<'_>) -> Result<(), CniError>
where
    N: Namespaces + ?Sized,
    I: IpamClient + ?Sized,
{
    // Deleting the owned host end removes the pair from the node's namespace without
    // entering the container's; only when there is none is the container's namespace
    // opened to look for CNI_IFNAME. A host link that is not proven to be this
    // attachment's (another pod's, after a name collision) is never deleted.
    let host = ns.host().await?;
    let mut container = None;
    let owned = owned_host_link(
        ns,
        &host,
        &mut container,
        req.container_id,
        req.ifname,
        req.netns,
    )
    .await?;
    let host_end_existed = match owned {
        Some(l) => host.delete_link(&l.name).await?,
        None => false,
    };
    if !host_end_existed && let Some(netns) = req.netns {
        if container.is_none() {
            container = open_if_present(ns, netns).await?;
        }
        if let Some(c) = container {
            c.delete_link(req.ifname).await?;
        }
    }
    ipam.del().await
}

/// A CHECK request.
#[derive(Debug, Clone)]
pub struct CheckRequest<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// The final ADD result (`prevResult`).
    pub prev: &'a CniResult,
}

/// CNI CHECK: verifies what ADD created against `prevResult` and reports every difference
/// in one error (code 106). Routes added by later plugins are tolerated; routes listed in
/// `prevResult` for the interface must exist.
pub async fn check<N, I>(
    ns: &N,
    ipam: &I,
    conf: &BridgeConf,
    req: &CheckRequest<'_>,
) -> Result<(), CniError>
where
    N: Namespaces + ?Sized,
    I: IpamClient + ?Sized,
{
    conf.validate()?;
    ipam.check(req.prev).await?;
    let mut problems: Vec<String> = Vec::new();
    let sandbox = req.netns.to_string_lossy();
    let Some(cidx) = req.prev.interface_index(req.ifname, Some(&sandbox)) else {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            "prevResult has no container interface",
        )
        .with_details(format!(
            "no interface {:?} with sandbox {sandbox:?}",
            req.ifname
        )));
    };
    let want = &req.prev.interfaces[cidx];

    let host = ns.host().await?;
    let bridge = host.link(&conf.bridge).await?;
    match &bridge {
        None => problems.push(format!("bridge {:?} is missing", conf.bridge)),
        Some(b) if b.kind.as_deref().is_some_and(|k| k != "bridge") => {
            problems.push(format!("{:?} is not a bridge", conf.bridge))
        }
        _ => {}
    }
    let mut container = None;
    let owned = owned_host_link(
        ns,
        &host,
        &mut container,
        req.container_id,
        req.ifname,
        Some(req.netns),
    )
    .await?;
    match owned {
        None => problems.push(format!(
            "host veth of this attachment is missing (no link {:?} or marked {:?})",
            host_veth_name(req.container_id, req.ifname),
            attachment_mark(req.container_id, req.ifname)
        )),
        Some(l) => {
            let host_name = l.name.as_str();
            if let Some(b) = &bridge
                && l.master != Some(b.index)
            {
                problems.push(format!(
                    "host veth {host_name:?} is not a port of {:?}",
                    conf.bridge
                ));
            }
            if host.hairpin(host_name).await? != conf.hairpin_mode {
                problems.push(format!(
                    "hairpin mode of {host_name:?} is not {}",
                    conf.hairpin_mode
                ));
            }
        }
    }

    let c = match container {
        Some(c) => c,
        None => ns.open(req.netns).await?,
    };
    match c.link(req.ifname).await? {
        None => problems.push(format!(
            "interface {:?} is missing in {sandbox}",
            req.ifname
        )),
        Some(l) => {
            if let Some(mac) = &want.mac
                && l.mac.as_deref() != Some(mac.as_str())
            {
                problems.push(format!(
                    "interface {:?} has MAC {:?}, prevResult says {mac}",
                    req.ifname, l.mac
                ));
            }
            if let Some(mtu) = conf.mtu
                && l.mtu != mtu
            {
                problems.push(format!(
                    "interface {:?} has MTU {}, config says {mtu}",
                    req.ifname, l.mtu
                ));
            }
            let have = c.addresses(req.ifname).await?;
            for ip in req.prev.ips.iter().filter(|ip| ip.interface == Some(cidx)) {
                if !have.contains(&ip.address) {
                    problems.push(format!(
                        "address {} is missing on {:?}",
                        ip.address, req.ifname
                    ));
                }
            }
            let routes = c.routes(Some(req.ifname)).await?;
            for r in &req.prev.routes {
                let gw = route_gateway(r, &req.prev.ips);
                let found = routes.iter().any(|x| {
                    x.dst == r.dst
                        && (gw.is_none()
                            || x.gateway == gw
                            || gw.is_some_and(|g| !same_family(&g, &r.dst)))
                });
                if !found {
                    problems.push(format!("route to {} is missing in {sandbox}", r.dst));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(ErrorCode::CheckFailed, "CHECK failed").with_details(problems.join("; ")))
    }
}

/// CNI GC (CNI spec 1.1.0 §"GC"): IPAM GC releases every reservation whose attachment is not
/// in `valid` (`cni.dev/valid-attachments`), then every port of `conf.bridge` whose alias is
/// the [`attachment_mark`] of a released attachment is deleted, and with it the veth's
/// container end (the pod's CNI_IFNAME). Links without a mark, with another attachment's
/// mark, or of an attachment in `valid` are never touched; with a delegated IPAM nothing is
/// released that is known, so no link is deleted. A missing bridge means no ports.
///
/// Errors: code 7 for an invalid `conf`, IPAM GC's error, code 103 when listing the ports
/// fails; a failed deletion is reported (code 103) after the others were tried, every failed
/// deletion in [`GcError::delete_errors`] (the library prints nothing).
pub async fn gc<N, I>(
    ns: &N,
    ipam: &I,
    conf: &BridgeConf,
    valid: &[GcAttachment],
) -> Result<(), GcError>
where
    N: Namespaces + ?Sized,
    I: IpamClient + ?Sized,
{
    conf.validate()?;
    let released = ipam.gc(valid).await?;
    let marks: std::collections::HashSet<String> = released
        .iter()
        .filter(|a| {
            !valid
                .iter()
                .any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
        })
        .map(|a| attachment_mark(&a.container_id, &a.ifname))
        .collect();
    if marks.is_empty() {
        return Ok(());
    }
    let host = ns.host().await?;
    let ports = match host.bridge_ports(&conf.bridge).await {
        Ok(p) => p,
        Err(LinkError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut delete_errors: Vec<LinkError> = Vec::new();
    for port in ports {
        if port.alias.as_ref().is_some_and(|a| marks.contains(a))
            && let Err(e) = host.delete_link(&port.name).await
        {
            delete_errors.push(e);
        }
    }
    match delete_errors.first() {
        None => Ok(()),
        Some(first) => Err(GcError {
            error: CniError::new(first.cni_code(), first.to_string()),
            delete_errors,
        }),
    }
}

#[cfg(test)]
mod tests;
