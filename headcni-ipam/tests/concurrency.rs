//! 8 threads, each with its own `Store` (its own lock file descriptor, like separate
//! processes), allocating and releasing on one directory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use headcni_core::ipam::{Attachment, IpamConf, IpamError, IpamStore, Strategy};
use headcni_ipam::Store;

fn run(subnet: &str, strategy: Strategy, rounds: usize, expect_exhaustion: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sets = IpamConf::parse(
        &serde_json::json!({"type": "headcni-ipam", "ranges": [[{"subnet": subnet}]]}),
    )
    .and_then(|c| c.range_sets(&[]))
    .expect("config");
    let live: Arc<Mutex<HashMap<IpAddr, Attachment>>> = Arc::default();
    let exhausted = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (sets, live, exhausted) = (sets.clone(), live.clone(), exhausted.clone());
            let path = tmp.path().to_path_buf();
            std::thread::spawn(move || {
                let st = Store::open(&path, "net", sets, strategy)
                    .expect("open")
                    .with_seed(t);
                let mut mine: Vec<(Attachment, IpAddr)> = Vec::new();
                for k in 0..rounds {
                    let a = Attachment {
                        container_id: format!("t{t}-{k}"),
                        ifname: "eth0".into(),
                    };
                    match st.allocate(&a, &[]) {
                        Ok(r) => {
                            let ip = r[0].address.ip();
                            let prev = live.lock().expect("lock").insert(ip, a.clone());
                            assert!(prev.is_none(), "{ip} given to {a:?} while held by {prev:?}");
                            mine.push((a, ip));
                        }
                        Err(IpamError::PoolExhausted { .. }) => {
                            *exhausted.lock().expect("lock") += 1
                        }
                        Err(e) => panic!("allocate: {e}"),
                    }
                    if k % 3 == 2 && !mine.is_empty() {
                        let (a, ip) = mine.remove(k % mine.len());
                        assert_eq!(live.lock().expect("lock").remove(&ip).as_ref(), Some(&a));
                        assert_eq!(st.release(&a).expect("release"), vec![ip]);
                    }
                }
                mine
            })
        })
        .collect();
    let mut remaining = Vec::new();
    for t in threads {
        remaining.extend(t.join().expect("thread panicked"));
    }
    let n_exhausted = *exhausted.lock().expect("lock");
    assert_eq!(
        n_exhausted > 0,
        expect_exhaustion,
        "{n_exhausted} exhausted allocations"
    );
    let st = Store::open(tmp.path(), "net", sets, strategy).expect("open");
    assert_eq!(
        st.usage().expect("usage")[0].allocated,
        remaining.len() as u128
    );
    for (a, ip) in &remaining {
        assert_eq!(st.find(a).expect("find")[0].address.ip(), *ip);
        assert_eq!(st.release(a).expect("release"), vec![*ip]);
    }
    let leftovers: Vec<_> = std::fs::read_dir(st.dir())
        .expect("read dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
        })
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "leaked reservations {leftovers:?}");
    assert_eq!(st.usage().expect("usage")[0].allocated, 0);
    let att_files = std::fs::read_dir(st.dir().join(headcni_ipam::store::INDEX_DIR).join("att"))
        .expect("att dir")
        .count();
    assert_eq!(att_files, 0, "leaked index entries");
}

#[test]
fn eight_threads_roomy_pool() {
    for s in [Strategy::Sequential, Strategy::Random, Strategy::DensePack] {
        run("10.8.0.0/24", s, 30, false);
    }
}

#[test]
fn eight_threads_contended_small_pool() {
    // 13 addresses for up to 8 × 20 live attachments: exhaustion under contention.
    for s in [Strategy::Sequential, Strategy::Random, Strategy::DensePack] {
        run("10.9.0.0/28", s, 30, true);
    }
}
