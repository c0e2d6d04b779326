//! `headcni-lab` (run as `headcni lab ...`): a multi-node HeadCNI cluster in network
//! namespaces on one machine. See `docs/lab.md`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use headcni_lab::cluster::{Api, Approval, Lab, LabSpec, Mode};

/// HeadCNI's lab: nodes joined by WireGuard (wireguard-go), the real daemon and plugin,
/// Headscale and tailscaled stand-ins.
#[derive(Parser, Debug)]
#[command(name = "headcni lab", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the lab and print its nodes and pods with reachability.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: u32,
        /// host: the lab runs tailscaled (stand-in) on tailscale0; daemon: the headcni daemon
        /// supervises its own on headcni01.
        #[arg(long, value_enum, default_value = "host")]
        mode: Mode,
        /// Headscale API generation of the stand-in.
        #[arg(long, value_enum, default_value = "0.29")]
        api: Api,
        /// Route approval: through the REST API, or a policy's autoApprovers.
        #[arg(long, value_enum, default_value = "api")]
        approval: Approval,
        /// Set the nodes up as Docker leaves a host: iptables FORWARD policy DROP and
        /// bridged frames through iptables.
        #[arg(long)]
        forward_drop: bool,
        /// Lab name (namespace prefix, 1-24 letters/digits).
        #[arg(long, default_value = "hclab")]
        name: String,
    },
    /// Re-check and print nodes and pods.
    Status {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
    },
    /// Run a command in node-N, pod-N-M, hub or inet (`lab exec pod-1-1 -- ping 10.244.2.2`).
    Exec {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
        /// node-N, pod-N-M, hub or inet.
        target: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Remove everything the lab created (also after a crash).
    Down {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network and mount namespaces: run it as root");
    }
    match cli.cmd {
        Cmd::Up {
            nodes,
            pods,
            mode,
            api,
            approval,
            forward_drop,
            name,
        } => {
            let mut spec = LabSpec::new(&name)?;
            spec.nodes = nodes;
            spec.pods = pods;
            spec.mode = mode;
            spec.api = api;
            spec.approval = approval;
            spec.forward_drop = forward_drop;
            let name = spec.name.clone();
            let lab = Lab::up(spec)?;
            print!("{}", lab.report()?);
            eprintln!(
                "lab: up. `headcni lab exec --name {name} node-1 -- sh` (or pod-1-1) to look around, \
                 `headcni lab down --name {name}` to remove it"
            );
        }
        Cmd::Status { name } => print!("{}", Lab::load(&name)?.report()?),
        Cmd::Exec {
            name,
            target,
            command,
        } => {
            let lab = Lab::load(&name)?;
            let (mut cmd, fds) = lab.command(&target, &command[0])?;
            let mut child = cmd.args(&command[1..]).spawn()?;
            drop(fds);
            let status = child.wait()?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        Cmd::Down { name } => {
            let r = Lab::down(&name)?;
            eprintln!(
                "lab: down ({} pods deleted through CNI DEL, {} processes stopped, {} namespaces removed)",
                r.pods_deleted, r.processes_stopped, r.namespaces_removed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("headcni lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
