//! ADD / CHECK / DEL through the real CNI protocol, with the kernel state verified with
//! iproute2 inside the test's own namespaces.

mod common;

use std::time::Duration;

use common::{CniEnv, Net, Ns, eventually, in_subnet, mode};
use headcni_core::plugin::host_veth_name;
use serde_json::{Value, json};

/// ADD → CHECK → DEL → CHECK-after-DEL fails → DEL again, in one CNI version.
fn lifecycle(version: &str, tag: &str, octet: u8) {
    let net = Net::new(tag, octet);
    let pod = net.pod("pod");
    let conf = net.conf(version);
    let cid = format!("cid-{tag}");
    let has_check = version != "0.3.0" && version != "0.3.1";

    // ---- ADD
    let out = net.add(&conf, &cid, &pod);
    let res = out.ok("ADD");
    assert_eq!(res["cniVersion"], version, "result version: {out}");
    let ifs = res["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no interfaces: {out}"));
    assert_eq!(ifs.len(), 3, "bridge, host veth, pod interface: {out}");
    let host_veth = host_veth_name(&cid, "eth0");
    assert_eq!(
        ifs[0]["name"],
        net.bridge.as_str(),
        "interfaces[0] is the bridge: {out}"
    );
    assert_eq!(
        ifs[1]["name"],
        host_veth.as_str(),
        "interfaces[1] is the host veth: {out}"
    );
    assert_eq!(
        ifs[2]["name"], "eth0",
        "interfaces[2] is the pod interface: {out}"
    );
    assert_eq!(
        ifs[2]["sandbox"],
        pod.path_str().as_str(),
        "pod interface sandbox == CNI_NETNS: {out}"
    );
    for i in &ifs[..2] {
        assert!(
            i["sandbox"].as_str().is_none_or(str::is_empty),
            "host interfaces have no sandbox: {out}"
        );
    }
    for i in ifs {
        assert!(
            i["mac"].as_str().is_some_and(|m| m.len() == 17),
            "every interface has a MAC: {out}"
        );
        if version == "1.1.0" {
            assert_eq!(
                i["mtu"], 1400,
                "1.1.0 results carry the interface MTU: {out}"
            );
        } else {
            assert!(
                i.get("mtu").is_none(),
                "interface mtu is a 1.1.0 key: {out}"
            );
        }
    }
    let ips = res["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips: {out}"));
    assert_eq!(ips.len(), 1, "{out}");
    assert_eq!(
        ips[0]["interface"], 2,
        "ips[].interface points at the pod interface: {out}"
    );
    assert_eq!(ips[0]["gateway"], net.gateway().as_str(), "{out}");
    if version.starts_with("0.") {
        assert_eq!(ips[0]["version"], "4", "ips[].version below 1.0.0: {out}");
    } else {
        assert!(
            ips[0].get("version").is_none(),
            "no ips[].version from 1.0.0 on: {out}"
        );
    }
    let addr = ips[0]["address"].as_str().expect("address");
    assert!(
        addr.ends_with("/24"),
        "address carries the subnet prefix: {out}"
    );
    let ip = Net::result_ip(&res);
    assert!(in_subnet(&ip, octet), "{ip} not in {}: {out}", net.subnet());
    assert_ne!(ip, net.gateway(), "the gateway is never handed out");
    assert!(
        res["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["dst"] == "0.0.0.0/0")),
        "isDefaultGateway puts a default route in the result: {out}"
    );

    // ---- kernel state
    let pod_eth0 = pod
        .link("eth0")
        .unwrap_or_else(|| panic!("no eth0 in the pod netns"));
    assert_eq!(pod_eth0["mtu"], 1400, "pod eth0 MTU: {pod_eth0}");
    assert_eq!(
        pod_eth0["address"], ifs[2]["mac"],
        "pod eth0 MAC as in the result"
    );
    assert!(
        pod_eth0["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "eth0 is up: {pod_eth0}"
    );
    assert_eq!(
        pod.addresses("eth0").unwrap_or_default(),
        vec![addr.to_owned()],
        "eth0 holds exactly the result's address"
    );
    let hv = net
        .node
        .link(&host_veth)
        .unwrap_or_else(|| panic!("host veth {host_veth} missing in the node netns"));
    assert_eq!(hv["mtu"], 1400, "host veth MTU: {hv}");
    assert_eq!(
        hv["master"],
        net.bridge.as_str(),
        "host veth is a port of the bridge: {hv}"
    );
    assert_eq!(net.node.bridge_ports(&net.bridge), vec![host_veth.clone()]);
    let br = net
        .node
        .link(&net.bridge)
        .unwrap_or_else(|| panic!("bridge missing in the node netns"));
    assert_eq!(br["mtu"], 1400, "bridge MTU: {br}");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge", "{br}");
    assert!(
        net.node
            .addresses(&net.bridge)
            .unwrap_or_default()
            .contains(&format!("{}/24", net.gateway())),
        "isGateway puts the gateway on the bridge: {:?}",
        net.node.addresses(&net.bridge)
    );
    let defaults = pod.routes(&["default"]);
    assert!(
        defaults
            .iter()
            .any(|r| r["gateway"] == net.gateway().as_str() && r["dev"] == "eth0"),
        "default route via the gateway in the pod: {defaults:?}"
    );
    assert!(
        net.node.link("eth0").is_none(),
        "eth0 must not appear in the node netns"
    );

    // ---- the reservation
    let file = net.store().join(&ip);
    let content =
        std::fs::read(&file).unwrap_or_else(|e| panic!("reservation {}: {e}", file.display()));
    assert_eq!(
        content,
        format!("{cid}\r\neth0").into_bytes(),
        "reservation content"
    );
    assert_eq!(mode(&file), 0o600, "reservation file mode");
    assert_eq!(mode(&net.store()), 0o700, "store directory mode");
    assert_eq!(net.reservations().len(), 1, "{:?}", net.reservations());

    // ---- CHECK
    let out = net.check(&conf, &cid, &pod, &res);
    if has_check {
        out.ok("CHECK after ADD");
        // CHECK really looks: an address removed behind the plugin's back is found.
        pod.exec_ok(&["ip", "addr", "del", addr, "dev", "eth0"]);
        let bad = net.check(&conf, &cid, &pod, &res);
        bad.err_code(106, "CHECK with the address removed");
        pod.exec_ok(&["ip", "addr", "add", addr, "dev", "eth0"]);
        pod.exec_ok(&[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &net.gateway(),
            "dev",
            "eth0",
        ]);
        net.check(&conf, &cid, &pod, &res)
            .ok("CHECK after restoring the address");
    } else {
        out.err_code(1, "CHECK is not in 0.3.x");
    }

    // ---- DEL
    let prev = if version.starts_with("0.3") {
        None
    } else {
        Some(&res)
    };
    net.del(&conf, &cid, &pod.path_str(), prev).ok("DEL");
    assert!(pod.link("eth0").is_none(), "DEL removes eth0");
    assert!(
        eventually(Duration::from_secs(5), || net
            .node
            .link(&host_veth)
            .is_none()),
        "DEL removes the host veth"
    );
    assert!(
        net.node.bridge_ports(&net.bridge).is_empty(),
        "no port left on the bridge"
    );
    assert!(!file.exists(), "DEL releases the reservation");
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());

    // ---- CHECK after DEL fails
    let out = net.check(&conf, &cid, &pod, &res);
    if has_check {
        out.err("CHECK after DEL");
    } else {
        out.err_code(1, "CHECK is not in 0.3.x");
    }

    // ---- DEL again
    net.del(&conf, &cid, &pod.path_str(), prev).ok("second DEL");
    net.del(&conf, &cid, &pod.path_str(), None)
        .ok("third DEL, no prevResult");
}

#[test]
fn lifecycle_1_1_0() {
    lifecycle("1.1.0", "life110", 11);
}

#[test]
fn lifecycle_1_0_0() {
    lifecycle("1.0.0", "life100", 12);
}

#[test]
fn lifecycle_0_4_0() {
    lifecycle("0.4.0", "life040", 13);
}

#[test]
fn lifecycle_0_3_1() {
    lifecycle("0.3.1", "life031", 14);
}

#[test]
fn pods_reach_each_other_and_the_gateway() {
    let net = Net::new("ping", 20);
    let conf = net.conf("1.1.0");
    let a = net.pod("a");
    let b = net.pod("b");
    let ra = net.add_ok(&conf, "cid-ping-a", &a);
    let rb = net.add_ok(&conf, "cid-ping-b", &b);
    let (ipa, ipb) = (Net::result_ip(&ra), Net::result_ip(&rb));
    assert_ne!(ipa, ipb);
    assert!(a.ping(&ipb), "pod a cannot reach pod b ({ipb})");
    assert!(b.ping(&ipa), "pod b cannot reach pod a ({ipa})");
    assert!(a.ping(&net.gateway()), "pod a cannot reach the gateway");
    assert!(b.ping(&net.gateway()), "pod b cannot reach the gateway");
    // Control: after b's DEL, a can no longer reach b's address.
    net.del(&conf, "cid-ping-b", &b.path_str(), Some(&rb))
        .ok("DEL b");
    assert!(
        !a.exec(&["ping", "-n", "-c1", "-W1", &ipb]).status.success(),
        "ping to a deleted pod succeeded"
    );
    assert!(
        a.ping(&net.gateway()),
        "pod a lost the gateway after b's DEL"
    );
    net.del(&conf, "cid-ping-a", &a.path_str(), Some(&ra))
        .ok("DEL a");
}

/// The bridge's MAC must not follow its ports: a Linux bridge whose address was never set
/// takes the lowest port MAC, so it changes whenever pods come and go and every pod's ARP
/// entry for the gateway goes stale (the reference bridge plugin pins it for that reason).
#[test]
fn bridge_mac_is_stable_and_reported() {
    let net = Net::new("brmac", 24);
    let conf = net.conf("1.1.0");
    let mac = |net: &Net| {
        net.node.link(&net.bridge).expect("bridge")["address"]
            .as_str()
            .expect("mac")
            .to_owned()
    };
    let pods: Vec<Ns> = (0..3).map(|i| net.pod(&format!("p{i}"))).collect();
    let mut results = Vec::new();
    let mut seen = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let r = net.add_ok(&conf, &format!("cid-brmac-{i}"), p);
        seen.push(format!(
            "after ADD {i}: bridge {} (result says {})",
            mac(&net),
            r["interfaces"][0]["mac"]
        ));
        assert_eq!(
            r["interfaces"][0]["mac"],
            mac(&net).as_str(),
            "ADD {i} result's bridge MAC is not the bridge's MAC: {seen:?}"
        );
        results.push(r);
    }
    let first = mac(&net);
    for (i, (p, r)) in pods.iter().zip(&results).enumerate().rev() {
        net.del(&conf, &format!("cid-brmac-{i}"), &p.path_str(), Some(r))
            .ok("DEL");
        seen.push(format!("after DEL {i}: bridge {}", mac(&net)));
    }
    assert!(
        seen.iter().all(|s| s.contains(&first)),
        "the bridge MAC changed with its ports: {seen:?}"
    );
    assert_eq!(
        mac(&net),
        first,
        "the bridge MAC changed with its ports: {seen:?}"
    );
}

#[test]
fn del_with_empty_netns_releases_everything() {
    let net = Net::new("delempty", 21);
    let conf = net.conf("1.1.0");
    let pod = net.pod("pod");
    let cid = "cid-delempty";
    let res = net.add_ok(&conf, cid, &pod);
    let ip = Net::result_ip(&res);
    assert!(net.store().join(&ip).exists());
    net.del(&conf, cid, "", None).ok("DEL with empty CNI_NETNS");
    assert!(
        net.reservations().is_empty(),
        "reservation left: {:?}",
        net.reservations()
    );
    let hv = host_veth_name(cid, "eth0");
    assert!(
        eventually(Duration::from_secs(5), || net.node.link(&hv).is_none()),
        "host veth left after DEL with empty netns"
    );
    assert!(pod.link("eth0").is_none(), "the pair is gone, so is eth0");
    net.del(&conf, cid, "", None)
        .ok("repeated DEL with empty CNI_NETNS");
    net.del(&conf, cid, &pod.path_str(), Some(&res))
        .ok("DEL with the netns afterwards");
    // The address is free again: a new pod can get it with IP=.
    let pod2 = net.pod("pod2");
    let out = net.run(
        &CniEnv::attach(
            "ADD",
            "cid-delempty-2",
            &pod2.path_str(),
            "eth0",
            &net.cni_path(),
        )
        .with_args(&format!("IgnoreUnknown=1;IP={ip}")),
        &conf,
    );
    assert_eq!(Net::result_ip(&out.ok("ADD of the released address")), ip);
}

#[test]
fn del_after_netns_deleted_releases_everything() {
    let net = Net::new("delgone", 22);
    let conf = net.conf("1.0.0");
    let pod = net.pod("pod");
    let cid = "cid-delgone";
    let res = net.add_ok(&conf, cid, &pod);
    let ip = Net::result_ip(&res);
    let path = pod.path_str();
    drop(pod); // the runtime removed the netns before DEL
    assert!(!std::path::Path::new(&path).exists());
    net.del(&conf, cid, &path, Some(&res))
        .ok("DEL after the netns is gone");
    assert!(
        !net.store().join(&ip).exists(),
        "reservation left: {:?}",
        net.reservations()
    );
    let hv = host_veth_name(cid, "eth0");
    assert!(
        eventually(Duration::from_secs(5), || net.node.link(&hv).is_none()),
        "host veth left after DEL of a gone netns"
    );
    net.del(&conf, cid, &path, Some(&res)).ok("repeated DEL");
    net.del(&conf, cid, "", None).ok("DEL with empty netns");
}

#[test]
fn duplicate_add_fails_102_and_keeps_the_attachment() {
    let net = Net::new("dup", 23);
    let conf = net.conf("1.1.0");
    let pod = net.pod("pod");
    let cid = "cid-dup";
    let res = net.add_ok(&conf, cid, &pod);
    let ip = Net::result_ip(&res);
    let addr = res["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let before = net.reservations();

    // Same (cid, ifname) again.
    net.add(&conf, cid, &pod)
        .err_code(102, "duplicate ADD of the same attachment");
    assert_eq!(
        pod.addresses("eth0"),
        Some(vec![addr.clone()]),
        "eth0 lost its address"
    );
    assert_eq!(net.reservations(), before, "the reservation changed");
    assert!(
        pod.ping(&net.gateway()),
        "the first attachment lost connectivity"
    );
    net.check(&conf, cid, &pod, &res)
        .ok("CHECK of the first attachment");

    // Another container id into the same netns/ifname: eth0 exists in the pod → 102, and
    // the fresh reservation taken for it is released.
    net.add(&conf, "cid-dup-other", &pod)
        .err_code(102, "ADD of a second attachment onto an existing eth0");
    assert_eq!(
        net.reservations(),
        before,
        "the failed ADD leaked a reservation"
    );
    assert_eq!(
        pod.addresses("eth0"),
        Some(vec![addr]),
        "eth0 lost its address"
    );
    assert!(
        net.node
            .link(&host_veth_name("cid-dup-other", "eth0"))
            .is_none(),
        "the failed ADD left its host veth"
    );
    assert_eq!(
        net.node.bridge_ports(&net.bridge),
        vec![host_veth_name(cid, "eth0")]
    );
    assert!(
        pod.ping(&net.gateway()),
        "the first attachment lost connectivity"
    );

    net.del(&conf, cid, &pod.path_str(), Some(&res)).ok("DEL");
    assert!(!net.store().join(&ip).exists());
}

/// Asserts that nothing of a failed ADD is left: no eth0, no veth, no bridge port, no
/// reservation.
fn assert_nothing_left(net: &Net, pod: &Ns, cid: &str) {
    assert!(
        pod.link("eth0").is_none(),
        "failed ADD left eth0 in the pod: {:?}",
        pod.link("eth0")
    );
    assert!(
        eventually(Duration::from_secs(3), || net.node.veths().is_empty()),
        "failed ADD left veths in the node: {:?}",
        net.node.veths()
    );
    assert!(net.node.link(&host_veth_name(cid, "eth0")).is_none());
    assert!(
        net.node.bridge_ports(&net.bridge).is_empty(),
        "failed ADD left bridge ports"
    );
    assert!(
        net.reservations().is_empty(),
        "failed ADD left reservations: {:?}",
        net.reservations()
    );
}

#[test]
fn failing_add_route_step_leaves_nothing() {
    let net = Net::new("failrt", 32);
    let mut conf = net.conf("1.1.0");
    conf["ipam"]["routes"] = json!([{"dst": "192.168.77.0/24", "gw": "10.9.9.9"}]);
    let pod = net.pod("pod");
    let cid = "cid-failrt";
    let out = net.add(&conf, cid, &pod);
    let e = out.err("ADD with an unreachable route gateway");
    assert!(
        e["code"].as_u64().is_some_and(|c| c >= 100),
        "expected a plugin (1xx) code: {out}"
    );
    assert_nothing_left(&net, &pod, cid);
    // The runtime DELs after a failed ADD: that must succeed.
    net.del(&conf, cid, &pod.path_str(), None)
        .ok("DEL after the failed ADD");
    // And a correct ADD works afterwards in the same pod.
    let good = net.conf("1.1.0");
    let res = net.add_ok(&good, cid, &pod);
    net.del(&good, cid, &pod.path_str(), Some(&res)).ok("DEL");
}

#[test]
fn requested_ip_outside_the_range_fails_101_and_reserves_nothing() {
    let net = Net::new("failip", 33);
    let conf = net.conf("1.1.0");
    let pod = net.pod("pod");
    let cid = "cid-failip";
    let env = CniEnv::attach("ADD", cid, &pod.path_str(), "eth0", &net.cni_path())
        .with_args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.9.9.9");
    net.run(&env, &conf)
        .err_code(101, "ADD with IP= outside the range");
    assert_nothing_left(&net, &pod, cid);
    // Same with runtimeConfig.ips.
    let mut c = conf.clone();
    c["runtimeConfig"] = json!({"ips": ["10.123.34.7/24"]});
    net.add(&c, cid, &pod)
        .err_code(101, "ADD with runtimeConfig.ips outside the range");
    assert_nothing_left(&net, &pod, cid);
    // A requested address inside the range is honoured.
    let want = "10.123.33.77";
    let env = env.with_args(&format!("IgnoreUnknown=1;IP={want}"));
    let res = net.run(&env, &conf).ok("ADD with IP= inside the range");
    assert_eq!(Net::result_ip(&res), want);
    // The gateway is not requestable.
    let pod2 = net.pod("pod2");
    let env2 = CniEnv::attach(
        "ADD",
        "cid-failip-2",
        &pod2.path_str(),
        "eth0",
        &net.cni_path(),
    )
    .with_args(&format!("IgnoreUnknown=1;IP={}", net.gateway()));
    net.run(&env2, &conf)
        .err_code(101, "ADD requesting the gateway");
    // Nor an address already reserved.
    let env2 = env2.with_args(&format!("IgnoreUnknown=1;IP={want}"));
    net.run(&env2, &conf)
        .err_code(101, "ADD requesting a reserved address");
    assert_eq!(net.reservations().len(), 1, "{:?}", net.reservations());
    assert!(pod2.link("eth0").is_none());
    net.del(&conf, cid, &pod.path_str(), Some(&res)).ok("DEL");
}

#[test]
fn status_reports_an_exhausted_range() {
    let net = Net::new("status", 37);
    let mut conf = net.conf("1.1.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.123.37.0/30"}]]);
    let status = || net.run(&CniEnv::global("STATUS", &net.cni_path()), &conf);
    assert_eq!(
        status().ok("STATUS on an empty /30"),
        Value::Null,
        "STATUS prints nothing on success"
    );
    let p1 = net.pod("p1");
    let r1 = net.add_ok(&conf, "cid-status-1", &p1);
    assert_eq!(
        Net::result_ip(&r1),
        "10.123.37.2",
        "the only usable address of the /30"
    );
    let out = status();
    out.err_code(50, "STATUS with the /30 exhausted");
    let p2 = net.pod("p2");
    net.add(&conf, "cid-status-2", &p2)
        .err_code(100, "ADD into an exhausted range");
    assert!(p2.link("eth0").is_none(), "the failed ADD left eth0");
    assert_eq!(net.reservations().len(), 1);
    assert_eq!(
        net.node.bridge_ports(&net.bridge).len(),
        1,
        "the failed ADD left a bridge port"
    );
    // Releasing the address makes STATUS good again.
    net.del(&conf, "cid-status-1", &p1.path_str(), Some(&r1))
        .ok("DEL");
    status().ok("STATUS after the release");
    let r2 = net.add_ok(&conf, "cid-status-2", &p2);
    assert_eq!(Net::result_ip(&r2), "10.123.37.2");
    net.del(&conf, "cid-status-2", &p2.path_str(), Some(&r2))
        .ok("DEL");
}
