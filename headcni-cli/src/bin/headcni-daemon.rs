//! `headcni-daemon`: the process image of HeadCNI's node tooling. Users run it as
//! `headcni daemon|uninstall|status|config ...`: the `headcni` binary execs this one with the
//! same arguments.
//!
//! The daemon (kube-rs, the Headscale client with rustls, the HTTP server, metrics) lives in
//! its own binary so that the CNI plugin, which the container runtime execs for every pod
//! operation, maps none of that code: a plugin exec's peak RSS is dominated by the pages of
//! its binary it touches (docs/performance.md).

use clap::{Parser, Subcommand};
use headcni_cli::daemon;

/// The HeadCNI node daemon (run it as `headcni daemon`).
#[derive(Parser, Debug)]
#[command(name = "headcni", bin_name = "headcni", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The node daemon: PodCIDR, conflist, bridge and masquerade, tailnet route.
    Daemon(daemon::DaemonArgs),
    /// Withdraw this node's routes, remove the masquerade table and the conflist.
    Uninstall(daemon::UninstallArgs),
    /// What the node daemon reports: PodCIDR, routes, peers, pods, readiness.
    Status(daemon::status::StatusArgs),
    /// Check or show the daemon configuration (secrets redacted).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}
/// `headcni config check|show [--config PATH] [overrides]`.
#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Validate the effective configuration (file, environment, flags); non-zero exit on problems.
    Check(daemon::config::DaemonFlags),
    /// Print the effective configuration, secrets redacted, with where overrides came from.
    Show(daemon::config::DaemonFlags),
}

/// `headcni status`: exit 0 when the node is ready, 1 when not (or the daemon is down).
fn status(args: &daemon::status::StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if rt.block_on(daemon::status::run(args))? {
        Ok(())
    } else {
        std::process::exit(1);
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Daemon(args) => daemon::run(&args),
        Cmd::Uninstall(args) => daemon::uninstall(&args),
        Cmd::Status(args) => status(&args),
        Cmd::Config { action } => match action {
            ConfigAction::Check(flags) => {
                daemon::config::run_config(&daemon::config::ConfigCmd::Check, &flags)
            }
            ConfigAction::Show(flags) => {
                daemon::config::run_config(&daemon::config::ConfigCmd::Show, &flags)
            }
        },
    };
    if let Err(e) = result {
        eprintln!("headcni: {e:#}");
        std::process::exit(1);
    }
}
