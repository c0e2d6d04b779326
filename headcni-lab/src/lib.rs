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
pub mod policy;
pub mod tailscaled_standin;

/// The stand-ins' process entry: `info` logs to stderr (`RUST_LOG` overrides), a two-worker
/// tokio runtime, and `main`'s future driven on the calling (main) thread, so that a child's
/// `PR_SET_PDEATHSIG` (wireguard-go under the tailscaled stand-in) follows the process.
///
/// Errors: the runtime cannot be built, or `main` fails.
pub fn run_standin(
    main: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(main)
}
