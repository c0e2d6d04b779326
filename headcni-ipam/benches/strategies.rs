//! Allocate + release of one attachment with 10 … 65 000 addresses already allocated in a /16,
//! for each strategy: the in-memory pick (`Pool` + strategy) and the full on-disk `Store`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use headcni_core::ipam::{Attachment, IpamConf, IpamStore, PoolView, RangeSet, Strategy};
use headcni_ipam::{Pool, Store, strategy};
use rand::SeedableRng;
use rand::rngs::StdRng;

const SIZES: [usize; 5] = [10, 100, 1_000, 10_000, 65_000];
const STRATEGIES: [Strategy; 3] = [Strategy::Sequential, Strategy::Random, Strategy::DensePack];

fn slash16() -> RangeSet {
    let sets = IpamConf::parse(
        &serde_json::json!({"type": "headcni-ipam", "ranges": [[{"subnet": "10.200.0.0/16"}]]}),
    )
    .and_then(|c| c.range_sets(&[]))
    .expect("config");
    sets.into_iter().next().expect("one set")
}

fn positions(len: u128, n: usize) -> Vec<u128> {
    let mut rng = StdRng::seed_from_u64(42);
    rand::seq::index::sample(&mut rng, len as usize, n)
        .into_iter()
        .map(|p| p as u128)
        .collect()
}

fn bench_pool(c: &mut Criterion) {
    let set = slash16();
    let mut g = c.benchmark_group("pool_pick_insert_remove");
    for n in SIZES {
        let mut pool = Pool::new(set.len());
        for p in positions(set.len(), n) {
            pool.insert(p);
        }
        for s in STRATEGIES {
            let imp = strategy(s);
            let mut r: u128 = 0x9e37_79b9_7f4a_7c15;
            g.bench_with_input(BenchmarkId::new(format!("{s:?}"), n), &n, |b, _| {
                b.iter(|| {
                    r = r
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let p = imp.pick(&pool, Some(12345), r).expect("free position");
                    pool.insert(p);
                    pool.remove(black_box(p));
                })
            });
        }
        black_box(pool.allocated());
    }
    g.finish();
}

fn prepopulate(data: &Path, set: &RangeSet, n: usize) {
    let dir = data.join("bench");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (i, p) in positions(set.len(), n).into_iter().enumerate() {
        let (ip, _) = set.address(p).expect("address");
        std::fs::write(dir.join(ip.to_string()), format!("pre{i}\r\neth0")).expect("write");
    }
}

fn bench_store(c: &mut Criterion) {
    let set = slash16();
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let mut g = c.benchmark_group("store_allocate_release");
    g.sample_size(20);
    for n in SIZES {
        let tmp = tempfile::tempdir_in(base).expect("tempdir");
        prepopulate(tmp.path(), &set, n);
        for s in STRATEGIES {
            let st = Store::open(tmp.path(), "bench", vec![set.clone()], s)
                .expect("open")
                .with_seed(1);
            st.rebuild().expect("rebuild");
            let att = Attachment {
                container_id: "bench".into(),
                ifname: "eth0".into(),
            };
            g.bench_with_input(BenchmarkId::new(format!("{s:?}"), n), &n, |b, _| {
                b.iter(|| {
                    let r = st.allocate(&att, &[]).expect("allocate");
                    black_box(&r);
                    st.release(&att).expect("release");
                })
            });
            assert_eq!(st.usage().expect("usage")[0].allocated, n as u128);
        }
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = bench_pool, bench_store }
criterion_main!(benches);
