//! The `headcni` main plugin's ADD, DEL and CHECK, written over the [`crate::link`] traits
//! and an [`IpamClient`], so it runs on rtnetlink in production and on recording fakes in
//! tests. The binary (`headcni-cli`) only parses the request and wires the implementations.
//!
//! Semantics (CNI spec 1.1.0 §"ADD", §"DEL", §"CHECK"; netavark's validate-then-mutate and
//! reverse rollback):
//! - ADD: IPAM ADD → bridge (with gateway addresses, forwarding) → veth with the peer
//!   created in the container netns → container addresses → container routes. Any failure
//!   undoes, in reverse, what this ADD created (the veth, a fresh IP reservation) and
//!   returns the original error. A repeated ADD for a live attachment fails with code 102
//!   and leaves the live attachment untouched.
//! - DEL: idempotent. Deletes the veth pair by its host end (named after the attachment, so
//!   the container's netns need not be entered; CNI_IFNAME in the netns only if the host end
//!   is missing), then releases the IPAM reservation; succeeds when everything is already gone.
//! - CHECK: verifies the bridge, the host veth's port (master, hairpin), the container
//!   interface (MAC, MTU), addresses and routes listed in `prevResult`, and the IPAM
//!   reservation; reports every difference (code 106).

mod conf;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::net::IpAddr;
use std::path::Path;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

pub use conf::{
    BridgeConf, DEFAULT_BRIDGE, DEFAULT_DELEGATE_TIMEOUT_SECS, MAX_DELEGATE_TIMEOUT_SECS, MAX_MTU,
    MIN_MTU, host_veth_name,
};

use crate::cni::{CniError, CniResult, Dns, ErrorCode, GcAttachment, Interface, IpConfig, Route};
use crate::link::{BridgeSpec, LinkError, LinkManager, RouteManager, RouteSpec, VethSpec};

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
    /// IPAM GC: release everything not in `valid`.
    async fn gc(&self, valid: &[GcAttachment]) -> Result<(), CniError>;
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

/// Rollback and best-effort errors go to stderr; stdout carries only the protocol.
fn note_on_stderr(msg: &str, err: &dyn std::fmt::Display) {
    eprintln!("headcni: {msg}: {err}");
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
/// interface 2). See the module docs for the rollback rules.
pub async fn add<N, I>(
    ns: &N,
    ipam: &I,
    conf: &BridgeConf,
    req: &AddRequest<'_>,
) -> Result<CniResult, CniError>
where
    N: Namespaces + ?Sized,
    I: IpamClient + ?Sized,
{
    conf.validate()?;
    let IpamAdd {
        result: ipam_res,
        fresh,
    } = ipam.add().await?;
    let host_name = host_veth_name(req.container_id, req.ifname);
    let mut veth_created = false;
    let outcome = add_links(ns, conf, req, &ipam_res, &host_name, &mut veth_created).await;
    match outcome {
        Ok(r) => Ok(r),
        Err(err) => {
            if veth_created {
                match ns.host().await {
                    Ok(h) => {
                        if let Err(e) = h.delete_link(&host_name).await {
                            note_on_stderr("rollback: deleting the host veth failed", &e);
                        }
                    }
                    Err(e) => note_on_stderr("rollback: opening the host namespace failed", &e),
                }
            }
            if fresh && let Err(e) = ipam.del().await {
                note_on_stderr("rollback: releasing the IP reservation failed", &e);
            }
            Err(err)
        }
    }
}

async fn add_links<N: Namespaces + ?Sized>(
    ns: &N,
    conf: &BridgeConf,
    req: &AddRequest<'_>,
    ipam_res: &CniResult,
    host_name: &str,
    veth_created: &mut bool,
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
        host_name: host_name.to_owned(),
        container_name: req.ifname.to_owned(),
        container_netns: req.netns.to_path_buf(),
        mtu: conf.mtu,
        container_mac: req.mac.map(str::to_owned),
        master: Some(conf.bridge.clone()),
        hairpin: conf.hairpin_mode,
    };
    let pair = ns
        .create_veth(&host, &container, &spec)
        .await
        .map_err(|e| match e {
            LinkError::Exists(name) => CniError::new(
                ErrorCode::InterfaceExists,
                format!("interface {name:?} already exists"),
            )
            .with_details(format!(
                "container {:?} interface {:?} (host end {host_name:?})",
                req.container_id, req.ifname
            )),
            other => other.into(),
        })?;
    *veth_created = true;

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
    // Deleting the host end (its name is derived from the attachment) removes the pair from
    // the node's namespace without entering the container's; only when it is not there is
    // the container's namespace opened to look for CNI_IFNAME.
    let host = ns.host().await?;
    let host_end_existed = host
        .delete_link(&host_veth_name(req.container_id, req.ifname))
        .await?;
    if !host_end_existed && let Some(netns) = req.netns {
        match ns.open(netns).await {
            Ok(c) => {
                c.delete_link(req.ifname).await?;
            }
            Err(LinkError::Netns { .. }) => {}
            Err(e) => return Err(e.into()),
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
    let host_name = host_veth_name(req.container_id, req.ifname);
    match host.link(&host_name).await? {
        None => problems.push(format!("host veth {host_name:?} is missing")),
        Some(l) => {
            if let Some(b) = &bridge
                && l.master != Some(b.index)
            {
                problems.push(format!(
                    "host veth {host_name:?} is not a port of {:?}",
                    conf.bridge
                ));
            }
            if host.hairpin(&host_name).await? != conf.hairpin_mode {
                problems.push(format!(
                    "hairpin mode of {host_name:?} is not {}",
                    conf.hairpin_mode
                ));
            }
        }
    }

    let c = ns.open(req.netns).await?;
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

#[cfg(test)]
mod tests;
