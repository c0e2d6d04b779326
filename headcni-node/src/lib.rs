//! # headcni-node
//!
//! HeadCNI's node agent as a library: what `headcni daemon` runs on every node. The
//! `headcni-daemon` binary (crate `headcni-cli`) only parses the command line, installs the
//! signal handlers and logging, and calls [`run`] / [`uninstall`]; an embedder can do the same.
//!
//! - [`run`]: the reconcile loop (data plane, conflist, IPAM metrics, control plane);
//!   [`load_config`] first. [`uninstall`]: `headcni uninstall`'s steps.
//! - [`NodeReconciler`]: one node's reconcile built from its effects ([`NodeDeps`]: a
//!   control-plane backend, a firewall driver, link and sysctl access, a conflist sink);
//!   [`run`] builds the production ones, an embedder can pass its own
//!   (`examples/custom_control_plane.rs`). The decisions are `headcni_core::node`'s.
//! - [`backend`]: the production control plane (`TailnetBackend`) from the configuration,
//!   and the stand-in that reports why it could not be built.
//! - [`config`]: the configuration (schema, `HEADCNI_*` env registry, layered loader,
//!   validation, redaction and `config show`).
//! - [`podcidr`]: PodCIDR discovery (config, env, kubelet/k3s files, the Kubernetes Node
//!   watch, the name hash).
//! - [`dataplane`]: bridge, forwarding sysctls and the masquerade table (observe, plan, act).
//! - [`cniconf`]: the conflist writer (atomic, only when changed).
//! - [`tailscaled`]: the dedicated tailscaled's supervisor (daemon mode).
//! - [`ipnbus`]: following tailscaled's IPN bus (event-driven passes; polling without it).
//! - [`state`], [`metrics`], [`http`]: what the node reports (`/status`, `/metrics`,
//!   `/healthz`, `/readyz`); [`status`]: fetching and rendering `headcni status`.
//! - [`events`]: the daemon side of the plugin event socket (the datagram format is
//!   [`headcni_core::events`]).
#![warn(missing_docs)]

mod agent;
pub mod backend;
pub mod chain;
pub mod cniconf;
pub mod config;
pub mod dataplane;
pub mod events;
pub mod http;
pub mod ipnbus;
pub mod metrics;
pub mod podcidr;
pub mod ready_file;
pub mod reconciler;
pub mod state;
pub mod status;
pub mod tailscaled;

pub use agent::{
    BUS_DEBOUNCE, DEFAULT_TAILNET_MTU, NFT_TABLE, NodeError, SHUTDOWN_BUDGET, UninstallReport,
    firewall_driver, load_config, log_warnings, run, uninstall, uninstall_with,
};
pub use reconciler::{NodeDeps, NodeReconciler, ReconcileOutcome};
