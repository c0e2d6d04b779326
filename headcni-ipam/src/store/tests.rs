//! Store behaviour tests (layout, verbs, repair, hardening).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;

use headcni_core::ipam::{IpamConf, IpamStore, PoolView};

use super::dirfd::FILE_MODE;
use super::index::{ATT_DIR, INDEX_FILE, att_name};
use super::*;
use crate::pool::Pool;

fn sets(ranges: serde_json::Value) -> Vec<RangeSet> {
    IpamConf::parse(&serde_json::json!({"type": "headcni-ipam", "ranges": ranges}))
        .unwrap()
        .range_sets(&[])
        .unwrap()
}
fn att(c: &str, i: &str) -> Attachment {
    Attachment {
        container_id: c.into(),
        ifname: i.into(),
    }
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn open(d: &Path, s: Strategy) -> Store {
    Store::open(
        d,
        "net",
        sets(serde_json::json!([[{"subnet": "10.0.0.0/29"}], [{"subnet": "fd00::/125"}]])),
        s,
    )
    .unwrap()
    .with_seed(1)
}

#[test]
fn layout_is_host_local_compatible() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::Sequential);
    let r = s.allocate(&att("c1", "eth0"), &[]).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].address.to_string(), "10.0.0.2/29");
    assert_eq!(r[0].gateway, Some(ip("10.0.0.1")));
    assert_eq!(r[1].address.to_string(), "fd00::2/125");
    let dir = d.path().join("net");
    assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
    assert_eq!(fs::read(dir.join("fd00::2")).unwrap(), b"c1\r\neth0");
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.0.0.2"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "fd00::2"
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&dir.join("10.0.0.2")), 0o600);
    assert_eq!(mode(&dir.join("lock")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(INDEX_DIR)), 0o700);
    // Every index file starts with NUL, so host-local's release-by-content never matches it.
    let mut stack = vec![dir.join(INDEX_DIR)];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                assert_eq!(
                    fs::read(e.path()).unwrap().first(),
                    Some(&0u8),
                    "{:?}",
                    e.path()
                );
            }
        }
    }
}

#[test]
fn idempotent_release_and_sequential_order() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::Sequential);
    let a = s.allocate(&att("c1", "eth0"), &[]).unwrap();
    assert_eq!(s.allocate(&att("c1", "eth0"), &[]).unwrap(), a);
    assert_eq!(s.find(&att("c1", "eth0")).unwrap(), a);
    let b = s.allocate(&att("c1", "eth1"), &[]).unwrap();
    assert_eq!(b[0].address.ip(), ip("10.0.0.3"));
    assert_eq!(
        s.release(&att("c1", "eth0")).unwrap(),
        vec![ip("10.0.0.2"), ip("fd00::2")]
    );
    assert_eq!(s.release(&att("c1", "eth0")).unwrap(), Vec::<IpAddr>::new());
    assert!(s.find(&att("c1", "eth0")).unwrap().is_empty());
    // Released .2 is not reused before wrapping: next is .4.
    let c = s.allocate(&att("c2", "eth0"), &[]).unwrap();
    assert_eq!(c[0].address.ip(), ip("10.0.0.4"));
}

#[test]
fn requested_addresses() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::Sequential);
    let r = s.allocate(&att("c1", "eth0"), &[ip("10.0.0.5")]).unwrap();
    assert_eq!(r[0].address.ip(), ip("10.0.0.5"));
    assert_eq!(
        fs::read_to_string(s.dir().join("last_reserved_ip.0")).unwrap(),
        "10.0.0.5"
    );
    // Taken, gateway, outside, two in one set: AddressUnavailable and nothing left reserved.
    for req in [
        vec![ip("10.0.0.5")],
        vec![ip("10.0.0.1")],
        vec![ip("10.9.0.1")],
        vec![ip("10.0.0.3"), ip("10.0.0.4")],
    ] {
        let e = s.allocate(&att("c2", "eth0"), &req).unwrap_err();
        assert!(
            matches!(e, IpamError::AddressUnavailable { .. }),
            "{req:?}: {e}"
        );
        assert!(s.find(&att("c2", "eth0")).unwrap().is_empty());
    }
    // Requested v6 taken after v4 succeeded: the v4 one is rolled back.
    s.allocate(&att("c3", "eth0"), &[ip("fd00::6")]).unwrap();
    let e = s
        .allocate(&att("c4", "eth0"), &[ip("10.0.0.2"), ip("fd00::6")])
        .unwrap_err();
    assert!(matches!(e, IpamError::AddressUnavailable { .. }));
    assert!(!s.dir().join("10.0.0.2").exists());
    let u = s.usage().unwrap();
    assert_eq!((u[0].allocated, u[1].allocated), (2, 2));
}

#[test]
fn exhaustion_and_rollback() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(
        d.path(),
        "n",
        sets(serde_json::json!([[{"subnet": "10.0.0.0/30"}], [{"subnet": "10.1.0.0/29"}]])),
        Strategy::DensePack,
    )
    .unwrap();
    s.allocate(&att("a", "eth0"), &[]).unwrap();
    let e = s.allocate(&att("b", "eth0"), &[]).unwrap_err();
    assert!(
        matches!(e, IpamError::PoolExhausted { range_set: 0, .. }),
        "{e}"
    );
    let e = s
        .allocate(&att("b", "eth0"), &[ip("10.1.0.5")])
        .unwrap_err();
    assert!(matches!(e, IpamError::PoolExhausted { .. }));
    assert!(!s.dir().join("10.1.0.5").exists(), "rolled back");
    assert_eq!(s.usage().unwrap()[1].allocated, 1);
}

#[test]
fn allocate_fresh_tells_a_first_add_from_a_repeated_one() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::Sequential);
    let (first, fresh) = s.allocate_fresh(&att("a", "eth0"), &[]).unwrap();
    assert!(fresh);
    let (again, fresh) = s.allocate_fresh(&att("a", "eth0"), &[]).unwrap();
    assert!(!fresh, "a repeated ADD must not be reported fresh");
    assert_eq!(first, again);
    s.release(&att("a", "eth0")).unwrap();
    assert!(s.allocate_fresh(&att("a", "eth0"), &[]).unwrap().1);
}

#[test]
fn legacy_files_and_gc() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::DensePack);
    let dir = s.dir().to_path_buf();
    fs::write(dir.join("10.0.0.3"), "old").unwrap(); // legacy, foreign writer
    fs::write(dir.join("10.0.0.4"), "").unwrap(); // a crashed writer's empty file
    s.allocate(&att("x", "eth0"), &[]).unwrap();
    assert_eq!(
        s.find(&att("old", "eth9")).unwrap()[0].address.ip(),
        ip("10.0.0.3")
    );
    assert_eq!(
        s.release(&att("old", "eth9")).unwrap(),
        vec![ip("10.0.0.3")]
    );
    fs::write(dir.join("10.0.0.5"), "y").unwrap();
    s.allocate(&att("z", "eth0"), &[]).unwrap();
    let mut g = s.gc(&[att("x", "eth0"), att("y", "eth3")]).unwrap();
    g.sort();
    // z's addresses, and the empty file nobody can ever release otherwise
    let z = Some(att("z", "eth0"));
    assert_eq!(
        g,
        vec![
            (ip("10.0.0.3"), z.clone()),
            (ip("10.0.0.4"), None),
            (ip("fd00::3"), z)
        ]
    );
    assert!(!dir.join("10.0.0.4").exists());
    assert!(dir.join("10.0.0.5").exists() && dir.join("10.0.0.2").exists());
    assert!(s.find(&att("z", "eth0")).unwrap().is_empty());
    assert_eq!(s.usage().unwrap()[0].allocated, 2);
}

#[test]
fn foreign_changes_and_damaged_index_are_repaired() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::DensePack);
    let dir = s.dir().to_path_buf();
    s.allocate(&att("a", "eth0"), &[]).unwrap(); // .2
    // A foreign writer reserves .3 and releases a's .2 behind our back.
    fs::write(dir.join("10.0.0.3"), "f\r\neth0").unwrap();
    fs::remove_file(dir.join("10.0.0.2")).unwrap();
    assert!(
        s.find(&att("a", "eth0"))
            .unwrap()
            .iter()
            .all(|r| r.range_set == 1)
    );
    assert_eq!(
        s.find(&att("f", "eth0")).unwrap()[0].address.ip(),
        ip("10.0.0.3")
    );
    let b = s.allocate(&att("b", "eth0"), &[]).unwrap();
    assert_eq!(b[0].address.ip(), ip("10.0.0.2"));
    // Deleting the whole index, or corrupting it, is repaired.
    fs::remove_dir_all(dir.join(INDEX_DIR)).unwrap();
    assert_eq!(s.find(&att("b", "eth0")).unwrap(), b);
    fs::write(dir.join(INDEX_DIR).join(INDEX_FILE), b"garbage").unwrap();
    assert_eq!(s.usage().unwrap()[0].allocated, 2);
    let name = att_name(&("b".into(), "eth0".into()));
    fs::write(
        dir.join(INDEX_DIR).join(ATT_DIR).join(name),
        b"\0headcni-att 1\nb\neth0\n10.0.0.6\n",
    )
    .unwrap();
    assert_eq!(s.find(&att("b", "eth0")).unwrap(), b);
    // A stale index (fresh stamps, old content) that thinks a taken address is free only
    // costs a retry: the O_EXCL create fails, the address is marked, the next one is used,
    // and the index is flagged so that the next operation rebuilds.
    s.release(&att("b", "eth0")).unwrap();
    {
        let l = s.lock().unwrap();
        let stale = s.state(&l).unwrap();
        fs::write(dir.join("10.0.0.2"), "g\r\neth0").unwrap();
        s.commit(&l, &stale).unwrap();
        assert!(s.load_index(&l).unwrap().is_some());
    }
    let c = s.allocate(&att("c", "eth0"), &[]).unwrap();
    assert_eq!(c[0].address.ip(), ip("10.0.0.4"));
    assert!(
        s.load_index(&s.lock().unwrap()).unwrap().is_none(),
        "suspect state forces a rebuild"
    );
    assert_eq!(
        s.find(&att("g", "eth0")).unwrap()[0].address.ip(),
        ip("10.0.0.2")
    );
}

#[test]
fn huge_ipv6_set_uses_sparse_index() {
    let d = tempfile::tempdir().unwrap();
    for strat in [Strategy::Sequential, Strategy::Random, Strategy::DensePack] {
        let sets = sets(serde_json::json!([[{"subnet": "fd00:1::/64"}]]));
        let s = Store::open(d.path(), &format!("{strat:?}"), sets, strat)
            .unwrap()
            .with_seed(3);
        let mut seen = BTreeSet::new();
        for i in 0..20 {
            let r = s.allocate(&att(&format!("c{i}"), "eth0"), &[]).unwrap();
            assert!(seen.insert(r[0].address.ip()));
            assert_eq!(r[0].address.prefix(), 64);
        }
        s.release(&att("c3", "eth0")).unwrap();
        let st = s
            .load_index(&s.lock().unwrap())
            .unwrap()
            .expect("index is current");
        assert!(matches!(st.pools[0], Pool::Sparse(_)));
        assert_eq!(st.pools[0].allocated(), 19);
        assert_eq!(s.usage().unwrap()[0].size, (1u128 << 64) - 2);
        if strat == Strategy::Sequential {
            assert!(seen.contains(&ip("fd00:1::2")) && seen.contains(&ip("fd00:1::15")));
        }
        if strat == Strategy::DensePack {
            assert_eq!(
                s.allocate(&att("n", "eth0"), &[]).unwrap()[0].address.ip(),
                ip("fd00:1::5")
            );
        }
    }
}

#[test]
fn non_regular_reservation_entries_count_as_taken() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path(), Strategy::Sequential);
    let victim = d.path().join("victim");
    fs::write(&victim, "x\r\neth0").unwrap();
    std::os::unix::fs::symlink(&victim, s.dir().join("10.0.0.2")).unwrap();
    nix::unistd::mkfifo(&s.dir().join("10.0.0.3"), FILE_MODE).unwrap();
    s.rebuild().unwrap();
    assert_eq!(s.usage().unwrap()[0].allocated, 2);
    // Never read for their owner: the link's target does not make "x" an owner.
    assert!(s.find(&att("x", "eth0")).unwrap().is_empty());
    let r = s.allocate(&att("c", "eth0"), &[]).unwrap();
    assert_eq!(r[0].address.ip(), ip("10.0.0.4"));
    // GC leaves entries it cannot attribute.
    assert!(s.gc(&[]).unwrap().iter().all(|(i, _)| *i != ip("10.0.0.2")));
    assert!(fs::symlink_metadata(s.dir().join("10.0.0.2")).is_ok());
    assert_eq!(fs::read(&victim).unwrap(), b"x\r\neth0");
}

#[test]
fn bad_network_names() {
    let d = tempfile::tempdir().unwrap();
    for n in ["", ".", "..", "a/b"] {
        assert!(matches!(
            Store::open(
                d.path(),
                n,
                sets(serde_json::json!([[{"subnet": "10.0.0.0/29"}]])),
                Strategy::Sequential
            ),
            Err(IpamError::Config(_))
        ));
    }
}
