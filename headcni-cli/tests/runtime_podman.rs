//! podman 4.3 (Debian bookworm) with its CNI network backend runs containers on the HeadCNI
//! network, as in production: the conflist the daemon writes, `headcni` + reference portmap
//! and bandwidth in `cni_plugin_dirs`, runc. podman runs inside the test's node netns and
//! private mount namespace (see `runtimes/mod.rs`), with its storage, run root and
//! containers.conf in the test's temp dir.
//!
//! Asserted: the address `podman inspect` reports is inside the PodCIDR and is the IPAM
//! reservation of that container; the container's httpd answers from the node netns, directly
//! and through `-p HOSTPORT:80` (chained portmap, node address + host port); `podman stop`
//! releases the address and removes the veth and portmap's rules; `podman start` gets one
//! address again (a new netns, no duplicate); `podman rm` leaves nothing; and what podman sends
//! (CNI_ARGS, camelCase `portMappings`, DEL with `prevResult`).

mod common;
mod runtimes;

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use headcni_core::plugin::host_veth_name;
use runtimes::{BRIDGE, BUSYBOX_IMAGE, NETWORK, NODE_IP, Node};
use serde_json::Value;

const HOST_PORT: u16 = 18080;

/// podman with the test's containers.conf and storage.conf, inside the node.
struct Podman<'a> {
    node: &'a Node,
}

impl<'a> Podman<'a> {
    fn new(node: &'a Node) -> Podman<'a> {
        let graph = node.path("podman/graph");
        let nofile = runtimes::container_rlimit(libc::RLIMIT_NOFILE);
        let nproc = runtimes::container_rlimit(libc::RLIMIT_NPROC);
        let containers_conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{bin}\"]\n\
             network_config_dir = \"{netd}\"\n\
             default_network = \"{NETWORK}\"\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{events}\"\n\
             static_dir = \"{graph}/libpod\"\n\
             volume_path = \"{graph}/volumes\"\n\
             tmp_dir = \"/run/libpod\"\n",
            bin = node.bin_dir().display(),
            netd = node.conf_dir().display(),
            events = node.path("podman/events.log").display(),
            graph = graph.display(),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"/run/containers/storage\"\n",
            graph.display()
        );
        std::fs::create_dir_all(&graph).expect("mkdir graph");
        std::fs::write(node.path("podman/containers.conf"), containers_conf).expect("write");
        std::fs::write(node.path("podman/storage.conf"), storage_conf).expect("write");
        Podman { node }
    }

    fn output(&self, args: &[&str]) -> Output {
        self.node
            .cmd("podman")
            .env("CONTAINERS_CONF", self.node.path("podman/containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.node.path("podman/storage.conf"),
            )
            .args(args)
            .output()
            .expect("spawn podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        runtimes::assert_success(&out, &format!("podman {args:?}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman inspect <name>`'s object.
    fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).expect("inspect JSON");
        v[0].clone()
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Through podman first, so the plugins get their DEL; Node's drop force-cleans the rest.
        let _ = self.output(&["rm", "--all", "--force", "--time", "0"]);
    }
}

/// (container ID, IP address, netns path) from `podman inspect`.
fn attachment(p: &Podman, name: &str) -> (String, String, String) {
    let v = p.inspect(name);
    let id = v["Id"].as_str().expect("Id").to_owned();
    let ip = v["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let netns = v["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (id, ip, netns)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("IP"), port)
}

/// The running container is attached: one reservation (its ID, eth0) at `ip` in the
/// PodCIDR, its host veth on the bridge, httpd reachable directly and via the host port.
fn assert_attached(node: &Node, id: &str, ip: &str, what: &str) {
    assert!(node.in_pod_cidr(ip), "{what}: {ip} not in {}", node.cidr);
    let res = node.reservations();
    assert_eq!(res.len(), 1, "{what}: exactly one reservation: {res:?}");
    assert_eq!(
        res.get(ip).map(String::as_str),
        Some(format!("{id}\r\neth0").as_str()),
        "{what}: the store's reservation of {ip}: {res:?}"
    );
    let veth = host_veth_name(id, "eth0");
    let link = node
        .ns
        .link(&veth)
        .unwrap_or_else(|| panic!("{what}: no {veth}"));
    assert_eq!(link["master"], BRIDGE, "{what}: {link}");
    node.assert_serves(addr(ip, 80), Duration::from_secs(10), what);
    node.assert_serves(
        addr(NODE_IP, HOST_PORT),
        Duration::from_secs(5),
        &format!("{what} via hostPort"),
    );
}

/// Released: no reservation, no veth, no portmap rule for `id`.
fn assert_released(node: &Node, id: &str, what: &str) {
    assert!(
        node.reservations().is_empty(),
        "{what}: reservations left: {:?}",
        node.reservations()
    );
    assert!(
        !node.has_link(&host_veth_name(id, "eth0")),
        "{what}: the host veth is left"
    );
    node.assert_no_pod_veths(what);
    let nat = node.nat_rules();
    assert!(!nat.contains(id), "{what}: portmap rules left:\n{nat}");
    assert!(
        node.http_get(addr(NODE_IP, HOST_PORT)).is_err(),
        "{what}: the host port still answers"
    );
}

#[test]
fn podman_cni_backend_runs_containers_on_headcni() {
    let started = Instant::now();
    let node = Node::new("pod", 61);
    let cl = node.conflist();
    assert_eq!(cl["plugins"][0]["type"], "headcni", "{cl}");
    assert_eq!(cl["plugins"][1]["type"], "portmap", "{cl}");
    assert_eq!(cl["plugins"][2]["type"], "bandwidth", "{cl}");
    let podman = Podman::new(&node);
    let images = runtimes::build_image_archive(&node.path("image"));
    podman.ok(&["load", "--input", &images.display().to_string()]);

    // run: ADD through headcni → portmap → bandwidth.
    let publish = format!("{HOST_PORT}:80");
    podman.ok(&[
        "run",
        "--detach",
        "--name",
        "web",
        "--network",
        NETWORK,
        "--publish",
        &publish,
        "--cgroup-parent",
        &node.cgroup_parent,
        BUSYBOX_IMAGE,
    ]);
    let (id, ip, netns) = attachment(&podman, "web");
    assert!(netns.starts_with("/run/netns/netns-"), "netns {netns}");
    assert_attached(&node, &id, &ip, "after podman run");

    // What podman sent for that ADD: to headcni, and portmap's capability arguments.
    let adds = node.calls_of("headcni", "ADD");
    let (env, conf) = adds.first().expect("headcni ADD recorded");
    assert_eq!(env["CNI_CONTAINERID"], id);
    assert_eq!(env["CNI_NETNS"], netns);
    assert_eq!(env["CNI_IFNAME"], "eth0");
    let args: Vec<&str> = env["CNI_ARGS"].split(';').collect();
    assert!(
        args.contains(&"IgnoreUnknown=1") && args.contains(&"K8S_POD_NAME=web"),
        "CNI_ARGS {env:?}"
    );
    assert_eq!(conf["cniVersion"], cl["cniVersion"], "{conf}");
    assert!(
        conf.get("runtimeConfig").is_none(),
        "no capability of headcni's: {conf}"
    );
    let pm_adds = node.calls_of("portmap", "ADD");
    let (_, pm_conf) = pm_adds.first().expect("portmap ADD recorded");
    let pm = &pm_conf["runtimeConfig"]["portMappings"][0];
    assert_eq!(
        pm["hostPort"], HOST_PORT,
        "podman's camelCase portMappings: {pm_conf}"
    );
    assert_eq!(pm["containerPort"], 80, "{pm_conf}");
    assert_eq!(pm["protocol"], "tcp", "{pm_conf}");
    assert_eq!(
        pm_conf["prevResult"]["ips"][0]["address"],
        format!("{ip}/24"),
        "portmap chained after headcni's result: {pm_conf}"
    );

    // stop: DEL (with prevResult) releases everything.
    podman.ok(&["stop", "--time", "0", "web"]);
    assert_released(&node, &id, "after podman stop");
    let dels = node.calls_of("headcni", "DEL");
    let (del_env, del) = dels.first().expect("headcni DEL recorded");
    assert_eq!(del_env["CNI_NETNS"], netns, "podman's DEL: {del_env:?}");
    assert!(
        del.get("prevResult").is_some(),
        "podman's DEL carries prevResult: {del}"
    );

    // start: ADD in a new netns, one reservation again.
    podman.ok(&["start", "web"]);
    let (id2, ip2, netns2) = attachment(&podman, "web");
    assert_eq!(id2, id);
    assert_ne!(netns2, netns, "podman start uses a new netns");
    assert_attached(&node, &id, &ip2, "after podman start");

    // rm: nothing left.
    podman.ok(&["rm", "--force", "--time", "0", "web"]);
    assert_released(&node, &id, "after podman rm");
    assert_eq!(
        node.calls_of("headcni", "ADD").len(),
        2,
        "one ADD per run/start"
    );
    assert_eq!(
        node.calls_of("headcni", "DEL").len(),
        2,
        "one DEL per stop/rm"
    );
    eprintln!("podman scenario took {:?}", started.elapsed());
}

/// `[magic_dns] enable`: the conflist's `dns` reaches the ADD result (CNI spec 1.1.0 §Result
/// `dns`), and podman (libpod's resolv.conf from the networks' DNS servers and search domains)
/// writes it into the container's `/etc/resolv.conf`.
#[test]
fn podman_writes_the_cni_results_dns_into_resolv_conf() {
    let node = Node::new("dns", 62);
    node.write_conflist_with_magic_dns(headcni_node::config::MagicDnsConfig {
        enable: true,
        base_domain: Some("tailnet.example.com".into()),
        ..Default::default()
    });
    let cl = node.conflist();
    assert_eq!(
        cl["plugins"][0]["dns"],
        serde_json::json!({"nameservers": ["100.100.100.100"], "search": ["tailnet.example.com"]}),
        "{cl}"
    );
    let podman = Podman::new(&node);
    let images = runtimes::build_image_archive(&node.path("image"));
    podman.ok(&["load", "--input", &images.display().to_string()]);
    let resolv = podman.ok(&[
        "run",
        "--rm",
        "--network",
        NETWORK,
        "--cgroup-parent",
        &node.cgroup_parent,
        BUSYBOX_IMAGE,
        "cat",
        "/etc/resolv.conf",
    ]);
    let lines: Vec<&str> = resolv.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"nameserver 100.100.100.100"),
        "resolv.conf:\n{resolv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("search ") && l.contains("tailnet.example.com")),
        "resolv.conf:\n{resolv}"
    );
}
