//! `headcni`: the HeadCNI binary.
//!
//! - With `CNI_COMMAND` set it is the CNI plugin `headcni` (or, when invoked as
//!   `headcni-ipam` through a symlink, the standalone IPAM plugin).
//! - Otherwise it is a command-line tool with subcommands (`lab`, ...).

use std::path::Path;

use headcni_cli::{cni, lab};

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
}

fn init_logging() {
    // Logs go to stderr only and only when asked for: stdout is the CNI protocol.
    if let Ok(filter) = std::env::var("HEADCNI_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
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
    };
    if let Err(e) = result {
        eprintln!("headcni: {e:#}");
        std::process::exit(1);
    }
}
