//! The modules behind the `headcni` binary. The binary (`main.rs`) only parses the command
//! line and calls into these; the reusable logic lives in the library crates
//! (`headcni-core`, `headcni-netlink`, `headcni-ipam`, `headcni-headscale`).
//!
//! - [`cni`]: CNI plugin mode (`headcni`, and `headcni-ipam` by `argv[0]`): process wiring of
//!   [`headcni_plugin`]'s entry point.
//! - [`daemon`]: `headcni daemon` and its parts (config, PodCIDR, conflist, data plane,
//!   control plane, metrics/health, the plugin event socket, `headcni status`).
//! - [`install`]: `headcni install` (binaries into the CNI bin dir).
//! - [`events`]: the best-effort plugin → daemon event protocol (owned by
//!   [`headcni_plugin::events`], the sending side; re-exported for the daemon).

pub mod cni;
pub mod daemon;
pub use headcni_plugin::events;
pub mod install;
