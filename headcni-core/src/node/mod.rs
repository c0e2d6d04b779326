//! Node-level domain logic for the node agent, free of I/O: PodCIDR sources' file formats
//! and the [`podcidr_source::PodCidrSource`] trait, the CNI conflist the agent writes and its
//! [`conflist_sink::ConflistSink`], the masquerade rule set and the
//! [`firewall::FirewallDriver`] that applies it, the `filter FORWARD` accept rules
//! ([`forward`]), and the node reconcile's decisions ([`reconcile`], [`mtu`], [`retry`],
//! [`readiness`], [`ready_file`]), the CNI versions the conflist offers ([`chain_versions`]) and
//! what kube-proxy needs from the bridge ([`bridge_netfilter`]).

pub mod bridge_netfilter;
pub mod chain_versions;
pub mod cniconf;
pub mod conflist_sink;
pub mod firewall;
pub mod forward;
pub mod masq;
pub mod masq_ipv6;
pub mod mtu;
pub mod podcidr;
pub mod podcidr_source;
pub mod readiness;
pub mod ready_file;
pub mod reconcile;
pub mod retry;
