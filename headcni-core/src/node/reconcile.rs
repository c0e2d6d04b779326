//! The node reconcile as decisions (sans-I/O): what the node's data plane and conflist must
//! look like ([`DesiredDataplane`], the wanted [`Conflist`]), what was observed
//! ([`ObservedDataplane`], [`ConflistOnDisk`]), and the actions that bring one to the other
//! ([`NodeAction`]). `headcni_node::reconciler` observes through the effect traits
//! ([`crate::link::LinkManager`], [`crate::sysctl::ForwardingSysctl`],
//! [`super::firewall::FirewallDriver`], [`super::conflist_sink::ConflistSink`]), calls
//! [`validate`] and [`plan_dataplane`] / [`plan_conflist`], and performs the actions in order.
//!
//! Rules (the daemon's since issue 3):
//! - the bridge is ensured when it is missing, not a bridge, down, has another MTU than the
//!   wanted one (when one is wanted) or lacks a gateway address (the first host address of
//!   each PodCIDR with its prefix, [`gateway_address`]). Addresses it has but that are not
//!   wanted (an old PodCIDR) are left alone: pods may still use them;
//! - forwarding is enabled for the families with a PodCIDR whose sysctl is off; IPv4 counts
//!   as off when its sysctl is missing, a missing IPv6 sysctl (IPv6 disabled) needs nothing;
//! - the masquerade rule set is applied when the firewall driver manages it and it is not in
//!   place; never with the `none` driver;
//! - the conflist is written when the sink has none, another one, or one not in canonical
//!   form;
//! - invalid parameters (no PodCIDR, host bits, a CIDR too small for a gateway and pods, a
//!   PodCIDR outside the cluster CIDR, a bad table name) fail in [`validate`], before any
//!   observation or action.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::cniconf::Conflist;
use super::conflist_sink::ConflistOnDisk;
use super::masq::{self, MasqError, MasqueradePlan, MasqueradeSpec};
use crate::link::BridgeSpec;
use crate::sysctl::ForwardingState;

/// What the node's data plane must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDataplane {
    /// The pod bridge, e.g. [`crate::defaults::BRIDGE`].
    pub bridge: String,
    /// Bridge MTU in bytes; `None` keeps the current (or the kernel's default) MTU.
    pub mtu: Option<u32>,
    /// The node's PodCIDR(s), network addresses (one per family for dual-stack).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The cluster CIDR(s), exempt from masquerading (may be empty).
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Further destinations exempt from masquerading: `[node] service_cidr` and
    /// `[node] no_masquerade_cidrs` ([`MasqueradeSpec::extra_no_masq`]; may be empty).
    pub no_masq_cidrs: Vec<IpNetwork>,
    /// HeadCNI's nftables table (family `inet`), normally [`crate::defaults::NFT_TABLE`].
    pub table: String,
    /// `[node] masquerade_ipv6`: whether IPv6 traffic leaving the cluster is masqueraded
    /// ([`super::masq_ipv6::apply_ipv6_choice`]); IPv4 always is.
    pub masquerade_ipv6: bool,
}

impl DesiredDataplane {
    /// The default bridge ([`crate::defaults::BRIDGE`]) and table
    /// ([`crate::defaults::NFT_TABLE`]), no MTU override.
    pub fn new(pod_cidrs: Vec<IpNetwork>, cluster_cidrs: Vec<IpNetwork>) -> DesiredDataplane {
        DesiredDataplane {
            bridge: crate::defaults::BRIDGE.to_owned(),
            mtu: None,
            pod_cidrs,
            cluster_cidrs,
            no_masq_cidrs: Vec::new(),
            table: crate::defaults::NFT_TABLE.to_owned(),
            masquerade_ipv6: super::masq_ipv6::DEFAULT_MASQUERADE_IPV6,
        }
    }
}

/// Why a [`DesiredDataplane`] cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodePlanError {
    /// A PodCIDR with host bits set (`network` is its network address).
    #[error("pod CIDR {cidr} has host bits set (network address is {network})")]
    HostBits {
        /// The CIDR as given.
        cidr: IpNetwork,
        /// Its network address.
        network: IpAddr,
    },
    /// A PodCIDR too small for a gateway and pods (IPv4 /31, /32, IPv6 /127, /128).
    #[error("pod CIDR {0} is too small for a gateway and pods")]
    TooSmall(IpNetwork),
    /// The masquerade rule set cannot be planned (no PodCIDR, a PodCIDR outside the cluster
    /// CIDR, a bad table name, ...).
    #[error("masquerade rule set")]
    Masquerade(#[source] MasqError),
}

/// The bridge gateway address for a PodCIDR: its first host address with the CIDR's prefix
/// length (`10.244.1.0/24` → `10.244.1.1/24`), [`crate::defaults::gateway`].
///
/// Errors: [`NodePlanError::HostBits`], [`NodePlanError::TooSmall`].
pub fn gateway_address(cidr: &IpNetwork) -> Result<IpNetwork, NodePlanError> {
    if cidr.ip() != cidr.network() {
        return Err(NodePlanError::HostBits {
            cidr: *cidr,
            network: cidr.network(),
        });
    }
    let gw = crate::defaults::gateway(cidr).ok_or(NodePlanError::TooSmall(*cidr))?;
    // The prefix is the CIDR's own, so it is valid for the address family.
    IpNetwork::new(gw, cidr.prefix()).map_err(|_| NodePlanError::TooSmall(*cidr))
}

/// A [`DesiredDataplane`] that passed [`validate`]: the bridge to ensure and the masquerade
/// rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDataplane {
    /// The bridge with its MTU and gateway addresses.
    pub bridge: BridgeSpec,
    /// The masquerade rule set ([`masq::plan`], without IPv6 when
    /// [`DesiredDataplane::masquerade_ipv6`] is off).
    pub masquerade: MasqueradePlan,
    /// Whether there is an IPv4 PodCIDR (IPv4 forwarding needed).
    pub ipv4: bool,
    /// Whether there is an IPv6 PodCIDR (IPv6 forwarding needed).
    pub ipv6: bool,
}

/// Checks `d` and derives what the data plane needs; nothing is observed or changed.
///
/// Errors: [`NodePlanError`]: host bits or a tiny PodCIDR (checked first, in order), then the
/// masquerade rule set's ([`MasqError::NoPodCidr`], [`MasqError::PodOutsideCluster`], a bad
/// table name, ...).
pub fn validate(d: &DesiredDataplane) -> Result<ValidDataplane, NodePlanError> {
    let gateways = d
        .pod_cidrs
        .iter()
        .map(gateway_address)
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = MasqueradeSpec::new(d.pod_cidrs.clone(), d.cluster_cidrs.clone());
    spec.table = d.table.clone();
    spec.extra_no_masq = d.no_masq_cidrs.clone();
    let masquerade = super::masq_ipv6::apply_ipv6_choice(
        masq::plan(&spec).map_err(NodePlanError::Masquerade)?,
        d.masquerade_ipv6,
    );
    Ok(ValidDataplane {
        bridge: BridgeSpec {
            name: d.bridge.clone(),
            mtu: d.mtu,
            addresses: gateways,
        },
        masquerade,
        ipv4: d.pod_cidrs.iter().any(IpNetwork::is_ipv4),
        ipv6: d.pod_cidrs.iter().any(IpNetwork::is_ipv6),
    })
}

/// The pod bridge as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedBridge {
    /// Link kind (`bridge`, `dummy`, ...), if reported.
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// MTU in bytes.
    pub mtu: u32,
    /// Its permanent addresses with prefix.
    pub addresses: Vec<IpNetwork>,
}

/// The masquerade rule set as observed through the firewall driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallObservation {
    /// The driver does not manage it (`none`): nothing to observe or do.
    Unmanaged,
    /// The live rule set equals the wanted one.
    InPlace,
    /// Missing or different.
    OutOfDate,
}

/// The node's data plane as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDataplane {
    /// The pod bridge; `None` when there is no link of that name.
    pub bridge: Option<ObservedBridge>,
    /// The forwarding sysctls.
    pub forwarding: ForwardingState,
    /// The masquerade rule set.
    pub firewall: FirewallObservation,
}

/// One step of the node reconcile, performed in the order planned.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeAction {
    /// Create or repair the bridge ([`crate::link::LinkManager::ensure_bridge`]).
    EnsureBridge(BridgeSpec),
    /// Enable forwarding for these families only
    /// ([`crate::link::LinkManager::enable_forwarding`]).
    EnableForwarding {
        /// Enable IPv4 forwarding.
        ipv4: bool,
        /// Enable IPv6 forwarding.
        ipv6: bool,
    },
    /// Apply the masquerade rule set ([`super::firewall::FirewallDriver::apply`]).
    ApplyFirewall(MasqueradePlan),
    /// Write the conflist ([`super::conflist_sink::ConflistSink::write_if_changed`]).
    WriteConflist(Box<Conflist>),
}

fn bridge_in_place(want: &BridgeSpec, have: &ObservedBridge) -> bool {
    have.kind.as_deref() == Some("bridge")
        && have.up
        && want.mtu.is_none_or(|m| m == have.mtu)
        && want.addresses.iter().all(|g| have.addresses.contains(g))
}

/// The data-plane actions that bring `observed` to `want`, in order: bridge, forwarding,
/// masquerade rule set. Empty when everything is in place.
pub fn plan_dataplane(want: &ValidDataplane, observed: &ObservedDataplane) -> Vec<NodeAction> {
    let mut actions = Vec::new();
    if !observed
        .bridge
        .as_ref()
        .is_some_and(|b| bridge_in_place(&want.bridge, b))
    {
        actions.push(NodeAction::EnsureBridge(want.bridge.clone()));
    }
    let f = observed.forwarding;
    let ipv4 = want.ipv4 && f.ipv4 != Some(true);
    let ipv6 = want.ipv6 && f.ipv6 == Some(false);
    if ipv4 || ipv6 {
        actions.push(NodeAction::EnableForwarding { ipv4, ipv6 });
    }
    if observed.firewall == FirewallObservation::OutOfDate {
        actions.push(NodeAction::ApplyFirewall(want.masquerade.clone()));
    }
    actions
}

/// The conflist action: [`NodeAction::WriteConflist`] unless the sink already holds `want`
/// in canonical form.
pub fn plan_conflist(want: &Conflist, on_disk: Option<&ConflistOnDisk>) -> Option<NodeAction> {
    match on_disk {
        Some(d) if d.canonical && d.conflist == *want => None,
        _ => Some(NodeAction::WriteConflist(Box::new(want.clone()))),
    }
}

/// Both planners at once: [`plan_dataplane`] then [`plan_conflist`].
pub fn plan(
    want: &ValidDataplane,
    observed: &ObservedDataplane,
    conflist: &Conflist,
    on_disk: Option<&ConflistOnDisk>,
) -> Vec<NodeAction> {
    let mut actions = plan_dataplane(want, observed);
    actions.extend(plan_conflist(conflist, on_disk));
    actions
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
