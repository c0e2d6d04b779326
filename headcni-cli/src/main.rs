//! `headcni`: the HeadCNI binary.
//!
//! - With `CNI_COMMAND` set it is the CNI plugin `headcni` (or, when invoked as
//!   `headcni-ipam` through a symlink, the standalone IPAM plugin).
//! - Otherwise it is a command-line tool with subcommands (`lab`, ...).

use std::path::Path;

use headcni_cli::{cni, daemon, install, lab};

use clap::{Parser, Subcommand};

/// HeadCNI: a Kubernetes pod network on a Tailscale/Headscale tailnet.
#[derive(Parser, Debug)]
#[command(name = "headcni", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A one-node lab in network namespaces, attached through the real CNI protocol.
    Lab(lab::LabArgs),
    /// The node daemon: PodCIDR, conflist, bridge and masquerade, tailnet route.
    Daemon(daemon::DaemonArgs),
    /// What the node daemon reports: PodCIDR, routes, peers, pods, readiness.
    Status(daemon::status::StatusArgs),
    /// Check or show the daemon configuration (secrets redacted).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Install the plugin binaries into the CNI bin dir (atomic; headcni-ipam symlink).
    Install(install::InstallArgs),
    /// Withdraw this node's routes, remove the masquerade table and the conflist.
    Uninstall(daemon::UninstallArgs),
}

fn init_logging() {
    // Logs go to stderr only and only when asked for: stdout is the CNI protocol.
    if let Ok(filter) = std::env::var("HEADCNI_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init();
    }
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
    init_logging();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("headcni")
        .to_owned();
    // libcni always sets all six CNI_* variables (empty when unused): a present CNI_COMMAND,
    // even empty, means a runtime is calling, and an empty one must get error code 4.
    let cni_command = std::env::var_os("CNI_COMMAND").is_some();
    if invoked_as == cni::IPAM_TYPE {
        if !cni_command {
            eprintln!(
                "headcni-ipam {}: HeadCNI IPAM plugin (host-local compatible store); CNI versions {:?}",
                env!("CARGO_PKG_VERSION"),
                headcni_core::cni::SUPPORTED_VERSIONS.map(|v| v.as_str())
            );
            return;
        }
        std::process::exit(cni::run(cni::Role::Ipam));
    }
    if cni_command {
        std::process::exit(cni::run(cni::Role::Main));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Lab(args) => lab::run(args),
        Cmd::Daemon(args) => daemon::run(&args),
        Cmd::Status(args) => status(&args),
        Cmd::Config { action } => match action {
            ConfigAction::Check(flags) => {
                daemon::config::run_config(&daemon::config::ConfigCmd::Check, &flags)
            }
            ConfigAction::Show(flags) => {
                daemon::config::run_config(&daemon::config::ConfigCmd::Show, &flags)
            }
        },
        Cmd::Install(args) => install::run(&args),
        Cmd::Uninstall(args) => daemon::uninstall(&args),
    };
    if let Err(e) = result {
        eprintln!("headcni: {e:#}");
        std::process::exit(1);
    }
}
