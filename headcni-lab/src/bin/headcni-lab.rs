//! `headcni-lab` (run as `headcni lab ...`): a multi-node HeadCNI cluster in network
//! namespaces on one machine. See `docs/lab.md`.

use std::process::ExitCode;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use headcni_lab::cluster::{Api, Approval, LAB_CHAINED_PLUGINS, Lab, LabSpec, Mode};
use headcni_lab::kubeproxy::TrafficPolicy;
use headcni_lab::prereq::{self, Verdict};
use headcni_lab::services;
use headcni_lab::trace;

/// HeadCNI's lab: nodes joined by WireGuard (wireguard-go), the real daemon and plugin,
/// Headscale and tailscaled stand-ins.
/// `--image`'s default: what scripts/build-image.sh tags.
const DEFAULT_IMAGE: &str = concat!("localhost/headcni:", env!("CARGO_PKG_VERSION"));

/// The first `PATH` entry holding an executable `name`.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

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
        /// Dual-stack: each node also gets an IPv6 PodCIDR (fd00:10:244:N::/64), pods an
        /// IPv6 address, the "internet" 2001:db8::1.
        #[arg(long)]
        dual_stack: bool,
        /// With --dual-stack: the daemons' `[node] masquerade_ipv6` (IPv6 egress masquerade).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        masquerade_ipv6: bool,
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
        /// Run each node's daemon from this container image (default
        /// localhost/headcni:<version>, built by scripts/build-image.sh) with podman, as
        /// deploy/headcni.yaml's DaemonSet runs it (with --mode daemon:
        /// deploy/headcni-daemon-mode.yaml's).
        #[arg(long, num_args = 0..=1, default_missing_value = DEFAULT_IMAGE, value_name = "IMAGE")]
        image: Option<String>,
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
    /// Send one probe from FROM to TO and print the hops it took: per namespace the
    /// interfaces, addresses (NAT shows), the route lookup and every nftables/iptables-nft
    /// rule it matched (`lab trace pod-1-1 pod-2-1`, `lab trace inet 192.168.77.1 --tcp 30080`).
    Trace {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        name: String,
        /// pod-N-M, node-N or inet.
        from: String,
        /// pod-N-M, node-N, inet or an IP address (a ClusterIP, 100.100.100.100, ...).
        to: String,
        /// Probe with a TCP connect to this port instead of an ICMP echo.
        #[arg(long)]
        tcp: Option<u16>,
        /// Between the targets' IPv6 addresses (a `--dual-stack` lab).
        #[arg(long)]
        ipv6: bool,
    },
    /// Kubernetes Services on a running lab, through the iptables rules kube-proxy writes.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// A Service backend (started in pods by `service add`): answers each TCP connection on
    /// PORT with `<pod> <client ip:port>`.
    #[command(hide = true)]
    Serve {
        /// Port to listen on (all addresses).
        #[arg(long)]
        port: u16,
        /// The pod name to answer with.
        #[arg(long)]
        pod: String,
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

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// Add a Service: ClusterIP from 10.96.0.0/16, kube-proxy's rules on every node, a TCP
    /// server on PORT in each backend pod.
    Add {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        lab: String,
        /// Service name (DNS label).
        name: String,
        /// Service port (also the backends' port).
        #[arg(long)]
        port: u16,
        /// Backend pods, comma-separated (pod-2-1,pod-1-2).
        #[arg(long, value_delimiter = ',', required = true)]
        backends: Vec<String>,
        /// NodePort (30000-32767).
        #[arg(long)]
        nodeport: Option<u16>,
        /// externalTrafficPolicy.
        #[arg(long, value_enum, default_value = "cluster")]
        traffic_policy: TrafficPolicy,
        /// Do not start the TCP servers in the backend pods.
        #[arg(long)]
        no_serve: bool,
    },
    /// Remove a Service and its rules.
    Rm {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        lab: String,
        /// Service name.
        name: String,
    },
    /// List the lab's Services.
    Ls {
        /// Lab name.
        #[arg(long, default_value = "hclab")]
        lab: String,
    },
}

fn service(cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Add {
            lab,
            name,
            port,
            backends,
            nodeport,
            traffic_policy,
            no_serve,
        } => {
            let lab = Lab::load(&lab)?;
            let svc = services::add(
                &lab,
                &services::ServiceRequest {
                    name: name.clone(),
                    port,
                    backends,
                    node_port: nodeport,
                    policy: traffic_policy,
                },
            )?;
            if !no_serve {
                services::start_servers(&lab, &name)?;
            }
            println!(
                "service {name}: {}:{port}{} -> {}",
                svc.cluster_ip,
                svc.node_port
                    .map(|n| format!(", NodePort {n} ({:?})", svc.policy))
                    .unwrap_or_default(),
                svc.backends.join(", ")
            );
        }
        ServiceCmd::Rm { lab, name } => services::remove(&Lab::load(&lab)?, &name)?,
        ServiceCmd::Ls { lab } => {
            for s in services::list(&Lab::load(&lab)?)? {
                println!(
                    "{:<16} {}:{:<6} {:<14} {}",
                    s.name,
                    s.cluster_ip,
                    s.port,
                    s.node_port
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.backends.join(",")
                );
            }
        }
    }
    Ok(())
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
        Cmd::Serve { port, pod } => {
            services::serve(*port, pod)?;
            return Ok(ExitCode::SUCCESS);
        }
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
            dual_stack,
            masquerade_ipv6,
            name,
            reconcile_secs,
            no_install: _,
            image,
        } => {
            let mut spec = LabSpec::new(&name)?;
            spec.nodes = nodes;
            spec.pods = pods;
            spec.mode = mode;
            spec.api = api;
            spec.approval = approval;
            spec.forward_drop = forward_drop;
            spec.dual_stack = dual_stack;
            spec.masquerade_ipv6 = masquerade_ipv6;
            if let Some(image) = image {
                if which("podman").is_none() {
                    bail!("--image needs podman: apt-get install podman");
                }
                spec.image = Some(image);
            }
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
        Cmd::Service { cmd } => service(cmd)?,
        Cmd::Serve { .. } => {}
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
        Cmd::Trace {
            name,
            from,
            to,
            tcp,
            ipv6,
        } => {
            let lab = Lab::load(&name)?;
            let probe = tcp.map_or(trace::Probe::Icmp, trace::Probe::Tcp);
            let t = trace::trace_family(&lab, &from, &to, probe, ipv6)?;
            print!("{}", trace::render(&t));
            if t.answered.is_none() {
                return Ok(ExitCode::from(1));
            }
        }
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
