//! The modules behind the `headcni` binary. The binary (`main.rs`) only parses the command
//! line and calls into these; the reusable logic lives in the library crates
//! (`headcni-core`, `headcni-netlink`, `headcni-ipam`, `headcni-headscale`).
//!
//! - [`cni`]: CNI plugin mode (`headcni`, and `headcni-ipam` by argv[0]).
//! - [`daemon`]: `headcni daemon` and its parts (config, PodCIDR, conflist, data plane,
//!   control plane, metrics/health, the plugin event socket, `headcni status`).
//! - [`install`]: `headcni install` (binaries into the CNI bin dir).
//! - [`events`]: the best-effort plugin → daemon event protocol.

pub mod cni;
pub mod daemon;
pub mod events;
pub mod install;
