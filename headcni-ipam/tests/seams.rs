//! The IPAM seams (issue 9 item 4): a custom `AllocationStrategy` plugged into the on-disk
//! `Store`, and `IpamPlugin` / `InProcessIpam` running over a custom `IpamStore`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::executor::block_on;
use headcni_core::cni::{CniResult, GcAttachment};
use headcni_core::ipam::{
    AllocationStrategy, Attachment, IpamConf, IpamError, IpamStore, PoolUsage, PoolView, RangeSet,
    Reservation, Strategy,
};
use headcni_core::plugin::IpamClient;
use headcni_ipam::{DensePack, InProcessIpam, IpamPlugin, Store};
use ipnetwork::IpNetwork;

fn conf(ranges: serde_json::Value) -> IpamConf {
    IpamConf::parse(&serde_json::json!({
        "type": "headcni-ipam", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}],
    }))
    .unwrap()
}
fn att(c: &str) -> Attachment {
    Attachment {
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An in-memory store: the lowest address of each set not held by anyone. It does not
/// override `allocate_fresh`, so the trait's default is what the plugin uses.
struct MemStore {
    sets: Vec<RangeSet>,
    held: Mutex<BTreeMap<Attachment, Vec<Reservation>>>,
}

impl MemStore {
    fn new(conf: &IpamConf) -> MemStore {
        MemStore {
            sets: conf.range_sets(&[]).unwrap(),
            held: Mutex::new(BTreeMap::new()),
        }
    }
}

impl IpamStore for MemStore {
    fn range_sets(&self) -> &[RangeSet] {
        &self.sets
    }
    fn allocate(
        &self,
        att: &Attachment,
        _requested: &[IpAddr],
    ) -> Result<Vec<Reservation>, IpamError> {
        let mut held = self.held.lock().unwrap();
        if let Some(r) = held.get(att) {
            return Ok(r.clone());
        }
        let taken: Vec<IpAddr> = held.values().flatten().map(|r| r.address.ip()).collect();
        let mut out = Vec::new();
        for (i, set) in self.sets.iter().enumerate() {
            let (addr, range) = (0..set.len())
                .filter_map(|p| set.address(p))
                .find(|(a, _)| !taken.contains(a))
                .ok_or_else(|| IpamError::PoolExhausted {
                    range_set: i,
                    ranges: set.describe(),
                })?;
            out.push(Reservation {
                range_set: i,
                address: IpNetwork::new(addr, range.subnet.prefix()).unwrap(),
                gateway: range.gateway,
            });
        }
        held.insert(att.clone(), out.clone());
        Ok(out)
    }
    fn find(&self, att: &Attachment) -> Result<Vec<Reservation>, IpamError> {
        Ok(self
            .held
            .lock()
            .unwrap()
            .get(att)
            .cloned()
            .unwrap_or_default())
    }
    fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let r = self.held.lock().unwrap().remove(att).unwrap_or_default();
        Ok(r.iter().map(|r| r.address.ip()).collect())
    }
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<(IpAddr, Option<Attachment>)>, IpamError> {
        let mut held = self.held.lock().unwrap();
        let gone: Vec<Attachment> = held
            .keys()
            .filter(|a| !valid.contains(a))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for a in gone {
            for r in held.remove(&a).unwrap_or_default() {
                out.push((r.address.ip(), Some(a.clone())));
            }
        }
        Ok(out)
    }
    fn usage(&self) -> Result<Vec<PoolUsage>, IpamError> {
        let held = self.held.lock().unwrap();
        Ok(self
            .sets
            .iter()
            .enumerate()
            .map(|(i, s)| PoolUsage {
                range_set: i,
                size: s.len(),
                allocated: held.values().flatten().filter(|r| r.range_set == i).count() as u128,
            })
            .collect())
    }
}

#[test]
fn ipam_plugin_runs_over_a_custom_store() {
    let c = conf(serde_json::json!([[{"subnet": "10.7.0.0/30"}], [{"subnet": "fd07::/126"}]]));
    let p = IpamPlugin::with_store(MemStore::new(&c), c);
    p.status().unwrap();
    let (r, fresh) = p.add_fresh(&att("a"), &[]).unwrap();
    assert!(fresh);
    let got: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
    assert_eq!(got, ["10.7.0.2/30", "fd07::2/126"]);
    assert_eq!(r.ips[0].gateway, Some(ip("10.7.0.1")));
    assert_eq!(r.routes.len(), 1, "routes come from the configuration");
    assert_eq!(p.add_fresh(&att("a"), &[]).unwrap(), (r.clone(), false));
    p.check(&att("a"), Some(&r)).unwrap();
    let mut wrong: CniResult = r.clone();
    wrong.ips[1].address = "fd07::3/126".parse().unwrap();
    assert_eq!(p.check(&att("a"), Some(&wrong)).unwrap_err().code, 106);
    // The /30 holds one address: STATUS and ADD see the custom store's exhaustion.
    assert_eq!(p.status().unwrap_err().code, 50);
    assert_eq!(p.add(&att("b"), &[]).unwrap_err().code, 100);
    assert_eq!(p.store().find(&att("a")).unwrap().len(), 2);
    p.del(&att("a")).unwrap();
    assert_eq!(p.check(&att("a"), None).unwrap_err().code, 106);
    p.add(&att("b"), &[]).unwrap();
    assert_eq!(
        p.gc(&[]).unwrap(),
        vec![
            (ip("10.7.0.2"), Some(att("b"))),
            (ip("fd07::2"), Some(att("b")))
        ]
    );
}

#[test]
fn in_process_ipam_runs_over_a_custom_store() {
    let c = conf(serde_json::json!([[{"subnet": "10.8.0.0/29"}]]));
    let client = |store: MemStore, id: &str| InProcessIpam {
        plugin: IpamPlugin::with_store(store, c.clone()),
        attachment: att(id),
        requested: Vec::new(),
    };
    let a = client(MemStore::new(&c), "a");
    let first = block_on(a.add()).unwrap();
    assert!(first.fresh);
    assert_eq!(first.result.ips[0].address.to_string(), "10.8.0.2/29");
    let again = block_on(a.add()).unwrap();
    assert!(!again.fresh, "a repeated ADD is not fresh");
    block_on(a.check(&first.result)).unwrap();
    block_on(a.status()).unwrap();
    let valid = [GcAttachment {
        container_id: "other".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(block_on(a.gc(&valid)).unwrap(), vec![att("a")]);
    block_on(a.del()).unwrap();
    // As a trait object, like the main plugin holds its IPAM client.
    let boxed: Box<dyn IpamClient> = Box::new(client(MemStore::new(&c), "b"));
    assert!(block_on(boxed.add()).unwrap().fresh);
}

#[test]
fn a_boxed_store_chosen_at_run_time_works_behind_the_plugin() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    let stores: Vec<Box<dyn IpamStore + Send + Sync>> = vec![
        Box::new(MemStore::new(&c)),
        Box::new(
            Store::open(
                d.path(),
                "n",
                c.range_sets(&[]).unwrap(),
                Strategy::DensePack,
            )
            .unwrap(),
        ),
    ];
    for store in stores {
        let p = IpamPlugin::with_store(store, c.clone());
        let r = p.add(&att("a"), &[]).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.2/29");
        p.del(&att("a")).unwrap();
    }
    assert!(d.path().join("n").join("lock").exists());
}

#[test]
fn the_strategy_enum_maps_onto_the_built_in_implementations() {
    let d = tempfile::tempdir().unwrap();
    let sets = conf(serde_json::json!([[{"subnet": "10.10.0.0/28"}]]))
        .range_sets(&[])
        .unwrap();
    let by_enum = Store::open(d.path(), "e", sets.clone(), Strategy::DensePack).unwrap();
    let by_impl = Store::open_with_strategy(d.path(), "i", sets.clone(), DensePack).unwrap();
    let by_box = Store::open_with_strategy(
        d.path(),
        "b",
        sets,
        headcni_ipam::strategy(Strategy::DensePack),
    )
    .unwrap();
    for s in [&by_enum, &by_impl, &by_box] {
        for c in ["a", "b", "c"] {
            s.allocate(&att(c), &[]).unwrap();
        }
        s.release(&att("a")).unwrap();
        let r = s.allocate(&att("d"), &[]).unwrap();
        assert_eq!(r[0].address.ip(), ip("10.10.0.2"), "{}", s.dir().display());
    }
}

/// Proposes one fixed position whatever the pool says.
struct Stubborn(u128);

impl AllocationStrategy for Stubborn {
    fn pick(&self, _pool: &dyn PoolView, _last: Option<u128>, _random: u128) -> Option<u128> {
        Some(self.0)
    }
}

/// A custom strategy proposing a taken or out-of-range position must not spin for ever
/// under the store's lock: the allocation fails with a configuration error and nothing of it
/// stays reserved (also not its reservation in an earlier range set).
#[test]
fn a_strategy_proposing_a_taken_position_fails_instead_of_spinning() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sets =
            conf(serde_json::json!([[{"subnet": "10.11.0.0/29"}], [{"subnet": "10.12.0.0/29"}]]))
                .range_sets(&[])
                .unwrap();
        let s = Store::open_with_strategy(&path, "n", sets.clone(), Stubborn(0)).unwrap();
        // a holds set 0's position 1 and set 1's position 0.
        let first = s
            .allocate(&att("a"), &[ip("10.11.0.3"), ip("10.12.0.2")])
            .map(|r| r.len());
        let taken = s.allocate(&att("b"), &[]).map(|r| r.len());
        let usage: Vec<u128> = s.usage().unwrap().iter().map(|u| u.allocated).collect();
        let s = Store::open_with_strategy(&path, "m", sets, Stubborn(99)).unwrap();
        let outside = s.allocate(&att("c"), &[]).map(|r| r.len());
        let _ = tx.send((first, taken, usage, outside));
    });
    let (first, taken, usage, outside) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the store spun on a strategy's non-free proposal");
    assert_eq!(first.unwrap(), 2);
    assert!(
        matches!(taken, Err(IpamError::Config(ref m)) if m.contains("not a free position")),
        "{taken:?}"
    );
    assert_eq!(usage, [1, 1], "b's reservation in set 0 is rolled back");
    assert!(!d.path().join("n").join("10.11.0.2").exists());
    assert!(matches!(outside, Err(IpamError::Config(_))), "{outside:?}");
    assert!(!d.path().join("m").join("10.11.0.2").exists());
}
