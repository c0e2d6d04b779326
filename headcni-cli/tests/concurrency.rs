//! Concurrent ADD/DEL, a plugin SIGKILLed in the middle of ADD, and GC.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{CniEnv, Net, Ns, in_subnet};
use serde_json::{Value, json};

#[test]
fn eight_concurrent_adds_then_eight_concurrent_dels() {
    const N: usize = 8;
    let net = Net::new("conc", 30);
    let conf = net.conf("1.1.0");
    let pods: Vec<Ns> = (0..N).map(|i| net.pod(&format!("p{i}"))).collect();
    let cid = |i: usize| format!("cid-conc-{i}");

    let adds: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (net, conf, cid) = (&net, &conf, &cid);
                s.spawn(move || (i, net.add(conf, &cid(i), p)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut results = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, out) in &adds {
        if out.code == Some(0) {
            results.insert(*i, out.json());
        } else {
            errors.push(format!("ADD {i}: {out}"));
        }
    }
    assert!(
        errors.is_empty(),
        "concurrent ADDs failed:\n{}",
        errors.join("\n")
    );
    let ips: BTreeSet<String> = results.values().map(Net::result_ip).collect();
    assert_eq!(ips.len(), N, "addresses are not distinct: {ips:?}");
    assert!(ips.iter().all(|ip| in_subnet(ip, 30)), "{ips:?}");
    let res = net.reservations();
    assert_eq!(
        res.keys().cloned().collect::<BTreeSet<_>>(),
        ips,
        "store vs results"
    );
    for (i, r) in &results {
        let ip = Net::result_ip(r);
        assert_eq!(
            res[&ip],
            format!("{}\r\neth0", cid(*i)),
            "reservation of {ip}"
        );
        let addr = r["ips"][0]["address"].as_str().expect("address").to_owned();
        assert_eq!(pods[*i].addresses("eth0"), Some(vec![addr]), "pod {i}");
    }
    assert_eq!(net.node.bridge_ports(&net.bridge).len(), N, "bridge ports");
    // Connectivity across the concurrently built pods.
    let last = Net::result_ip(&results[&(N - 1)]);
    assert!(
        pods[0].ping(&last),
        "pod 0 cannot reach pod {} ({last})",
        N - 1
    );

    let dels: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let r = &results[&i];
                let conf = &conf;
                let net = &net;
                s.spawn(move || (i, net.del(conf, &cid(i), &p.path_str(), Some(r))))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("DEL thread"))
            .collect()
    });
    let errors: Vec<String> = dels
        .iter()
        .filter(|(_, o)| o.code != Some(0))
        .map(|(i, o)| format!("DEL {i}: {o}"))
        .collect();
    assert!(
        errors.is_empty(),
        "concurrent DELs failed:\n{}",
        errors.join("\n")
    );
    assert!(
        net.reservations().is_empty(),
        "reservations left: {:?}",
        net.reservations()
    );
    assert!(
        net.node.bridge_ports(&net.bridge).is_empty(),
        "ports left: {:?}",
        net.node.bridge_ports(&net.bridge)
    );
    assert!(
        net.node.veths().is_empty(),
        "veths left: {:?}",
        net.node.veths()
    );
    for (i, p) in pods.iter().enumerate() {
        assert!(p.link("eth0").is_none(), "pod {i} still has eth0");
    }
}

fn gc_conf(net: &Net, version: &str, key: &str, valid: &[(&str, &str)]) -> Value {
    let mut c = net.conf(version);
    c[key] = Value::Array(
        valid
            .iter()
            .map(|(cid, ifname)| json!({"containerID": cid, "ifname": ifname}))
            .collect(),
    );
    c
}

fn run_gc(net: &Net, conf: &Value) -> common::Out {
    net.run(&CniEnv::global("GC", &net.cni_path()), conf)
}

#[test]
fn kill_during_add_then_gc_leaves_exactly_the_valid_reservations() {
    let net = Net::new("kill", 31);
    let conf = net.conf("1.1.0");
    let body = conf.to_string().into_bytes();
    let mut pods = Vec::new();
    let mut completed: BTreeMap<String, String> = BTreeMap::new(); // cid → ip
    let mut killed = Vec::new();
    let mut mid_add = Vec::new(); // killed after its reservation was written
    let mut log = Vec::new();
    let mut files_before = net.reservations();
    // 48 attempts with delays spread over 0–8 ms (about 170 µs apart, in shuffled order);
    // if none of them was killed after its reservation was written, up to 30 more with
    // longer delays (the machine may be slower than expected).
    const SPREAD: usize = 48;
    for attempt in 0..SPREAD + 30 {
        if attempt >= SPREAD && !mid_add.is_empty() {
            break;
        }
        let delay_us = if attempt < SPREAD {
            (attempt as u64 * 1709) % 8001
        } else {
            8000 + (attempt - SPREAD) as u64 * 1500
        };
        let pod = net.pod(&format!("k{attempt}"));
        let cid = format!("cid-kill-{attempt}");
        let env = CniEnv::attach("ADD", &cid, &pod.path_str(), "eth0", &net.cni_path());
        let (mut child, started) =
            common::spawn_in(&net.node, std::path::Path::new(common::EXE), &env, &body);
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill(); // SIGKILL
        let out = common::finish(child, started);
        // What this attempt left in the store (a file may be empty if the kill landed
        // between its creation and the write of its content).
        let now = net.reservations();
        let new_files: BTreeMap<&String, &String> = now
            .iter()
            .filter(|(ip, _)| !files_before.contains_key(*ip))
            .collect();
        let reserved = !new_files.is_empty();
        log.push(format!(
            "#{attempt} delay {delay_us}us: exit {:?} signal {:?} after {:?}, new reservation files {new_files:?}",
            out.code, out.signal, out.elapsed
        ));
        files_before = now.clone();
        match (out.code, out.signal) {
            (Some(0), _) => {
                let r = out.json();
                completed.insert(cid.clone(), Net::result_ip(&r));
            }
            (None, Some(9)) => {
                killed.push(cid.clone());
                if reserved {
                    mid_add.push(cid.clone());
                }
            }
            _ => panic!("ADD #{attempt} neither completed nor was killed: {out}"),
        }
        pods.push(pod);
    }
    eprintln!("kill attempts:\n{}", log.join("\n"));
    let before_gc = net.reservations();
    assert!(
        !mid_add.is_empty() && before_gc.len() > completed.len(),
        "no SIGKILL landed after the reservation was written ({} killed, {} completed); cannot exercise the mid-ADD case:\n{}",
        killed.len(),
        completed.len(),
        log.join("\n")
    );
    eprintln!(
        "{} killed ({} after the reservation), {} completed; {} reservations before GC",
        killed.len(),
        mid_add.len(),
        completed.len(),
        before_gc.len()
    );

    // GC, listing only the attachments that completed.
    let valid: Vec<(&str, &str)> = completed.keys().map(|c| (c.as_str(), "eth0")).collect();
    run_gc(
        &net,
        &gc_conf(&net, "1.1.0", "cni.dev/valid-attachments", &valid),
    )
    .ok("GC after the kills");
    let after: BTreeMap<String, String> = net.reservations();
    let want: BTreeMap<String, String> = completed
        .iter()
        .map(|(cid, ip)| (ip.clone(), format!("{cid}\r\neth0")))
        .collect();
    assert_eq!(
        after, want,
        "after GC the store must hold exactly the completed attachments' reservations (before GC: {before_gc:?})"
    );

    // The store still works: a new ADD succeeds with a fresh address, then DEL.
    let pod = net.pod("after");
    let res = net.add_ok(&conf, "cid-kill-after", &pod);
    let ip = Net::result_ip(&res);
    assert!(
        !want.contains_key(&ip),
        "new ADD got an address that is still reserved: {ip}"
    );
    net.del(&conf, "cid-kill-after", &pod.path_str(), Some(&res))
        .ok("DEL after GC");
    // The completed attachments still DEL cleanly.
    for (cid, pod) in completed.keys().filter_map(|c| {
        let i: usize = c.rsplit('-').next()?.parse().ok()?;
        Some((c, &pods[i]))
    }) {
        net.del(&conf, cid, &pod.path_str(), None)
            .ok("DEL of a completed attachment");
    }
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
}

fn gc_releases_the_unlisted(tag: &str, octet: u8, key: &str) {
    let net = Net::new(tag, octet);
    let conf = net.conf("1.1.0");
    let pods: Vec<Ns> = (0..3).map(|i| net.pod(&format!("p{i}"))).collect();
    let cids: Vec<String> = (0..3).map(|i| format!("cid-{tag}-{i}")).collect();
    let results: Vec<Value> = pods
        .iter()
        .zip(&cids)
        .map(|(p, c)| net.add_ok(&conf, c, p))
        .collect();
    assert_eq!(net.reservations().len(), 3);
    let keep_ip = Net::result_ip(&results[1]);

    // GC listing another ifname of the kept container does not keep it: (cid, ifname) pairs.
    run_gc(
        &net,
        &gc_conf(
            &net,
            "1.1.0",
            key,
            &[(&cids[1], "eth0"), (&cids[0], "net1")],
        ),
    )
    .ok("GC");
    let after = net.reservations();
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        vec![keep_ip.clone()],
        "GC kept the wrong set"
    );
    assert_eq!(after[&keep_ip], format!("{}\r\neth0", cids[1]));
    // GC is idempotent.
    run_gc(&net, &gc_conf(&net, "1.1.0", key, &[(&cids[1], "eth0")])).ok("GC again");
    assert_eq!(net.reservations().len(), 1);
    // The kept attachment is intact and CHECKs.
    net.check(&conf, &cids[1], &pods[1], &results[1])
        .ok("CHECK of the kept attachment");
    // The released addresses are usable again.
    let p3 = net.pod("p3");
    let env = CniEnv::attach("ADD", "cid-new", &p3.path_str(), "eth0", &net.cni_path()).with_args(
        &format!("IgnoreUnknown=1;IP={}", Net::result_ip(&results[0])),
    );
    let r3 = net.run(&env, &conf).ok("ADD of an address GC released");
    net.del(&conf, "cid-new", &p3.path_str(), Some(&r3))
        .ok("DEL");
    for ((p, c), r) in pods.iter().zip(&cids).zip(&results) {
        net.del(&conf, c, &p.path_str(), Some(r)).ok("DEL after GC");
    }
    assert!(net.reservations().is_empty());
}

#[test]
fn gc_with_valid_attachments() {
    gc_releases_the_unlisted("gcvalid", 34, "cni.dev/valid-attachments");
}

#[test]
fn gc_with_legacy_attachments_key() {
    gc_releases_the_unlisted("gclegacy", 35, "cni.dev/attachments");
}

#[test]
fn gc_needs_cni_1_1_0_and_keeps_everything_on_refusal() {
    let net = Net::new("gcver", 36);
    let conf = net.conf("1.0.0");
    let pod = net.pod("p");
    let res = net.add_ok(&conf, "cid-gcver", &pod);
    for v in ["1.0.0", "0.4.0", "0.3.1"] {
        run_gc(&net, &gc_conf(&net, v, "cni.dev/valid-attachments", &[]))
            .err_code(1, &format!("GC with cniVersion {v}"));
    }
    assert_eq!(
        net.reservations().len(),
        1,
        "a refused GC released reservations"
    );
    // An empty valid list with 1.1.0 releases everything.
    run_gc(
        &net,
        &gc_conf(&net, "1.1.0", "cni.dev/valid-attachments", &[]),
    )
    .ok("GC 1.1.0, nothing valid");
    assert!(net.reservations().is_empty(), "{:?}", net.reservations());
    net.del(&conf, "cid-gcver", &pod.path_str(), Some(&res))
        .ok("DEL after GC");
}
