//! Bridges, veth pairs and addresses in real, test-owned namespaces (run as root).
//!
//! Each test creates a "node" namespace (standing in for the host) and "pod" namespaces;
//! nothing is done in the namespace the test process runs in.

mod common;

use std::sync::Arc;

use common::TestNs;
use headcni_core::link::{BridgeSpec, LinkError, LinkManager, VethSpec};
use headcni_netlink::{NetlinkHandle, netns};
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test network literal")
}

fn bridge_spec(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.to_owned(),
        mtu: Some(1400),
        addresses: vec![net("198.51.100.1/24"), net("2001:db8:51::1/64")],
    }
}

fn veth_spec(host: &str, pod: &TestNs, master: Option<&str>, hairpin: bool) -> VethSpec {
    VethSpec {
        host_name: host.to_owned(),
        container_name: "eth0".to_owned(),
        container_netns: pod.path.clone(),
        mtu: Some(1380),
        container_mac: Some("02:42:0A:00:00:05".to_owned()),
        master: master.map(str::to_owned),
        hairpin,
    }
}

/// A socket in `ns` subscribed to `RTMGRP_LINK` (link notifications).
fn link_monitor(ns: &TestNs) -> Socket {
    netns::run_in_netns(&ns.path, || {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind(&SocketAddr::new(0, 1))?; // RTMGRP_LINK
        Ok::<_, std::io::Error>(s)
    })
    .expect("enter netns")
    .expect("monitor socket")
}

/// Names of all links mentioned in pending notifications on `s`.
fn drain_link_names(s: &Socket) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        match s.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return names,
            Err(e) => panic!("monitor recv: {e}"),
        }
        let mut off = 0;
        while off < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
                .expect("parse notification");
            let len = msg.header.length as usize;
            if let rtnetlink::packet_core::NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
            ) = msg.payload
            {
                names.extend(l.attributes.iter().filter_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }));
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn bridge_create_adopt_idempotent() {
    let node = TestNs::new("br");
    let h = NetlinkHandle::for_netns(&node.path).await.expect("handle");
    let spec = bridge_spec("hcbr0");

    let first = h.ensure_bridge(&spec).await.expect("create");
    assert_eq!(first.name, "hcbr0");
    assert_eq!(first.kind.as_deref(), Some("bridge"));
    assert_eq!(first.mtu, 1400);
    assert!(first.up);
    assert!(first.mac.is_some());
    let mut addrs = h.addresses("hcbr0").await.expect("addresses");
    addrs.sort();
    let mut want = spec.addresses.clone();
    want.sort();
    assert_eq!(addrs, want);

    let second = h.ensure_bridge(&spec).await.expect("idempotent");
    assert_eq!(second.index, first.index);
    assert_eq!(h.addresses("hcbr0").await.expect("addresses").len(), 2);

    // Adopt a bridge somebody else created (down, default MTU, no addresses).
    assert!(node.exec_ok(&["ip", "link", "add", "hcbr1", "type", "bridge"]));
    let adopted = h.ensure_bridge(&bridge_spec("hcbr1")).await.expect("adopt");
    assert!(adopted.up);
    assert_eq!(adopted.mtu, 1400);
    let read_back = h.link("hcbr1").await.expect("get").expect("exists");
    assert!(read_back.up);
    assert_eq!(read_back.mtu, 1400);
    assert_eq!(h.addresses("hcbr1").await.expect("addresses").len(), 2);

    // A non-bridge of that name is an error.
    assert!(node.exec_ok(&[
        "ip",
        "link",
        "add",
        "hcnotbr",
        "type",
        "veth",
        "peer",
        "name",
        "hcnotbr-p"
    ]));
    match h.ensure_bridge(&bridge_spec("hcnotbr")).await {
        Err(LinkError::Exists(n)) => assert_eq!(n, "hcnotbr"),
        other => panic!("expected Exists, got {other:?}"),
    }
}

async fn concurrent_bridges(node: &TestNs) {
    let spec = Arc::new(bridge_spec("hcbr0"));
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(Arc::new(
            NetlinkHandle::for_netns(&node.path).await.expect("handle"),
        ));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = handles
        .iter()
        .map(|h| {
            let (h, spec, barrier) = (h.clone(), spec.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                h.ensure_bridge(&spec).await
            })
        })
        .collect();
    let mut index = None;
    for t in tasks {
        let info = t.await.expect("join").expect("ensure_bridge");
        assert_eq!(*index.get_or_insert(info.index), info.index);
        assert!(info.up);
    }
    let h = &handles[0];
    let mut addrs = h.addresses("hcbr0").await.expect("addresses");
    addrs.sort();
    let mut want = spec.addresses.clone();
    want.sort();
    assert_eq!(addrs, want, "each address exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_concurrent_ensure_multi_thread() {
    let node = TestNs::new("brmt");
    concurrent_bridges(&node).await;
}

#[tokio::test(flavor = "current_thread")]
async fn bridge_concurrent_ensure_current_thread() {
    let node = TestNs::new("brct");
    concurrent_bridges(&node).await;
}

#[tokio::test(flavor = "current_thread")]
async fn veth_peer_created_in_place() {
    let node = TestNs::new("veth");
    let pod = TestNs::new("veth-pod");
    let h = NetlinkHandle::for_netns(&node.path)
        .await
        .expect("node handle");
    let bridge = h
        .ensure_bridge(&bridge_spec("hcbr0"))
        .await
        .expect("bridge");
    let monitor = link_monitor(&node);
    let _ = drain_link_names(&monitor);

    let pair = h
        .create_veth(&veth_spec("vethhc01", &pod, Some("hcbr0"), true))
        .await
        .expect("create veth");

    // Host end, in the node namespace.
    assert_eq!(pair.host.name, "vethhc01");
    assert_eq!(pair.host.mtu, 1380);
    assert_eq!(pair.host.master, Some(bridge.index));
    assert_eq!(pair.host.kind.as_deref(), Some("veth"));
    assert!(pair.host.up);
    assert!(pair.host.mac.is_some());
    assert!(h.hairpin("vethhc01").await.expect("hairpin"));
    let ports = h.bridge_ports("hcbr0").await.expect("ports");
    assert_eq!(
        ports.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["vethhc01"]
    );

    // Container end, in the pod namespace, under its final name.
    assert_eq!(pair.container.name, "eth0");
    assert_eq!(pair.container.mac.as_deref(), Some("02:42:0a:00:00:05"));
    assert_eq!(pair.container.mtu, 1380);
    assert!(pair.container.up);
    assert_eq!(pair.container.master, None);
    let p = NetlinkHandle::for_netns(&pod.path)
        .await
        .expect("pod handle");
    assert_eq!(
        p.link("eth0").await.expect("get"),
        Some(pair.container.clone())
    );
    assert!(p.link("vethhc01").await.expect("get").is_none());

    // The container end never existed in the node namespace, not even briefly.
    assert!(h.link("eth0").await.expect("get").is_none());
    let seen = drain_link_names(&monitor);
    assert!(
        seen.iter().any(|n| n == "vethhc01"),
        "monitor works: {seen:?}"
    );
    assert!(
        !seen.iter().any(|n| n == "eth0"),
        "peer seen in node ns: {seen:?}"
    );

    // Both ends are operationally usable: carrier is up on the container side.
    assert!(
        pod.exec_out(&["ip", "-o", "link", "show", "eth0"])
            .contains("LOWER_UP")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn veth_hairpin_off_and_no_master() {
    let node = TestNs::new("hpoff");
    let pod = TestNs::new("hpoff-pod");
    let pod2 = TestNs::new("hpoff-pod2");
    let h = NetlinkHandle::for_netns(&node.path)
        .await
        .expect("node handle");
    h.ensure_bridge(&bridge_spec("hcbr0"))
        .await
        .expect("bridge");
    let pair = h
        .create_veth(&veth_spec("vethhc02", &pod, Some("hcbr0"), false))
        .await
        .expect("create veth");
    assert!(!h.hairpin("vethhc02").await.expect("hairpin"));
    assert!(pair.host.master.is_some());

    // No master: plain veth, hairpin is not applicable.
    let mut spec = veth_spec("vethhc03", &pod2, None, true);
    spec.mtu = None;
    spec.container_mac = None;
    let pair = h.create_veth(&spec).await.expect("create veth");
    assert_eq!(pair.host.master, None);
    assert_eq!(pair.host.mtu, 1500);
    assert!(pair.container.mac.is_some());
    assert!(matches!(
        h.hairpin("vethhc03").await,
        Err(LinkError::Netlink { .. })
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn veth_exists_errors_leave_nothing_behind() {
    let node = TestNs::new("dup");
    let pod = TestNs::new("dup-pod");
    let h = NetlinkHandle::for_netns(&node.path)
        .await
        .expect("node handle");
    h.ensure_bridge(&bridge_spec("hcbr0"))
        .await
        .expect("bridge");
    h.create_veth(&veth_spec("vethhc04", &pod, Some("hcbr0"), true))
        .await
        .expect("first");

    // Same CNI_IFNAME in the same pod: the container name clashes.
    match h
        .create_veth(&veth_spec("vethhc05", &pod, Some("hcbr0"), true))
        .await
    {
        Err(LinkError::Exists(n)) => assert_eq!(n, "eth0"),
        other => panic!("expected Exists(eth0), got {other:?}"),
    }
    assert!(h.link("vethhc05").await.expect("get").is_none());

    // Same host name: the host name clashes; nothing appears in the other pod.
    let pod2 = TestNs::new("dup-pod2");
    match h
        .create_veth(&veth_spec("vethhc04", &pod2, Some("hcbr0"), true))
        .await
    {
        Err(LinkError::Exists(n)) => assert_eq!(n, "vethhc04"),
        other => panic!("expected Exists(vethhc04), got {other:?}"),
    }
    let p2 = NetlinkHandle::for_netns(&pod2.path).await.expect("pod2");
    assert!(p2.link("eth0").await.expect("get").is_none());

    // Missing master: NotFound, nothing created.
    match h
        .create_veth(&veth_spec("vethhc06", &pod2, Some("nobridge"), true))
        .await
    {
        Err(LinkError::NotFound(n)) => assert_eq!(n, "nobridge"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Invalid MAC / name: rejected before anything is created.
    let mut bad = veth_spec("vethhc07", &pod2, Some("hcbr0"), true);
    bad.container_mac = Some("not-a-mac".to_owned());
    assert!(matches!(
        h.create_veth(&bad).await,
        Err(LinkError::Netlink { .. })
    ));
    let mut bad = veth_spec("vethhc07-way-too-long", &pod2, Some("hcbr0"), true);
    bad.container_mac = None;
    assert!(matches!(
        h.create_veth(&bad).await,
        Err(LinkError::Netlink { .. })
    ));
    assert!(h.link("vethhc07").await.expect("get").is_none());
    assert!(p2.link("eth0").await.expect("get").is_none());
    assert_eq!(h.bridge_ports("hcbr0").await.expect("ports").len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn delete_link_missing_and_present() {
    let node = TestNs::new("del");
    let pod = TestNs::new("del-pod");
    let h = NetlinkHandle::for_netns(&node.path)
        .await
        .expect("node handle");
    assert!(!h.delete_link("nosuchlink").await.expect("delete missing"));
    let p = NetlinkHandle::for_netns(&pod.path)
        .await
        .expect("pod handle");
    h.create_veth_in(&veth_spec("vethhc08", &pod, None, false), &p)
        .await
        .expect("create");
    assert!(h.delete_link("vethhc08").await.expect("delete"));
    // Deleting the host end removes the container end too.
    assert!(p.link("eth0").await.expect("get").is_none());
    assert!(!h.delete_link("vethhc08").await.expect("delete again"));
    assert!(matches!(
        h.addresses("vethhc08").await,
        Err(LinkError::NotFound(_))
    ));
    assert!(matches!(
        h.add_address("vethhc08", net("198.51.100.9/24")).await,
        Err(LinkError::NotFound(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn addresses_ipv4_ipv6_idempotent() {
    let node = TestNs::new("addr");
    let pod = TestNs::new("addr-pod");
    let h = NetlinkHandle::for_netns(&node.path)
        .await
        .expect("node handle");
    let p = NetlinkHandle::for_netns(&pod.path)
        .await
        .expect("pod handle");
    h.create_veth_in(&veth_spec("vethhc09", &pod, None, false), &p)
        .await
        .expect("create");
    let v4 = net("198.51.100.5/24");
    let v6 = net("2001:db8:51::5/64");
    for _ in 0..2 {
        p.add_address("eth0", v4).await.expect("add v4");
        p.add_address("eth0", v6).await.expect("add v6");
    }
    let mut got = p.addresses("eth0").await.expect("addresses");
    got.sort();
    assert_eq!(got, vec![v4, v6], "no duplicates, no kernel link-local");
    // IFA_F_NODAD: the IPv6 address is not tentative.
    let show = pod.exec_out(&["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
    let line = show
        .lines()
        .find(|l| l.contains("2001:db8:51::5/64"))
        .unwrap_or_else(|| panic!("address missing: {show}"));
    assert!(
        line.contains("nodad") && !line.contains("tentative"),
        "{line}"
    );
    // Same IPv6 address with another prefix is not "identical".
    assert!(matches!(
        p.add_address("eth0", net("2001:db8:51::5/96")).await,
        Err(LinkError::Netlink { .. })
    ));
    // A second IPv4 address in another subnet is fine.
    p.add_address("eth0", net("203.0.113.5/24"))
        .await
        .expect("second v4");
    assert_eq!(p.addresses("eth0").await.expect("addresses").len(), 3);
}

/// The ownership mark operations: an alias set on an existing link, read back by `link`,
/// found by `links_with_alias`; the veth peer's index and namespace id in `LinkInfo`.
#[tokio::test(flavor = "current_thread")]
async fn alias_mark_and_veth_peer() {
    let node = TestNs::new("alias");
    let pod = TestNs::new("alias-pod");
    let h = NetlinkHandle::for_netns(&node.path).await.expect("handle");
    let c = NetlinkHandle::for_netns(&pod.path)
        .await
        .expect("pod handle");
    h.ensure_bridge(&bridge_spec("hcbr0"))
        .await
        .expect("bridge");
    let pair = h
        .create_veth(&veth_spec("vethhcal", &pod, Some("hcbr0"), false))
        .await
        .expect("veth");
    assert_eq!(pair.host.alias, None);

    let mark = format!("headcni:v1:{}", "ab".repeat(32));
    h.set_alias("vethhcal", &mark).await.expect("set alias");
    let host = h.link("vethhcal").await.expect("get").expect("exists");
    assert_eq!(host.alias.as_deref(), Some(mark.as_str()));
    assert!(
        node.exec_out(&["ip", "link", "show", "vethhcal"])
            .contains(&mark),
        "ip link does not show the alias"
    );
    let found = h.links_with_alias(&mark).await.expect("dump");
    assert_eq!(
        found.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["vethhcal"]
    );
    assert!(
        h.links_with_alias("headcni:v1:none")
            .await
            .expect("dump")
            .is_empty()
    );
    let ports = h.bridge_ports("hcbr0").await.expect("ports");
    assert_eq!(ports[0].alias.as_deref(), Some(mark.as_str()));

    // each end names the other as its peer, in another namespace
    let eth0 = c.link("eth0").await.expect("get").expect("exists");
    assert_eq!(host.peer_index, Some(eth0.index));
    assert_eq!(eth0.peer_index, Some(host.index));
    assert!(host.link_netnsid.is_some() && eth0.link_netnsid.is_some());
    let bridge = h.link("hcbr0").await.expect("get").expect("exists");
    assert_eq!((bridge.peer_index, bridge.link_netnsid), (None, None));

    // the longest alias the kernel takes, and the bounds
    let longest = "m".repeat(254);
    h.set_alias("vethhcal", &longest).await.expect("254 bytes");
    let got = h.link("vethhcal").await.expect("get").expect("exists");
    assert_eq!(got.alias.as_deref(), Some(longest.as_str()));
    for bad in [String::new(), "m".repeat(255), "a\0b".to_owned()] {
        assert!(
            matches!(
                h.set_alias("vethhcal", &bad).await,
                Err(LinkError::Netlink { .. })
            ),
            "alias of {} bytes accepted",
            bad.len()
        );
    }
    assert!(matches!(
        h.set_alias("vethnone", &mark).await,
        Err(LinkError::NotFound(n)) if n == "vethnone"
    ));
}
