//! The entry point as a library (issue 9 item 3): the IPAM choice can be plugged, and what
//! the library used to print (rollback failures, ignored settings) comes back in
//! [`Answer::warnings`] instead. On the recording fake backend, no kernel.

use std::sync::Mutex;

use async_trait::async_trait;
use headcni_core::cni::{CniError, CniResult, ErrorCode, GcAttachment, IpConfig};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::testing::FakeNs;
use headcni_core::plugin::{IpamAdd, IpamClient};
use headcni_plugin::{IpamRequest, IpamSelector, Plugin, Role};
use serde_json::{Value, json};

/// An IPAM whose ADD hands out 10.210.0.5/24 and whose DEL (the rollback's release) fails.
struct ReleaseFails;

#[async_trait]
impl IpamClient for ReleaseFails {
    async fn add(&self) -> Result<IpamAdd, CniError> {
        Ok(IpamAdd {
            result: CniResult {
                ips: vec![IpConfig {
                    interface: None,
                    address: "10.210.0.5/24".parse().unwrap(),
                    gateway: Some("10.210.0.1".parse().unwrap()),
                }],
                ..Default::default()
            },
            fresh: true,
        })
    }
    async fn del(&self) -> Result<(), CniError> {
        Err(CniError::new(ErrorCode::Io, "store unavailable"))
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

/// Serves `ipam.type: custom` with [`ReleaseFails`] and records the types it was asked for;
/// every other type falls back to the built-in choice.
#[derive(Default)]
struct Custom {
    asked: Mutex<Vec<String>>,
}

impl IpamSelector for Custom {
    fn select(&self, req: &IpamRequest<'_>) -> Result<Option<Box<dyn IpamClient>>, CniError> {
        self.asked.lock().unwrap().push(req.ipam_type.to_owned());
        Ok((req.ipam_type == "custom").then(|| Box::new(ReleaseFails) as Box<dyn IpamClient>))
    }
}

fn vars(verb: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", verb.to_owned()),
        ("CNI_CONTAINERID", "cid-a".to_owned()),
        ("CNI_NETNS", "/run/netns/pod-a".to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/nonexistent".to_owned()),
        ("HOME", "/root".to_owned()),
    ]
}

fn conf(ipam: Value, ip_masq: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": "1.1.0", "name": "n", "type": "headcni", "ipMasq": ip_masq, "ipam": ipam,
    }))
    .unwrap()
}

#[test]
fn a_failed_rollback_is_returned_as_a_warning_with_the_original_error() {
    let ns = FakeNs::default();
    ns.w().fail_on = Some("add_address");
    let custom = Custom::default();
    let answer = Plugin::new(Role::Main, &ns)
        .with_ipam(&custom)
        .without_events()
        .call(vars("ADD"), &conf(json!({"type": "custom"}), false));
    let v: Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(v["code"], ErrorCode::Netlink.code(), "{v}");
    assert_eq!(answer.exit_code, ErrorCode::Netlink.code() as i32);
    assert_eq!(
        answer.warnings,
        vec!["rollback: releasing the IP reservation failed: store unavailable".to_owned()]
    );
    // the error JSON carries the original failure only
    assert!(!String::from_utf8_lossy(&answer.stdout).contains("store unavailable"));
    assert_eq!(*custom.asked.lock().unwrap(), vec!["custom".to_owned()]);
}

#[test]
fn an_ignored_setting_is_a_warning_and_the_selector_can_fall_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = FakeNs::default();
    let custom = Custom::default();
    let ipam = json!({
        "type": "headcni-ipam",
        "ranges": [[{"subnet": "10.211.0.0/24"}]],
        "dataDir": tmp.path(),
    });
    let answer = Plugin::new(Role::Main, &ns)
        .with_ipam(&custom)
        .without_events()
        .call(vars("ADD"), &conf(ipam, true));
    assert_eq!(
        answer.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&answer.stdout)
    );
    let r: Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.211.0.2/24", "{r}");
    assert_eq!(
        answer.warnings,
        vec![
            "ipMasq is ignored: masquerade is done by the node daemon's nftables table".to_owned()
        ]
    );
    assert_eq!(
        *custom.asked.lock().unwrap(),
        vec!["headcni-ipam".to_owned()]
    );
}

#[test]
fn a_selector_error_is_the_answer() {
    struct Refuse;
    impl IpamSelector for Refuse {
        fn select(&self, _: &IpamRequest<'_>) -> Result<Option<Box<dyn IpamClient>>, CniError> {
            Err(CniError::new(ErrorCode::InvalidConfig, "no such pool"))
        }
    }
    let ns = FakeNs::default();
    let answer = Plugin::new(Role::Main, &ns)
        .with_ipam(&Refuse)
        .without_events()
        .call(vars("ADD"), &conf(json!({"type": "custom"}), false));
    let v: Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(v["code"], 7);
    assert_eq!(v["msg"], "no such pool");
    assert_eq!(answer.exit_code, 7);
    assert!(ns.w().log.is_empty(), "nothing touched: {:?}", ns.w().log);
}
