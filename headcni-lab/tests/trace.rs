//! `headcni lab trace` on a running lab: the hops it reports are the ones the data path
//! takes (cross-node over tailscale0 with table 52, egress masqueraded on the node).
//! Needs root and the workspace's binaries, as tests/e2e.rs.

use std::net::IpAddr;

use headcni_lab::cluster::{INET_ADDR, Lab, LabSpec};
use headcni_lab::trace::{Hop, Probe, trace};

/// Tears the lab down when dropped, also when an assertion fails.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.0) {
            eprintln!("lab down {}: {e:#}", self.0);
        }
    }
}

fn find<'a>(hops: &'a [Hop], at: &str, reply: bool) -> &'a Hop {
    hops.iter()
        .find(|h| h.at == at && h.reply == reply)
        .unwrap_or_else(|| panic!("no {at} hop (reply {reply}) in {hops:#?}"))
}

#[test]
fn trace_shows_the_cross_node_path_and_the_egress_masquerade() {
    let name = format!("trace{}", std::process::id());
    let _ = Lab::down(&name);
    let _guard = Guard(name.clone());
    let mut spec = LabSpec::new(&name).expect("spec");
    spec.nodes = 2;
    spec.pods = 1;
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    let p11 = lab.pod("pod-1-1").expect("pod-1-1").ip.expect("ip");
    let p21 = lab.pod("pod-2-1").expect("pod-2-1").ip.expect("ip");

    // pod → pod across nodes: out of node-1 on tailscale0 through table 52, into node-2 on
    // tailscale0, delivered in pod-2-1 with the source pod IP kept; the reply comes back.
    let t = trace(&lab, "pod-1-1", "pod-2-1", Probe::Icmp).expect("trace");
    assert!(t.answered.is_some(), "{t:#?}");
    let order: Vec<(&str, bool)> = t.hops.iter().map(|h| (h.at.as_str(), h.reply)).collect();
    assert_eq!(
        order,
        [
            ("pod-1-1", false),
            ("node-1", false),
            ("node-2", false),
            ("pod-2-1", false),
            ("pod-2-1", true),
            ("node-2", true),
            ("node-1", true),
            ("pod-1-1", true),
        ],
        "{t:#?}"
    );
    let n1 = find(&t.hops, "node-1", false);
    assert_eq!(n1.iif.as_deref(), Some("headcni0"));
    assert_eq!(n1.oif.as_deref(), Some("tailscale0"));
    let n2 = find(&t.hops, "node-2", false);
    assert_eq!(n2.iif.as_deref(), Some("tailscale0"));
    assert_eq!(n2.oif.as_deref(), Some("headcni0"));
    let delivered = find(&t.hops, "pod-2-1", false);
    assert_eq!(
        delivered.last,
        (Some(IpAddr::V4(p11)), Some(IpAddr::V4(p21))),
        "the source pod IP is kept"
    );
    let route = t
        .routes
        .iter()
        .find(|(at, lookup, _)| at == "node-1" && lookup.contains("iif headcni0"))
        .unwrap_or_else(|| panic!("no node-1 route lookup: {:#?}", t.routes));
    assert!(
        route.2.contains("dev tailscale0") && route.2.contains("table 52"),
        "{route:?}"
    );

    // pod → the internet: node-1 forwards it out of eth0 through HeadCNI's masquerade, and
    // the internet sees node-1's underlay address.
    let t = trace(&lab, "pod-1-1", "inet", Probe::Icmp).expect("trace");
    assert!(t.answered.is_some(), "{t:#?}");
    let n1 = find(&t.hops, "node-1", false);
    assert_eq!(n1.oif.as_deref(), Some("eth0"));
    assert!(
        n1.rules
            .iter()
            .any(|(chain, rule, _)| chain == "inet headcni postrouting"
                && rule.contains("masquerade")),
        "{n1:#?}"
    );
    let inet = find(&t.hops, "inet", false);
    let node1 = lab.nodes()[&1].underlay;
    assert_eq!(
        inet.last,
        (Some(IpAddr::V4(node1)), Some(IpAddr::V4(INET_ADDR)))
    );
    assert!(headcni_lab::trace::render(&t).contains("masquerade"));

    // Nothing of the trace is left behind.
    let (mut cmd, fds) = lab.command("node-1", "nft").expect("cmd");
    let out = cmd.args(["list", "tables"]).output().expect("nft");
    drop(fds);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("headcni_lab_trace"));
}
