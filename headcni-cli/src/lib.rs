//! The modules behind the `headcni` binary. The binary (`main.rs`) only parses the command
//! line and calls into these; the reusable logic lives in the library crates
//! (`headcni-core`, `headcni-netlink`, `headcni-ipam`, `headcni-headscale`).
//!
//! - [`cni`]: CNI plugin mode (`headcni`, and `headcni-ipam` by `argv[0]`): process wiring of
//!   [`headcni_plugin`]'s entry point.
//! - The node agent (`headcni daemon`, `status`, `config`, `uninstall`) is the library crate
//!   `headcni-node`; the `headcni-daemon` binary (`src/bin/headcni-daemon.rs`) wires it up.
//! - [`install`]: `headcni install` (binaries into the CNI bin dir).
//! - [`dns`]: `headcni dns coredns` (the CoreDNS server block for the tailnet's MagicDNS).
//! - [`policy`]: `headcni policy` (the Headscale policy fragment a cluster needs) and
//!   `headcni policy check FILE`.
//! - [`events`]: the best-effort plugin → daemon event protocol (owned by
//!   [`headcni_plugin::events`], the sending side; re-exported here).

pub mod cni;
pub use headcni_plugin::events;
pub mod dns;
pub mod install;
pub mod policy;
