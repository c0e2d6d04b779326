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
//! - [`prereq`]: what the lab needs from the machine, checked (and installed) before `up`.
//! - [`trace`]: `headcni lab trace FROM TO`: one probe's hops, rules and routes (nftrace).
//! - [`kubeproxy`]: the iptables rules kube-proxy writes for Services (pure).
//! - [`services`]: `headcni lab service add|rm`: those rules installed on every node.
//! - [`request_stats`]: the stand-ins' request counters (`GET /lab/debug/requests`).

pub mod cluster;
pub mod coord;
pub mod headscale_standin;
pub mod kubeproxy;
pub mod policy;
pub mod prereq;
pub mod request_stats;
pub mod services;
pub mod tailscaled_standin;
pub mod trace;

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

/// A process's exit for `result`: success, or the error's chain on one line
/// (`<program>: outer: inner`) on stderr and exit status 1.
///
/// Never prints a backtrace, whatever `RUST_BACKTRACE`/`RUST_LIB_BACKTRACE` say: anyhow
/// prints the captured backtrace only in its `Debug` form (which `fn main() -> Result`
/// uses), and this uses the alternate `Display` form.
pub fn exit_code(program: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_line(program, &e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `<program>: <error chain joined by ": ">`, without a backtrace and without newlines
/// (a multi-line message is joined with "; ").
pub fn error_line(program: &str, e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let joined: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("{program}: {}", joined.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_is_the_chain_on_one_line() {
        let e = anyhow::Error::msg("wireguard-go exited").context("node-1: tailscaled");
        assert_eq!(
            error_line("headcni lab", &e),
            "headcni lab: node-1: tailscaled: wireguard-go exited"
        );
        let e = anyhow::anyhow!("first line\nsecond line\n");
        assert_eq!(error_line("x", &e), "x: first line; second line");
    }
}
