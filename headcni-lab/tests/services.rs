//! End-to-end: Kubernetes Services through the iptables rules kube-proxy writes
//! (`headcni_lab::kubeproxy`, installed per node by `headcni_lab::services`), on a two-node
//! lab with the real daemon and plugin: pod → ClusterIP → a backend on the other node (source
//! kept), a pod → ClusterIP → itself (hairpin), and the "internet" namespace → NodePort with
//! `externalTrafficPolicy` Cluster (masqueraded) and Local (source kept).
//!
//! Needs root and the workspace's binaries (`cargo build --workspace --bins`;
//! `HEADCNI_LAB_BIN_DIR` overrides where they are). The lab is torn down by a guard.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use headcni_lab::cluster::{INET_GW, Lab, LabSpec, Pod, wait_for};
use headcni_lab::kubeproxy::TrafficPolicy;
use headcni_lab::services::{self, ServiceRequest};

/// Tears the lab down when dropped (logs printed when a test failed).
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(lab) = Lab::load(&self.0)
        {
            eprint!("{}", lab.log_tails(40));
        }
        if let Err(e) = Lab::down(&self.0) {
            eprintln!("lab down {}: {e:#}", self.0);
        }
    }
}

fn up(name: &str) -> (Lab, Guard) {
    let mut spec = LabSpec::new(name).expect("lab spec");
    spec.nodes = 2;
    spec.pods = 2;
    let _ = Lab::down(name);
    let guard = Guard(name.to_owned());
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    (lab, guard)
}

fn pod(lab: &Lab, name: &str) -> Pod {
    lab.pod(name)
        .cloned()
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn ip(p: &Pod) -> Ipv4Addr {
    p.ip.unwrap_or_else(|| panic!("{} has no address", p.name))
}

fn add(
    lab: &Lab,
    name: &str,
    port: u16,
    backends: &[&str],
    node_port: Option<u16>,
    policy: TrafficPolicy,
) -> services::LabService {
    services::add(
        lab,
        &ServiceRequest {
            name: name.into(),
            port,
            backends: backends.iter().map(|b| (*b).to_owned()).collect(),
            node_port,
            policy,
        },
    )
    .unwrap_or_else(|e| panic!("service add {name}: {e:#}"))
}

fn run_in(lab: &Lab, target: &str, args: &[&str]) -> String {
    let (mut cmd, fds) = lab.command(target, args[0]).expect("command");
    let out = cmd.args(&args[1..]).output().expect("run");
    drop(fds);
    assert!(
        out.status.success(),
        "{target}: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listen_in(lab: &Lab, target: &str, port: u16) -> TcpListener {
    lab.target_ctx(target)
        .expect("target")
        .run(move || TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
        .expect("enter namespace")
        .expect("bind")
}

fn connect_from(
    lab: &Lab,
    target: &str,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    lab.target_ctx(target)
        .expect("target")
        .run(move || TcpStream::connect_timeout(&to, timeout))?
}

/// `client` connects to `to`; a listener on `port` in `backend` accepts; bytes go both ways.
/// Returns the client address the backend saw.
fn through(lab: &Lab, client: &str, to: SocketAddr, backend: &str, port: u16) -> IpAddr {
    let l = listen_in(lab, backend, port);
    let mut c = connect_from(lab, client, to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{client} -> {to}: {e}"));
    let (mut s, peer) = l.accept().expect("accept");
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read at the backend");
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").expect("write back");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.read_exact(&mut buf)
        .expect("read the answer at the client");
    assert_eq!(&buf, b"pong");
    peer.ip()
}

fn tailnet_ip(lab: &Lab, node: &str) -> IpAddr {
    let out = run_in(
        lab,
        node,
        &["ip", "-4", "-o", "addr", "show", "dev", "tailscale0"],
    );
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("{node} tailscale0 has no IPv4 address: {out}"));
    cidr.split('/').next().unwrap().parse().expect("address")
}

#[test]
fn services_through_kube_proxy_rules() {
    let name = format!("svc{}", std::process::id());
    let (lab, _g) = up(&name);
    let (p11, p21) = (pod(&lab, "pod-1-1"), pod(&lab, "pod-2-1"));

    // 1. pod → ClusterIP → the backend on the other node, served by `headcni-lab serve`
    //    (what `lab service add` starts); the backend sees the client pod's own address.
    let web = add(
        &lab,
        "web",
        8080,
        &["pod-2-1"],
        None,
        TrafficPolicy::Cluster,
    );
    assert!(web.cluster_ip.to_string().starts_with("10.96."), "{web:?}");
    services::start_servers(&lab, "web").expect("start the backend server");
    let to = SocketAddr::new(IpAddr::V4(web.cluster_ip), 8080);
    let mut answer = String::new();
    wait_for(
        Duration::from_secs(10),
        "pod-2-1's server through the ClusterIP",
        || {
            answer = lab.pod_ctx(&p11).run(move || services::ask(to))??;
            Ok(true)
        },
    )
    .expect("pod-1-1 -> ClusterIP");
    let mut words = answer.split_whitespace();
    assert_eq!(words.next(), Some("pod-2-1"), "answer {answer:?}");
    let seen: SocketAddr = words.next().expect("client").parse().expect("client addr");
    assert_eq!(
        seen.ip(),
        IpAddr::V4(ip(&p11)),
        "the backend must see the client pod's own IP"
    );
    // The same through the in-test listener on another port (both directions of data).
    let api = add(
        &lab,
        "api",
        8090,
        &["pod-2-2"],
        None,
        TrafficPolicy::Cluster,
    );
    let seen = through(
        &lab,
        "pod-1-2",
        SocketAddr::new(IpAddr::V4(api.cluster_ip), 8090),
        "pod-2-2",
        8090,
    );
    assert_eq!(seen, IpAddr::V4(ip(&pod(&lab, "pod-1-2"))));

    // 2. Hairpin: pod-1-1 → its own Service → itself. The conflist keeps hairpinMode, the
    //    bridge ports have it on, and KUBE-SEP's `-s <endpoint>` mark masquerades the
    //    connection to the node's bridge address (kube-proxy's hairpin handling).
    let list = lab.conflist(1).expect("conflist");
    let main = list["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "headcni"))
        .unwrap_or_else(|| panic!("no headcni plugin in {list}"));
    assert_eq!(main["hairpinMode"], true, "{main}");
    let ports = run_in(
        &lab,
        "node-1",
        &["ip", "-d", "link", "show", "master", "headcni0"],
    );
    let slaves = ports.matches("bridge_slave").count();
    assert!(slaves >= 2, "{ports}");
    assert_eq!(
        ports.matches("hairpin on").count(),
        slaves,
        "every bridge port in hairpin mode:\n{ports}"
    );
    let me = add(
        &lab,
        "self",
        8081,
        &["pod-1-1"],
        None,
        TrafficPolicy::Cluster,
    );
    let seen = through(
        &lab,
        "pod-1-1",
        SocketAddr::new(IpAddr::V4(me.cluster_ip), 8081),
        "pod-1-1",
        8081,
    );
    let gw = run_in(
        &lab,
        "node-1",
        &["ip", "-4", "-o", "addr", "show", "dev", "headcni0"],
    );
    assert!(
        gw.contains(&format!("inet {seen}/")),
        "hairpin source {seen}, headcni0: {gw}"
    );

    // 3. The internet → NodePort on node-1 → the backend on node-2 and back,
    //    externalTrafficPolicy Cluster: masqueraded (KUBE-EXT → KUBE-MARK-MASQ) to node-1's
    //    address on the way out (tailscale0).
    let np = add(
        &lab,
        "np",
        8082,
        &["pod-2-1"],
        Some(30082),
        TrafficPolicy::Cluster,
    );
    let node1 = SocketAddr::new(IpAddr::V4(lab.nodes()[&1].underlay), 30082);
    let seen = through(&lab, "inet", node1, "pod-2-1", 8082);
    assert_eq!(
        seen,
        tailnet_ip(&lab, "node-1"),
        "NodePort Cluster: masqueraded by node-1"
    );
    assert_ne!(seen, IpAddr::V4(INET_GW));
    let _ = np;

    // 4. externalTrafficPolicy Local: the NodePort on the backend's node keeps the client's
    //    address; a node without a local endpoint drops it (KUBE-EXTERNAL-SERVICES).
    add(
        &lab,
        "npl",
        8083,
        &["pod-2-1"],
        Some(30083),
        TrafficPolicy::Local,
    );
    let node2 = SocketAddr::new(IpAddr::V4(lab.nodes()[&2].underlay), 30083);
    let seen = through(&lab, "inet", node2, "pod-2-1", 8083);
    assert_eq!(
        seen,
        IpAddr::V4(INET_GW),
        "NodePort Local: the source is kept"
    );
    let _l = listen_in(&lab, "pod-2-1", 8083);
    let node1 = SocketAddr::new(IpAddr::V4(lab.nodes()[&1].underlay), 30083);
    assert!(
        connect_from(&lab, "inet", node1, Duration::from_secs(2)).is_err(),
        "node-1 has no local endpoint for npl: dropped"
    );

    // 5. `service rm`: its chains are gone from every node, the others stay.
    let svc_chain = |s: &str| {
        let sp = services::service_ports(&lab, &services::list(&lab).unwrap())
            .unwrap()
            .into_iter()
            .find(|p| p.name == s)
            .unwrap();
        headcni_lab::kubeproxy::service_chain("KUBE-SVC-", &sp)
    };
    let (web_chain, np_chain) = (svc_chain("web"), svc_chain("np"));
    services::remove(&lab, "web").expect("service rm web");
    for node in ["node-1", "node-2"] {
        let nat = run_in(&lab, node, &["iptables-save", "-t", "nat"]);
        assert!(
            !nat.contains(&web_chain),
            "{node} still has {web_chain}:\n{nat}"
        );
        assert!(nat.contains(&np_chain), "{node} lost {np_chain}");
    }
    assert!(
        services::list(&lab)
            .unwrap()
            .iter()
            .all(|s| s.name != "web")
    );
    let _ = p21;
}
