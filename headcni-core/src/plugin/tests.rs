//! Orchestration tests on recording fakes (no kernel): rollback, idempotence, CHECK.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;
use crate::link::{LinkInfo, VethPair};

const HOST: &str = "<host>";

#[derive(Default)]
struct World {
    /// netns → link name → (info, addresses)
    links: BTreeMap<String, BTreeMap<String, (LinkInfo, Vec<IpNetwork>)>>,
    routes: BTreeMap<String, Vec<RouteSpec>>,
    hairpin: HashSet<String>,
    gone_netns: HashSet<String>,
    fail_on: Option<&'static str>,
    opens: u32,
    log: Vec<String>,
    next_index: u32,
}

#[derive(Clone, Default)]
struct FakeNs(Arc<Mutex<World>>);

struct Handle {
    ns: String,
    world: FakeNs,
}

impl FakeNs {
    fn w(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
}

fn fail(w: &mut World, op: &'static str) -> Result<(), LinkError> {
    w.log.push(op.to_owned());
    if w.fail_on == Some(op) {
        return Err(LinkError::Netlink {
            op: op.into(),
            reason: "injected".into(),
        });
    }
    Ok(())
}

fn info(w: &mut World, name: &str, kind: &str, master: Option<u32>) -> LinkInfo {
    w.next_index += 1;
    LinkInfo {
        index: w.next_index,
        name: name.into(),
        mac: Some(format!("02:00:00:00:00:{:02x}", w.next_index)),
        mtu: 1500,
        up: true,
        master,
        kind: Some(kind.into()),
    }
}

#[async_trait]
impl Namespaces for FakeNs {
    type Handle = Handle;
    async fn host(&self) -> Result<Handle, LinkError> {
        Ok(Handle {
            ns: HOST.into(),
            world: self.clone(),
        })
    }
    async fn open(&self, netns: &Path) -> Result<Handle, LinkError> {
        let ns = netns.to_string_lossy().into_owned();
        self.w().opens += 1;
        if self.w().gone_netns.contains(&ns) {
            return Err(LinkError::Netns {
                path: netns.into(),
                reason: "gone".into(),
            });
        }
        Ok(Handle {
            ns,
            world: self.clone(),
        })
    }
}

#[async_trait]
impl LinkManager for Handle {
    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        Ok(self
            .world
            .w()
            .links
            .get(&self.ns)
            .and_then(|l| l.get(name))
            .map(|(i, _)| i.clone()))
    }
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkInfo, LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "ensure_bridge")?;
        if !w
            .links
            .get(&self.ns)
            .is_some_and(|l| l.contains_key(&spec.name))
        {
            let i = info(&mut w, &spec.name, "bridge", None);
            w.links
                .entry(self.ns.clone())
                .or_default()
                .insert(spec.name.clone(), (i, vec![]));
        }
        let entry = w
            .links
            .get_mut(&self.ns)
            .and_then(|l| l.get_mut(&spec.name))
            .unwrap();
        for a in &spec.addresses {
            if !entry.1.contains(a) {
                entry.1.push(*a);
            }
        }
        Ok(entry.0.clone())
    }
    async fn create_veth(&self, spec: &VethSpec) -> Result<VethPair, LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "create_veth")?;
        let cns = spec.container_netns.to_string_lossy().into_owned();
        if w.links
            .get(&cns)
            .is_some_and(|l| l.contains_key(&spec.container_name))
        {
            return Err(LinkError::Exists(spec.container_name.clone()));
        }
        let master = spec.master.as_ref().and_then(|m| {
            w.links
                .get(&self.ns)
                .and_then(|l| l.get(m))
                .map(|x| x.0.index)
        });
        let mut h = info(&mut w, &spec.host_name, "veth", master);
        let mut c = info(&mut w, &spec.container_name, "veth", None);
        if let Some(mtu) = spec.mtu {
            h.mtu = mtu;
            c.mtu = mtu;
        }
        w.links
            .entry(self.ns.clone())
            .or_default()
            .insert(spec.host_name.clone(), (h.clone(), vec![]));
        w.links
            .entry(cns)
            .or_default()
            .insert(spec.container_name.clone(), (c.clone(), vec![]));
        if spec.hairpin {
            w.hairpin.insert(spec.host_name.clone());
        }
        Ok(VethPair {
            host: h,
            container: c,
        })
    }
    async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "delete_link")?;
        w.log.push(format!("delete {}:{name}", self.ns));
        let existed = w
            .links
            .get_mut(&self.ns)
            .and_then(|l| l.remove(name))
            .is_some();
        if existed {
            // a veth pair dies together: drop any other veth end created with it (fakes keep it simple)
            let peer_ns: Vec<String> = w.links.keys().filter(|k| *k != &self.ns).cloned().collect();
            for ns in peer_ns {
                if self.ns == HOST {
                    w.links
                        .get_mut(&ns)
                        .unwrap()
                        .retain(|_, (i, _)| i.kind.as_deref() != Some("veth"));
                } else {
                    let host_links = w.links.get_mut(HOST).unwrap();
                    host_links.retain(|n, _| !n.starts_with("veth"));
                }
            }
        }
        Ok(existed)
    }
    async fn add_address(&self, link: &str, addr: IpNetwork) -> Result<(), LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "add_address")?;
        let e = w
            .links
            .get_mut(&self.ns)
            .and_then(|l| l.get_mut(link))
            .ok_or_else(|| LinkError::NotFound(link.into()))?;
        e.1.push(addr);
        Ok(())
    }
    async fn addresses(&self, link: &str) -> Result<Vec<IpNetwork>, LinkError> {
        Ok(self
            .world
            .w()
            .links
            .get(&self.ns)
            .and_then(|l| l.get(link))
            .map(|e| e.1.clone())
            .unwrap_or_default())
    }
    async fn bridge_ports(&self, _bridge: &str) -> Result<Vec<LinkInfo>, LinkError> {
        Ok(vec![])
    }
    async fn hairpin(&self, port: &str) -> Result<bool, LinkError> {
        Ok(self.world.w().hairpin.contains(port))
    }
    async fn enable_forwarding(&self, _v4: bool, _v6: bool) -> Result<(), LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "enable_forwarding")
    }
}

#[async_trait]
impl RouteManager for Handle {
    async fn add_route(&self, route: &RouteSpec) -> Result<(), LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "add_route")?;
        w.routes
            .entry(self.ns.clone())
            .or_default()
            .push(route.clone());
        Ok(())
    }
    async fn delete_route(&self, route: &RouteSpec) -> Result<bool, LinkError> {
        let mut w = self.world.w();
        let r = w.routes.entry(self.ns.clone()).or_default();
        let n = r.len();
        r.retain(|x| x != route);
        Ok(r.len() != n)
    }
    async fn routes(&self, dev: Option<&str>) -> Result<Vec<RouteSpec>, LinkError> {
        let w = self.world.w();
        Ok(w.routes
            .get(&self.ns)
            .map(|r| {
                r.iter()
                    .filter(|x| dev.is_none() || x.dev.as_deref() == dev)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

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
