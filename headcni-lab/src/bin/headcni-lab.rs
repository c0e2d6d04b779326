//! `headcni-lab` (run as `headcni lab ...`): a multi-node HeadCNI cluster in network
//! namespaces on one machine. See `docs/lab.md`.

use std::process::ExitCode;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use headcni_lab::cluster::{Api, Approval, LAB_CHAINED_PLUGINS, Lab, LabSpec, Mode};
use headcni_lab::prereq::{self, Verdict};

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
        /// The daemons' reconcile interval, seconds (the lab's 2 s shows drift repair
        /// quickly; `bench/scale.sh` uses the daemon's default 30 s).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        reconcile_secs: u64,
        /// Do not install missing Debian packages (apt-get); name them and stop.
        #[arg(long)]
        no_install: bool,
    },
    /// Check what the lab needs from this machine (root, /dev/net/tun, network namespaces,
    /// wireguard-go, wg, nft, ip, iptables, the Debian CNI plugins) without changing anything.
    Check,
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
    /// Join one more node (the next free index) to a running lab, with its pods; prints
    /// the lab's table once every pod reaches every other.
    AddNode {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
        /// Pods on the new node.
        #[arg(long, default_value_t = 1)]
        pods: u32,
    },
    /// Remove node N from a running lab as an operator would (`headcni uninstall`, the node
    /// deleted from Headscale, its processes and namespaces removed).
    RemoveNode {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
        /// The node's index (node-N).
        node: u32,
    },
    /// Remove everything the lab created (also after a crash).
    Down {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
    },
}

/// `lab up`'s first step: the prerequisites, with the missing Debian packages installed
/// (unless `no_install`). Errors are one actionable line.
fn ensure_prerequisites(no_install: bool) -> Result<()> {
    let found = prereq::probe(LAB_CHAINED_PLUGINS);
    let packages = match prereq::decide(&found, LAB_CHAINED_PLUGINS) {
        Verdict::Ready => return Ok(()),
        Verdict::Fail(msg) => bail!("{msg}"),
        Verdict::Install(packages) => packages,
    };
    let missing = prereq::missing(&found, LAB_CHAINED_PLUGINS).join(", ");
    if no_install {
        bail!(
            "missing {missing}: install the Debian packages {} (or drop --no-install)",
            packages.join(" ")
        );
    }
    eprintln!(
        "lab: missing {missing}: installing the Debian packages {} with apt-get",
        packages.join(" ")
    );
    prereq::apt_install(Path::new("apt-get"), &packages, &mut |m| {
        eprintln!("lab: {m}")
    })
    .with_context(|| format!("installing {}", packages.join(" ")))?;
    let again = prereq::probe(LAB_CHAINED_PLUGINS);
    match prereq::decide(&again, LAB_CHAINED_PLUGINS) {
        Verdict::Ready => {
            eprintln!("lab: installed {}", packages.join(" "));
            Ok(())
        }
        Verdict::Fail(msg) => bail!("{msg}"),
        Verdict::Install(_) => bail!(
            "still missing after apt-get: {}",
            prereq::missing(&again, LAB_CHAINED_PLUGINS).join(", ")
        ),
    }
}

/// `lab check`: what is there and what is missing; fails when the lab could not run.
fn check() -> Result<ExitCode> {
    let found = prereq::probe(LAB_CHAINED_PLUGINS);
    match prereq::decide(&found, LAB_CHAINED_PLUGINS) {
        Verdict::Ready => {
            println!("ready: root, /dev/net/tun, network namespaces, every tool");
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Install(packages) => {
            println!(
                "missing {}: `headcni lab up` installs the Debian packages {}",
                prereq::missing(&found, LAB_CHAINED_PLUGINS).join(", "),
                packages.join(" ")
            );
            Ok(ExitCode::from(2))
        }
        Verdict::Fail(msg) => bail!("{msg}"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Cmd::Check => return check(),
        Cmd::Up { no_install, .. } => ensure_prerequisites(*no_install)?,
        _ => {}
    }
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
            reconcile_secs,
            no_install: _,
        } => {
            let mut spec = LabSpec::new(&name)?;
            spec.nodes = nodes;
            spec.pods = pods;
            spec.mode = mode;
            spec.api = api;
            spec.approval = approval;
            spec.forward_drop = forward_drop;
            spec.reconcile_secs = reconcile_secs;
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
        Cmd::Check => return check(),
        Cmd::AddNode { name, pods } => {
            let mut lab = Lab::load(&name)?;
            let t = Instant::now();
            let n = lab.join_node(pods)?;
            let pairs = lab.pods().len();
            lab.wait_full_mesh(
                Duration::from_secs(30) + Duration::from_millis(250) * pairs as u32,
            )?;
            eprintln!(
                "lab: node-{n} joined; every pod reaches every pod {:.2} s after the start",
                t.elapsed().as_secs_f64()
            );
            print!("{}", lab.report()?);
        }
        Cmd::RemoveNode { name, node } => {
            let mut lab = Lab::load(&name)?;
            lab.leave_node(node)?;
            eprintln!(
                "lab: node-{node} removed ({} nodes left)",
                lab.nodes().len()
            );
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
        // One line, never a backtrace (RUST_BACKTRACE or not).
        Err(e) => {
            eprintln!("{}", headcni_lab::error_line("headcni lab", &e));
            ExitCode::FAILURE
        }
    }
}
