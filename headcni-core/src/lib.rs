//! # headcni-core
//!
//! HeadCNI's domain types and traits, free of I/O:
//!
//! - [`cni`]: the CNI protocol (spec 1.1.0; results convertible to 1.0.0/0.4.0/0.3.x):
//!   versions, environment, `CNI_ARGS`, NetConf, results and error codes.
//! - [`ipam`]: the IPAM configuration (host-local compatible), range sets, reservations,
//!   the [`ipam::AllocationStrategy`] and [`ipam::IpamStore`] traits.
//! - [`link`]: the [`link::LinkManager`] and [`link::RouteManager`] traits.
//! - [`control`]: the [`control::ControlPlaneBackend`] trait.
//! - [`sysctl`]: the [`sysctl::ForwardingSysctl`] trait (reading the forwarding sysctls).
//! - [`node`]: the node agent's decisions (the reconcile plan, MTU, retry, readiness) and
//!   its effect traits (firewall driver, PodCIDR source, conflist sink).
//! - [`defaults`]: the one owner of HeadCNI's fixed names, sysctl paths and the gateway rule.
//! - [`events`]: the plugin → node agent event datagram ([`events::PluginEvent`]), format only.
#![warn(missing_docs)]

pub mod cni;
pub mod control;
pub mod defaults;
pub mod events;
pub mod hash;
pub mod ipam;
pub mod link;
pub mod node;
pub mod plugin;
pub mod sysctl;
