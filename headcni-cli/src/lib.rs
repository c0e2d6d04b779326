//! The modules behind the `headcni` binary. The binary (`main.rs`) only parses the command
//! line and calls into these; the reusable logic lives in the library crates
//! (`headcni-core`, `headcni-netlink`, `headcni-ipam`, `headcni-headscale`).
//!
//! - [`cni`]: CNI plugin mode (`headcni`, and `headcni-ipam` by `argv[0]`).
//! - The node agent (`headcni daemon`, `status`, `config`, `uninstall`) is the library crate
//!   `headcni-node`; the `headcni-daemon` binary (`src/bin/headcni-daemon.rs`) wires it up.
//! - [`install`]: `headcni install` (binaries into the CNI bin dir).
//! - [`events`]: the plugin's side of the best-effort plugin → daemon event protocol.

pub mod cni;
pub mod events;
pub mod install;
