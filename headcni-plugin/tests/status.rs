//! CNI STATUS (issue 11 item 6): 50 when ADD cannot succeed (the bridge's name is taken),
//! 51 while the node daemon is gone or not ready (read from its readiness file next to the
//! `daemonSocket`), 0 when it is ready; on the recording fake backend, no kernel.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use headcni_core::cni::{CniError, CniResult, GcAttachment};
use headcni_core::ipam::Attachment;
use headcni_core::node::ready_file::ReadyFile;
use headcni_core::plugin::testing::{FakeNs, HOST, info};
use headcni_core::plugin::{IpamAdd, IpamClient};
use headcni_plugin::{IpamRequest, IpamSelector, Plugin, Role};
use serde_json::{Value, json};

/// An IPAM whose STATUS is fine (the range is not the point here).
struct Fine;

#[async_trait]
impl IpamClient for Fine {
    async fn add(&self) -> Result<IpamAdd, CniError> {
        unreachable!("STATUS only")
    }
    async fn del(&self) -> Result<(), CniError> {
        Ok(())
    }
    async fn check(&self, _prev: &CniResult) -> Result<(), CniError> {
        Ok(())
    }
    async fn gc(&self, _valid: &[GcAttachment]) -> Result<Vec<Attachment>, CniError> {
        Ok(Vec::new())
    }
    async fn status(&self) -> Result<(), CniError> {
        Ok(())
    }
}

struct Select;

impl IpamSelector for Select {
    fn select(&self, _: &IpamRequest<'_>) -> Result<Option<Box<dyn IpamClient>>, CniError> {
        Ok(Some(Box::new(Fine)))
    }
}

fn status(ns: &FakeNs, socket: Option<&Path>, bridge: &str) -> (i32, Value) {
    let mut conf = json!({
        "cniVersion": "1.1.0", "name": "n", "type": "headcni", "bridge": bridge,
        "ipam": {"type": "custom"},
    });
    if let Some(s) = socket {
        conf["daemonSocket"] = json!(s);
    }
    let a = Plugin::new(Role::Main, ns)
        .with_ipam(&Select)
        .without_events()
        .call(
            [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/nonexistent")],
            conf.to_string().as_bytes(),
        );
    let out = if a.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&a.stdout).unwrap()
    };
    (a.exit_code, out)
}

fn write_ready(dir: &Path, ready: bool, reasons: &[&str]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let f = ReadyFile {
        ready,
        reasons: reasons.iter().map(|s| (*s).to_owned()).collect(),
        add_blocked: Vec::new(),
        written_at_unix_ms: now,
        reconcile_interval_ms: 30_000,
    };
    std::fs::write(dir.join("ready.json"), serde_json::to_vec(&f).unwrap()).unwrap();
}

#[test]
fn status_follows_the_daemons_readiness_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("daemon.sock");
    let ns = FakeNs::default();

    let (code, out) = status(&ns, Some(&sock), "headcni0");
    assert_eq!(code, 51, "no daemon: {out}");
    assert_eq!(out["code"], 51);
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("no readiness file"),
        "{out}"
    );

    write_ready(
        tmp.path(),
        false,
        &["control plane: not-approved: waiting for approval"],
    );
    let (code, out) = status(&ns, Some(&sock), "headcni0");
    assert_eq!(code, 51, "{out}");
    assert!(
        out["details"].as_str().unwrap().contains("not-approved"),
        "{out}"
    );

    write_ready(tmp.path(), true, &[]);
    assert_eq!(status(&ns, Some(&sock), "headcni0"), (0, Value::Null));

    // Without a daemonSocket (a configuration not written by the daemon) only the plugin's
    // own checks count.
    std::fs::remove_file(tmp.path().join("ready.json")).unwrap();
    assert_eq!(status(&ns, None, "headcni0"), (0, Value::Null));
}

#[test]
fn a_bridge_name_held_by_another_link_is_50_before_the_daemon_is_asked() {
    let ns = FakeNs::default();
    {
        let mut w = ns.0.lock().unwrap();
        let l = info(&mut w, "hcbr0", "dummy", None);
        w.links
            .entry(HOST.into())
            .or_default()
            .insert("hcbr0".into(), (l, Vec::new()));
    }
    let (code, out) = status(&ns, Some(Path::new("/nonexistent/daemon.sock")), "hcbr0");
    assert_eq!(code, 50, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("hcbr0"), "{out}");
}
