//! `headcni lab service add|rm`: Kubernetes Services in the lab, through the rules kube-proxy
//! (iptables mode) would write on every node ([`crate::kubeproxy`]).
//!
//! A Service is a name, a port, backend pods (its EndpointSlice: each pod's address and node),
//! an optional NodePort and an `externalTrafficPolicy`. Its ClusterIP comes from
//! [`SERVICE_CIDR`]. The lab keeps its Services in `/run/headcni-lab/<name>/services.json`;
//! every change rewrites the `KUBE-*` chains on every node, as kube-proxy's full sync does:
//! `iptables-restore -w 5 --noflush` (the node's default iptables, nft-backed on Debian
//! bookworm) run in the node, stale per-Service chains deleted, the jumps from the built-in
//! chains ensured with `iptables -C` / `-I`. Nodes added after a change get the rules with
//! the next change (`lab service add|rm`) or [`sync`].
//!
//! The backends answer on the Service's port with [`serve`] (`headcni-lab serve`, started in
//! each backend pod by `lab service add --serve`): one line, `<pod> <client ip>:<port>`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::cluster::{CLUSTER_CIDR, Lab, ns};
use crate::kubeproxy::{self, Endpoint, Protocol, ProxyConfig, ServicePort, TrafficPolicy};

/// The service CIDR ClusterIPs are allocated from (kube-apiserver's `--service-cluster-ip-range`
/// in kubeadm's default).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The Kubernetes namespace of the lab's Services.
pub const NAMESPACE: &str = "lab";
/// The first host of [`SERVICE_CIDR`] handed out (`.1` is the `kubernetes` Service's, `.10`
/// kube-dns' in a kubeadm cluster; the lab starts after them).
const FIRST_HOST: u32 = 11;

/// A Service of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabService {
    /// `metadata.name` (a DNS label).
    pub name: String,
    /// Its ClusterIP, from [`SERVICE_CIDR`].
    pub cluster_ip: Ipv4Addr,
    /// The port (also the backends' target port), TCP.
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy`.
    pub policy: TrafficPolicy,
    /// The backend pods' names (`pod-N-M`).
    pub backends: Vec<String>,
    /// Pids of the [`serve`] processes started for it (`--serve`).
    #[serde(default)]
    pub servers: Vec<i32>,
}

/// What `lab service add` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    /// Name (a DNS label).
    pub name: String,
    /// Port.
    pub port: u16,
    /// Backend pods (1 or more, existing pods of the lab).
    pub backends: Vec<String>,
    /// NodePort (30000-32767).
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy`.
    pub policy: TrafficPolicy,
}

fn store(lab: &Lab) -> PathBuf {
    Lab::root(&lab.spec().name).join("services.json")
}

/// The lab's Services (none when the file is missing).
pub fn list(lab: &Lab) -> Result<Vec<LabService>> {
    match std::fs::read(store(lab)) {
        Ok(b) => serde_json::from_slice(&b).context("reading services.json"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).context("reading services.json"),
    }
}

fn save(lab: &Lab, services: &[LabService]) -> Result<()> {
    let path = store(lab);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(services)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The lowest free ClusterIP of [`SERVICE_CIDR`] from `.11` on.
fn allocate(services: &[LabService]) -> Result<Ipv4Addr> {
    let net: Ipv4Network = SERVICE_CIDR.parse()?;
    let base = u32::from(net.network());
    (FIRST_HOST..net.size() - 1)
        .map(|h| Ipv4Addr::from(base + h))
        .find(|ip| services.iter().all(|s| s.cluster_ip != *ip))
        .ok_or_else(|| anyhow!("{SERVICE_CIDR} is full"))
}

/// The Service + EndpointSlice descriptions of `services` (backends resolved to pod addresses
/// and nodes). Errors: a backend pod that does not exist or has no IPv4 address.
pub fn service_ports(lab: &Lab, services: &[LabService]) -> Result<Vec<ServicePort>> {
    services
        .iter()
        .map(|s| {
            let endpoints = s
                .backends
                .iter()
                .map(|b| {
                    let pod = lab.pod(b).ok_or_else(|| anyhow!("no pod {b}"))?;
                    Ok(Endpoint {
                        ip: pod.ip.ok_or_else(|| anyhow!("{b} has no IPv4 address"))?,
                        port: s.port,
                        node: format!("node-{}", pod.node),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(ServicePort {
                namespace: NAMESPACE.into(),
                name: s.name.clone(),
                port_name: String::new(),
                protocol: Protocol::Tcp,
                cluster_ip: s.cluster_ip,
                port: s.port,
                node_port: s.node_port,
                external_traffic_policy: s.policy,
                endpoints,
            })
        })
        .collect()
}

/// Runs `args` in `ctx` (stdin from `input`), bounded by iptables' own `-w 5` lock wait;
/// returns stdout. Errors: the command fails (its stderr in the message).
fn run(ctx: &ns::Ctx, args: &[&str], input: Option<&str>) -> Result<String> {
    let (mut cmd, fds) = ctx.command(args[0], false)?;
    let mut child = cmd
        .args(&args[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{args:?}"))?;
    drop(fds);
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes the rules for `services` on node N: [`kubeproxy::generate`] for that node,
/// `iptables-restore --noflush` with the stale per-Service chains deleted, the jumps ensured.
pub fn apply_node(lab: &Lab, n: u32, ports: &[ServicePort]) -> Result<()> {
    let cfg = ProxyConfig {
        node_name: format!("node-{n}"),
        cluster_cidr: CLUSTER_CIDR.parse()?,
    };
    let rules = kubeproxy::generate(&cfg, ports)?;
    let ctx = lab.node_ctx(n);
    let saved = run(&ctx, &["iptables-save", "-t", "nat"], None)?;
    let stale = kubeproxy::stale_chains(&saved, &rules);
    run(
        &ctx,
        &["iptables-restore", "-w", "5", "--noflush"],
        Some(&rules.restore_text(&stale)),
    )
    .with_context(|| format!("node-{n}: installing the kube-proxy rules"))?;
    for j in &rules.jumps {
        let mut check = vec!["iptables", "-w", "5", "-t", j.table, "-C", j.chain];
        check.extend(j.args.iter().map(String::as_str));
        if run(&ctx, &check, None).is_err() {
            check[5] = "-I";
            run(&ctx, &check, None).with_context(|| format!("node-{n}: jump"))?;
        }
    }
    Ok(())
}

/// Rewrites the rules of the lab's Services on every node.
pub fn sync(lab: &Lab) -> Result<()> {
    let ports = service_ports(lab, &list(lab)?)?;
    for n in lab.nodes().keys() {
        apply_node(lab, *n, &ports)?;
    }
    Ok(())
}

/// Adds a Service (ClusterIP allocated) and installs the rules on every node. Errors: the
/// name is taken, no backend, an unknown backend pod, or what [`kubeproxy::generate`]
/// refuses (bad name, port, NodePort; a NodePort in use).
pub fn add(lab: &Lab, req: &ServiceRequest) -> Result<LabService> {
    let mut services = list(lab)?;
    if services.iter().any(|s| s.name == req.name) {
        bail!("service {} exists", req.name);
    }
    if req.backends.is_empty() {
        bail!("service {}: no backends", req.name);
    }
    let svc = LabService {
        name: req.name.clone(),
        cluster_ip: allocate(&services)?,
        port: req.port,
        node_port: req.node_port,
        policy: req.policy,
        backends: req.backends.clone(),
        servers: Vec::new(),
    };
    services.push(svc.clone());
    // Validates (and resolves the backends) before anything is written.
    let ports = service_ports(lab, &services)?;
    kubeproxy::generate(
        &ProxyConfig {
            node_name: String::new(),
            cluster_cidr: CLUSTER_CIDR.parse()?,
        },
        &ports,
    )?;
    save(lab, &services)?;
    for n in lab.nodes().keys() {
        apply_node(lab, *n, &ports)?;
    }
    Ok(svc)
}

/// Removes a Service: its backend servers stopped, its chains deleted on every node.
pub fn remove(lab: &Lab, name: &str) -> Result<()> {
    let mut services = list(lab)?;
    let svc = services
        .iter()
        .position(|s| s.name == name)
        .map(|i| services.remove(i))
        .ok_or_else(|| anyhow!("no service {name}"))?;
    ns::terminate(&svc.servers, Duration::from_secs(2));
    save(lab, &services)?;
    sync(lab)
}

/// Starts [`serve`] (`<bin_dir>/headcni-lab serve`) on the Service's port in each backend pod
/// and records the pids (stopped by [`remove`] and `lab down`).
pub fn start_servers(lab: &Lab, name: &str) -> Result<()> {
    let mut services = list(lab)?;
    let svc = services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("no service {name}"))?;
    let bin = lab.spec().bin_dir.join("headcni-lab");
    for b in &svc.backends {
        let (mut cmd, fds) = lab.target_ctx(b)?.command(&bin, true)?;
        let child = cmd
            .args(["serve", "--port", &svc.port.to_string(), "--pod", b])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{b}: starting the backend server"))?;
        drop(fds);
        svc.servers.push(child.id() as i32);
    }
    save(lab, &services)
}

/// A backend: accepts TCP connections on `0.0.0.0:port` (in the calling network namespace)
/// and answers each with one line, `<pod> <client ip>:<client port>\n`, then closes it. Reads
/// nothing; each write is bounded by a 2 s timeout. Runs until killed.
pub fn serve(port: u16, pod: &str) -> Result<()> {
    let l = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .with_context(|| format!("binding port {port}"))?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = writeln!(s, "{pod} {peer}");
    }
    Ok(())
}

/// Connects to `to` from the calling network namespace and reads [`serve`]'s line (5 s
/// bounds, at most 256 bytes).
pub fn ask(to: SocketAddr) -> Result<String> {
    let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    s.take(256).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ip: [u8; 4]) -> LabService {
        LabService {
            name: "x".into(),
            cluster_ip: Ipv4Addr::from(ip),
            port: 80,
            node_port: None,
            policy: TrafficPolicy::Cluster,
            backends: vec![],
            servers: vec![],
        }
    }

    #[test]
    fn cluster_ips_are_the_lowest_free_from_11() {
        assert_eq!(allocate(&[]).unwrap(), Ipv4Addr::new(10, 96, 0, 11));
        assert_eq!(
            allocate(&[svc([10, 96, 0, 11]), svc([10, 96, 0, 13])]).unwrap(),
            Ipv4Addr::new(10, 96, 0, 12)
        );
    }
}
