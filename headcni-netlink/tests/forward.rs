//! `headcni_netlink::forward` on the real iptables tools, both backends, in private network
//! namespaces: a router namespace whose `filter FORWARD` policy is `DROP` (as Docker leaves
//! a host) forwards between a "pod" namespace and a "peer" namespace only once HeadCNI's
//! accept rules are in place. Needs root.

use headcni_core::node::forward::{CHAIN, COMMENT};
use headcni_netlink::forward::{self, Backend};
use headcni_testkit::netns::Ns;
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// pod (10.77.1.2/24) — router (10.77.1.1, 10.77.2.1, FORWARD DROP) — peer (10.77.2.2/24).
struct Bed {
    pod: Ns,
    router: Ns,
    peer: Ns,
}

fn bed(tag: &str, backend: Backend) -> Bed {
    let pod = Ns::new(tag, "pod");
    let router = Ns::new(tag, "rt");
    let peer = Ns::new(tag, "peer");
    for (ns, me, gw, side) in [
        (&pod, "10.77.1.2/24", "10.77.1.1", "hra"),
        (&peer, "10.77.2.2/24", "10.77.2.1", "hrb"),
    ] {
        router.exec_ok(&[
            "ip", "link", "add", "name", side, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.name,
        ]);
        let rt_addr = if side == "hra" {
            "10.77.1.1/24"
        } else {
            "10.77.2.1/24"
        };
        router.exec_ok(&["ip", "addr", "add", rt_addr, "dev", side]);
        router.exec_ok(&["ip", "link", "set", side, "up"]);
        ns.exec_ok(&["ip", "addr", "add", me, "dev", "eth0"]);
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns.exec_ok(&["ip", "route", "add", "default", "via", gw]);
    }
    router.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let (ipt, _) = backend.programs(headcni_core::node::forward::IpFamily::V4);
    router.exec_ok(&[ipt, "-w", "5", "-P", "FORWARD", "DROP"]);
    Bed { pod, router, peer }
}

/// One echo, one second: a negative check need not retry (a positive one does, `Ns::ping`).
fn dropped(pod: &Ns) -> bool {
    !pod.exec(&["ping", "-n", "-c1", "-W1", "10.77.2.2"])
        .status
        .success()
}

fn forward_rules(router: &Ns, backend: Backend) -> String {
    let (ipt, _) = backend.programs(headcni_core::node::forward::IpFamily::V4);
    router.stdout(&[ipt, "-w", "5", "-S"])
}

fn accepts_pod_traffic_under_a_drop_policy(backend: Backend, tag: &str) {
    let b = bed(tag, backend);
    assert!(
        dropped(&b.pod),
        "FORWARD DROP must drop before HeadCNI's rules"
    );
    let cidrs = [net("10.77.1.0/24")];

    let r = b.router.run(|| forward::ensure(backend, &cidrs)).unwrap();
    assert!(r.changed);
    assert!(r.policies.iter().any(|(_, p)| p == "DROP"), "{r:?}");
    assert!(
        b.pod.ping("10.77.2.2"),
        "pod → peer and back through FORWARD DROP"
    );
    let rules = forward_rules(&b.router, backend);
    assert!(
        rules.contains(&format!(
            "-A FORWARD -m comment --comment {COMMENT} -j {CHAIN}"
        )),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("-A {CHAIN} -s 10.77.1.0/24 ")),
        "{rules}"
    );

    // in place: nothing written, the jump not duplicated
    let again = b.router.run(|| forward::ensure(backend, &cidrs)).unwrap();
    assert!(!again.changed);
    assert_eq!(
        forward_rules(&b.router, backend)
            .matches(&format!("-j {CHAIN}"))
            .count(),
        1
    );

    // a rule deleted behind HeadCNI's back is put back
    let (ipt, _) = backend.programs(headcni_core::node::forward::IpFamily::V4);
    b.router.exec_ok(&[ipt, "-w", "5", "-F", CHAIN]);
    assert!(dropped(&b.pod));
    assert!(
        b.router
            .run(|| forward::ensure(backend, &cidrs))
            .unwrap()
            .changed
    );
    assert!(b.pod.ping("10.77.2.2"));

    // a changed CIDR replaces the rule set, the old CIDR's rules go
    let moved = [net("10.77.9.0/24")];
    assert!(
        b.router
            .run(|| forward::ensure(backend, &moved))
            .unwrap()
            .changed
    );
    assert!(!forward_rules(&b.router, backend).contains("10.77.1.0/24"));
    assert!(dropped(&b.pod));

    // uninstall removes the jump and the chain, and only them
    assert!(b.router.run(|| forward::remove(backend)).unwrap());
    let rules = forward_rules(&b.router, backend);
    assert!(!rules.contains(CHAIN), "{rules}");
    assert!(rules.contains("-P FORWARD DROP"), "{rules}");
    assert!(
        !b.router.run(|| forward::remove(backend)).unwrap(),
        "second remove finds nothing"
    );
    drop(b.peer);
}

#[test]
fn nft_backend_accepts_pod_traffic_under_a_drop_policy() {
    accepts_pod_traffic_under_a_drop_policy(Backend::Nft, "fwn");
}

#[test]
fn legacy_backend_accepts_pod_traffic_under_a_drop_policy() {
    accepts_pod_traffic_under_a_drop_policy(Backend::Legacy, "fwl");
}

#[test]
fn backend_detection_follows_the_rules_present() {
    let ns = Ns::new("fwd", "det");
    // an empty namespace: nft on a tie
    assert_eq!(ns.run(forward::detect_backend), Backend::Nft);
    // more legacy rules → legacy
    ns.exec_ok(&[
        "iptables-legacy",
        "-w",
        "5",
        "-A",
        "INPUT",
        "-s",
        "10.1.0.0/16",
        "-j",
        "ACCEPT",
    ]);
    assert_eq!(ns.run(forward::detect_backend), Backend::Legacy);
    // kubelet's hint chain in nft wins over the rule count
    ns.exec_ok(&[
        "iptables-nft",
        "-w",
        "5",
        "-t",
        "mangle",
        "-N",
        "KUBE-IPTABLES-HINT",
    ]);
    assert_eq!(ns.run(forward::detect_backend), Backend::Nft);
}

#[test]
fn a_foreign_nft_forward_drop_is_reported() {
    let ns = Ns::new("fwd", "foreign");
    assert!(
        ns.run(|| forward::foreign_forward_drops("headcni"))
            .unwrap()
            .is_empty()
    );
    ns.exec_ok(&["nft", "add table inet hctfw"]);
    ns.exec_ok(&[
        "nft",
        "add chain inet hctfw fwdrop { type filter hook forward priority 0; policy drop; }",
    ]);
    assert_eq!(
        ns.run(|| forward::foreign_forward_drops("headcni"))
            .unwrap(),
        vec!["inet hctfw fwdrop".to_owned()]
    );
}
