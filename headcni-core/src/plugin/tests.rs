//! Orchestration tests on recording fakes (no kernel): rollback, idempotence, CHECK.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::testing::{FakeNs, HOST, info};
use super::*;

#[derive(Default)]
struct FakeIpam {
    reserved: Mutex<Option<CniResult>>,
    preexisting: bool,
    dels: Mutex<u32>,
    /// what `gc` reports as released
    released: Mutex<Vec<Attachment>>,
    /// `del` fails (after counting the call)
    fail_del: bool,
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
        if self.fail_del {
            return Err(CniError::new(ErrorCode::Io, "store unavailable"));
        }
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
    async fn gc(&self, _valid: &[GcAttachment]) -> Result<Vec<Attachment>, CniError> {
        Ok(self.released.lock().unwrap().clone())
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
    let r = block_on(add(&ns, &ipam, &conf(), &add_req()))
        .unwrap()
        .result;
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
        let err = block_on(add(&ns, &ipam, &conf(), &add_req()))
            .unwrap_err()
            .error;
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
fn failing_rollback_is_returned_not_printed() {
    // The veth is created, the address fails, and releasing the reservation fails too: the
    // caller gets the original error and the failed rollback step (the library prints
    // nothing; before, `add` wrote the rollback failure to stderr and dropped it).
    let ns = FakeNs::default();
    ns.w().fail_on = Some("add_address");
    let ipam = FakeIpam {
        fail_del: true,
        ..Default::default()
    };
    let err = block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap_err();
    assert_eq!(err.error.code, ErrorCode::Netlink.code());
    assert_eq!(err.rollback_errors.len(), 1, "{:?}", err.rollback_errors);
    assert!(matches!(
        &err.rollback_errors[0],
        RollbackError::ReleaseReservation(e) if e.msg == "store unavailable"
    ));
    assert_eq!(
        err.rollback_errors[0].to_string(),
        "rollback: releasing the IP reservation failed: store unavailable"
    );
    // the veth rollback still ran
    assert!(host_link(&ns, &host_veth_name("cid-a", "eth0")).is_none());
}

#[test]
fn successful_rollback_reports_no_rollback_errors() {
    let ns = FakeNs::default();
    ns.w().fail_on = Some("add_route");
    let ipam = FakeIpam::default();
    let err = block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap_err();
    assert!(err.rollback_errors.is_empty(), "{:?}", err.rollback_errors);
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
    let err = block_on(add(&ns, &ipam, &conf(), &add_req()))
        .unwrap_err()
        .error;
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
    let prev = block_on(add(&ns, &ipam, &conf(), &add_req()))
        .unwrap()
        .result;
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

// ---- host veth ownership (issue 8 items 3 and 11) ----

/// Two container IDs whose host veth names collide (`veth2874cfad024` with `eth0`).
const CID_A: &str = "adv00000016cfeb";
const CID_B: &str = "adv00000096aa38";
const NETNS_B: &str = "/run/netns/pod-b";

fn add_req_for<'a>(cid: &'a str, netns: &'a str) -> AddRequest<'a> {
    AddRequest {
        container_id: cid,
        netns: Path::new(netns),
        ..add_req()
    }
}

fn del_req_for<'a>(cid: &'a str, netns: Option<&'a str>) -> DelRequest<'a> {
    DelRequest {
        container_id: cid,
        ifname: "eth0",
        netns: netns.map(Path::new),
    }
}

fn host_link(ns: &FakeNs, name: &str) -> Option<LinkInfo> {
    ns.w()
        .links
        .get(HOST)
        .and_then(|l| l.get(name))
        .map(|x| x.0.clone())
}

fn has_link(ns: &FakeNs, netns: &str, name: &str) -> bool {
    ns.w()
        .links
        .get(netns)
        .is_some_and(|l| l.contains_key(name))
}

/// A link in the host namespace made by someone else (optionally a port of `master`).
fn put_foreign(ns: &FakeNs, name: &str, master: Option<&str>, alias: Option<&str>) {
    let mut w = ns.w();
    let m = master.and_then(|m| w.links.get(HOST).and_then(|l| l.get(m)).map(|x| x.0.index));
    let mut i = info(&mut w, name, "veth", m);
    i.alias = alias.map(str::to_owned);
    w.links
        .entry(HOST.into())
        .or_default()
        .insert(name.into(), (i, vec![]));
}

#[test]
fn colliding_attachment_gets_another_name_and_its_del_keeps_the_other_pod() {
    let primary = host_veth_name(CID_A, "eth0");
    assert_eq!(primary, host_veth_name(CID_B, "eth0"));
    let ns = FakeNs::default();
    let (ipam_a, ipam_b) = (FakeIpam::default(), FakeIpam::default());
    let res_a = block_on(add(&ns, &ipam_a, &conf(), &add_req_for(CID_A, NETNS)))
        .unwrap()
        .result;
    let added_b = block_on(add(&ns, &ipam_b, &conf(), &add_req_for(CID_B, NETNS_B))).unwrap();
    // the skipped name is returned as a warning, never printed by the library
    assert_eq!(
        added_b.warnings,
        vec![AddWarning::HostVethNameTaken(primary.clone())]
    );
    let res_b = added_b.result;
    let alt = host_veth_alt_name(CID_B, "eth0", 1);
    assert_eq!(res_a.interfaces[1].name, primary);
    assert_eq!(res_b.interfaces[1].name, alt);
    assert_eq!(
        host_link(&ns, &primary).unwrap().alias,
        Some(attachment_mark(CID_A, "eth0"))
    );
    assert_eq!(
        host_link(&ns, &alt).unwrap().alias,
        Some(attachment_mark(CID_B, "eth0"))
    );
    // CHECK finds each attachment's own link
    for (cid, netns, prev, ipam) in [
        (CID_A, NETNS, &res_a, &ipam_a),
        (CID_B, NETNS_B, &res_b, &ipam_b),
    ] {
        let req = CheckRequest {
            container_id: cid,
            ifname: "eth0",
            netns: Path::new(netns),
            prev,
        };
        block_on(check(&ns, ipam, &conf(), &req)).unwrap();
    }

    block_on(del(&ns, &ipam_b, &del_req_for(CID_B, Some(NETNS_B)))).unwrap();
    assert!(host_link(&ns, &alt).is_none(), "B's host veth left");
    assert!(!has_link(&ns, NETNS_B, "eth0"), "B's eth0 left");
    assert!(
        host_link(&ns, &primary).is_some(),
        "DEL B deleted A's host veth"
    );
    assert!(has_link(&ns, NETNS, "eth0"), "DEL B deleted A's eth0");
    assert!(ipam_a.reserved.lock().unwrap().is_some());

    block_on(del(&ns, &ipam_a, &del_req_for(CID_A, Some(NETNS)))).unwrap();
    assert!(host_link(&ns, &primary).is_none());
    assert!(!has_link(&ns, NETNS, "eth0"));
}

#[test]
fn del_and_check_never_take_a_link_marked_for_another_attachment() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    let prev = block_on(add(&ns, &ipam, &conf(), &add_req_for(CID_A, NETNS)))
        .unwrap()
        .result;
    let primary = host_veth_name(CID_A, "eth0");
    // B never had an ADD (or its ADD failed): its DEL, with or without a netns, leaves A alone
    for netns in [Some(NETNS_B), None] {
        block_on(del(&ns, &FakeIpam::default(), &del_req_for(CID_B, netns))).unwrap();
        assert!(host_link(&ns, &primary).is_some(), "netns {netns:?}");
        assert!(has_link(&ns, NETNS, "eth0"));
    }
    // B's CHECK does not accept A's link as B's (even with A's prevResult and netns)
    let req = CheckRequest {
        container_id: CID_B,
        ifname: "eth0",
        netns: Path::new(NETNS),
        prev: &prev,
    };
    let err = block_on(check(&ns, &ipam, &conf(), &req)).unwrap_err();
    assert!(
        err.details
            .contains("host veth of this attachment is missing"),
        "{err:?}"
    );
}

#[test]
fn unmarked_links_are_taken_only_when_their_peer_proves_them() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    let prev = block_on(add(&ns, &ipam, &conf(), &add_req_for(CID_A, NETNS)))
        .unwrap()
        .result;
    let primary = host_veth_name(CID_A, "eth0");
    // as made by the version before marks
    ns.w()
        .links
        .get_mut(HOST)
        .unwrap()
        .get_mut(&primary)
        .unwrap()
        .0
        .alias = None;

    // B's netns has no eth0 peered with it: left alone
    block_on(del(
        &ns,
        &FakeIpam::default(),
        &del_req_for(CID_B, Some(NETNS_B)),
    ))
    .unwrap();
    assert!(host_link(&ns, &primary).is_some());
    // B's netns has an eth0, but of another pair: left alone
    block_on(add(
        &ns,
        &FakeIpam::default(),
        &conf(),
        &add_req_for("cid-c", NETNS_B),
    ))
    .unwrap();
    block_on(del(
        &ns,
        &FakeIpam::default(),
        &del_req_for(CID_B, Some(NETNS_B)),
    ))
    .unwrap();
    assert!(host_link(&ns, &primary).is_some());
    // without a netns nothing proves A's own unmarked link: left alone
    block_on(del(&ns, &FakeIpam::default(), &del_req_for(CID_A, None))).unwrap();
    assert!(host_link(&ns, &primary).is_some());
    // CHECK of A accepts it through the peer
    let req = CheckRequest {
        container_id: CID_A,
        ifname: "eth0",
        netns: Path::new(NETNS),
        prev: &prev,
    };
    block_on(check(&ns, &ipam, &conf(), &req)).unwrap();
    // DEL of A proves it through A's eth0 and deletes it
    block_on(del(&ns, &ipam, &del_req_for(CID_A, Some(NETNS)))).unwrap();
    assert!(host_link(&ns, &primary).is_none());
    assert!(!has_link(&ns, NETNS, "eth0"));
}

#[test]
fn failing_mark_rolls_back_the_veth() {
    let ns = FakeNs::default();
    ns.w().fail_on = Some("set_alias");
    let ipam = FakeIpam::default();
    let err = block_on(add(&ns, &ipam, &conf(), &add_req()))
        .unwrap_err()
        .error;
    assert_eq!(err.code, ErrorCode::Netlink.code());
    assert!(host_link(&ns, &host_veth_name("cid-a", "eth0")).is_none());
    assert!(!has_link(&ns, NETNS, "eth0"));
    assert!(ipam.reserved.lock().unwrap().is_none());
}

#[test]
fn add_fails_cleanly_when_every_name_is_held_by_others() {
    let ns = FakeNs::default();
    put_foreign(&ns, &host_veth_name("cid-a", "eth0"), None, None);
    for n in 1..HOST_VETH_NAMES {
        put_foreign(
            &ns,
            &host_veth_alt_name("cid-a", "eth0", n),
            None,
            Some("other"),
        );
    }
    let ipam = FakeIpam::default();
    let err = block_on(add(&ns, &ipam, &conf(), &add_req()))
        .unwrap_err()
        .error;
    assert_eq!(err.code, ErrorCode::InterfaceExists.code());
    assert_eq!(ns.w().links[HOST].len(), 1 + HOST_VETH_NAMES as usize); // + the bridge
    assert!(!ns.w().log.iter().any(|l| l.starts_with("delete")));
    assert!(
        ipam.reserved.lock().unwrap().is_none(),
        "fresh reservation kept"
    );
}

#[test]
fn gc_deletes_only_the_marked_ports_of_released_attachments() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    block_on(add(&ns, &ipam, &conf(), &add_req_for(CID_A, NETNS))).unwrap();
    block_on(add(&ns, &ipam, &conf(), &add_req_for("cid-c", NETNS_B))).unwrap();
    put_foreign(&ns, "vethforeign0", Some(DEFAULT_BRIDGE), None);
    put_foreign(
        &ns,
        "vethforeign1",
        Some(DEFAULT_BRIDGE),
        Some("headcni:v1:00"),
    );
    // marked for a released attachment but not a port of this network's bridge
    put_foreign(
        &ns,
        "vethelsewhere",
        None,
        Some(&attachment_mark("cid-d", "eth0")),
    );
    let att = |c: &str| Attachment {
        container_id: c.into(),
        ifname: "eth0".into(),
    };
    // IPAM released A and d, and (wrongly) claims c although c is valid
    *ipam.released.lock().unwrap() = vec![att(CID_A), att("cid-c"), att("cid-d")];
    let valid = [GcAttachment {
        container_id: "cid-c".into(),
        ifname: "eth0".into(),
    }];
    block_on(gc(&ns, &ipam, &conf(), &valid)).unwrap();
    assert!(host_link(&ns, &host_veth_name(CID_A, "eth0")).is_none());
    assert!(!has_link(&ns, NETNS, "eth0"), "the dead pod's eth0 left");
    assert!(host_link(&ns, &host_veth_name("cid-c", "eth0")).is_some());
    assert!(has_link(&ns, NETNS_B, "eth0"));
    for n in ["vethforeign0", "vethforeign1", "vethelsewhere"] {
        assert!(host_link(&ns, n).is_some(), "GC deleted {n}");
    }
}

#[test]
fn gc_with_nothing_released_deletes_nothing() {
    let ns = FakeNs::default();
    let ipam = FakeIpam::default();
    block_on(add(&ns, &ipam, &conf(), &add_req())).unwrap();
    // a delegated IPAM: released attachments unknown
    block_on(gc(&ns, &ipam, &conf(), &[])).unwrap();
    assert!(host_link(&ns, &host_veth_name("cid-a", "eth0")).is_some());
    assert!(!ns.w().log.iter().any(|l| l.starts_with("delete")));
}
