//! End-to-end scenarios on the multi-node lab: real namespaces, wireguard-go tunnels, the real
//! `headcni daemon` and plugin, the Headscale and tailscaled stand-ins.
//!
//! Each test builds its own lab under a test-unique name (so tests run in parallel) and tears
//! it down in a guard, also when an assertion fails. Needs root and the workspace's binaries
//! (`cargo test --workspace` builds them; `HEADCNI_LAB_BIN_DIR` overrides where they are).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headcni_headscale::localapi::{LocalApiClient, MaskedPrefs, Prefs};
use headcni_lab::cluster::chain::libcni_list_version;
use headcni_lab::cluster::{
    Api, IMAGE_ENV, INET_ADDR, Lab, LabSpec, Mode, Pod, block_on, wait_for,
};

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

/// A lab name unique to this test and this run (several runs may share the machine).
fn unique(test: &str) -> String {
    format!("{test}{}", std::process::id())
}

fn spec(name: &str, nodes: u32, pods: u32) -> LabSpec {
    let mut s = LabSpec::new(name).expect("lab spec");
    s.nodes = nodes;
    s.pods = pods;
    s
}

fn up(spec: LabSpec) -> (Lab, Guard) {
    let _ = Lab::down(&spec.name);
    let guard = Guard(spec.name.clone());
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    if std::env::var_os(IMAGE_ENV).is_some() {
        assert_daemons_run_from_the_image(&lab);
    }
    (lab, guard)
}

/// Image mode (`HEADCNI_LAB_IMAGE`): every node's daemon process has the image's root file
/// system (`/usr/local/bin/headcni-daemon` is not on this machine) with the ConfigMap's
/// `config.toml` mounted where deploy/headcni.yaml (deploy/headcni-daemon-mode.yaml in daemon
/// mode) mounts it, of the lab's tailnet mode; in daemon mode the node's tailscaled binary is
/// mounted where that manifest's `daemonMode.tailscaledHostPath` says.
fn assert_daemons_run_from_the_image(lab: &Lab) {
    assert!(lab.image_mode());
    let mode = match lab.spec().mode {
        Mode::Host => "host",
        Mode::Daemon => "daemon",
    };
    for node in lab.nodes().values() {
        let pid = node.daemon_pid.expect("a daemon pid");
        let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
        assert!(
            root.join("usr/local/bin/headcni-daemon").is_file(),
            "{}'s daemon (pid {pid}) does not run from the image",
            node.name
        );
        let cfg = std::fs::read_to_string(root.join("etc/headcni/config.toml"))
            .unwrap_or_else(|e| panic!("{}'s daemon has no config.toml: {e}", node.name));
        assert!(
            cfg.contains(&format!("mode = \"{mode}\"")),
            "{}'s daemon runs the wrong manifest: {cfg}",
            node.name
        );
        if lab.spec().mode == Mode::Daemon {
            assert!(
                root.join("usr/local/sbin/tailscaled").is_file(),
                "{}'s daemon container has no tailscaled at the manifest's hostPath",
                node.name
            );
        }
    }
}

fn pod(lab: &Lab, name: &str) -> Pod {
    lab.pod(name)
        .cloned()
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn ip(p: &Pod) -> Ipv4Addr {
    p.ip.unwrap_or_else(|| panic!("{} has no address", p.name))
}

/// A TCP listener bound inside a pod (or any lab context) on `port`.
fn listen_in(lab: &Lab, target: &str, addr: SocketAddr) -> TcpListener {
    lab.target_ctx(target)
        .expect("target")
        .run(move || TcpListener::bind(addr))
        .expect("enter namespace")
        .expect("bind")
}

/// A TCP connection made from inside a pod.
fn connect_from(lab: &Lab, target: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    lab.target_ctx(target)
        .expect("target")
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))?
}

/// Connects from `client` to a listener in `server` and returns the source address the
/// server saw.
fn seen_source(lab: &Lab, client: &str, server: &str, addr: SocketAddr) -> IpAddr {
    let l = listen_in(lab, server, addr);
    let to = SocketAddr::new(addr.ip(), l.local_addr().expect("local addr").port());
    let mut c = connect_from(lab, client, to).expect("connect");
    let (mut s, peer) = l.accept().expect("accept");
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
    peer.ip()
}

fn run_in(lab: &Lab, target: &str, args: &[&str]) -> Output {
    let (mut cmd, fds) = lab.command(target, args[0]).expect("command");
    let out = cmd.args(&args[1..]).output().expect("run");
    drop(fds);
    out
}

fn table52(lab: &Lab, node: &str) -> String {
    let out = run_in(lab, node, &["ip", "-4", "route", "show", "table", "52"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn localapi<T: Send + 'static>(
    lab: &Lab,
    node: u32,
    socket: &'static str,
    f: impl FnOnce(
        LocalApiClient,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send>>
    + Send
    + 'static,
) -> T {
    lab.node_ctx(node)
        .run(move || block_on(f(LocalApiClient::new(socket))))
        .expect("enter node")
        .expect("LocalAPI call")
}

fn prefs(lab: &Lab, node: u32) -> Prefs {
    localapi(lab, node, "/run/tailscale/tailscaled.sock", |c| {
        Box::pin(async move { Ok(c.prefs().await?) })
    })
}

/// ICMP and TCP between pods on the same node and across nodes, the server seeing the
/// client pod's own address; a pod reaching "the internet" masqueraded to its node's
/// underlay address; a 50 MB transfer across nodes; table 52 holding exactly the peers' pod
/// CIDRs; then drift (NoSNAT, RouteAll forced false in tailscaled) repaired by the daemon.
#[test]
fn pods_reach_each_other_across_nodes() {
    let (lab, _g) = up(spec(&unique("e2ea"), 2, 2));
    let p11 = pod(&lab, "pod-1-1");
    let p12 = pod(&lab, "pod-1-2");
    let p21 = pod(&lab, "pod-2-1");
    // Every pair answers ICMP (Lab::up already waited for the full mesh; re-check a few).
    for (a, b) in [(&p11, &p12), (&p11, &p21), (&p21, &p12)] {
        assert!(
            lab.ping_from(a, IpAddr::V4(ip(b)), Duration::from_secs(2))
                .unwrap(),
            "{} -> {}",
            a.name,
            b.name
        );
    }
    // TCP keeps the pod's own source address, on the same node and across the tunnel.
    let same = seen_source(
        &lab,
        "pod-1-2",
        "pod-1-1",
        SocketAddr::new(IpAddr::V4(ip(&p11)), 0),
    );
    assert_eq!(same, IpAddr::V4(ip(&p12)));
    let cross = seen_source(
        &lab,
        "pod-2-1",
        "pod-1-1",
        SocketAddr::new(IpAddr::V4(ip(&p11)), 0),
    );
    assert_eq!(
        cross,
        IpAddr::V4(ip(&p21)),
        "the server must see the remote pod's own IP"
    );
    // The internet sees the node's underlay address (masquerade by the daemon's table).
    let inet = seen_source(
        &lab,
        "pod-2-1",
        "inet",
        SocketAddr::new(IpAddr::V4(INET_ADDR), 0),
    );
    assert_eq!(inet, IpAddr::V4(lab.nodes()[&2].underlay));
    // Each node routes exactly the other node's pod CIDR through the tunnel (table 52).
    let t1 = table52(&lab, "node-1");
    assert!(
        t1.contains("10.244.2.0/24 dev tailscale0"),
        "node-1 table 52:\n{t1}"
    );
    assert!(
        !t1.contains("10.244.1.0/24"),
        "node-1 must not route its own CIDR into the tunnel:\n{t1}"
    );

    // 50 MB across nodes: completes, byte-exact (pods have the tunnel's MTU).
    let l = listen_in(&lab, "pod-2-1", SocketAddr::new(IpAddr::V4(ip(&p21)), 0));
    let to = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut total = 0usize;
        let mut sum = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            sum = buf[..n]
                .iter()
                .fold(sum, |a, &b| a.wrapping_add(u64::from(b)));
        }
        (total, sum)
    });
    const SIZE: usize = 50 * 1024 * 1024;
    let started = Instant::now();
    let mut c = connect_from(&lab, "pod-1-1", to).unwrap();
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut want = 0u64;
    while sent < SIZE {
        c.write_all(&chunk).unwrap();
        want = chunk
            .iter()
            .fold(want, |a, &b| a.wrapping_add(u64::from(b)));
        sent += chunk.len();
    }
    drop(c);
    let (total, sum) = server.join().unwrap();
    assert_eq!((total, sum), (SIZE, want));
    eprintln!(
        "50 MB pod-1-1 -> pod-2-1 across the tunnel: {:.1} Mbit/s",
        SIZE as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e6
    );
    // (`ip`, not /sys: sysfs shows the namespace it was mounted in.)
    let link = run_in(&lab, "pod-1-1", &["ip", "-o", "link", "show", "eth0"]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains(" mtu 1280 "),
        "pod MTU must be the tunnel's: {link}"
    );

    // Drift: someone runs `tailscale set --snat-subnet-routes=true --accept-routes=false`.
    localapi(&lab, 2, "/run/tailscale/tailscaled.sock", |c| {
        Box::pin(async move {
            let m = MaskedPrefs {
                no_snat: Some(false),
                route_all: Some(false),
                ..Default::default()
            };
            c.patch_prefs(&m).await?;
            Ok(())
        })
    });
    let drifted = prefs(&lab, 2);
    assert!(
        !drifted.no_snat && !drifted.route_all,
        "the drift must have been applied"
    );
    wait_for(
        Duration::from_secs(20),
        "the daemon to repair NoSNAT and RouteAll",
        || {
            let p = prefs(&lab, 2);
            Ok(p.no_snat && p.route_all)
        },
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "cross-node traffic with pod source IPs",
        || {
            Ok(seen_source(
                &lab,
                "pod-1-1",
                "pod-2-1",
                SocketAddr::new(IpAddr::V4(ip(&p21)), 0),
            ) == IpAddr::V4(ip(&p11)))
        },
    )
    .unwrap();
}

/// A node joining is reachable from every other node's pods (the time from `daemon start`
/// to cross-node reachability is reported); removing it withdraws its route and nothing else.
#[test]
fn node_join_and_removal() {
    let (mut lab, _g) = up(spec(&unique("e2eb"), 2, 1));
    let started = Instant::now();
    lab.add_node(3).unwrap();
    lab.wait_ready(3, Duration::from_secs(30)).unwrap();
    let ready = started.elapsed();
    let p3 = lab.add_pod(3).unwrap();
    let others: Vec<Pod> = lab.pods().iter().filter(|p| p.node != 3).cloned().collect();
    wait_for(
        Duration::from_secs(20),
        "node-3's pod to be reachable from every node",
        || {
            for o in &others {
                if !lab.ping_from(o, IpAddr::V4(ip(&p3)), Duration::from_millis(300))? {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .unwrap();
    eprintln!(
        "join: daemon start -> ready {:.2} s, -> cross-node reachability {:.2} s",
        ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for n in ["node-1", "node-2"] {
        assert!(
            table52(&lab, n).contains("10.244.3.0/24"),
            "{n} lacks node-3's route"
        );
    }

    lab.remove_node(3).unwrap();
    for n in ["node-1", "node-2"] {
        wait_for(
            Duration::from_secs(15),
            "node-3's route to leave table 52",
            || Ok(!table52(&lab, n).contains("10.244.3.0/24")),
        )
        .unwrap();
    }
    assert!(table52(&lab, "node-1").contains("10.244.2.0/24"));
    assert!(table52(&lab, "node-2").contains("10.244.1.0/24"));
    let (code, nodes) = lab.headscale_api("GET", "/api/v1/node", None).unwrap();
    assert_eq!(code, 200);
    let names: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["node-1", "node-2"]);
    for n in nodes["nodes"].as_array().unwrap() {
        let want = if n["name"] == "node-1" {
            "10.244.1.0/24"
        } else {
            "10.244.2.0/24"
        };
        assert_eq!(n["approvedRoutes"], serde_json::json!([want]), "{n}");
    }
    lab.wait_full_mesh(Duration::from_secs(10)).unwrap();
}

/// Restarting a node's daemon does not interrupt an established cross-node TCP stream.
#[test]
fn daemon_restart_keeps_streams() {
    let (mut lab, _g) = up(spec(&unique("e2ec"), 2, 1));
    let p21 = pod(&lab, "pod-2-1");
    let l = listen_in(&lab, "pod-2-1", SocketAddr::new(IpAddr::V4(ip(&p21)), 0));
    let to = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    });
    let mut c = connect_from(&lab, "pod-1-1", to).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut n = 0usize;
        while !stop2.load(Ordering::Relaxed) {
            c.write_all(&[(n % 256) as u8; 1024])?;
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    });
    std::thread::sleep(Duration::from_millis(300));
    for node in [1, 2] {
        lab.stop_daemon(node).unwrap();
        lab.start_daemon(node).unwrap();
        lab.wait_ready(node, Duration::from_secs(30)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let chunks = writer
        .join()
        .unwrap()
        .expect("the stream broke during the restart");
    let got = server.join().unwrap().expect("the server side broke");
    assert_eq!(got.len(), chunks * 1024, "bytes lost");
    for (i, block) in got.chunks(1024).enumerate() {
        assert!(
            block.iter().all(|&b| b == (i % 256) as u8),
            "block {i} corrupted"
        );
    }
}

/// Headscale down for 30 s: established traffic flows, new pods still get ADD, and the
/// daemons stay ready: they follow tailscaled's IPN bus and ask Headscale only when a route
/// must be approved or on the slow resync (≥ 5 minutes), so an outage of the coordination
/// server does not take a working node's pod network down (issue 13). When Headscale is
/// back, everything still converges. (A node that needs Headscale during an outage reports
/// not-ready and recovers by itself: `daemon_mode_bootstrap_during_a_headscale_outage_…`.)
#[test]
fn headscale_outage() {
    let (mut lab, _g) = up(spec(&unique("e2ed"), 2, 1));
    let p11 = pod(&lab, "pod-1-1");
    let p21 = pod(&lab, "pod-2-1");
    lab.stop_headscale().unwrap();
    let down_at = Instant::now();
    // New pods are still attached (the plugin never needs Headscale).
    let p12 = lab.add_pod(1).expect("ADD during the outage");
    assert!(
        lab.ping_from(&p12, IpAddr::V4(ip(&p11)), Duration::from_secs(2))
            .unwrap()
    );
    // Existing cross-node traffic keeps flowing for the whole outage.
    while down_at.elapsed() < Duration::from_secs(30) {
        assert!(
            lab.ping_from(&p11, IpAddr::V4(ip(&p21)), Duration::from_secs(2))
                .unwrap(),
            "cross-node traffic stopped {:.1} s into the outage",
            down_at.elapsed().as_secs_f64()
        );
        for n in [1, 2] {
            assert!(
                lab.daemon_ready(n),
                "node-{n} went not-ready {:.1} s into the outage: {:?}",
                down_at.elapsed().as_secs_f64(),
                lab.daemon_get(n, "/readyz")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    lab.start_headscale().unwrap();
    let back = Instant::now();
    for n in [1, 2] {
        lab.wait_ready(n, Duration::from_secs(60)).unwrap();
    }
    eprintln!(
        "daemons ready again {:.1} s after Headscale came back",
        back.elapsed().as_secs_f64()
    );
    // The pod added during the outage reaches the other node.
    wait_for(
        Duration::from_secs(10),
        "the new pod to reach node-2",
        || lab.ping_from(&p12, IpAddr::V4(ip(&p21)), Duration::from_millis(500)),
    )
    .unwrap();
}

/// The v0.25 route API (`/api/v1/routes` enable) gives the same cluster.
#[test]
fn headscale_v025_api() {
    let mut s = spec(&unique("e2ee"), 2, 1);
    s.api = Api::V0_25;
    let (lab, _g) = up(s);
    let (code, routes) = lab.headscale_api("GET", "/api/v1/routes", None).unwrap();
    assert_eq!(code, 200);
    let enabled: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["enabled"] == true)
        .filter_map(|r| r["prefix"].as_str())
        .collect();
    assert_eq!(enabled.len(), 2, "{routes}");
    assert!(enabled.contains(&"10.244.1.0/24") && enabled.contains(&"10.244.2.0/24"));
    let p11 = pod(&lab, "pod-1-1");
    let p21 = pod(&lab, "pod-2-1");
    assert_eq!(
        seen_source(
            &lab,
            "pod-1-1",
            "pod-2-1",
            SocketAddr::new(IpAddr::V4(ip(&p21)), 0)
        ),
        IpAddr::V4(ip(&p11))
    );
}

/// Daemon mode: each daemon supervises its own tailscaled stand-in on headcni01, logged in
/// with a pre-auth key it created through the Headscale API.
#[test]
fn daemon_mode() {
    let mut s = spec(&unique("e2ef"), 2, 1);
    s.mode = Mode::Daemon;
    let (mut lab, _g) = up(s);
    let links = run_in(&lab, "node-1", &["ip", "-br", "link"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("headcni01"), "{links}");
    assert!(!links.contains("tailscale0"), "{links}");
    assert!(table52(&lab, "node-1").contains("10.244.2.0/24 dev headcni01"));
    let p11 = pod(&lab, "pod-1-1");
    let p21 = pod(&lab, "pod-2-1");
    assert_eq!(
        seen_source(
            &lab,
            "pod-2-1",
            "pod-1-1",
            SocketAddr::new(IpAddr::V4(ip(&p11)), 0)
        ),
        IpAddr::V4(ip(&p21))
    );
    // A daemon restart restarts its tailscaled, which re-attaches with its saved node key:
    // same node ids, same tailnet addresses, no second registration.
    let before = lab.headscale_api("GET", "/api/v1/node", None).unwrap().1;
    lab.stop_daemon(1).unwrap();
    lab.start_daemon(1).unwrap();
    lab.wait_ready(1, Duration::from_secs(30)).unwrap();
    lab.wait_full_mesh(Duration::from_secs(20)).unwrap();
    let after = lab.headscale_api("GET", "/api/v1/node", None).unwrap().1;
    let ids = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].to_string(), n["ipAddresses"].to_string()))
            .collect()
    };
    assert_eq!(ids(&before), ids(&after));
}

/// Approval by a Headscale policy's autoApprovers: the daemons only advertise, and the routes
/// are approved by policy (and still verified).
#[test]
fn auto_approvers_policy() {
    let mut s = spec(&unique("e2eg"), 2, 1);
    s.approval = headcni_lab::cluster::Approval::AutoApprovers;
    let (lab, _g) = up(s);
    let (_, nodes) = lab.headscale_api("GET", "/api/v1/node", None).unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["approvedRoutes"].as_array().map(Vec::len), Some(1), "{n}");
    }
    let calls = std::fs::read_to_string(lab.shared().join("logs/headscale.log")).unwrap();
    assert!(
        !calls.contains("approve_routes"),
        "auto-approvers mode must not call approve_routes:\n{calls}"
    );
}

/// Issue 10, failure 3: nodes set up as Docker leaves a host (iptables `FORWARD` policy
/// `DROP`, bridged frames through iptables). Same-node pod↔pod, cross-node pod↔pod and
/// pod→internet all work, in host mode and in daemon mode, because the daemon accepts pod
/// traffic in `filter FORWARD` (HEADCNI-FWD).
#[test]
fn docker_like_forward_drop_host_and_daemon_mode() {
    for (mode, tag) in [(Mode::Host, "e2eh"), (Mode::Daemon, "e2ei")] {
        let mut s = spec(&unique(tag), 2, 2);
        s.mode = mode;
        s.forward_drop = true;
        let (lab, _g) = up(s);
        let fwd = run_in(&lab, "node-1", &["iptables", "-w", "5", "-S", "FORWARD"]);
        let fwd = String::from_utf8_lossy(&fwd.stdout);
        assert!(fwd.contains("-P FORWARD DROP"), "{mode:?}: {fwd}");
        assert!(fwd.contains("-j HEADCNI-FWD"), "{mode:?}: {fwd}");
        // Lab::up waited for the full mesh (same node and across nodes); check each kind.
        let p11 = pod(&lab, "pod-1-1");
        let p12 = pod(&lab, "pod-1-2");
        let p21 = pod(&lab, "pod-2-1");
        for (a, b) in [(&p11, &p12), (&p11, &p21), (&p21, &p12)] {
            assert!(
                lab.ping_from(a, IpAddr::V4(ip(b)), Duration::from_secs(2))
                    .unwrap(),
                "{mode:?}: {} -> {}",
                a.name,
                b.name
            );
        }
        let inet = seen_source(
            &lab,
            "pod-1-1",
            "inet",
            SocketAddr::new(IpAddr::V4(INET_ADDR), 0),
        );
        assert_eq!(inet, IpAddr::V4(lab.nodes()[&1].underlay), "{mode:?}");
    }
}

/// Issue 10, failure 1: daemon mode, a node joins while Headscale is down. Its first
/// bootstrap fails (no pre-auth key can be made), its tailscaled stand-in has already written
/// its state file (as real tailscaled does at start-up), and the daemon says why it is not
/// ready; once Headscale is back the daemon logs in by itself and its pod is reachable.
#[test]
fn daemon_mode_bootstrap_during_a_headscale_outage_recovers_by_itself() {
    let mut s = spec(&unique("e2ej"), 1, 1);
    s.mode = Mode::Daemon;
    let (mut lab, _g) = up(s);
    lab.stop_headscale().unwrap();
    lab.add_node(2).unwrap();
    wait_for(
        Duration::from_secs(30),
        "node-2's daemon to report the failed login",
        || {
            let (_, body) = lab.daemon_get(2, "/readyz")?;
            Ok(body.contains("dedicated tailscaled login"))
        },
    )
    .unwrap();
    // The daemon's state_dir: the lab configuration's, or in image mode the manifest's
    // hostPath (the node's own directory).
    let state_dir = if lab.image_mode() {
        "/var/lib/headcni"
    } else {
        "/run/headcni/state"
    };
    let state = run_in(
        &lab,
        "node-2",
        &["sh", "-c", &format!("ls {state_dir}/tailscaled/")],
    );
    assert!(
        String::from_utf8_lossy(&state.stdout).contains("tailscaled.state"),
        "the stand-in writes its state file at start-up"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(!lab.daemon_ready(2));
    lab.start_headscale().unwrap();
    lab.wait_ready(2, Duration::from_secs(60)).unwrap();
    let p2 = lab.add_pod(2).unwrap();
    let p11 = pod(&lab, "pod-1-1");
    wait_for(
        Duration::from_secs(20),
        "node-2's pod to reach node-1's",
        || lab.ping_from(&p2, IpAddr::V4(ip(&p11)), Duration::from_millis(500)),
    )
    .unwrap();
}

/// Issue 10, item 4: the policy `headcni policy` prints is accepted by the stand-in's strict
/// policy engine (Headscale 0.29's rules) and approves and carries every PodCIDR; the same
/// autoApprovers with an ACL that does not reach the cluster CIDR leave the routes out of the
/// peers' netmaps, and cross-node pod traffic stops.
#[test]
fn headcni_policy_output_makes_cross_node_traffic_work() {
    let mut s = spec(&unique("e2ek"), 2, 1);
    let out = std::process::Command::new(s.bin_dir.join("headcni"))
        .args([
            "policy",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--headscale-version",
            "0.29",
            "--approver-user",
            "lab",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fragment = String::from_utf8(out.stdout).unwrap();
    s.approval = headcni_lab::cluster::Approval::AutoApprovers;
    s.policy = Some(fragment);
    // Lab::up waits until every pod reaches every other pod.
    let (mut lab, _g) = up(s);
    let p11 = pod(&lab, "pod-1-1");
    let p21 = pod(&lab, "pod-2-1");
    assert!(
        lab.ping_from(&p11, IpAddr::V4(ip(&p21)), Duration::from_secs(2))
            .unwrap()
    );
    let narrow = r#"{
        // the same approvers, but the ACL only lets the nodes reach each other's tailnet
        // addresses, not the pod CIDRs
        "autoApprovers": {"routes": {"10.244.0.0/16": ["lab@"]}},
        "acls": [{"action": "accept", "src": ["lab@"], "dst": ["lab@:*"]}],
    }"#;
    lab.replace_policy(narrow).unwrap();
    wait_for(
        Duration::from_secs(20),
        "node-2's route to leave node-1's table 52",
        || Ok(!table52(&lab, "node-1").contains("10.244.2.0/24")),
    )
    .unwrap();
    assert!(
        !lab.ping_from(&p11, IpAddr::V4(ip(&p21)), Duration::from_secs(1))
            .unwrap(),
        "cross-node pod traffic without the ACL to the cluster CIDR"
    );
}

/// Daemon mode against the ≤ 0.25 route API (pre-auth key by user name, route rows
/// `enable`): the same cluster as with 0.29 (host mode × 0.25 is `headscale_v025_api`).
#[test]
fn daemon_mode_v025_api() {
    let mut s = spec(&unique("e2el"), 2, 1);
    s.mode = Mode::Daemon;
    s.api = Api::V0_25;
    let (lab, _g) = up(s);
    let (code, routes) = lab.headscale_api("GET", "/api/v1/routes", None).unwrap();
    assert_eq!(code, 200);
    let enabled = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["enabled"] == true)
        .count();
    assert_eq!(enabled, 2, "{routes}");
    let p11 = pod(&lab, "pod-1-1");
    let p21 = pod(&lab, "pod-2-1");
    assert_eq!(
        seen_source(
            &lab,
            "pod-2-1",
            "pod-1-1",
            SocketAddr::new(IpAddr::V4(ip(&p11)), 0)
        ),
        IpAddr::V4(ip(&p21))
    );
}

/// Issue 11's done-when: CNI STATUS, run on a node as containerd ≥ 2.1 runs it, answers 51
/// naming the unapproved route while the node's route is not approved, and 0 once it is.
/// node-2 joins under an autoApprovers policy that covers node-1's PodCIDR only, so its
/// route stays unapproved until it is approved through Headscale's REST API. The chain has
/// no Debian portmap (CNI ≤ 1.0.0): with it the negotiated conflist is 1.0.0 and libcni
/// runs no STATUS at all (`Lab::cni_status` applies that gate; checked below).
#[test]
fn cni_status_is_51_until_the_route_is_approved() {
    // The binaries' lab chains Debian's portmap (image mode follows the manifest's
    // ConfigMap, which chains nothing), so this part runs from the binaries in both runs.
    let mut plain = spec(&unique("e2et"), 1, 0);
    plain.image = None;
    let _ = Lab::down(&plain.name);
    let _g1 = Guard(plain.name.clone());
    let portmap_lab = Lab::up(plain).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    assert_eq!(
        libcni_list_version(&portmap_lab.conflist(1).unwrap()).as_deref(),
        Some("1.0.0"),
        "Debian's portmap caps the list"
    );
    assert!(
        portmap_lab.cni_status(1).unwrap().is_none(),
        "libcni runs no STATUS on a 1.0.0 list"
    );
    drop(portmap_lab);

    let mut s = spec(&unique("e2es"), 1, 0);
    s.chain_portmap = false;
    s.approval = headcni_lab::cluster::Approval::AutoApprovers;
    let user = headcni_headscale::policy::PolicyVersion::V0_29.user_token("lab");
    s.policy = Some(
        serde_json::json!({"autoApprovers": {"routes": {"10.244.1.0/24": [user]}}}).to_string(),
    );
    let (mut lab, _g) = up(s);
    assert_eq!(
        libcni_list_version(&lab.conflist(1).unwrap()).as_deref(),
        Some("1.1.0"),
        "without portmap a libcni >= 1.2 runtime picks 1.1.0 from cniVersions"
    );
    assert_eq!(
        lab.cni_status(1)
            .expect("STATUS on node-1")
            .expect("a 1.1.0 list gets STATUS")
            .code,
        0
    );

    lab.add_node(2).expect("node-2 joins");
    let route = "10.244.2.0/24";
    // The daemon advertises the route and writes the conflist before it is approved; until
    // its first pass STATUS may say "not running" (51 too), so wait for the route's reason.
    let mut last = None;
    let seen = wait_for(
        Duration::from_secs(30),
        "STATUS 51 naming node-2's route",
        || {
            let e = lab
                .cni_status(2)?
                .ok_or_else(|| anyhow::anyhow!("libcni would skip STATUS"))?;
            let names_route = e.code == 51
                && e.stdout
                    .as_ref()
                    .is_some_and(|j| j.to_string().contains(route));
            last = Some(e);
            Ok(names_route)
        },
    );
    assert!(seen.is_ok(), "{seen:?}: last answer {last:?}");
    assert!(!lab.daemon_ready(2));

    let id = lab.tailnet_node_id(2).expect("node-2's id");
    let (code, body) = lab
        .headscale_api(
            "POST",
            &format!("/api/v1/node/{id}/approve_routes"),
            Some(&serde_json::json!({"routes": [route]})),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let mut last = None;
    let ok = wait_for(Duration::from_secs(30), "STATUS 0 on node-2", || {
        let e = lab
            .cni_status(2)?
            .ok_or_else(|| anyhow::anyhow!("libcni would skip STATUS"))?;
        let ok = e.code == 0;
        last = Some(e);
        Ok(ok)
    });
    assert!(ok.is_ok(), "{ok:?}: last answer {last:?}");
    assert!(lab.daemon_ready(2));
}
