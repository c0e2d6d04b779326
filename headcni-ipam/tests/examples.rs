//! Runs the examples' code: `examples/custom_strategy.rs` is compiled into this test as a
//! module (so the test runs exactly the example's `run`, and `cargo build --examples` builds
//! the same file as a binary).

#[path = "../examples/custom_strategy.rs"]
mod custom_strategy;

use std::net::IpAddr;

use custom_strategy::{HighestFree, Step, run};
use headcni_core::ipam::{AllocationStrategy, PoolView};
use headcni_ipam::DensePool;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn highest_free_picks_the_top_free_position() {
    let mut p = DensePool::new(5);
    assert_eq!(HighestFree.pick(&p, Some(0), 7), Some(4));
    p.insert(4);
    p.insert(2);
    assert_eq!(HighestFree.pick(&p, None, 0), Some(3));
    for i in 0..5 {
        p.insert(i);
    }
    assert_eq!(p.allocated(), 5);
    assert_eq!(HighestFree.pick(&p, None, 0), None);
}

#[test]
fn custom_strategy_example_allocates_and_releases_in_the_real_store() {
    let d = tempfile::tempdir().unwrap();
    let steps = run(d.path()).unwrap();
    let alloc = |c: &str, a: &str| Step::Allocated {
        container: c.into(),
        address: ip(a),
    };
    assert_eq!(
        steps,
        vec![
            alloc("a", "10.22.0.6"),
            alloc("b", "10.22.0.5"),
            Step::Released {
                container: "a".into(),
                addresses: vec![ip("10.22.0.6")]
            },
            alloc("c", "10.22.0.6"),
            alloc("d", "10.22.0.4"),
            alloc("e", "10.22.0.3"),
            alloc("f", "10.22.0.2"),
            Step::Exhausted {
                container: "g".into()
            },
            Step::Released {
                container: "gc".into(),
                addresses: vec![ip("10.22.0.2"), ip("10.22.0.3"), ip("10.22.0.4")]
            },
            alloc("h", "10.22.0.4"),
        ]
    );
    // The store's on-disk format is unchanged by a custom strategy: host-local's files.
    let dir = d.path().join("example");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".headcni",
            "10.22.0.4",
            "10.22.0.5",
            "10.22.0.6",
            "last_reserved_ip.0",
            "lock"
        ]
    );
    assert_eq!(std::fs::read(dir.join("10.22.0.4")).unwrap(), b"h\r\neth0");
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.22.0.4"
    );
}
