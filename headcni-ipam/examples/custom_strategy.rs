//! A custom [`AllocationStrategy`] plugged into HeadCNI's real on-disk store.
//!
//! `HighestFree` hands out the highest free address of a range set (the built-in `dense-pack`
//! hands out the lowest). The store keeps doing everything else: the host-local compatible
//! reservation files under `<dataDir>/<network>/`, the `.headcni/` index, the lock, the
//! exclusive create that makes a double allocation impossible whatever a strategy proposes.
//!
//! Run it with `cargo run -p headcni-ipam --example custom_strategy`; it works in a temporary
//! directory and prints each step. `headcni-ipam/tests/examples.rs` runs [`run`] and checks
//! every step.

use std::net::IpAddr;
use std::path::Path;

use headcni_core::ipam::{
    AllocationStrategy, Attachment, IpamConf, IpamError, IpamStore, PoolView,
};
use headcni_ipam::{IpamPlugin, Store};

/// Picks the highest free position of the pool: `nth_free(free - 1)`, O(log n) on the
/// store's index. `last_reserved` and `random` are not used.
#[derive(Debug, Clone, Copy, Default)]
pub struct HighestFree;

impl AllocationStrategy for HighestFree {
    fn pick(
        &self,
        pool: &dyn PoolView,
        _last_reserved: Option<u128>,
        _random: u128,
    ) -> Option<u128> {
        let free = pool.len() - pool.allocated();
        pool.nth_free(free.checked_sub(1)?)
    }
}

/// One observed step of [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `container` was given `address` (range set 0).
    Allocated {
        /// The container ID.
        container: String,
        /// The address reserved for it.
        address: IpAddr,
    },
    /// `container`'s addresses were released.
    Released {
        /// The container ID.
        container: String,
        /// The addresses released.
        addresses: Vec<IpAddr>,
    },
    /// An allocation for `container` failed: the range set has no free address.
    Exhausted {
        /// The container ID.
        container: String,
    },
}

fn attachment(container: &str) -> Attachment {
    Attachment {
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

/// Allocates for `container` and records the outcome; exhaustion is a step, not an error.
fn allocate(store: &Store, container: &str, steps: &mut Vec<Step>) -> Result<(), IpamError> {
    match store.allocate(&attachment(container), &[]) {
        Ok(r) => steps.push(Step::Allocated {
            container: container.into(),
            address: r[0].address.ip(),
        }),
        Err(IpamError::PoolExhausted { .. }) => steps.push(Step::Exhausted {
            container: container.into(),
        }),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Opens the store `<data_dir>/example` over `10.22.0.0/29` (allocatable `.2`–`.6`; `.1` is
/// the gateway) with [`HighestFree`]; allocates, releases and fills the range; then runs GC
/// and an ADD through the IPAM plugin built from the same configuration with the same
/// strategy. Returns what happened, step by step. Errors: store and configuration errors
/// (exhaustion is a [`Step`]).
pub fn run(data_dir: &Path) -> Result<Vec<Step>, Box<dyn std::error::Error>> {
    let mut conf = IpamConf::parse(&serde_json::json!({
        "type": "headcni-ipam",
        "ranges": [[{"subnet": "10.22.0.0/29"}]],
    }))?;
    let store = Store::open_with_strategy(data_dir, "example", conf.range_sets(&[])?, HighestFree)?;
    let mut steps = Vec::new();
    allocate(&store, "a", &mut steps)?;
    allocate(&store, "b", &mut steps)?;
    steps.push(Step::Released {
        container: "a".into(),
        addresses: store.release(&attachment("a"))?,
    });
    for c in ["c", "d", "e", "f", "g"] {
        allocate(&store, c, &mut steps)?;
    }
    // The same strategy behind the IPAM plugin verbs (ADD, DEL, CHECK, GC, STATUS), built
    // from the configuration like `IpamPlugin::from_ipam`. GC keeps only "b" and "c".
    conf.data_dir = Some(data_dir.to_path_buf());
    let plugin = IpamPlugin::from_ipam_with_strategy(conf, "example", &[], HighestFree)?;
    let mut gone: Vec<IpAddr> = plugin
        .gc(&[attachment("b"), attachment("c")])?
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    gone.sort();
    steps.push(Step::Released {
        container: "gc".into(),
        addresses: gone,
    });
    let add = plugin.add(&attachment("h"), &[])?;
    steps.push(Step::Allocated {
        container: "h".into(),
        address: add.ips[0].address.ip(),
    });
    Ok(steps)
}

#[allow(dead_code)] // the test includes this file as a module and calls `run` only
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    for step in run(dir.path())? {
        println!("{step:?}");
    }
    Ok(())
}
