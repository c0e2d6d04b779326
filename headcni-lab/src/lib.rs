//! HeadCNI's lab: a multi-node pod network on one machine, and the end-to-end test bed.
//!
//! **Not a production crate.** It holds test doubles ("stand-ins") of Headscale and tailscaled,
//! because neither can run here; they follow the real APIs closely enough that the lab catches
//! the mistakes a real cluster would (see `docs/lab.md`).
//!
//! - [`coord`]: the stand-ins' private coordination protocol (the role of Tailscale's control
//!   protocol between tailscaled and Headscale).
//! - [`headscale_standin`]: the Headscale stand-in process.
//! - [`tailscaled_standin`]: the tailscaled stand-in process (LocalAPI + wireguard-go).
//! - [`cluster`]: `headcni lab up|status|exec|down`: namespaces, underlay, processes, pods.

pub mod cluster;
pub mod coord;
pub mod headscale_standin;
pub mod tailscaled_standin;
