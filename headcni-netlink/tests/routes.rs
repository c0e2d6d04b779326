//! Routes in a test-owned pod namespace (run as root).

mod common;

use common::TestNs;
use headcni_core::link::{LinkError, LinkManager, RouteManager, RouteScope, RouteSpec, VethSpec};
use headcni_netlink::NetlinkHandle;
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test network literal")
}

/// Node + pod namespaces, a veth whose `eth0` end has 198.51.100.5/24 and
/// 2001:db8:51::5/64; returns the pod handle.
async fn pod_with_eth0(node: &TestNs, pod: &TestNs) -> NetlinkHandle {
    let h = NetlinkHandle::for_netns(&node.path).await.expect("node");
    let p = NetlinkHandle::for_netns(&pod.path).await.expect("pod");
    h.create_veth_in(
        &VethSpec {
            host_name: "vethrt0".to_owned(),
            container_name: "eth0".to_owned(),
            container_netns: pod.path.clone(),
            mtu: None,
            container_mac: None,
            master: None,
            hairpin: false,
        },
        &p,
    )
    .await
    .expect("veth");
    p.add_address("eth0", net("198.51.100.5/24"))
        .await
        .expect("v4");
    p.add_address("eth0", net("2001:db8:51::5/64"))
        .await
        .expect("v6");
    p
}

#[tokio::test(flavor = "current_thread")]
async fn routes_add_dup_list_delete() {
    let node = TestNs::new("rt");
    let pod = TestNs::new("rt-pod");
    let p = pod_with_eth0(&node, &pod).await;

    let default4 = RouteSpec::new(
        net("0.0.0.0/0"),
        Some("198.51.100.1".parse().expect("ip")),
        Some("eth0"),
    );
    p.add_route(&default4).await.expect("add default");
    p.add_route(&default4).await.expect("identical add is ok");

    let mut extra = RouteSpec::new(net("203.0.113.0/24"), None, Some("eth0"));
    extra.metric = Some(50);
    extra.mtu = Some(1300);
    p.add_route(&extra).await.expect("add device route");
    p.add_route(&extra).await.expect("identical add is ok");

    let default6 = RouteSpec::new(
        net("::/0"),
        Some("2001:db8:51::1".parse().expect("ip")),
        Some("eth0"),
    );
    p.add_route(&default6).await.expect("add v6 default");

    let routes = p.routes(Some("eth0")).await.expect("routes");
    let find = |dst: &str| {
        routes
            .iter()
            .find(|r| r.dst == net(dst))
            .unwrap_or_else(|| panic!("{dst} missing in {routes:?}"))
    };
    let d = find("0.0.0.0/0");
    assert_eq!(d.gateway, default4.gateway);
    assert_eq!(d.dev.as_deref(), Some("eth0"));
    assert_eq!(d.table, None);
    assert_eq!(d.scope, Some(RouteScope::Global));
    let e = find("203.0.113.0/24");
    assert_eq!(e.gateway, None);
    assert_eq!(e.metric, Some(50));
    assert_eq!(e.mtu, Some(1300));
    assert_eq!(e.scope, Some(RouteScope::Link));
    // The kernel's connected routes are listed too.
    let connected = find("198.51.100.0/24");
    assert_eq!(connected.scope, Some(RouteScope::Link));
    let d6 = find("::/0");
    assert_eq!(d6.gateway, default6.gateway);
    assert_eq!(d6.metric, Some(1024));
    let shown = pod.exec_out(&["ip", "route", "show", "default"]);
    assert!(shown.contains("via 198.51.100.1 dev eth0"), "{shown}");

    // All-device listing resolves names.
    let all = p.routes(None).await.expect("all routes");
    assert!(
        all.iter().all(|r| r.dev.as_deref() == Some("eth0")),
        "{all:?}"
    );

    // A different default route is a conflict, not success.
    let other = RouteSpec::new(
        net("0.0.0.0/0"),
        Some("198.51.100.2".parse().expect("ip")),
        Some("eth0"),
    );
    assert!(matches!(
        p.add_route(&other).await,
        Err(LinkError::Netlink { .. })
    ));

    assert!(p.delete_route(&default4).await.expect("delete"));
    assert!(!p.delete_route(&default4).await.expect("delete missing"));
    assert!(p.delete_route(&extra).await.expect("delete"));
    assert!(p.delete_route(&default6).await.expect("delete v6"));
    assert!(!p.delete_route(&default6).await.expect("delete v6 missing"));
    let left = p.routes(Some("eth0")).await.expect("routes");
    assert!(
        !left
            .iter()
            .any(|r| r.dst.prefix() == 0 || r.dst == net("203.0.113.0/24")),
        "{left:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn routes_in_other_tables() {
    let node = TestNs::new("rttab");
    let pod = TestNs::new("rttab-pod");
    let p = pod_with_eth0(&node, &pod).await;
    for table in [100u32, 1000] {
        let mut r = RouteSpec::new(
            net("192.0.2.0/24"),
            Some("198.51.100.1".parse().expect("ip")),
            Some("eth0"),
        );
        r.table = Some(table);
        p.add_route(&r).await.expect("add in table");
        p.add_route(&r).await.expect("identical add in table");
        let shown = pod.exec_out(&["ip", "route", "show", "table", &table.to_string()]);
        assert!(
            shown.contains("192.0.2.0/24 via 198.51.100.1 dev eth0"),
            "table {table}: {shown}"
        );
        // routes() lists the main table only.
        let main = p.routes(Some("eth0")).await.expect("routes");
        assert!(
            !main.iter().any(|m| m.dst == net("192.0.2.0/24")),
            "{main:?}"
        );
        // Deleting from main does not touch the other table.
        let mut in_main = r.clone();
        in_main.table = None;
        assert!(!p.delete_route(&in_main).await.expect("delete from main"));
        assert!(p.delete_route(&r).await.expect("delete from table"));
        assert!(!p.delete_route(&r).await.expect("delete again"));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn route_errors() {
    let node = TestNs::new("rterr");
    let pod = TestNs::new("rterr-pod");
    let p = pod_with_eth0(&node, &pod).await;
    let r = RouteSpec::new(net("192.0.2.0/24"), None, Some("nosuchdev"));
    assert!(matches!(p.add_route(&r).await, Err(LinkError::NotFound(_))));
    assert!(
        !p.delete_route(&r)
            .await
            .expect("missing dev means no route")
    );
    assert!(matches!(
        p.routes(Some("nosuchdev")).await,
        Err(LinkError::NotFound(_))
    ));
    let mismatch = RouteSpec::new(
        net("192.0.2.0/24"),
        Some("2001:db8:51::1".parse().expect("ip")),
        Some("eth0"),
    );
    assert!(matches!(
        p.add_route(&mismatch).await,
        Err(LinkError::Netlink { .. })
    ));
    // Unreachable gateway: the kernel's error is reported with the operation.
    let unreachable = RouteSpec::new(
        net("192.0.2.0/24"),
        Some("203.0.113.1".parse().expect("ip")),
        Some("eth0"),
    );
    match p.add_route(&unreachable).await {
        Err(LinkError::Netlink { op, .. }) => assert!(op.contains("192.0.2.0/24"), "{op}"),
        other => panic!("expected Netlink error, got {other:?}"),
    }
    // Host bits in the destination are cleared rather than rejected.
    let host_bits = RouteSpec::new(net("192.0.2.7/24"), None, Some("eth0"));
    p.add_route(&host_bits).await.expect("normalized dst");
    assert!(p.delete_route(&host_bits).await.expect("delete"));
}

/// Concurrent dumps on one handle take turns: the kernel refuses a second `NLM_F_DUMP` on a
/// socket while one is running (`EBUSY`), and `routes(None)` itself dumps both families.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dumps_on_one_handle() {
    let node = TestNs::new("dumpn");
    let pod = TestNs::new("dumpp");
    let p = std::sync::Arc::new(pod_with_eth0(&node, &pod).await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let (routes, addrs) = tokio::join!(p.routes(None), p.addresses("eth0"));
            (routes.map(|r| r.len()), addrs.map(|a| a.len()))
        }));
    }
    for t in tasks {
        let (routes, addrs) = t.await.expect("task");
        assert!(
            routes.expect("routes dump") >= 2,
            "the connected v4 and v6 routes"
        );
        assert_eq!(addrs.expect("address dump"), 2);
    }
}
