//! Runs the examples' code: `examples/custom_control_plane.rs` is compiled into this test as
//! a module, so the test runs exactly the example's `run` and `render` (and `cargo test`
//! builds the same file as the example binary). No root, no namespace.

#[path = "../examples/custom_control_plane.rs"]
mod custom_control_plane;

use custom_control_plane::{Pass, render, run};
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn custom_control_plane_example_reaches_ready_and_writes_the_conflist() {
    let d = tempfile::tempdir().unwrap();
    let r = run(d.path()).unwrap();
    assert_eq!(
        r.passes,
        vec![
            Pass {
                ready: true,
                not_ready: vec![],
                bridge_changed: true,
                forwarding_changed: true,
                conflist_written: true,
                mtu: 1280,
            },
            Pass {
                ready: true,
                not_ready: vec![],
                bridge_changed: false,
                forwarding_changed: false,
                conflist_written: false,
                mtu: 1280,
            },
        ],
        "the second pass finds everything in place"
    );
    assert_eq!(r.conflist, d.path().join("net.d/10-headcni.conflist"));
    assert_eq!(r.conflist_pod_cidrs, vec![net("10.244.7.0/24")]);
    assert_eq!(r.approved, vec![net("10.244.7.0/24")]);
    assert_eq!(r.bridge_addresses, vec![net("10.244.7.1/24")]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&r.conflist).unwrap()).unwrap();
    assert_eq!(
        v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.7.0/24"
    );
}

#[test]
fn the_example_prints_what_happened() {
    let d = tempfile::tempdir().unwrap();
    let text = render(&run(d.path()).unwrap());
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "pass 1: ready=true bridge_changed=true forwarding_changed=true conflist_written=true mtu=1280",
            "pass 2: ready=true bridge_changed=false forwarding_changed=false conflist_written=false mtu=1280",
        ]
    );
    assert!(
        lines[2].ends_with("10-headcni.conflist written with PodCIDR 10.244.7.0/24"),
        "{text}"
    );
}
