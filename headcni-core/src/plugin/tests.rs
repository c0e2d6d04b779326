//! Orchestration tests on recording fakes (no kernel): rollback, idempotence, CHECK.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::testing::{FakeNs, HOST};
use super::*;

#[derive(Default)]
struct FakeIpam {
    reserved: Mutex<Option<CniResult>>,
    preexisting: bool,
    dels: Mutex<u32>,
}

fn ipam_result() -> CniResult {
    CniResult {
        ips: vec![IpConfig {
            interface: None,
            address: "10.244.1.5/24".parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
        }],
        routes: vec![Route::new("10.96.0.0/12".parse().unwrap(), None)],
        ..Default::default()
    }
}

#[async_trait]
impl IpamClient for FakeIpam {
    async fn add(&self) -> Result<IpamAdd, CniError> {
        let mut r = self.reserved.lock().unwrap();
        let fresh = r.is_none() && !self.preexisting;
        *r = Some(ipam_result());
        Ok(IpamAdd {
            result: ipam_result(),
            fresh,
        })
    }
    async fn del(&self) -> Result<(), CniError> {
        *self.dels.lock().unwrap() += 1;
        *self.reserved.lock().unwrap() = None;
        Ok(())
    }
    async fn check(&self, _prev: &CniResult) -> Result<(), CniError> {
        if self.reserved.lock().unwrap().is_some() {
            Ok(())
        } else {
            Err(CniError::new(ErrorCode::CheckFailed, "no reservation"))
        }
    }
    async fn gc(&self, _valid: &[GcAttachment]) -> Result<(), CniError> {
        Ok(())
    }
    async fn status(&self) -> Result<(), CniError> {
        Ok(())
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

const NETNS: &str = "/run/netns/pod-a";

fn add_req() -> AddRequest<'static> {
    AddRequest {
        container_id: "cid-a",
        ifname: "eth0",
        netns: Path::new(NETNS),
        mac: None,
        dns: None,
    }
}

fn conf() -> BridgeConf {
    BridgeConf {
        is_default_gateway: true,
        mtu: Some(1280),
        ..Default::default()
    }
}

#[test]
fn add_builds_result_and_links() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    let r = block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(r.interfaces[0].name, "headcni0");
    assert_eq!(r.interfaces[1].name, host_veth_name("cid-a", "eth0"));
    assert_eq!(r.interfaces[2].sandbox.as_deref(), Some(NETNS));
    assert_eq!(r.ips[0].interface, Some(2));
    // IPAM's route plus the default route of isDefaultGateway
    assert_eq!(r.routes.len(), 2);
    assert_eq!(r.routes[1].gw, Some("10.244.1.1".parse().unwrap()));
    let w = ns.w();
    let bridge = &w.links[HOST]["headcni0"];
    assert_eq!(
        bridge.1,
        vec!["10.244.1.1/24".parse::<IpNetwork>().unwrap()]
    );
    assert_eq!(
        w.links[NETNS]["eth0"].1,
        vec!["10.244.1.5/24".parse::<IpNetwork>().unwrap()]
    );
    let routes = &w.routes[NETNS];
    assert_eq!(routes.len(), 2);
    assert!(
        routes
            .iter()
            .all(|r| r.gateway == Some("10.244.1.1".parse().unwrap())
                && r.dev.as_deref() == Some("eth0"))
    );
}

#[test]
fn failing_add_rolls_back_veth_and_reservation() {
    for step in ["add_address", "add_route"] {
        let ns = FakeNs::default();
        ns.w().fail_on = Some(step);
        let ipam = FakeIpam::default();
        let err = block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap_err();
        assert_eq!(err.code, ErrorCode::Netlink.code(), "{step}");
        let w = ns.w();
        assert!(
            !w.links[HOST].contains_key(&host_veth_name("cid-a", "eth0")),
            "{step}: host veth left"
        );
        assert!(
            w.links.get(NETNS).is_none_or(|l| l.is_empty()),
            "{step}: container link left"
        );
        assert_eq!(
            *ipam.dels.lock().unwrap(),
            1,
            "{step}: reservation not released"
        );
        assert!(ipam.reserved.lock().unwrap().is_none());
    }
}

#[test]
fn failing_bridge_releases_reservation_but_creates_nothing() {
    let ns = FakeNs::default();
    ns.w().fail_on = Some("ensure_bridge");
    let ipam = FakeIpam::default();
    assert!(block_on(add(&ns, &ipam, &conf(), &add_req())).is_err());
    assert_eq!(*ipam.dels.lock().unwrap(), 1);
    assert!(!ns.w().log.iter().any(|l| l.starts_with("delete")));
}

#[test]
fn repeated_add_fails_and_keeps_the_live_attachment() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    let err = block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap_err();
    assert_eq!(err.code, ErrorCode::InterfaceExists.code());
    assert_eq!(
        *ipam.dels.lock().unwrap(),
        0,
        "a repeated ADD must not release the live reservation"
    );
    assert!(ipam.reserved.lock().unwrap().is_some());
    assert!(ns.w().links[NETNS].contains_key("eth0"));
}

#[test]
fn del_is_idempotent_and_tolerates_missing_netns() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    let req = DelRequest {
        container_id: "cid-a",
        ifname: "eth0",
        netns: Some(Path::new(NETNS)),
    };
    block_on(del(&ns, &ipam, &req)).unwrap();
    assert!(ipam.reserved.lock().unwrap().is_none());
    assert!(!ns.w().links[HOST].contains_key(&host_veth_name("cid-a", "eth0")));
    block_on(del(&ns, &ipam, &req)).unwrap();
    ns.w().gone_netns.insert(NETNS.into());
    block_on(del(&ns, &ipam, &req)).unwrap();
    block_on(del(&ns, &ipam, &DelRequest { netns: None, ..req })).unwrap();
    assert_eq!(*ipam.dels.lock().unwrap(), 4);
}

#[test]
fn del_keeps_reservation_when_the_interface_cannot_be_removed() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    ns.w().fail_on = Some("delete_link");
    let req = DelRequest {
        container_id: "cid-a",
        ifname: "eth0",
        netns: Some(Path::new(NETNS)),
    };
    assert!(block_on(del(&ns, &ipam, &req)).is_err());
    assert!(ipam.reserved.lock().unwrap().is_some());
}

#[test]
fn check_passes_then_reports_each_difference() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    let prev = block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    let req = CheckRequest {
        container_id: "cid-a",
        ifname: "eth0",
        netns: Path::new(NETNS),
        prev: &prev,
    };
    block_on(check(&ns, &ipam, &conf(), &req)).unwrap();

    // remove the address and a route behind the plugin's back
    {
        let mut w = ns.w();
        w.links
            .get_mut(NETNS)
            .unwrap()
            .get_mut("eth0")
            .unwrap()
            .1
            .clear();
        w.routes.get_mut(NETNS).unwrap().remove(0);
    }
    let err = block_on(check(&ns, &ipam, &conf(), &req)).unwrap_err();
    assert_eq!(err.code, ErrorCode::CheckFailed.code());
    assert!(
        err.details.contains("address 10.244.1.5/24 is missing"),
        "{err:?}"
    );
    assert!(
        err.details.contains("route to 10.96.0.0/12 is missing"),
        "{err:?}"
    );

    let hairpin = BridgeConf {
        hairpin_mode: true,
        ..conf()
    };
    let err = block_on(check(&ns, &ipam, &hairpin, &req)).unwrap_err();
    assert!(err.details.contains("hairpin"), "{err:?}");
}

#[test]
fn check_fails_without_container_interface_in_prev_result() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    let prev = CniResult::default();
    let req = CheckRequest {
        container_id: "cid-a",
        ifname: "eth0",
        netns: Path::new(NETNS),
        prev: &prev,
    };
    let _ = PathBuf::new();
    assert_eq!(
        block_on(check(&ns, &ipam, &conf(), &req)).unwrap_err().code,
        ErrorCode::CheckFailed.code()
    );
}

#[test]
fn del_removes_the_pair_by_its_host_end_without_entering_the_netns() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    let opens = ns.w().opens;
    let req = DelRequest {
        container_id: "cid-a",
        ifname: "eth0",
        netns: Some(Path::new(NETNS)),
    };
    block_on(del(&ns, &ipam, &req)).unwrap();
    let w = ns.w();
    assert_eq!(
        w.opens, opens,
        "DEL entered the container netns although the host end existed"
    );
    assert!(w.links.get(NETNS).is_none_or(|l| !l.contains_key("eth0")));
    assert!(w.log.contains(&format!(
        "delete {HOST}:{}",
        host_veth_name("cid-a", "eth0")
    )));
}
