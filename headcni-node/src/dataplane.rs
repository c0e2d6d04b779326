//! The node's data plane: the pod bridge with its gateway addresses and MTU, IPv4 / IPv6
//! forwarding, and HeadCNI's masquerade rule set (issue 3, item 4).
//!
//! The decisions are `headcni_core::node::reconcile`'s ([`validate`], [`plan_dataplane`]);
//! this module observes ([`observe`]) and acts ([`act`]) through the effect traits:
//! [`LinkManager`], [`ForwardingSysctl`] and [`FirewallDriver`]. [`reconcile_with`] is one
//! pass with any implementations; [`reconcile`] is one pass with the production ones
//! ([`NetlinkHandle::current`] and [`NftFirewall`]). A pass is idempotent and cheap when
//! nothing changed (one link lookup, one address dump, two sysctl reads and one
//! `nft -j list table`), so the daemon calls it periodically; the [`DataplaneReport`] says
//! what had to be repaired. [`teardown`] is the uninstall step.
//!
//! With the production implementations everything acts in the network namespace of the
//! thread the future runs on (netlink socket opened by [`NetlinkHandle::current`],
//! `/proc/sys/net` read on that thread, `nft` spawned from a blocking-pool thread of the same
//! runtime): the daemon's namespace in production, the test's node namespace in tests (a
//! `current_thread` runtime built on a thread inside it).

use headcni_core::link::{LinkError, LinkManager};
use headcni_core::node::firewall::{FirewallDriver, FirewallError};
use headcni_core::node::masq::MasqError;
use headcni_core::node::reconcile::{
    FirewallObservation, NodeAction, NodePlanError, ObservedBridge, ObservedDataplane,
    ValidDataplane, plan_dataplane, validate,
};
use headcni_core::sysctl::ForwardingSysctl;
use headcni_netlink::{NetlinkHandle, NftFirewall};
use ipnetwork::IpNetwork;

/// Default bridge name (the plugin configuration's default too):
/// [`headcni_core::defaults::BRIDGE`].
pub use headcni_core::defaults::BRIDGE as DEFAULT_BRIDGE;

/// What the node's data plane must look like:
/// [`headcni_core::node::reconcile::DesiredDataplane`] (bridge, MTU, PodCIDRs, cluster
/// CIDRs, nftables table; `new` gives the default bridge and table).
pub use headcni_core::node::reconcile::DesiredDataplane as DataplaneParams;

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
        network: std::net::IpAddr,
    },
    /// A pod CIDR too small for a gateway and pods (IPv4 /31, /32, IPv6 /127, /128).
    #[error("pod CIDR {0} is too small for a gateway and pods")]
    TooSmall(IpNetwork),
    /// The masquerade rule set cannot be planned (no pod CIDR, a pod CIDR outside the
    /// cluster CIDR, a bad table name, ...).
    #[error("masquerade rule set")]
    Plan(#[source] MasqError),
    /// A netlink or sysctl step failed; `step` says which (e.g. `ensure bridge headcni0`).
    #[error("{step}")]
    Link {
        /// The step.
        step: String,
        /// The netlink or sysctl error.
        #[source]
        source: LinkError,
    },
    /// The firewall driver failed (the message names its step, e.g. `apply nftables table
    /// inet headcni`).
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

impl From<NodePlanError> for DataplaneError {
    fn from(e: NodePlanError) -> DataplaneError {
        match e {
            NodePlanError::HostBits { cidr, network } => DataplaneError::HostBits { cidr, network },
            NodePlanError::TooSmall(c) => DataplaneError::TooSmall(c),
            NodePlanError::Masquerade(m) => DataplaneError::Plan(m),
        }
    }
}

fn link_step(step: impl Into<String>) -> impl FnOnce(LinkError) -> DataplaneError {
    let step = step.into();
    move |source| DataplaneError::Link { step, source }
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
/// prefix length (`10.244.1.0/24` → `10.244.1.1/24`), as headcni-ipam's default gateway
/// ([`headcni_core::node::reconcile::gateway_address`]).
///
/// Errors: host bits set, or a CIDR too small to hold a gateway and pods (IPv4 /31, /32,
/// IPv6 /127, /128).
pub fn gateway_address(cidr: &IpNetwork) -> Result<IpNetwork, DataplaneError> {
    Ok(headcni_core::node::reconcile::gateway_address(cidr)?)
}

/// Observes the data plane `want` is about: the bridge (kind, up, MTU, addresses), the
/// forwarding sysctls and, when `firewall` manages it, whether the masquerade rule set is in
/// place.
///
/// Errors: the step that could not be observed ([`DataplaneError::Link`],
/// [`DataplaneError::Firewall`]).
pub async fn observe(
    links: &dyn LinkManager,
    sysctl: &dyn ForwardingSysctl,
    firewall: &dyn FirewallDriver,
    want: &ValidDataplane,
) -> Result<ObservedDataplane, DataplaneError> {
    let name = &want.bridge.name;
    let bridge = match links
        .link(name)
        .await
        .map_err(link_step(format!("look up bridge {name}")))?
    {
        None => None,
        Some(link) => Some(ObservedBridge {
            kind: link.kind,
            up: link.up,
            mtu: link.mtu,
            addresses: links
                .addresses(name)
                .await
                .map_err(link_step(format!("addresses of bridge {name}")))?,
        }),
    };
    let forwarding = sysctl
        .forwarding()
        .await
        .map_err(link_step("read the forwarding sysctls"))?;
    let firewall = if !firewall.manages_masquerade() {
        FirewallObservation::Unmanaged
    } else if firewall.in_place(&want.masquerade).await? {
        FirewallObservation::InPlace
    } else {
        FirewallObservation::OutOfDate
    };
    Ok(ObservedDataplane {
        bridge,
        forwarding,
        firewall,
    })
}

/// Performs data-plane `actions` in order (a [`NodeAction::WriteConflist`] is not this
/// module's and is skipped); stops at the first failure.
///
/// Errors: the failing step ([`DataplaneError::Link`], [`DataplaneError::Firewall`]).
pub async fn act(
    links: &dyn LinkManager,
    firewall: &dyn FirewallDriver,
    actions: &[NodeAction],
) -> Result<DataplaneReport, DataplaneError> {
    let mut report = DataplaneReport::default();
    for a in actions {
        match a {
            NodeAction::EnsureBridge(spec) => {
                links
                    .ensure_bridge(spec)
                    .await
                    .map_err(link_step(format!("ensure bridge {}", spec.name)))?;
                report.bridge_changed = true;
                tracing::info!(bridge = %spec.name, mtu = ?spec.mtu, gateways = ?spec.addresses, "bridge ensured");
            }
            NodeAction::EnableForwarding { ipv4, ipv6 } => {
                links
                    .enable_forwarding(*ipv4, *ipv6)
                    .await
                    .map_err(link_step("enable forwarding"))?;
                report.forwarding_changed = true;
                tracing::info!(ipv4, ipv6, "forwarding enabled");
            }
            NodeAction::ApplyFirewall(plan) => {
                report.masquerade_changed = firewall.apply(plan).await?;
                if report.masquerade_changed {
                    tracing::info!(table = %plan.table, driver = firewall.name(), "masquerade table written");
                }
            }
            NodeAction::WriteConflist(_) => {}
        }
    }
    Ok(report)
}

/// One data-plane pass with the given effects: [`validate`] (nothing is observed or changed
/// when `p` is invalid), [`observe`], [`plan_dataplane`], [`act`].
///
/// Addresses that are on the bridge but not wanted (an old pod CIDR) are left alone: pods
/// may still use them.
///
/// Errors: invalid parameters (no pod CIDR, host bits, tiny CIDRs, pod CIDR outside the
/// cluster CIDR, bad table name), then the failing observation or action.
pub async fn reconcile_with(
    links: &dyn LinkManager,
    sysctl: &dyn ForwardingSysctl,
    firewall: &dyn FirewallDriver,
    p: &DataplaneParams,
) -> Result<DataplaneReport, DataplaneError> {
    let want = validate(p)?;
    let observed = observe(links, sysctl, firewall, &want).await?;
    act(links, firewall, &plan_dataplane(&want, &observed)).await
}

/// Brings the node's data plane to `p` in the calling thread's network namespace, with the
/// production effects ([`NetlinkHandle::current`], [`NftFirewall`]):
///
/// 1. the bridge `p.bridge` exists, is up, carries the gateway address of every pod CIDR
///    ([`gateway_address`]) and has MTU `p.mtu` (when given);
/// 2. IPv4 forwarding (when there is an IPv4 pod CIDR) and IPv6 forwarding (IPv6 pod CIDR)
///    are on;
/// 3. the masquerade table `inet <p.table>` equals the plan for the pod and cluster CIDRs
///    (rewritten only on a difference).
///
/// Errors: as [`reconcile_with`]; invalid parameters fail before a netlink socket is opened.
/// `CAP_NET_ADMIN` is needed for changes, and `nft` on `PATH`.
pub async fn reconcile(p: &DataplaneParams) -> Result<DataplaneReport, DataplaneError> {
    validate(p)?;
    let nl = NetlinkHandle::current()
        .await
        .map_err(link_step("open netlink in the node namespace"))?;
    reconcile_with(&nl, &nl, &NftFirewall::new(), p).await
}

/// Uninstall: deletes HeadCNI's rule set `table` through `firewall` (no error if it is
/// absent; nothing at all with the `none` driver). The bridge stays: pods may still be
/// attached to it, and the CNI plugin recreates it anyway. Returns whether a rule set was
/// removed.
///
/// Errors: [`DataplaneError::Firewall`] (an invalid table name, `nft` missing or failing).
pub async fn teardown_with(
    firewall: &dyn FirewallDriver,
    table: &str,
) -> Result<bool, DataplaneError> {
    let removed = firewall.remove(table).await?;
    tracing::info!(
        table,
        removed,
        driver = firewall.name(),
        "masquerade table removed"
    );
    Ok(removed)
}

/// [`teardown_with`] the `nft` driver, in the calling thread's network namespace.
///
/// Errors: invalid table name, `nft` missing or failing.
pub async fn teardown(table: &str) -> Result<(), DataplaneError> {
    teardown_with(&NftFirewall::new(), table).await.map(|_| ())
}

#[cfg(test)]
#[path = "dataplane_tests.rs"]
mod tests;
