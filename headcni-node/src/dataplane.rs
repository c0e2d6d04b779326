//! The daemon's node data plane: the pod bridge with its gateway addresses and MTU, IPv4 /
//! IPv6 forwarding, and HeadCNI's masquerade table (issue 3, item 4).
//!
//! [`reconcile`] is idempotent and cheap when nothing changed (one link lookup, one address
//! dump, two sysctl reads and one `nft -j list table`), so the daemon can call it
//! periodically and on every configuration change; the [`DataplaneReport`] says what had to
//! be repaired. [`teardown`] is the uninstall step.
//!
//! Everything acts in the network namespace of the thread the future runs on (netlink socket
//! opened by [`NetlinkHandle::current`], `/proc/sys/net` read on that thread, `nft` spawned
//! from a blocking-pool thread of the same runtime): the daemon's namespace in production,
//! the test's node namespace in tests (a `current_thread` runtime built on a thread inside
//! it).

use std::net::IpAddr;

use headcni_core::link::{BridgeSpec, LinkError, LinkManager};
use headcni_core::node::masq::{self, MasqError, MasqueradeSpec};
use headcni_netlink::nft::NftError;
use headcni_netlink::{NetlinkHandle, nft};
use ipnetwork::IpNetwork;

/// Default bridge name (the plugin configuration's default too):
/// [`headcni_core::defaults::BRIDGE`].
pub use headcni_core::defaults::BRIDGE as DEFAULT_BRIDGE;

use headcni_core::defaults::{
    IPV4_FORWARDING_SYSCTL as IPV4_FORWARD, IPV6_FORWARDING_SYSCTL as IPV6_FORWARD,
};

/// Why [`reconcile`], [`teardown`] or [`gateway_address`] failed. The message names the step
/// (e.g. `ensure bridge headcni0`); the cause is [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A pod CIDR with host bits set (`network` is its network address).
    #[error("pod CIDR {cidr} has host bits set (network address is {network})")]
    HostBits {
        /// The CIDR as given.
        cidr: IpNetwork,
        /// Its network address.
        network: IpAddr,
    },
    /// A pod CIDR too small for a gateway and pods (IPv4 /31, /32, IPv6 /127, /128).
    #[error("pod CIDR {0} is too small for a gateway and pods")]
    TooSmall(IpNetwork),
    /// The masquerade rule set cannot be planned (no pod CIDR, a pod CIDR outside the
    /// cluster CIDR, a bad table name, ...).
    #[error("masquerade rule set")]
    Plan(#[source] MasqError),
    /// A netlink step failed; `step` says which (e.g. `ensure bridge headcni0`).
    #[error("{step}")]
    Link {
        /// The step.
        step: String,
        /// The netlink error.
        #[source]
        source: LinkError,
    },
    /// A forwarding sysctl file could not be read.
    #[error("read {path}")]
    Sysctl {
        /// The `/proc/sys` path.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` failed; `step` says which (e.g. `apply nftables table inet headcni`).
    #[error("{step}")]
    Nft {
        /// The step.
        step: String,
        /// The nft error.
        #[source]
        source: NftError,
    },
    /// The blocking task that runs `nft` panicked or was cancelled.
    #[error("nft task")]
    Task(#[source] tokio::task::JoinError),
}

fn link_step(step: impl Into<String>) -> impl FnOnce(LinkError) -> DataplaneError {
    let step = step.into();
    move |source| DataplaneError::Link { step, source }
}

/// What the node's data plane must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneParams {
    /// Bridge the pods are attached to, e.g. [`DEFAULT_BRIDGE`].
    pub bridge: String,
    /// Bridge MTU in bytes; `None` keeps the current (or the kernel's default) MTU.
    pub mtu: Option<u32>,
    /// The node's pod CIDR(s), network addresses (one per family for dual-stack). The
    /// bridge gets the first host address of each, with the CIDR's prefix length, which is
    /// headcni-ipam's default gateway.
    pub pod_cidrs: Vec<IpNetwork>,
    /// The cluster CIDR(s), exempt from masquerading (may be empty).
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Name of HeadCNI's nftables table (family `inet`), normally
    /// [`masq::DEFAULT_TABLE`].
    pub table: String,
}

impl DataplaneParams {
    /// Parameters with the default bridge, no MTU override and the default table.
    pub fn new(pod_cidrs: Vec<IpNetwork>, cluster_cidrs: Vec<IpNetwork>) -> DataplaneParams {
        DataplaneParams {
            bridge: DEFAULT_BRIDGE.to_owned(),
            mtu: None,
            pod_cidrs,
            cluster_cidrs,
            table: masq::DEFAULT_TABLE.to_owned(),
        }
    }
}

/// What [`reconcile`] had to change; all `false` when the data plane was already in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataplaneReport {
    /// The bridge was created, brought up, given a missing gateway address or a new MTU.
    pub bridge_changed: bool,
    /// `net.ipv4.ip_forward` or `net.ipv6.conf.all.forwarding` was switched on.
    pub forwarding_changed: bool,
    /// The masquerade table was (re)written.
    pub masquerade_changed: bool,
}

impl DataplaneReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.bridge_changed || self.forwarding_changed || self.masquerade_changed
    }
}

/// The bridge gateway address for a pod CIDR: its first host address with the CIDR's
/// prefix length (`10.244.1.0/24` → `10.244.1.1/24`), as headcni-ipam's default gateway.
///
/// Errors: host bits set, or a CIDR too small to hold a gateway and pods (IPv4 /31, /32,
/// IPv6 /127, /128).
pub fn gateway_address(cidr: &IpNetwork) -> Result<IpNetwork, DataplaneError> {
    if cidr.ip() != cidr.network() {
        return Err(DataplaneError::HostBits {
            cidr: *cidr,
            network: cidr.network(),
        });
    }
    let gw = headcni_core::defaults::gateway(cidr).ok_or(DataplaneError::TooSmall(*cidr))?;
    // The prefix is the CIDR's own, so it is valid for the address family.
    IpNetwork::new(gw, cidr.prefix()).map_err(|_| DataplaneError::TooSmall(*cidr))
}

/// Reads a sysctl file in the calling thread's namespace; `None` when it does not exist
/// (IPv6 disabled).
fn read_sysctl(path: &'static str) -> Result<Option<String>, DataplaneError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DataplaneError::Sysctl { path, source }),
    }
}

/// Brings the node's data plane to `p`, in the calling thread's network namespace:
///
/// 1. the bridge `p.bridge` exists, is up, carries the gateway address of every pod CIDR
///    ([`gateway_address`]) and has MTU `p.mtu` (when given), through
///    [`LinkManager::ensure_bridge`] (only called when something is missing);
/// 2. IPv4 forwarding (when there is an IPv4 pod CIDR) and IPv6 forwarding (IPv6 pod CIDR)
///    are on, through [`LinkManager::enable_forwarding`];
/// 3. the masquerade table `inet <p.table>` equals [`masq::plan`] for the pod and cluster
///    CIDRs (default tailnet ranges), through [`nft::apply`] (rewritten only on a
///    difference).
///
/// Addresses that are on the bridge but not wanted (an old pod CIDR) are left alone: pods
/// may still use them.
///
/// Errors: invalid parameters (no pod CIDR, host bits, tiny CIDRs, pod CIDR outside the
/// cluster CIDR, bad table name: nothing is changed then), netlink / sysctl failures
/// (`CAP_NET_ADMIN` needed), `nft` missing or failing. Each carries which step failed.
pub async fn reconcile(p: &DataplaneParams) -> Result<DataplaneReport, DataplaneError> {
    // Validate everything before touching anything.
    let gateways = p
        .pod_cidrs
        .iter()
        .map(gateway_address)
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = MasqueradeSpec::new(p.pod_cidrs.clone(), p.cluster_cidrs.clone());
    spec.table = p.table.clone();
    let plan = masq::plan(&spec).map_err(DataplaneError::Plan)?;

    let nl = NetlinkHandle::current()
        .await
        .map_err(link_step("open netlink in the node namespace"))?;
    let mut report = DataplaneReport::default();

    // 1. Bridge.
    let bridge_ok = match nl
        .link(&p.bridge)
        .await
        .map_err(link_step(format!("look up bridge {}", p.bridge)))?
    {
        None => false,
        Some(link) => {
            let have = nl
                .addresses(&p.bridge)
                .await
                .map_err(link_step(format!("addresses of bridge {}", p.bridge)))?;
            link.kind.as_deref() == Some("bridge")
                && link.up
                && p.mtu.is_none_or(|m| m == link.mtu)
                && gateways.iter().all(|g| have.contains(g))
        }
    };
    if !bridge_ok {
        nl.ensure_bridge(&BridgeSpec {
            name: p.bridge.clone(),
            mtu: p.mtu,
            addresses: gateways.clone(),
        })
        .await
        .map_err(link_step(format!("ensure bridge {}", p.bridge)))?;
        report.bridge_changed = true;
        tracing::info!(bridge = %p.bridge, mtu = ?p.mtu, gateways = ?gateways, "bridge ensured");
    }

    // 2. Forwarding.
    let want_v4 = p.pod_cidrs.iter().any(IpNetwork::is_ipv4);
    let want_v6 = p.pod_cidrs.iter().any(IpNetwork::is_ipv6);
    let v4_off = want_v4 && read_sysctl(IPV4_FORWARD)?.as_deref() != Some("1");
    let v6_off = want_v6 && read_sysctl(IPV6_FORWARD)?.is_some_and(|v| v != "1");
    if v4_off || v6_off {
        nl.enable_forwarding(want_v4, want_v6)
            .await
            .map_err(link_step("enable forwarding"))?;
        report.forwarding_changed = true;
        tracing::info!(ipv4 = v4_off, ipv6 = v6_off, "forwarding enabled");
    }

    // 3. Masquerade. `nft` is a child process: run it off the async threads, on a
    // blocking-pool thread of this runtime (same namespace, see the module docs).
    let table = p.table.clone();
    report.masquerade_changed = tokio::task::spawn_blocking(move || nft::apply(&plan))
        .await
        .map_err(DataplaneError::Task)?
        .map_err(|source| DataplaneError::Nft {
            step: format!("apply nftables table inet {table}"),
            source,
        })?;
    if report.masquerade_changed {
        tracing::info!(table = %p.table, "masquerade table written");
    }
    Ok(report)
}

/// Uninstall: deletes HeadCNI's nftables table `inet <table>` in the calling thread's
/// network namespace (no error if it is absent). The bridge stays: pods may still be
/// attached to it, and the CNI plugin recreates it anyway.
///
/// Errors: invalid table name, `nft` missing or failing.
pub async fn teardown(table: &str) -> Result<(), DataplaneError> {
    let name = table.to_owned();
    let removed = tokio::task::spawn_blocking(move || nft::remove(&name))
        .await
        .map_err(DataplaneError::Task)?
        .map_err(|source| DataplaneError::Nft {
            step: format!("remove nftables table inet {table}"),
            source,
        })?;
    tracing::info!(table, removed, "masquerade table removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_is_first_host_with_prefix() {
        assert_eq!(
            gateway_address(&net("10.244.1.0/24")).unwrap(),
            net("10.244.1.1/24")
        );
        assert_eq!(
            gateway_address(&net("fd00:10:244:1::/64")).unwrap(),
            net("fd00:10:244:1::1/64")
        );
        assert_eq!(
            gateway_address(&net("10.0.0.0/30")).unwrap(),
            net("10.0.0.1/30")
        );
        for bad in ["10.244.1.5/24", "10.0.0.0/31", "10.0.0.1/32", "fd00::/127"] {
            assert!(gateway_address(&net(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let p = DataplaneParams::new(vec![net("10.244.1.0/24")], vec![]);
        assert_eq!(p.bridge, "headcni0");
        assert_eq!(p.table, "headcni");
        assert_eq!(p.mtu, None);
        assert!(!DataplaneReport::default().changed());
    }

    #[tokio::test]
    async fn invalid_parameters_fail_before_any_change() {
        // These fail in validation, before a netlink socket is even opened.
        let mut p = DataplaneParams::new(vec![], vec![]);
        let e = reconcile(&p).await.unwrap_err();
        assert!(
            matches!(e, DataplaneError::Plan(MasqError::NoPodCidr)),
            "{e:?}"
        );
        p.pod_cidrs = vec![net("10.244.1.0/24")];
        p.cluster_cidrs = vec![net("10.245.0.0/16")];
        let e = reconcile(&p).await.unwrap_err();
        assert!(
            matches!(e, DataplaneError::Plan(MasqError::PodOutsideCluster { .. })),
            "{e:?}"
        );
        p.cluster_cidrs.clear();
        p.table = "bad name".into();
        assert!(reconcile(&p).await.is_err());
        assert!(teardown("bad name").await.is_err());
    }
}
