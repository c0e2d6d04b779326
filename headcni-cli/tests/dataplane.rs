//! The daemon's data plane (`headcni_node::dataplane`) with real traffic, in
//! network namespaces this test creates (`hcdp-<tag>-<pid>-<role>`, removed on drop, also on
//! panic). Run as root with `ip` (iproute2) and `nft` (nftables) installed.
//!
//! ```text
//!   pod1 10.244.1.10 ─┐                         ┌─ internet 203.0.113.2, 198.51.100.20 (lo)
//!   pod2 10.244.1.11 ─┤ headcni0 ── node ── up0 ┘   (2001:db8:113::2, 2001:db8:ffff::20)
//!                     (10.244.1.1)      └─ peer0 ── peer 10.244.2.5, 100.64.0.7 (lo)
//!                                                   (fd00:10:244:2::5, fd7a:115c:a1e0::7)
//! ```
//!
//! The node namespace runs `dataplane::reconcile` on a thread inside it. The peer stands for
//! the tailnet path: the node routes another node's pod CIDR (inside the cluster CIDR) and
//! the tailnet ranges through it. Both the internet and the peer have routes back to the pod
//! CIDR, so an un-masqueraded connection also works there and the receiver's view of the
//! source address is what tells masqueraded from not. Receivers are std `TcpListener`s bound
//! inside their namespace; the source is read with `peer_addr()`.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use headcni_netlink::nft;
use headcni_node::dataplane::{self, DataplaneParams, DataplaneReport};
use ipnetwork::IpNetwork;

/// A named namespace `hcdp-<tag>-<pid>-<role>`, deleted on drop (headcni-testkit's fixture).
struct Ns(headcni_testkit::Ns);

impl std::ops::Deref for Ns {
    type Target = headcni_testkit::Ns;
    fn deref(&self) -> &headcni_testkit::Ns {
        &self.0
    }
}

impl Ns {
    fn new(tag: &str, role: &str) -> Ns {
        let name = format!("hcdp-{tag}-{}-{role}", std::process::id());
        let ns = Ns(headcni_testkit::Ns::named(&name));
        // No DAD in the test namespaces, so IPv6 addresses are usable at once. These are
        // the namespace's own sysctls, not the host's.
        for key in ["all", "default"] {
            ns.write_sysctl(&format!("/proc/sys/net/ipv6/conf/{key}/accept_dad"), "0");
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <name> <args>`; panics on failure.
    fn ip(&self, args: &[&str]) {
        run("ip", &[&["-n", &self.name][..], args].concat());
    }

    /// `ip netns exec <name> <args>`; panics on failure; returns stdout.
    fn ip_exec(&self, args: &[&str]) -> String {
        run("ip", &[&["netns", "exec", &self.name][..], args].concat())
    }

    /// Writes a sysctl of this namespace (from a thread inside it).
    fn write_sysctl(&self, path: &str, value: &str) {
        self.run_in(|| std::fs::write(path, value))
            .unwrap_or_else(|e| panic!("write {path} in {}: {e}", self.name));
    }

    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f)
    }
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test CIDR")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `dataplane::reconcile` on a fresh thread inside `node`, with a current-thread runtime
/// built there (so the netlink socket, the sysctls and every `nft` child are in `node`).
fn reconcile_in(node: &Ns, p: &DataplaneParams) -> DataplaneReport {
    node.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(dataplane::reconcile(p))
    })
    .unwrap_or_else(|e| panic!("reconcile: {e:#}"))
}

fn teardown_in(node: &Ns, table: &str) {
    node.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(dataplane::teardown(table))
    })
    .unwrap_or_else(|e| panic!("teardown: {e:#}"));
}

/// Opens a TCP connection from `from` to `to` (a `TcpListener` bound inside `at`) and
/// returns the source address the receiver saw, or the connect error.
fn observed_source(from: &Ns, at: &Ns, to: IpAddr) -> Result<IpAddr, String> {
    let listener = at
        .run_in(|| TcpListener::bind(SocketAddr::new(to, 0)))
        .unwrap_or_else(|e| panic!("bind {to} in {}: {e}", at.name));
    let addr = listener.local_addr().expect("listener address");
    let connected = from.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)));
    let _stream = connected.map_err(|e| format!("{} -> {addr}: {e}", from.name))?;
    // The handshake is complete; the connection waits in the accept queue.
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match listener.accept() {
            Ok((_, peer)) => return Ok(peer.ip()),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept on {addr}: {e}")),
        }
    }
}

/// A veth `<a_name>` in `a` ↔ `<b_name>` in `b`, both up.
fn veth(a: &Ns, a_name: &str, b: &Ns, b_name: &str) {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

/// A pod namespace with `eth0` on the node's bridge, addresses `v4`/`v6` and default routes
/// via the bridge gateways.
fn attach_pod(node: &Ns, pod: &Ns, host_end: &str, v4: &str, v6: &str) {
    veth(node, host_end, pod, "eth0");
    node.ip(&["link", "set", host_end, "master", "headcni0", "mtu", "1280"]);
    pod.ip(&["link", "set", "eth0", "mtu", "1280"]);
    pod.ip(&["addr", "add", v4, "dev", "eth0"]);
    pod.ip(&["addr", "add", v6, "dev", "eth0", "nodad"]);
    pod.ip(&["route", "add", "default", "via", "10.244.1.1"]);
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:10:244:1::1"]);
}

fn sysctl_in(ns: &Ns, path: &'static str) -> String {
    ns.run_in(|| std::fs::read_to_string(path))
        .expect("read sysctl")
        .trim()
        .to_owned()
}

#[test]
fn masquerade_only_what_leaves_the_cluster_with_real_traffic() {
    let tag = "traffic";
    let node = Ns::new(tag, "node");
    let pod1 = Ns::new(tag, "pod1");
    let pod2 = Ns::new(tag, "pod2");
    let inet = Ns::new(tag, "inet");
    let peer = Ns::new(tag, "peer");

    let mut params = DataplaneParams {
        bridge: "headcni0".into(),
        mtu: Some(1280),
        pod_cidrs: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
        cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
        // `[node] service_cidr` / `no_masquerade_cidrs`: the pod's source is kept there.
        no_masq_cidrs: vec![net("192.0.2.0/24")],
        table: "headcni".into(),
        masquerade_ipv6: true,
    };

    // First reconcile: everything is created. (A new namespace inherits the host's IPv4
    // forwarding setting, which a container runtime on this machine may have switched on.)
    node.write_sysctl("/proc/sys/net/ipv4/ip_forward", "0");
    assert_eq!(sysctl_in(&node, "/proc/sys/net/ipv4/ip_forward"), "0");
    let r = reconcile_in(&node, &params);
    assert_eq!(
        r,
        DataplaneReport {
            bridge_changed: true,
            forwarding_changed: true,
            masquerade_changed: true
        }
    );
    assert_eq!(sysctl_in(&node, "/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(
        sysctl_in(&node, "/proc/sys/net/ipv6/conf/all/forwarding"),
        "1"
    );
    let addrs = node.ip_exec(&["ip", "-o", "addr", "show", "dev", "headcni0"]);
    assert!(addrs.contains("inet 10.244.1.1/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:10:244:1::1/64"), "{addrs}");
    let link = node.ip_exec(&["ip", "-o", "link", "show", "dev", "headcni0"]);
    assert!(link.contains("mtu 1280") && link.contains(",UP"), "{link}");
    let table = node.ip_exec(&["nft", "list", "table", "inet", "headcni"]);
    println!("{table}");

    // Second reconcile: nothing to do, and the table is not rewritten (same handles).
    let before = node.ip_exec(&["nft", "-j", "-a", "list", "table", "inet", "headcni"]);
    assert_eq!(reconcile_in(&node, &params), DataplaneReport::default());
    assert_eq!(
        node.ip_exec(&["nft", "-j", "-a", "list", "table", "inet", "headcni"]),
        before
    );

    // Wiring: two pods on the bridge, an uplink to the "internet", a link to a peer node
    // (tailnet / other nodes' pods).
    attach_pod(
        &node,
        &pod1,
        "vethpod1",
        "10.244.1.10/24",
        "fd00:10:244:1::10/64",
    );
    attach_pod(
        &node,
        &pod2,
        "vethpod2",
        "10.244.1.11/24",
        "fd00:10:244:1::11/64",
    );

    veth(&node, "up0", &inet, "eth0");
    node.ip(&["addr", "add", "203.0.113.1/24", "dev", "up0"]);
    node.ip(&["addr", "add", "2001:db8:113::1/64", "dev", "up0", "nodad"]);
    node.ip(&["route", "add", "default", "via", "203.0.113.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8:113::2"]);
    inet.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"]);
    inet.ip(&["addr", "add", "2001:db8:113::2/64", "dev", "eth0", "nodad"]);
    inet.ip(&["addr", "add", "198.51.100.20/32", "dev", "lo"]);
    inet.ip(&["addr", "add", "192.0.2.30/32", "dev", "lo"]);
    inet.ip(&["addr", "add", "2001:db8:ffff::20/128", "dev", "lo"]);
    // Routes back to the pods, so un-masqueraded traffic would be answered too.
    inet.ip(&["route", "add", "10.244.0.0/16", "via", "203.0.113.1"]);
    inet.ip(&[
        "-6",
        "route",
        "add",
        "fd00:10:244::/56",
        "via",
        "2001:db8:113::1",
    ]);

    veth(&node, "peer0", &peer, "eth0");
    node.ip(&["addr", "add", "192.168.77.1/24", "dev", "peer0"]);
    node.ip(&["addr", "add", "fd00:77::1/64", "dev", "peer0", "nodad"]);
    for dst in ["10.244.2.0/24", "100.64.0.0/10"] {
        node.ip(&["route", "add", dst, "via", "192.168.77.2"]);
    }
    for dst in ["fd00:10:244:2::/64", "fd7a:115c:a1e0::/48"] {
        node.ip(&["-6", "route", "add", dst, "via", "fd00:77::2"]);
    }
    peer.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"]);
    peer.ip(&["addr", "add", "fd00:77::2/64", "dev", "eth0", "nodad"]);
    for a in [
        "10.244.2.5/32",
        "100.64.0.7/32",
        "fd00:10:244:2::5/128",
        "fd7a:115c:a1e0::7/128",
    ] {
        peer.ip(&["addr", "add", a, "dev", "lo"]);
    }
    peer.ip(&["route", "add", "10.244.1.0/24", "via", "192.168.77.1"]);
    peer.ip(&[
        "-6",
        "route",
        "add",
        "fd00:10:244:1::/64",
        "via",
        "fd00:77::1",
    ]);

    let pod1_v4 = ip("10.244.1.10");
    let pod1_v6 = ip("fd00:10:244:1::10");
    let uplink_v4 = ip("203.0.113.1");
    let uplink_v6 = ip("2001:db8:113::1");
    let check = |to: &str, at: &Ns, want: IpAddr| {
        let got = observed_source(&pod1, at, ip(to)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, want, "pod1 -> {to}: receiver saw {got}, want {want}");
    };

    // Leaving the cluster: masqueraded to the node's uplink address.
    check("198.51.100.20", &inet, uplink_v4);
    check("203.0.113.2", &inet, uplink_v4);
    check("2001:db8:ffff::20", &inet, uplink_v6);
    // A no-masquerade CIDR: the pod's own address, although it leaves through the uplink.
    check("192.0.2.30", &inet, pod1_v4);
    // Another node's pod (cluster CIDR) and a tailnet address: the pod's own address.
    check("10.244.2.5", &peer, pod1_v4);
    check("100.64.0.7", &peer, pod1_v4);
    check("fd00:10:244:2::5", &peer, pod1_v6);
    check("fd7a:115c:a1e0::7", &peer, pod1_v6);
    // A pod on the same node.
    check("10.244.1.11", &pod2, pod1_v4);
    check("fd00:10:244:1::11", &pod2, pod1_v6);

    // Uninstall: only our table goes; the bridge stays; traffic leaves un-masqueraded.
    node.ip_exec(&["nft", "add", "table", "inet", "other"]);
    node.ip_exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "other",
        "post",
        "{ type nat hook postrouting priority srcnat + 10; }",
    ]);
    let other = node.ip_exec(&["nft", "-j", "-a", "list", "table", "inet", "other"]);
    teardown_in(&node, "headcni");
    assert_eq!(node.run_in(|| nft::list("headcni")).unwrap(), None);
    assert_eq!(
        node.ip_exec(&["nft", "-j", "-a", "list", "table", "inet", "other"]),
        other
    );
    assert!(
        node.ip_exec(&["ip", "link", "show", "headcni0"])
            .contains("headcni0")
    );
    check("198.51.100.20", &inet, pod1_v4);
    check("2001:db8:ffff::20", &inet, pod1_v6);
    teardown_in(&node, "headcni"); // idempotent

    // Reconcile again: only the table had to come back; masquerading resumes.
    assert_eq!(
        reconcile_in(&node, &params),
        DataplaneReport {
            bridge_changed: false,
            forwarding_changed: false,
            masquerade_changed: true
        }
    );
    check("198.51.100.20", &inet, uplink_v4);

    // A new cluster CIDR replaces the table: 198.51.100.0/24 now keeps pod sources, the
    // rest of the internet is still masqueraded.
    params.cluster_cidrs.push(net("198.51.100.0/24"));
    params.cluster_cidrs.push(net("2001:db8:ffff::/48"));
    assert_eq!(
        reconcile_in(&node, &params),
        DataplaneReport {
            bridge_changed: false,
            forwarding_changed: false,
            masquerade_changed: true
        }
    );
    check("198.51.100.20", &inet, pod1_v4);
    check("2001:db8:ffff::20", &inet, pod1_v6);
    check("203.0.113.2", &inet, uplink_v4);
    check("100.64.0.7", &peer, pod1_v4);
    assert_eq!(reconcile_in(&node, &params), DataplaneReport::default());

    // Someone deletes the bridge's gateway address: the next reconcile repairs only that.
    node.ip(&["addr", "del", "10.244.1.1/24", "dev", "headcni0"]);
    assert_eq!(
        reconcile_in(&node, &params),
        DataplaneReport {
            bridge_changed: true,
            forwarding_changed: false,
            masquerade_changed: false
        }
    );
    check("10.244.2.5", &peer, pod1_v4);
    assert_eq!(
        node.ip_exec(&["nft", "-j", "-a", "list", "table", "inet", "other"]),
        other,
        "reconcile never touches other tables"
    );
}

#[test]
fn forwarding_off_is_switched_back_on() {
    let node = Ns::new("fwd", "node");
    let params = DataplaneParams::new(vec![net("10.250.0.0/24")], vec![]);
    // a new namespace inherits the host's IPv4 forwarding setting: start from off
    node.write_sysctl("/proc/sys/net/ipv4/ip_forward", "0");
    assert!(reconcile_in(&node, &params).forwarding_changed);
    node.write_sysctl("/proc/sys/net/ipv4/ip_forward", "0");
    let r = reconcile_in(&node, &params);
    assert_eq!(
        r,
        DataplaneReport {
            bridge_changed: false,
            forwarding_changed: true,
            masquerade_changed: false
        }
    );
    assert_eq!(sysctl_in(&node, "/proc/sys/net/ipv4/ip_forward"), "1");
    // IPv4-only node: no IPv6 rule in the table.
    let table = node.ip_exec(&["nft", "list", "table", "inet", "headcni"]);
    assert!(
        table.contains("ip saddr @pod_v4") && !table.contains("ip6"),
        "{table}"
    );
}
