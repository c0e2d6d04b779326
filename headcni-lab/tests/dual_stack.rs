//! Dual-stack end-to-end scenarios on the multi-node lab (`headcni lab up --dual-stack`):
//! every node has an IPv4 and an IPv6 PodCIDR, both advertised and approved; IPv6 pod ↔ pod
//! traffic crosses the tailnet with the source pod IP kept; IPv6 egress to the "internet"
//! namespace is masqueraded or not per `[node] masquerade_ipv6`.
//!
//! Each test builds its own lab under a test-unique name and tears it down in a guard, also
//! when an assertion fails. Needs root and the workspace's binaries (`cargo build --workspace
//! --bins`; `HEADCNI_LAB_BIN_DIR` overrides where they are).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::time::Duration;

use headcni_lab::cluster::dual_stack::{INET_ADDR_V6, pod_cidr_v6};
use headcni_lab::cluster::{Api, Approval, INET_ADDR, Lab, LabSpec, Pod};
use serde_json::Value;

/// Tears the lab down when dropped.
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

/// A lab name unique to this test and this run.
fn unique(test: &str) -> String {
    format!("{test}{}", std::process::id())
}

fn dual_spec(name: &str, masquerade_ipv6: bool) -> LabSpec {
    let mut s = LabSpec::new(name).expect("lab spec");
    s.nodes = 2;
    s.pods = 1;
    s.dual_stack = true;
    s.masquerade_ipv6 = masquerade_ipv6;
    s
}

fn up(spec: LabSpec) -> (Lab, Guard) {
    let _ = Lab::down(&spec.name);
    let guard = Guard(spec.name.clone());
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    (lab, guard)
}

fn pod(lab: &Lab, name: &str) -> Pod {
    lab.pod(name)
        .cloned()
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn ip4(p: &Pod) -> IpAddr {
    IpAddr::V4(p.ip.unwrap_or_else(|| panic!("{} has no IPv4 address", p.name)))
}

fn ip6(p: &Pod) -> IpAddr {
    IpAddr::V6(
        p.ip6
            .unwrap_or_else(|| panic!("{} has no IPv6 address", p.name)),
    )
}

/// Connects from `client` to a listener bound in `server` on `addr` (port 0: any) and returns
/// the source address the server saw.
fn seen_source(lab: &Lab, client: &str, server: &str, addr: IpAddr) -> IpAddr {
    let l: TcpListener = lab
        .target_ctx(server)
        .expect("target")
        .run(move || TcpListener::bind(SocketAddr::new(addr, 0)))
        .expect("enter namespace")
        .expect("bind");
    let to = l.local_addr().expect("local addr");
    let mut c: TcpStream = lab
        .target_ctx(client)
        .expect("target")
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("{client} -> {server} {to}: {e}"));
    let (mut s, peer) = l.accept().expect("accept");
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").expect("write back");
    c.read_exact(&mut buf).expect("read back");
    assert_eq!(&buf, b"pong");
    peer.ip()
}

fn run_in(lab: &Lab, target: &str, args: &[&str]) -> Output {
    let (mut cmd, fds) = lab.command(target, args[0]).expect("command");
    let out = cmd.args(&args[1..]).output().expect("run");
    drop(fds);
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn node_v6(lab: &Lab, n: u32) -> IpAddr {
    IpAddr::V6(lab.nodes()[&n].underlay_v6.expect("dual-stack node"))
}

/// Headscale's approved routes per node name (v0.29 `GET /api/v1/node`).
fn approved_v029(lab: &Lab) -> Vec<(String, Vec<String>)> {
    let (code, nodes) = lab.headscale_api("GET", "/api/v1/node", None).unwrap();
    assert_eq!(code, 200, "{nodes}");
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let mut r: Vec<String> = n["approvedRoutes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            r.sort();
            (n["name"].as_str().unwrap_or_default().to_string(), r)
        })
        .collect()
}

fn want_routes(n: u32) -> Vec<String> {
    let mut r = vec![
        format!("10.244.{n}.0/24"),
        pod_cidr_v6(n).unwrap().to_string(),
    ];
    r.sort();
    r
}

/// Both families across nodes, both directions, with the client pod's own address seen by
/// the server; IPv4 unchanged.
fn assert_pod_to_pod_keeps_sources(lab: &Lab) {
    let p11 = pod(lab, "pod-1-1");
    let p21 = pod(lab, "pod-2-1");
    for (a, b) in [(&p11, &p21), (&p21, &p11)] {
        for dst in [ip6(b), ip4(b)] {
            assert!(
                lab.ping_from(a, dst, Duration::from_secs(2)).unwrap(),
                "{} -> {} {dst}",
                a.name,
                b.name
            );
        }
        assert_eq!(
            seen_source(lab, &a.name, &b.name, ip6(b)),
            ip6(a),
            "IPv6 {} -> {}: the server must see the client pod's own IPv6",
            a.name,
            b.name
        );
        assert_eq!(
            seen_source(lab, &a.name, &b.name, ip4(b)),
            ip4(a),
            "IPv4 {} -> {}",
            a.name,
            b.name
        );
    }
}

/// Dual-stack with the v0.29 API approval and `masquerade_ipv6 = true` (the default): IPv6
/// PodCIDRs, gateways and default routes; both routes approved; table 52 and the `ip6 ts-*`
/// tables as tailscaled's; IPv6 egress masqueraded to the node's underlay IPv6.
#[test]
fn dual_stack_pods_across_nodes_ipv6_egress_masqueraded() {
    let (lab, _g) = up(dual_spec(&unique("ds6a"), true));
    assert_pod_to_pod_keeps_sources(&lab);

    // Both PodCIDRs approved for each node through approve_routes.
    let approved = approved_v029(&lab);
    assert_eq!(approved.len(), 2, "{approved:?}");
    for (name, routes) in &approved {
        let n: u32 = name.trim_start_matches("node-").parse().unwrap();
        assert_eq!(routes, &want_routes(n), "{name}");
    }

    // The conflist carries both ranges and a default route per family.
    let list = lab.conflist(1).unwrap();
    let ipam = &list["plugins"][0]["ipam"];
    assert_eq!(
        ipam["ranges"],
        serde_json::json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]),
        "{list}"
    );
    assert_eq!(
        ipam["routes"],
        serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    );
    // The bridge has the IPv6 gateway, the pod an IPv6 default route through it, the node
    // IPv6 forwarding on.
    let br = stdout(&run_in(
        &lab,
        "node-1",
        &["ip", "-6", "-o", "addr", "show", "dev", "headcni0"],
    ));
    assert!(br.contains("fd00:10:244:1::1/64"), "{br}");
    let r = stdout(&run_in(
        &lab,
        "pod-1-1",
        &["ip", "-6", "route", "show", "default"],
    ));
    assert!(r.contains("via fd00:10:244:1::1"), "{r}");
    let fwd = stdout(&run_in(
        &lab,
        "node-1",
        &["sysctl", "-n", "net.ipv6.conf.all.forwarding"],
    ));
    assert_eq!(fwd.trim(), "1");

    // The tailscaled stand-in routes the peer's IPv6 PodCIDR and tailnet address through the
    // tun (table 52, rule 5270 for IPv6), not its own.
    let t52 = stdout(&run_in(
        &lab,
        "node-1",
        &["ip", "-6", "route", "show", "table", "52"],
    ));
    assert!(t52.contains("fd00:10:244:2::/64 dev tailscale0"), "{t52}");
    assert!(!t52.contains("fd00:10:244:1::/64"), "{t52}");
    assert!(
        t52.contains("fd7a:115c:a1e0::"),
        "the peer's tailnet IPv6:\n{t52}"
    );
    let rules = stdout(&run_in(&lab, "node-1", &["ip", "-6", "rule", "show"]));
    assert!(
        rules.contains("5270:") && rules.contains("lookup 52"),
        "{rules}"
    );
    // wireguard-go's allowed IPs for the peer include its IPv6 PodCIDR.
    let wg = stdout(&run_in(
        &lab,
        "node-1",
        &["wg", "show", "tailscale0", "allowed-ips"],
    ));
    assert!(wg.contains("fd00:10:244:2::/64"), "{wg}");
    let ts6 = run_in(
        &lab,
        "node-1",
        &["nft", "list", "table", "ip6", "ts-filter"],
    );
    assert!(
        ts6.status.success(),
        "{}",
        String::from_utf8_lossy(&ts6.stderr)
    );
    assert!(stdout(&ts6).contains("ts-forward"));

    // Egress: the internet sees the node's underlay address, in both families.
    let p11 = pod(&lab, "pod-1-1");
    assert_eq!(
        seen_source(&lab, "pod-1-1", "inet", IpAddr::V6(INET_ADDR_V6)),
        node_v6(&lab, 1),
        "IPv6 egress masqueraded"
    );
    assert_ne!(node_v6(&lab, 1), ip6(&p11));
    assert_eq!(
        seen_source(&lab, "pod-1-1", "inet", IpAddr::V4(INET_ADDR)),
        IpAddr::V4(lab.nodes()[&1].underlay)
    );
    // The lab's own summary reports both PodCIDRs approved.
    let report = lab.report().unwrap();
    assert!(
        report.contains("10.244.2.0/24,fd00:10:244:2::/64") && !report.contains("not approved"),
        "{report}"
    );
}

/// `masquerade_ipv6 = false` with the v0.25 API (route rows enabled one by one): IPv6 pods
/// reach the internet with their own address, IPv4 egress stays masqueraded, pod ↔ pod keeps
/// sources in both families.
#[test]
fn dual_stack_ipv6_egress_keeps_the_pod_ip_when_not_masqueraded_v025() {
    let mut s = dual_spec(&unique("ds6b"), false);
    s.api = Api::V0_25;
    let (lab, _g) = up(s);
    assert_pod_to_pod_keeps_sources(&lab);

    let (code, routes) = lab.headscale_api("GET", "/api/v1/routes", None).unwrap();
    assert_eq!(code, 200);
    let mut enabled: Vec<String> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["enabled"] == true)
        .filter_map(|r| r["prefix"].as_str().map(String::from))
        .collect();
    enabled.sort();
    let mut want = [want_routes(1), want_routes(2)].concat();
    want.sort();
    assert_eq!(enabled, want, "{routes}");

    let p21 = pod(&lab, "pod-2-1");
    assert_eq!(
        seen_source(&lab, "pod-2-1", "inet", IpAddr::V6(INET_ADDR_V6)),
        ip6(&p21),
        "masquerade_ipv6 = false: the pod's own IPv6"
    );
    assert_eq!(
        seen_source(&lab, "pod-2-1", "inet", IpAddr::V4(INET_ADDR)),
        IpAddr::V4(lab.nodes()[&2].underlay),
        "IPv4 egress is masqueraded regardless"
    );
    // The daemon's table has no IPv6 masquerade rule.
    let t = stdout(&run_in(
        &lab,
        "node-2",
        &["nft", "list", "table", "inet", "headcni"],
    ));
    assert!(t.contains("ip saddr @pod_v4"), "{t}");
    assert!(!t.contains("pod_v6"), "{t}");
}

/// Approval by autoApprovers that cover both cluster CIDRs: both routes approved without an
/// approve_routes call; on nodes set up as Docker leaves a host (`iptables`/`ip6tables`
/// `FORWARD` policy `DROP`), pod ↔ pod in both families and IPv6 egress still work.
#[test]
fn dual_stack_auto_approvers_with_forward_drop() {
    let mut s = dual_spec(&unique("ds6c"), true);
    s.approval = Approval::AutoApprovers;
    s.forward_drop = true;
    let (lab, _g) = up(s);
    for (name, routes) in approved_v029(&lab) {
        let n: u32 = name.trim_start_matches("node-").parse().unwrap();
        assert_eq!(routes, want_routes(n), "{name}");
    }
    let calls = std::fs::read_to_string(lab.shared().join("logs/headscale.log")).unwrap();
    assert!(!calls.contains("approve_routes"), "{calls}");
    let policy = stdout(&run_in(&lab, "node-1", &["ip6tables", "-S", "FORWARD"]));
    assert!(policy.contains("-P FORWARD DROP"), "{policy}");
    assert_pod_to_pod_keeps_sources(&lab);
    let p11 = pod(&lab, "pod-1-1");
    let IpAddr::V6(a) = ip6(&p11) else {
        unreachable!()
    };
    assert!(
        pod_cidr_v6(1).unwrap().contains(a),
        "{a} from node-1's IPv6 PodCIDR"
    );
    assert_eq!(
        seen_source(&lab, "pod-1-1", "inet", IpAddr::V6(INET_ADDR_V6)),
        node_v6(&lab, 1)
    );
}

/// Daemon mode (the daemon supervises its own tailscaled stand-in on `headcni01`): the same
/// dual-stack data path, IPv6 routed through `headcni01` in table 52.
#[test]
fn dual_stack_daemon_mode() {
    let mut s = dual_spec(&unique("ds6d"), true);
    s.mode = headcni_lab::cluster::Mode::Daemon;
    let (lab, _g) = up(s);
    let t52 = stdout(&run_in(
        &lab,
        "node-2",
        &["ip", "-6", "route", "show", "table", "52"],
    ));
    assert!(t52.contains("fd00:10:244:1::/64 dev headcni01"), "{t52}");
    assert_pod_to_pod_keeps_sources(&lab);
    for (name, routes) in approved_v029(&lab) {
        let n: u32 = name.trim_start_matches("node-").parse().unwrap();
        assert_eq!(routes, want_routes(n), "{name}");
    }
}
