//! Interoperability with the real host-local binary (Debian `containernetworking-plugins`)
//! on one shared store directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use headcni_core::ipam::{Attachment, IpamConf, IpamError, IpamStore, Strategy};
use headcni_ipam::Store;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const NET: &str = "interop";

fn host_local_binary() -> &'static str {
    assert!(
        Path::new(HOST_LOCAL).is_file(),
        "{HOST_LOCAL} is missing: this test needs the real host-local binary \
         (apt-get install -y containernetworking-plugins)"
    );
    HOST_LOCAL
}

fn ipam_json(dir: &Path) -> serde_json::Value {
    serde_json::json!({"type": "host-local", "dataDir": dir, "ranges": [[{"subnet": "10.77.0.0/28"}]]})
}

/// Runs host-local; `Ok(stdout JSON)` on exit 0, `Err(stdout JSON)` otherwise.
fn host_local(
    dir: &Path,
    cmd: &str,
    cid: &str,
    ifname: &str,
) -> Result<serde_json::Value, serde_json::Value> {
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": NET, "type": "bridge", "ipam": ipam_json(dir)});
    let mut child = Command::new(host_local_binary())
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn host-local");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait host-local");
    let v: serde_json::Value = if out.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "host-local stdout {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    if out.status.success() { Ok(v) } else { Err(v) }
}

fn host_local_ip(v: &serde_json::Value) -> IpAddr {
    let a = v["ips"][0]["address"]
        .as_str()
        .expect("address in host-local result");
    a.split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("parse host-local address")
}

fn att(c: &str) -> Attachment {
    Attachment {
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

fn store(dir: &Path, s: Strategy) -> Store {
    let sets = IpamConf::parse(&ipam_json(dir))
        .and_then(|c| c.range_sets(&[]))
        .expect("config");
    Store::open(dir, NET, sets, s).expect("open store")
}

fn files(dir: &Path) -> BTreeMap<IpAddr, String> {
    std::fs::read_dir(dir.join(NET))
        .expect("read store dir")
        .flatten()
        .filter_map(|e| {
            let ip: IpAddr = e.file_name().to_str()?.parse().ok()?;
            Some((ip, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect()
}

fn interleave_until_full(strategy: Strategy) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let st = store(dir, strategy);
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    let (mut hl_full, mut hc_full) = (false, false);
    let mut i = 0;
    while !(hl_full && hc_full) {
        if !hl_full {
            let cid = format!("hl{i}");
            match host_local(dir, "ADD", &cid, "eth0") {
                Ok(v) => {
                    let ip = host_local_ip(&v);
                    assert!(
                        owner.insert(ip, cid.clone()).is_none(),
                        "{ip} handed out twice (host-local {cid})"
                    );
                }
                Err(e) => {
                    assert!(
                        e["msg"]
                            .as_str()
                            .unwrap_or("")
                            .contains("no IP addresses available"),
                        "host-local: {e}"
                    );
                    hl_full = true;
                }
            }
        }
        if !hc_full {
            let cid = format!("hc{i}");
            match st.allocate(&att(&cid), &[]) {
                Ok(r) => {
                    let ip = r[0].address.ip();
                    assert!(
                        owner.insert(ip, cid.clone()).is_none(),
                        "{ip} handed out twice (headcni {cid})"
                    );
                }
                Err(IpamError::PoolExhausted { .. }) => hc_full = true,
                Err(e) => panic!("headcni allocate: {e}"),
            }
        }
        i += 1;
        assert!(i < 100, "never exhausted");
    }
    // 10.77.0.0/28: .2 … .14 (gateway .1, broadcast .15).
    assert_eq!(owner.len(), 13, "{owner:?}");
    assert!(
        owner.values().any(|c| c.starts_with("hl")) && owner.values().any(|c| c.starts_with("hc"))
    );
    let on_disk = files(dir);
    assert_eq!(on_disk.len(), 13);
    for (ip, cid) in &owner {
        assert_eq!(
            on_disk.get(ip).map(String::as_str),
            Some(format!("{cid}\r\neth0").as_str())
        );
    }
    assert_eq!(st.usage().expect("usage")[0].allocated, 13);

    // Each side sees the other's reservations.
    let (hl_ip, hl_cid) = owner
        .iter()
        .find(|(_, c)| c.starts_with("hl"))
        .map(|(i, c)| (*i, c.clone()))
        .expect("hl");
    let (hc_ip, hc_cid) = owner
        .iter()
        .find(|(_, c)| c.starts_with("hc"))
        .map(|(i, c)| (*i, c.clone()))
        .expect("hc");
    assert_eq!(st.find(&att(&hl_cid)).expect("find")[0].address.ip(), hl_ip);
    host_local(dir, "CHECK", &hc_cid, "eth0")
        .expect("host-local CHECK finds the HeadCNI reservation");
    let dup = host_local(dir, "ADD", &hc_cid, "eth0")
        .expect_err("host-local refuses a duplicate of a HeadCNI attachment");
    assert!(
        dup["msg"].as_str().unwrap_or("").contains("duplicate"),
        "{dup}"
    );
    assert_eq!(files(dir).len(), 13);

    // DEL from either side, of the other side's attachment.
    host_local(dir, "DEL", &hc_cid, "eth0").expect("host-local DEL");
    assert!(!files(dir).contains_key(&hc_ip));
    assert!(st.find(&att(&hc_cid)).expect("find").is_empty());
    assert_eq!(st.release(&att(&hl_cid)).expect("release"), vec![hl_ip]);
    assert!(!files(dir).contains_key(&hl_ip));
    host_local(dir, "CHECK", &hl_cid, "eth0")
        .expect_err("host-local CHECK after HeadCNI release must fail");
    assert_eq!(st.usage().expect("usage")[0].allocated, 11);

    // The two freed addresses go one to each side, then both are exhausted again.
    let a =
        host_local_ip(&host_local(dir, "ADD", "hl-new", "eth0").expect("host-local ADD after DEL"));
    let b = st
        .allocate(&att("hc-new"), &[])
        .expect("headcni allocate after DEL")[0]
        .address
        .ip();
    let mut freed = vec![a, b];
    freed.sort();
    let mut want = vec![hl_ip, hc_ip];
    want.sort();
    assert_eq!(freed, want);
    assert!(host_local(dir, "ADD", "hl-x", "eth0").is_err());
    assert!(matches!(
        st.allocate(&att("hc-x"), &[]),
        Err(IpamError::PoolExhausted { .. })
    ));
    // A HeadCNI DEL of everything through GC leaves host-local nothing to find.
    let released = st.gc(&[]).expect("gc");
    assert_eq!(released.len(), 13);
    assert!(files(dir).is_empty());
    host_local(dir, "ADD", "hl-y", "eth0").expect("host-local ADD after GC");
}

#[test]
fn interleaved_with_host_local_sequential() {
    interleave_until_full(Strategy::Sequential);
}

#[test]
fn interleaved_with_host_local_dense_pack() {
    interleave_until_full(Strategy::DensePack);
}

#[test]
fn interleaved_with_host_local_random() {
    interleave_until_full(Strategy::Random);
}
