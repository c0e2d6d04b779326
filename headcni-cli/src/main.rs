//! `headcni`: the HeadCNI binary.
//!
//! - With `CNI_COMMAND` set it is the CNI plugin `headcni` (or, when invoked as
//!   `headcni-ipam` through a symlink, the standalone IPAM plugin).
//! - Otherwise it is a command-line tool with subcommands (`lab`, ...).

use std::path::Path;

use headcni_cli::{cni, dns, install, policy};

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
    /// A multi-node lab on this machine: nodes joined by WireGuard, the real daemon and
    /// plugin, Headscale/tailscaled stand-ins (runs `headcni-lab`; `headcni lab --help`).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// The node daemon: PodCIDR, conflist, bridge and masquerade, tailnet route
    /// (runs `headcni-daemon`; `headcni daemon --help` lists its options).
    #[command(disable_help_flag = true)]
    Daemon {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// What the node daemon reports: PodCIDR, routes, peers, pods, readiness
    /// (runs `headcni-daemon`).
    #[command(disable_help_flag = true)]
    Status {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Check or show the daemon configuration, secrets redacted (runs `headcni-daemon`).
    #[command(disable_help_flag = true)]
    Config {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Print the Headscale policy fragment the cluster needs (ACL, autoApprovers, tagOwners)
    /// for a Headscale version, or `check FILE` against it.
    Policy(policy::PolicyArgs),
    /// Tailnet DNS for pods: `headcni dns coredns` prints the CoreDNS server block that
    /// forwards the MagicDNS base domain to 100.100.100.100.
    Dns(dns::DnsArgs),
    /// Install the plugin binaries into the CNI bin dir (atomic; headcni-ipam symlink).
    Install(install::InstallArgs),
    /// Withdraw this node's routes, remove the masquerade table and the conflist
    /// (runs `headcni-daemon`).
    #[command(disable_help_flag = true)]
    Uninstall {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
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

/// A companion binary (`headcni-daemon`, `headcni-lab`): next to this executable, else in
/// `PATH`.
fn companion(name: &str) -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| std::path::PathBuf::from(name))
}

/// Replaces this process with `headcni-daemon <sub> <args>` (same pid, so signals sent to
/// `headcni daemon` reach the daemon directly).
fn exec_daemon(sub: &str, args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = companion("headcni-daemon");
    let err = std::process::Command::new(&bin).arg(sub).args(args).exec();
    Err(anyhow::anyhow!(
        "cannot run {}: {err} (it ships next to headcni)",
        bin.display()
    ))
}

/// Replaces this process with `headcni-lab <args>`. The lab and its Headscale/tailscaled
/// stand-ins are test doubles built from the workspace's `headcni-lab` crate; they are never
/// linked into the production binaries.
fn exec_lab(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = companion("headcni-lab");
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(anyhow::anyhow!(
        "cannot run {}: {err} (build the lab with `cargo build --release --workspace`)",
        bin.display()
    ))
}

fn main() {
    init_logging();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(install::BINARY_NAME)
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
        Cmd::Lab { args } => exec_lab(&args),
        Cmd::Daemon { args } => exec_daemon("daemon", &args),
        Cmd::Status { args } => exec_daemon("status", &args),
        Cmd::Config { args } => exec_daemon("config", &args),
        Cmd::Install(args) => install::run(&args),
        Cmd::Dns(args) => dns::run(&args),
        Cmd::Policy(args) => match policy::run(&args) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Cmd::Uninstall { args } => exec_daemon("uninstall", &args),
    };
    if let Err(e) = result {
        eprintln!("headcni: {e:#}");
        std::process::exit(1);
    }
}
