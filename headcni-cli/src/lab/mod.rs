//! `headcni lab`: a one-node lab that never touches the host's own network.
//!
//! `lab up` creates a node network namespace (`hclab-node`) and N pod namespaces
//! (`hclab-pod-<i>`), all with netlink/syscalls (no external tools), then attaches each pod
//! by exec'ing this very binary as the CNI plugin **inside the node namespace**, through the
//! real CNI protocol (`CNI_*` environment, the network configuration on stdin, the result
//! on stdout). The bridge `headcni0` therefore lives in the node namespace. It then pings
//! (raw ICMP sockets) the gateway and every other pod from each pod and prints a table.
//! `lab status` re-checks; `lab down` runs CNI DEL for each pod and removes every namespace
//! and the state directory, also after a crash (it finds leftovers by name).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use headcni_core::cni::CniResult;
use headcni_netlink::netns;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Prefix of every namespace the lab creates.
const PREFIX: &str = "hclab";
const NODE_NS: &str = "hclab-node";
const NETWORK: &str = "headcni-lab";
const STATE_DIR: &str = "/run/headcni-lab";
const DEFAULT_SUBNET: &str = "10.244.0.0/24";

/// `headcni lab` arguments.
#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    action: LabCmd,
}

#[derive(Subcommand, Debug)]
enum LabCmd {
    /// Build the lab: a node namespace, N pod namespaces attached through CNI ADD.
    Up {
        /// Number of pods.
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Pod CIDR of the node.
        #[arg(long, default_value = DEFAULT_SUBNET)]
        subnet: ipnetwork::IpNetwork,
        /// IPAM strategy: sequential, random or dense-pack.
        #[arg(long, default_value = "sequential")]
        strategy: String,
    },
    /// Show the pods and re-check reachability.
    Status,
    /// Remove everything the lab created (also after a crash).
    Down,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pod {
    name: String,
    netns: String,
    ip: Option<ipnetwork::IpNetwork>,
    gateway: Option<IpAddr>,
    mac: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    conf: Value,
    pods: Vec<Pod>,
}

/// Runs a `lab` subcommand.
pub fn run(args: LabArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    match args.action {
        LabCmd::Up {
            pods,
            subnet,
            strategy,
        } => up(pods, subnet, &strategy),
        LabCmd::Status => status(),
        LabCmd::Down => down(),
    }
}

fn progress(step: usize, total: usize, msg: &str) {
    eprintln!("[{step}/{total}] {msg}");
}

fn state_path() -> PathBuf {
    Path::new(STATE_DIR).join("state.json")
}

fn lab_conf(subnet: ipnetwork::IpNetwork, strategy: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "headcni",
        "bridge": "headcni0",
        "mtu": 1500,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipam": {
            "type": "headcni-ipam",
            "ranges": [[{"subnet": subnet.to_string()}]],
            "dataDir": format!("{STATE_DIR}/ipam"),
            "strategy": strategy,
        }
    })
}

/// Execs this binary as the CNI plugin inside the node namespace.
fn exec_plugin(command: &str, pod: &Pod, conf: &Value) -> Result<(i32, Vec<u8>)> {
    let exe = std::env::current_exe().context("locating the headcni binary")?;
    let cni_path = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let node = std::fs::File::open(format!("/run/netns/{NODE_NS}"))
        .context("opening the node namespace")?;
    let node_fd = node.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.name)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={}",
                pod.name
            ),
        )
        .env("CNI_PATH", &cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setns(2) is async-signal-safe; the closure touches only a raw fd that stays
    // open (owned by `node`) until the child has exec'ed.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(node_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("spawning the CNI plugin")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    drop(node);
    Ok((out.status.code().unwrap_or(-1), out.stdout))
}

fn up(n: usize, subnet: ipnetwork::IpNetwork, strategy: &str) -> Result<()> {
    if n == 0 {
        bail!("--pods must be at least 1");
    }
    if state_path().exists() || netns::exists(Path::new(&format!("/run/netns/{NODE_NS}"))) {
        bail!("a lab is already up: run `headcni lab status` or `headcni lab down`");
    }
    let total = n + 3;
    let started = Instant::now();
    std::fs::create_dir_all(STATE_DIR)?;
    std::fs::set_permissions(
        STATE_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let conf = lab_conf(subnet, strategy);
    let result = (|| -> Result<Vec<Pod>> {
        progress(1, total, &format!("creating node namespace {NODE_NS}"));
        netns::create_named(NODE_NS).map_err(|e| anyhow!("creating {NODE_NS}: {e}"))?;
        progress(2, total, &format!("creating {n} pod namespaces"));
        let mut pods = Vec::new();
        for i in 1..=n {
            let name = format!("{PREFIX}-pod-{i}");
            let path = netns::create_named(&name).map_err(|e| anyhow!("creating {name}: {e}"))?;
            pods.push(Pod {
                name,
                netns: path.display().to_string(),
                ip: None,
                gateway: None,
                mac: None,
            });
            save(&State {
                conf: conf.clone(),
                pods: pods.clone(),
            })?;
        }
        for (i, pod) in pods.iter_mut().enumerate() {
            progress(
                3 + i,
                total,
                &format!("CNI ADD {} (exec headcni in {NODE_NS})", pod.name),
            );
            let (code, out) = exec_plugin("ADD", pod, &conf)?;
            let v: Value = serde_json::from_slice(&out)
                .with_context(|| format!("ADD of {} printed no JSON", pod.name))?;
            if code != 0 {
                bail!("CNI ADD of {} failed (exit {code}): {v}", pod.name);
            }
            let r =
                CniResult::from_json(&v).map_err(|e| anyhow!("ADD result of {}: {e}", pod.name))?;
            let ip = r
                .ips
                .first()
                .ok_or_else(|| anyhow!("ADD result of {} has no address", pod.name))?;
            pod.ip = Some(ip.address);
            pod.gateway = ip.gateway;
            pod.mac = ip
                .interface
                .and_then(|i| r.interfaces.get(i))
                .and_then(|i| i.mac.clone());
        }
        Ok(pods)
    })();
    let pods = match result {
        Ok(p) => p,
        Err(e) => {
            eprintln!("headcni: lab up failed, cleaning up: {e:#}");
            let _ = down();
            return Err(e);
        }
    };
    save(&State {
        conf,
        pods: pods.clone(),
    })?;
    progress(
        total,
        total,
        "checking reachability (ICMP echo from every pod)",
    );
    let ok = report(&pods)?;
    eprintln!(
        "lab up in {:.1}s; `headcni lab down` removes it",
        started.elapsed().as_secs_f64()
    );
    if ok {
        Ok(())
    } else {
        Err(anyhow!("some pods cannot reach each other or the gateway"))
    }
}

fn save(state: &State) -> Result<()> {
    let tmp = Path::new(STATE_DIR).join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, state_path())?;
    Ok(())
}

fn load() -> Result<Option<State>> {
    match std::fs::read(state_path()) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).context("reading the lab state")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn ping_from(pod: &Pod, dst: IpAddr) -> bool {
    // up to 3 tries: the first packet may wait for ARP
    netns::run_in_netns(Path::new(&pod.netns), move || {
        (0..3)
            .any(|_| headcni_netlink::icmp::ping(dst, Duration::from_millis(700)).unwrap_or(false))
    })
    .unwrap_or(false)
}

/// Prints the table; returns whether everything is reachable.
fn report(pods: &[Pod]) -> Result<bool> {
    let mut all_ok = true;
    let mut rows: BTreeMap<usize, [String; 6]> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
        let gw_ok = pod.gateway.is_some_and(|g| ping_from(pod, g));
        let peers: Vec<&Pod> = pods.iter().filter(|p| p.name != pod.name).collect();
        let reached = peers
            .iter()
            .filter(|p| p.ip.is_some_and(|ip| ping_from(pod, ip.ip())))
            .count();
        let ok = gw_ok && reached == peers.len();
        all_ok &= ok;
        rows.insert(
            i,
            [
                pod.name.clone(),
                pod.netns.clone(),
                pod.ip.map_or("-".into(), |i| i.to_string()),
                pod.mac.clone().unwrap_or_else(|| "-".into()),
                format!("gateway {}", if gw_ok { "ok" } else { "FAIL" }),
                format!(
                    "pods {reached}/{}{}",
                    peers.len(),
                    if ok { "" } else { "  <- FAIL" }
                ),
            ],
        );
    }
    let header = ["POD", "NAMESPACE", "IP", "MAC", "GATEWAY", "REACHABLE"];
    let mut widths = header.map(str::len);
    for r in rows.values() {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line(&header.map(String::from)))?;
    for r in rows.values() {
        writeln!(out, "{}", line(r))?;
    }
    Ok(all_ok)
}

fn status() -> Result<()> {
    let Some(state) = load()? else {
        println!("no lab is up (`headcni lab up` builds one)");
        return Ok(());
    };
    let missing: Vec<&str> = state
        .pods
        .iter()
        .filter(|p| !netns::exists(Path::new(&p.netns)))
        .map(|p| p.name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!("lab is damaged, namespaces missing: {missing:?}; run `headcni lab down`");
    }
    if report(&state.pods)? {
        Ok(())
    } else {
        Err(anyhow!("some pods cannot reach each other or the gateway"))
    }
}

fn down() -> Result<()> {
    let mut errors = Vec::new();
    if let Some(state) = load().unwrap_or(None) {
        for pod in &state.pods {
            if netns::exists(Path::new(&format!("/run/netns/{NODE_NS}"))) {
                match exec_plugin("DEL", pod, &state.conf) {
                    Ok((0, _)) => eprintln!("CNI DEL {}: ok", pod.name),
                    Ok((code, out)) => errors.push(format!(
                        "CNI DEL {} exit {code}: {}",
                        pod.name,
                        String::from_utf8_lossy(&out)
                    )),
                    Err(e) => errors.push(format!("CNI DEL {}: {e:#}", pod.name)),
                }
            }
        }
    }
    // Every namespace with the lab's prefix, whether or not the state knew it.
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{PREFIX}-")) {
                match netns::delete_named(&name) {
                    Ok(_) => eprintln!("removed namespace {name}"),
                    Err(err) => errors.push(format!("removing {name}: {err}")),
                }
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(STATE_DIR)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("removing {STATE_DIR}: {e}"));
    }
    if errors.is_empty() {
        eprintln!("lab is down");
        Ok(())
    } else {
        Err(anyhow!("lab down left problems: {}", errors.join("; ")))
    }
}
