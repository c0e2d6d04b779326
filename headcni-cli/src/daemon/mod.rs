//! `headcni daemon`: one per node. Discovers the node's PodCIDR, writes the CNI conflist,
//! keeps the bridge, forwarding and the masquerade table in place, and makes the tailnet
//! carry this node's pods (advertise + approve the PodCIDR through the control plane).

pub mod cniconf;
pub mod config;
pub mod dataplane;
pub mod events;
pub mod http;
pub mod metrics;
pub mod podcidr;
pub mod state;
pub mod status;
pub mod tailscaled;
