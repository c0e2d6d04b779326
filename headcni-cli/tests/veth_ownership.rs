//! Host veth ownership on a real kernel (issue 8 items 3 and 11), through the `headcni`
//! binary in per-test node and pod namespaces (`common::Net`, removed on drop).
//!
//! - Two container IDs whose host veth names collide: one pod's ADD, DEL or CHECK never
//!   touches the other pod's link.
//! - A host veth made before ownership marks existed (no alias) is deleted by its own DEL
//!   (its container end proves it) and by no other.
//! - GC removes the host veths (and so the pods' eth0) of exactly the attachments whose
//!   reservations it released, never a foreign or valid one.

mod common;

use common::{CniEnv, Net, Ns};
use headcni_core::plugin::attachment_mark;
use serde_json::{Value, json};

/// `host_veth_name` of both container IDs with `eth0` is `veth2874cfad024`.
const CID_A: &str = "adv00000016cfeb";
const CID_B: &str = "adv00000096aa38";
const COLLIDING: &str = "veth2874cfad024";

fn is_port(net: &Net, link: &str) -> bool {
    net.node.bridge_ports(&net.bridge).iter().any(|p| p == link)
}

fn alias(ns: &Ns, link: &str) -> Option<String> {
    ns.link(link)
        .and_then(|l| l["ifalias"].as_str().map(str::to_owned))
}

/// A's attachment is whole: its host veth exists, is a port of the bridge, and its pod still
/// has eth0 with A's address.
fn assert_a_intact(net: &Net, pod_a: &Ns, result_a: &Value, when: &str) {
    assert!(
        net.node.link(COLLIDING).is_some(),
        "{when}: A's host veth {COLLIDING} is gone"
    );
    assert!(
        is_port(net, COLLIDING),
        "{when}: A's host veth is no port of the bridge"
    );
    let addrs = pod_a
        .addresses("eth0")
        .unwrap_or_else(|| panic!("{when}: A's eth0 is gone"));
    assert!(
        addrs.contains(
            &result_a["ips"][0]["address"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        ),
        "{when}: A's eth0 lost its address: {addrs:?}"
    );
}

/// ADD that either succeeds (its result) or fails cleanly with code 102 (`None`).
fn add_clean(net: &Net, conf: &Value, cid: &str, pod: &Ns) -> Option<Value> {
    let out = net.add(conf, cid, pod);
    if out.code == Some(0) {
        Some(out.json())
    } else {
        out.err_code(102, &format!("ADD {cid}"));
        None
    }
}

/// ADD A; ADD B (collides); DEL B; A stays whole; DEL A still works.
#[test]
fn del_of_a_colliding_attachment_keeps_the_other_pods_veth() {
    let net = Net::new("vcollide", 90);
    let conf = net.conf("1.1.0");
    let (pod_a, pod_b) = (net.pod("a"), net.pod("b"));
    let res_a = net.add_ok(&conf, CID_A, &pod_a);
    assert_eq!(res_a["interfaces"][1]["name"], COLLIDING);

    // B's ADD must not hurt A, whatever its outcome (checked last: it succeeds)
    let res_b = add_clean(&net, &conf, CID_B, &pod_b);
    assert_a_intact(&net, &pod_a, &res_a, "after ADD B");

    let b_host = res_b
        .as_ref()
        .map(|r| r["interfaces"][1]["name"].as_str().unwrap_or("").to_owned());
    if let (Some(r), Some(name)) = (&res_b, &b_host) {
        assert_ne!(name, COLLIDING);
        assert!(is_port(&net, name), "B's host veth is no bridge port");
        assert_eq!(alias(&net.node, name), Some(attachment_mark(CID_B, "eth0")));
        net.check(&conf, CID_B, &pod_b, r).ok("CHECK B");
    }

    net.del(&conf, CID_B, &pod_b.path_str(), res_b.as_ref())
        .ok("DEL B");
    assert_a_intact(&net, &pod_a, &res_a, "after DEL B");
    net.check(&conf, CID_A, &pod_a, &res_a)
        .ok("CHECK A after DEL B");
    assert_eq!(
        alias(&net.node, COLLIDING),
        Some(attachment_mark(CID_A, "eth0")),
        "A's host veth carries A's mark"
    );
    assert!(pod_b.link("eth0").is_none(), "B's eth0 left");
    if let Some(name) = &b_host {
        assert!(net.node.link(name).is_none(), "B's host veth left");
    }

    net.del(&conf, CID_A, &pod_a.path_str(), Some(&res_a))
        .ok("DEL A");
    assert!(net.node.link(COLLIDING).is_none(), "A's host veth left");
    assert!(pod_a.link("eth0").is_none(), "A's eth0 left");
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    assert!(
        res_b.is_some(),
        "B's ADD failed instead of taking an alternative host veth name"
    );
}

/// A host veth as the version before ownership marks made it (no alias): another
/// attachment's ADD and DEL leave it alone, its own DEL deletes it.
#[test]
fn unmarked_host_veth_is_deleted_only_by_its_own_del() {
    let net = Net::new("vlegacy", 91);
    let conf = net.conf("1.1.0");
    let (pod_a, pod_b) = (net.pod("a"), net.pod("b"));
    let res_a = net.add_ok(&conf, CID_A, &pod_a);
    net.node
        .exec_ok(&["ip", "link", "set", COLLIDING, "alias", ""]);
    assert_eq!(alias(&net.node, COLLIDING), None);

    let res_b = add_clean(&net, &conf, CID_B, &pod_b);
    assert_a_intact(&net, &pod_a, &res_a, "after ADD B");
    net.del(&conf, CID_B, &pod_b.path_str(), res_b.as_ref())
        .ok("DEL B");
    assert_a_intact(&net, &pod_a, &res_a, "after DEL B");
    // without CNI_NETNS nothing proves it is B's either
    net.del(&conf, CID_B, "", None).ok("DEL B without netns");
    assert_a_intact(&net, &pod_a, &res_a, "after DEL B without netns");

    net.check(&conf, CID_A, &pod_a, &res_a)
        .ok("CHECK A (unmarked)");
    net.del(&conf, CID_A, &pod_a.path_str(), Some(&res_a))
        .ok("DEL A");
    assert!(net.node.link(COLLIDING).is_none(), "A's unmarked veth left");
    assert!(pod_a.link("eth0").is_none());
    let res_b = res_b.expect("B's ADD failed instead of taking an alternative host veth name");
    assert_ne!(res_b["interfaces"][1]["name"], COLLIDING);
}

/// GC with one of two attachments valid removes the other's host veth (and so its pod's
/// eth0); the valid one and foreign links on the same bridge are untouched.
#[test]
fn gc_removes_the_host_veths_of_released_attachments_only() {
    let net = Net::new("vgc", 92);
    let conf = net.conf("1.1.0");
    let (pod_k, pod_d) = (net.pod("keep"), net.pod("dead"));
    let (keep, dead) = ("cid-vgc-keep", "cid-vgc-dead");
    let res_k = net.add_ok(&conf, keep, &pod_k);
    let res_d = net.add_ok(&conf, dead, &pod_d);
    let host_k = res_k["interfaces"][1]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let host_d = res_d["interfaces"][1]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned();

    // foreign links: bridge ports with no alias or another attachment's mark, and a link
    // carrying the dead attachment's mark that is no port of this network's bridge
    let other = attachment_mark("cid-not-released", "eth0");
    let dead_mark = attachment_mark(dead, "eth0");
    for (name, master, mark) in [
        ("vgcforeign0", Some(net.bridge.as_str()), None),
        (
            "vgcforeign1",
            Some(net.bridge.as_str()),
            Some(other.as_str()),
        ),
        ("vgcforeign2", None, Some(dead_mark.as_str())),
    ] {
        let peer = format!("{name}p");
        net.node.exec_ok(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
        ]);
        if let Some(m) = master {
            net.node.exec_ok(&["ip", "link", "set", name, "master", m]);
        }
        if let Some(a) = mark {
            net.node.exec_ok(&["ip", "link", "set", name, "alias", a]);
        }
    }

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep, "ifname": "eth0"}]);
    net.run(&CniEnv::global("GC", &net.cni_path()), &gc)
        .ok("GC");

    assert!(
        net.node.link(&host_d).is_none(),
        "the dead attachment's host veth is left"
    );
    assert!(pod_d.link("eth0").is_none(), "the dead pod's eth0 is left");
    assert!(
        is_port(&net, &host_k),
        "the valid attachment's host veth was touched"
    );
    net.check(&conf, keep, &pod_k, &res_k)
        .ok("CHECK of the kept attachment");
    for name in ["vgcforeign0", "vgcforeign1", "vgcforeign2"] {
        assert!(
            net.node.link(name).is_some(),
            "GC deleted the foreign link {name}"
        );
    }
    assert!(is_port(&net, "vgcforeign0") && is_port(&net, "vgcforeign1"));
    assert_eq!(net.reservations().len(), 1);

    // DEL of the collected attachment still succeeds (everything already gone)
    net.del(&conf, dead, &pod_d.path_str(), Some(&res_d))
        .ok("DEL after GC");
    net.del(&conf, keep, &pod_k.path_str(), Some(&res_k))
        .ok("DEL of the kept attachment");
    assert!(net.node.link(&host_k).is_none());
}
