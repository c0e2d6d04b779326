//! Model-based property tests of the store: random operation sequences against a plain model.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use headcni_core::ipam::{
    AllocationStrategy, Attachment, IpamConf, IpamError, IpamStore, PoolView, RangeSet, Strategy,
};
use headcni_ipam::pool::{DensePool, SparsePool};
use headcni_ipam::store::INDEX_DIR;
use headcni_ipam::{Owner, Store, strategy};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

fn configs() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!([[{"subnet": "10.0.0.0/29"}]]),
        json!([[{"subnet": "fd00::/125"}]]),
        json!([[{"subnet": "10.0.0.0/29"}], [{"subnet": "fd00::/125"}]]),
        json!([[{"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/29", "rangeStart": "10.0.1.3", "gateway": "10.0.1.5"}]]),
        json!([[{"subnet": "10.0.0.0/29"}], [{"subnet": "10.0.2.0/30"}]]),
    ]
}

fn sets_of(cfg: &serde_json::Value) -> Vec<RangeSet> {
    IpamConf::parse(&serde_json::json!({"type": "headcni-ipam", "ranges": cfg}))
        .and_then(|c| c.range_sets(&[]))
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        att: (u8, u8),
        req: Option<(u8, u8)>,
    },
    Release((u8, u8)),
    Gc(u8),
    Reopen,
    DeleteIndex,
    CorruptIndex,
    CorruptAtt((u8, u8)),
    DeleteAtt((u8, u8)),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    let att = (0u8..5, 0u8..2);
    prop_oneof![
        6 => (att.clone(), proptest::option::weighted(0.3, (0u8..2, 0u8..10))).prop_map(|(att, req)| Op::Alloc { att, req }),
        3 => att.clone().prop_map(Op::Release),
        1 => any::<u8>().prop_map(Op::Gc),
        1 => Just(Op::Reopen),
        1 => Just(Op::DeleteIndex),
        1 => Just(Op::CorruptIndex),
        1 => att.clone().prop_map(Op::CorruptAtt),
        1 => att.prop_map(Op::DeleteAtt),
    ]
}

fn attachment((c, i): (u8, u8)) -> Attachment {
    Attachment {
        container_id: format!("c{c}"),
        ifname: format!("eth{i}"),
    }
}

fn att_file(dir: &Path, a: &Attachment) -> std::path::PathBuf {
    dir.join(INDEX_DIR)
        .join("att")
        .join(format!("a-{}+{}", a.container_id, a.ifname))
}

struct Model {
    sets: Vec<RangeSet>,
    held: BTreeMap<IpAddr, Attachment>,
    last: Vec<Option<IpAddr>>,
}

impl Model {
    fn ips_of(&self, a: &Attachment) -> BTreeSet<IpAddr> {
        self.held
            .iter()
            .filter(|(_, x)| *x == a)
            .map(|(ip, _)| *ip)
            .collect()
    }
    fn free_positions(&self, set: usize) -> Vec<u128> {
        let s = &self.sets[set];
        (0..s.len())
            .filter(|p| {
                s.address(*p)
                    .is_some_and(|(ip, _)| !self.held.contains_key(&ip))
            })
            .collect()
    }
    fn expected_sequential(&self, set: usize) -> Option<u128> {
        let s = &self.sets[set];
        let len = s.len();
        let from = self.last[set]
            .and_then(|ip| s.resume_position(ip))
            .map_or(0, |p| (p + 1) % len);
        let free = self.free_positions(set);
        free.iter().find(|p| **p >= from).or(free.first()).copied()
    }
}

fn check_invariants(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    // Reservation files on disk == model, with host-local content.
    let mut on_disk = BTreeMap::new();
    for e in fs::read_dir(store.dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(ip) = name.parse::<IpAddr>() {
            on_disk.insert(ip, fs::read(e.path()).unwrap());
        }
    }
    prop_assert_eq!(
        on_disk.len(),
        model.held.len(),
        "files {:?} model {:?}",
        on_disk.keys().collect::<Vec<_>>(),
        model.held
    );
    for (ip, a) in &model.held {
        prop_assert_eq!(
            on_disk.get(ip).map(|c| Owner::parse(c)),
            Some(Some(Owner::Full {
                cid: a.container_id.clone(),
                ifname: a.ifname.clone()
            }))
        );
        let s = model.sets.iter().find(|s| s.position(*ip).is_some());
        prop_assert!(s.is_some(), "{} outside every set or excluded", ip);
    }
    let usage = store.usage().unwrap();
    for (i, u) in usage.iter().enumerate() {
        let n = model
            .held
            .keys()
            .filter(|ip| model.sets[i].position(**ip).is_some())
            .count() as u128;
        prop_assert_eq!(u.allocated, n, "set {}", i);
        prop_assert_eq!(u.size, model.sets[i].len());
    }
    Ok(())
}

fn run(cfg: usize, strat: Strategy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let sets = sets_of(&configs()[cfg]);
    let open = || {
        Store::open(tmp.path(), "net", sets.clone(), strat)
            .unwrap()
            .with_seed(7)
    };
    let mut store = open();
    let dir = store.dir().to_path_buf();
    let mut model = Model {
        sets: sets.clone(),
        held: BTreeMap::new(),
        last: vec![None; sets.len()],
    };
    for op in ops {
        match op {
            Op::Alloc { att, req } => {
                let a = attachment(att);
                let requested: Vec<IpAddr> = req
                    .map(|(s, off)| {
                        let set = &sets[usize::from(s) % sets.len()];
                        let net = set.ranges[0].subnet;
                        let base = headcni_core::ipam::ip_to_u128(net.network());
                        headcni_core::ipam::u128_to_ip(base + u128::from(off), net.is_ipv4())
                    })
                    .into_iter()
                    .collect();
                let before = model.ips_of(&a);
                let res = store.allocate(&a, &requested);
                if !before.is_empty() {
                    let got: BTreeSet<IpAddr> =
                        res.unwrap().iter().map(|r| r.address.ip()).collect();
                    prop_assert_eq!(got, before, "allocate is idempotent");
                    continue;
                }
                // Expected outcome, set by set.
                let req_set = requested
                    .first()
                    .map(|ip| sets.iter().position(|s| s.contains(*ip)));
                let mut expect_err: Option<&str> = None;
                if let Some(None) = req_set {
                    expect_err = Some("unavailable");
                }
                let mut sim_last = model.last.clone();
                if expect_err.is_none() {
                    for i in 0..sets.len() {
                        if req_set == Some(Some(i)) {
                            let ip = requested[0];
                            if sets[i].position(ip).is_none() || model.held.contains_key(&ip) {
                                expect_err = Some("unavailable");
                                break;
                            }
                            sim_last[i] = Some(ip);
                        } else if model.free_positions(i).is_empty() {
                            expect_err = Some("exhausted");
                            break;
                        }
                    }
                }
                match (res, expect_err) {
                    (Err(IpamError::AddressUnavailable { .. }), Some("unavailable"))
                    | (Err(IpamError::PoolExhausted { .. }), Some("exhausted")) => {
                        // Rolled back; last_reserved_ip of the sets that succeeded was written.
                        for i in 0..sets.len() {
                            let f = fs::read_to_string(dir.join(format!("last_reserved_ip.{i}")))
                                .ok()
                                .and_then(|s| s.parse().ok());
                            model.last[i] = f;
                        }
                    }
                    (Ok(r), None) => {
                        prop_assert_eq!(r.len(), sets.len());
                        for (i, res) in r.iter().enumerate() {
                            prop_assert_eq!(res.range_set, i);
                            let ip = res.address.ip();
                            let pos = sets[i].position(ip);
                            prop_assert!(pos.is_some(), "{} not allocatable", ip);
                            prop_assert!(!model.held.contains_key(&ip), "{} handed out twice", ip);
                            prop_assert_eq!(
                                res.address.prefix(),
                                sets[i].range_for(ip).unwrap().subnet.prefix()
                            );
                            if req_set == Some(Some(i)) {
                                prop_assert_eq!(ip, requested[0]);
                            } else {
                                match strat {
                                    Strategy::DensePack => prop_assert_eq!(
                                        pos,
                                        model.free_positions(i).first().copied()
                                    ),
                                    Strategy::Sequential => {
                                        prop_assert_eq!(pos, model.expected_sequential(i))
                                    }
                                    Strategy::Random => {}
                                }
                            }
                            model.held.insert(ip, a.clone());
                            model.last[i] = Some(ip);
                        }
                        let _ = sim_last;
                    }
                    (res, exp) => prop_assert!(
                        false,
                        "allocate {:?} req {:?}: got {:?}, expected {:?}",
                        a,
                        requested,
                        res,
                        exp
                    ),
                }
            }
            Op::Release(att) => {
                let a = attachment(att);
                let mut got = store.release(&a).unwrap();
                got.sort();
                let want: Vec<IpAddr> = model.ips_of(&a).into_iter().collect();
                prop_assert_eq!(got, want);
                model.held.retain(|_, x| *x != a);
                prop_assert!(store.find(&a).unwrap().is_empty());
            }
            Op::Gc(mask) => {
                let valid: Vec<Attachment> = (0..10u8)
                    .filter(|b| mask & (1 << (b % 8)) != 0 && *b < 8)
                    .map(|b| attachment((b / 2, b % 2)))
                    .collect();
                let mut got = store.gc(&valid).unwrap();
                got.sort();
                let want: Vec<(IpAddr, Option<Attachment>)> = model
                    .held
                    .iter()
                    .filter(|(_, a)| !valid.contains(a))
                    .map(|(ip, a)| (*ip, Some(a.clone())))
                    .collect();
                prop_assert_eq!(got, want);
                model.held.retain(|_, a| valid.contains(a));
            }
            Op::Reopen => store = open(),
            Op::DeleteIndex => {
                let _ = fs::remove_dir_all(dir.join(INDEX_DIR));
            }
            Op::CorruptIndex => {
                let p = dir.join(INDEX_DIR).join("index");
                if let Ok(mut d) = fs::read(&p) {
                    let n = d.len();
                    if n > 0 {
                        d[n / 2] ^= 0x5a;
                        fs::write(&p, d).unwrap();
                    }
                }
            }
            Op::CorruptAtt(att) => {
                let p = att_file(&dir, &attachment(att));
                if p.exists() {
                    fs::write(&p, b"\0headcni-att 1\ngarbage").unwrap();
                }
            }
            Op::DeleteAtt(att) => {
                let _ = fs::remove_file(att_file(&dir, &attachment(att)));
            }
        }
        check_invariants(&store, &model)?;
        // find() agrees with the model for every attachment.
        for c in 0..5u8 {
            for i in 0..2u8 {
                let a = attachment((c, i));
                let got: BTreeSet<IpAddr> = store
                    .find(&a)
                    .unwrap()
                    .iter()
                    .map(|r| r.address.ip())
                    .collect();
                prop_assert_eq!(got, model.ips_of(&a), "find {:?}", a);
            }
        }
    }
    Ok(())
}

fn any_strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::Sequential),
        Just(Strategy::Random),
        Just(Strategy::DensePack)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random operation sequences, including store re-opening and index deletion/corruption,
    /// against the model: no address twice, only allocatable addresses, idempotent allocate,
    /// exact release/GC, dense-pack lowest, sequential = host-local order, exhaustion exactly
    /// when the model is full, requested-IP rules, rollback.
    #[test]
    fn store_matches_model(cfg in 0usize..5, strat in any_strategy(), ops in prop::collection::vec(op(), 1..40)) {
        run(cfg, strat, ops)?;
    }

    /// All strategies agree on which positions are free, on dense and sparse pools: every pick
    /// is free, `None` exactly when full, and Random's reachable picks are exactly the free set.
    #[test]
    fn strategies_agree_on_free(len in 1u64..200, alloc in prop::collection::vec(0u64..200, 0..220), r in any::<u128>(), last in proptest::option::of(0u128..220)) {
        let mut d = DensePool::new(len);
        let mut s = SparsePool::new(u128::from(len));
        for p in alloc {
            d.insert(u128::from(p % len));
            s.insert(u128::from(p % len));
        }
        let free: BTreeSet<u128> = (0..u128::from(len)).filter(|p| d.is_free(*p)).collect();
        for pool in [&d as &dyn PoolView, &s as &dyn PoolView] {
            let f2: BTreeSet<u128> = (0..u128::from(len)).filter(|p| pool.is_free(*p)).collect();
            prop_assert_eq!(&f2, &free);
            for st in [Strategy::Sequential, Strategy::Random, Strategy::DensePack] {
                let imp: Box<dyn AllocationStrategy> = strategy(st);
                match imp.pick(pool, last, r) {
                    Some(p) => prop_assert!(free.contains(&p), "{:?} picked taken {}", st, p),
                    None => prop_assert!(free.is_empty(), "{:?} gave up with free positions", st),
                }
            }
            let random = strategy(Strategy::Random);
            let reach: BTreeSet<u128> = (0..free.len() as u128).filter_map(|k| random.pick(pool, None, k)).collect();
            prop_assert_eq!(&reach, &free);
            let seq = strategy(Strategy::Sequential);
            let reach: BTreeSet<u128> = (0..u128::from(len)).filter_map(|k| seq.pick(pool, Some(k), 0)).collect();
            prop_assert_eq!(&reach, &free);
        }
    }
}
