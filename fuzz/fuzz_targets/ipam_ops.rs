//! IPAM op sequences on the on-disk store: allocate / release / GC / reopen / index damage,
//! checked against a model: no address is ever held by two attachments, addresses stay in
//! the range and off the gateway, allocation is idempotent, release and GC free exactly what
//! they should, and the pool is exhausted exactly when the model is full.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use headcni_core::ipam::{Attachment, IpamConf, IpamError, IpamStore, Strategy};
use headcni_ipam::Store;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
enum Op {
    Alloc { att: u8, request: Option<u8> },
    Release { att: u8 },
    Gc { keep: u8 },
    Reopen,
    DropIndex,
}

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    strategy: Strategy,
    prefix: u8,
    ops: Vec<Op>,
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn att(i: u8) -> Attachment {
    Attachment { container_id: format!("c{}", i % 8), ifname: "eth0".into() }
}

fuzz_target!(|input: Input| {
    let prefix = 27 + input.prefix % 4; // /27 .. /30: small enough to exhaust
    let conf: IpamConf = serde_json::from_value(serde_json::json!({
        "type": "headcni-ipam",
        "ranges": [[{"subnet": format!("10.1.2.0/{prefix}")}]],
    }))
    .expect("static config parses");
    let sets = conf.range_sets(&[]).expect("static config is valid");
    let size = (1u32 << (32 - prefix)) - 3; // minus network, broadcast, gateway
    let root: PathBuf = std::env::temp_dir().join(format!("hc-fuzz-{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed)));
    let open = || Store::open(&root, "net", sets.clone(), input.strategy).expect("store opens").with_seed(7);
    let mut store = open();
    let mut model: BTreeMap<Attachment, IpAddr> = BTreeMap::new();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Alloc { att: a, request } => {
                let a = att(*a);
                let req: Vec<IpAddr> = request.iter().map(|r| IpAddr::from([10, 1, 2, *r])).collect();
                match store.allocate(&a, &req) {
                    Ok(res) => {
                        assert_eq!(res.len(), 1);
                        let ip = res[0].address.ip();
                        if let Some(prev) = model.get(&a) {
                            assert_eq!(*prev, ip, "allocation is idempotent");
                        } else {
                            assert!(!model.values().any(|v| *v == ip), "{ip} handed out twice");
                            if let Some(r) = req.first() {
                                assert_eq!(*r, ip, "requested address honoured");
                            }
                        }
                        let last = u32::from_be_bytes([10, 1, 2, 0]) + (1u32 << (32 - prefix)) - 1;
                        let v = match ip { IpAddr::V4(v) => u32::from(v), IpAddr::V6(_) => panic!("v6 from a v4 range") };
                        assert!(v > u32::from_be_bytes([10, 1, 2, 1]) && v < last, "{ip} outside the range or on the gateway");
                        model.insert(a, ip);
                    }
                    Err(IpamError::PoolExhausted { .. }) => {
                        assert!(!model.contains_key(&a));
                        assert_eq!(model.len() as u32, size, "exhausted while the model has room");
                    }
                    Err(IpamError::AddressUnavailable { .. }) => assert!(!req.is_empty()),
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            Op::Release { att: a } => {
                let a = att(*a);
                let released = store.release(&a).expect("release");
                assert_eq!(released, model.remove(&a).into_iter().collect::<Vec<_>>());
            }
            Op::Gc { keep } => {
                let valid: Vec<Attachment> = (0..8u8).filter(|i| keep & (1 << i) != 0).map(att).collect();
                store.gc(&valid).expect("gc");
                model.retain(|a, _| valid.contains(a));
            }
            Op::Reopen => store = open(),
            Op::DropIndex => {
                let _ = std::fs::remove_dir_all(root.join("net").join(headcni_ipam::store::INDEX_DIR));
                store = open();
            }
        }
        for (a, ip) in &model {
            let found = store.find(a).expect("find");
            assert_eq!(found.iter().map(|r| r.address.ip()).collect::<Vec<_>>(), vec![*ip]);
        }
        let usage = store.usage().expect("usage");
        assert_eq!(usage[0].allocated, model.len() as u128);
    }
    let _ = std::fs::remove_dir_all(&root);
});
