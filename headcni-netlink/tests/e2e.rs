//! End to end: a bridge in a "node" namespace, two "pod" namespaces attached with veth
//! pairs, addresses and routes, then pings between them (run as root). Also prints the
//! wall time of the CNI ADD netlink sequence (no timed assertion).

mod common;

use std::time::{Duration, Instant};

use common::TestNs;
use headcni_core::link::{BridgeSpec, LinkManager, RouteManager, RouteSpec, VethSpec};
use headcni_netlink::NetlinkHandle;
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test network literal")
}

fn bridge() -> BridgeSpec {
    BridgeSpec {
        name: "hcbr0".to_owned(),
        mtu: None,
        addresses: vec![net("198.51.100.1/24"), net("2001:db8:51::1/64")],
    }
}

fn veth(host: &str, pod: &TestNs) -> VethSpec {
    VethSpec {
        host_name: host.to_owned(),
        container_name: "eth0".to_owned(),
        container_netns: pod.path.clone(),
        mtu: Some(1450),
        container_mac: None,
        master: Some("hcbr0".to_owned()),
        hairpin: true,
    }
}

/// Steps of the CNI ADD netlink sequence, for the timing breakdown.
const STEPS: [&str; 6] = [
    "open pod handle",
    "create_veth_in",
    "add v4 address",
    "add v6 address",
    "add v4 default route",
    "add v6 default route",
];

/// The CNI ADD netlink sequence for one pod: veth into the pod, IPv4 + IPv6 address,
/// default routes. Uses one container handle for everything. Returns the time of each of
/// [`STEPS`].
async fn attach(node: &NetlinkHandle, pod: &TestNs, host: &str, n: u8) -> [Duration; 6] {
    let mut t = [Duration::ZERO; 6];
    let mut lap = Instant::now();
    let mut step = |i: usize| {
        t[i] = lap.elapsed();
        lap = Instant::now();
    };
    let p = NetlinkHandle::for_netns(&pod.path)
        .await
        .expect("pod handle");
    step(0);
    node.create_veth_in(&veth(host, pod), &p)
        .await
        .expect("veth");
    step(1);
    p.add_address("eth0", net(&format!("198.51.100.{n}/24")))
        .await
        .expect("v4");
    step(2);
    p.add_address("eth0", net(&format!("2001:db8:51::{n}/64")))
        .await
        .expect("v6");
    step(3);
    p.add_route(&RouteSpec::new(
        net("0.0.0.0/0"),
        Some("198.51.100.1".parse().expect("ip")),
        Some("eth0"),
    ))
    .await
    .expect("default v4");
    step(4);
    p.add_route(&RouteSpec::new(
        net("::/0"),
        Some("2001:db8:51::1".parse().expect("ip")),
        Some("eth0"),
    ))
    .await
    .expect("default v6");
    step(5);
    t
}

/// `ip netns exec <from> ping -c1 -W1 <addr>` (or an in-process raw ICMP echo when
/// iputils is not installed), retried twice so a loaded machine does not flake.
fn ping(from: &TestNs, addr: &str) -> bool {
    (0..3).any(|_| common::ping_once(from, addr))
}

#[tokio::test(flavor = "current_thread")]
async fn two_pods_on_a_bridge_can_ping() {
    let node_ns = TestNs::new("e2e-node");
    let pod_a = TestNs::new("e2e-a");
    let pod_b = TestNs::new("e2e-b");
    let node = NetlinkHandle::for_netns(&node_ns.path).await.expect("node");
    node.ensure_bridge(&bridge()).await.expect("bridge");
    node.enable_forwarding(true, true)
        .await
        .expect("forwarding");
    attach(&node, &pod_a, "vethe2ea", 2).await;
    attach(&node, &pod_b, "vethe2eb", 3).await;

    let ports = node.bridge_ports("hcbr0").await.expect("ports");
    assert_eq!(ports.len(), 2);

    assert!(ping(&pod_a, "198.51.100.3"), "a -> b (IPv4)");
    assert!(ping(&pod_b, "198.51.100.2"), "b -> a (IPv4)");
    assert!(ping(&pod_a, "198.51.100.1"), "a -> gateway (IPv4)");
    assert!(ping(&pod_a, "2001:db8:51::3"), "a -> b (IPv6)");
    assert!(ping(&pod_b, "2001:db8:51::1"), "b -> gateway (IPv6)");
    // The check is real: an address nobody has does not answer.
    assert!(!common::ping_once(&pod_a, "198.51.100.99"));
    // The library's raw-socket echo (the lab's reachability check) agrees with ping.
    assert!(
        common::raw_ping(&pod_b, "198.51.100.2"),
        "raw b -> a (IPv4)"
    );
    assert!(
        common::raw_ping(&pod_b, "2001:db8:51::2"),
        "raw b -> a (IPv6)"
    );
    assert!(
        !common::raw_ping(&pod_b, "2001:db8:51::99"),
        "raw to nobody"
    );

    // Teardown of one pod leaves the other attached.
    assert!(node.delete_link("vethe2ea").await.expect("delete"));
    assert_eq!(node.bridge_ports("hcbr0").await.expect("ports").len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn add_sequence_timing() {
    const PODS: usize = 12;
    let node_ns = TestNs::new("time-node");
    let node = NetlinkHandle::for_netns(&node_ns.path).await.expect("node");
    node.ensure_bridge(&bridge()).await.expect("bridge");
    let pods: Vec<TestNs> = (0..PODS)
        .map(|i| TestNs::new(&format!("time-{i}")))
        .collect();

    let mut in_place = Vec::new();
    let mut per_step: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    for (i, pod) in pods.iter().enumerate().take(PODS / 2) {
        let n = u8::try_from(10 + i).expect("small");
        let steps = attach(&node, pod, &format!("vethtm{i}"), n).await;
        in_place.push(steps.iter().sum());
        for (k, d) in steps.iter().enumerate() {
            per_step[k].push(*d);
        }
    }
    // The trait path: create_veth opens its own container handle, then a second handle
    // configures addresses and routes (what a naive caller would do).
    let mut via_trait = Vec::new();
    for (i, pod) in pods.iter().enumerate().skip(PODS / 2) {
        let n = u8::try_from(10 + i).expect("small");
        let start = Instant::now();
        node.create_veth(&veth(&format!("vethtm{i}"), pod))
            .await
            .expect("veth");
        let p = NetlinkHandle::for_netns(&pod.path).await.expect("pod");
        p.add_address("eth0", net(&format!("198.51.100.{n}/24")))
            .await
            .expect("v4");
        p.add_address("eth0", net(&format!("2001:db8:51::{n}/64")))
            .await
            .expect("v6");
        p.add_route(&RouteSpec::new(
            net("0.0.0.0/0"),
            Some("198.51.100.1".parse().expect("ip")),
            Some("eth0"),
        ))
        .await
        .expect("default");
        via_trait.push(start.elapsed());
    }
    let report = |label: &str, v: &mut Vec<Duration>| {
        v.sort();
        let us = |d: &Duration| d.as_micros();
        println!(
            "TIMING {label}: n={} min={}us median={}us max={}us",
            v.len(),
            v.first().map(us).unwrap_or_default(),
            v.get(v.len() / 2).map(us).unwrap_or_default(),
            v.last().map(us).unwrap_or_default()
        );
    };
    report(
        "create_veth_in + 2 addresses + 2 routes (one container handle)",
        &mut in_place,
    );
    report(
        "create_veth + 2 addresses + 1 route (two container handles)",
        &mut via_trait,
    );
    for (label, v) in STEPS.iter().zip(per_step.iter_mut()) {
        report(&format!("  step {label}"), v);
    }
    assert_eq!(node.bridge_ports("hcbr0").await.expect("ports").len(), PODS);
}
