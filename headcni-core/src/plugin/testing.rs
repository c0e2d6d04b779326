//! A recording fake of the [`Namespaces`] backend (no kernel), for tests and fuzz targets
//! of the plugin's ADD/DEL/CHECK and of the `headcni` entry point. Compiled for this crate's
//! tests and with the `testing` feature.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use super::Namespaces;
use crate::link::{
    BridgeSpec, LinkError, LinkInfo, LinkManager, RouteManager, RouteSpec, VethPair, VethSpec,
};
use crate::sysctl::{ForwardingState, ForwardingSysctl};

/// The fake's name for the host (plugin) namespace.
pub const HOST: &str = "<host>";

/// The fake kernel state shared by a [`FakeNs`] and its handles.
#[derive(Default)]
pub struct World {
    /// netns → link name → (info, addresses)
    pub links: BTreeMap<String, BTreeMap<String, (LinkInfo, Vec<IpNetwork>)>>,
    /// netns → routes.
    pub routes: BTreeMap<String, Vec<RouteSpec>>,
    /// Host veth names with hairpin mode on.
    pub hairpin: HashSet<String>,
    /// (netns, link) → (netns, link) of its veth peer, both directions
    pub peers: BTreeMap<(String, String), (String, String)>,
    /// Namespace paths that [`Namespaces::open`] and [`Namespaces::is_own`] refuse with
    /// [`LinkError::Netns`].
    pub gone_netns: HashSet<String>,
    /// The operation (`"ensure_bridge"`, `"create_veth"`, `"delete_link"`, `"add_address"`,
    /// `"add_route"`, `"enable_forwarding"`) that fails with an injected netlink error.
    pub fail_on: Option<&'static str>,
    /// How many times a container namespace was opened.
    pub opens: u32,
    /// Every mutating operation, in order (`"delete <netns>:<link>"` for deletions).
    pub log: Vec<String>,
    /// The last link index handed out.
    pub next_index: u32,
    /// netns → its forwarding sysctls (absent: both off, as in a new namespace); written by
    /// [`LinkManager::enable_forwarding`], read by [`ForwardingSysctl::forwarding`].
    pub forwarding: BTreeMap<String, ForwardingState>,
}

/// A recording, in-memory [`Namespaces`] backend: links, addresses and routes per namespace
/// path (the host is [`HOST`]); a veth pair dies together. Clones share one [`World`].
#[derive(Clone, Default)]
pub struct FakeNs(pub Arc<Mutex<World>>);

/// A [`FakeNs`] handle bound to one namespace.
pub struct Handle {
    ns: String,
    world: FakeNs,
}

impl FakeNs {
    /// Locks the world (a poisoned lock is taken over: a fake never needs to give up).
    pub fn w(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
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

/// A new link of `kind` named `name` with the next index and a made-up MAC (no alias, no
/// peer), as the kernel would report it.
pub fn info(w: &mut World, name: &str, kind: &str, master: Option<u32>) -> LinkInfo {
    w.next_index += 1;
    LinkInfo {
        index: w.next_index,
        name: name.into(),
        mac: Some(format!("02:00:00:00:00:{:02x}", w.next_index)),
        mtu: 1500,
        up: true,
        master,
        kind: Some(kind.into()),
        alias: None,
        peer_index: None,
        link_netnsid: None,
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
    async fn is_own(&self, netns: &Path) -> Result<bool, LinkError> {
        let ns = netns.to_string_lossy();
        if self.w().gone_netns.contains(ns.as_ref()) {
            return Err(LinkError::Netns {
                path: netns.into(),
                reason: "gone".into(),
            });
        }
        Ok(ns == HOST)
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
        if let Some(mtu) = spec.mtu {
            entry.0.mtu = mtu;
        }
        entry.0.up = true;
        Ok(entry.0.clone())
    }
    async fn create_veth(&self, spec: &VethSpec) -> Result<VethPair, LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "create_veth")?;
        let cns = spec.container_netns.to_string_lossy().into_owned();
        // as the kernel adapter reports it: the host name first
        if w.links
            .get(&self.ns)
            .is_some_and(|l| l.contains_key(&spec.host_name))
        {
            return Err(LinkError::Exists(spec.host_name.clone()));
        }
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
        (h.peer_index, h.link_netnsid) = (Some(c.index), Some(0));
        (c.peer_index, c.link_netnsid) = (Some(h.index), Some(0));
        let (hk, ck) = (
            (self.ns.clone(), spec.host_name.clone()),
            (cns.clone(), spec.container_name.clone()),
        );
        w.peers.insert(hk.clone(), ck.clone());
        w.peers.insert(ck, hk);
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
        // a veth pair dies together
        if let Some((pns, pname)) = w.peers.remove(&(self.ns.clone(), name.to_owned())) {
            w.peers.remove(&(pns.clone(), pname.clone()));
            if let Some(l) = w.links.get_mut(&pns) {
                l.remove(&pname);
            }
        }
        Ok(existed)
    }
    async fn set_alias(&self, name: &str, alias: &str) -> Result<(), LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "set_alias")?;
        let e = w
            .links
            .get_mut(&self.ns)
            .and_then(|l| l.get_mut(name))
            .ok_or_else(|| LinkError::NotFound(name.into()))?;
        e.0.alias = Some(alias.to_owned());
        Ok(())
    }
    async fn links_with_alias(&self, alias: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let mut w = self.world.w();
        w.log.push(format!("dump {}", self.ns));
        Ok(w.links
            .get(&self.ns)
            .map(|l| {
                l.values()
                    .filter(|(i, _)| i.alias.as_deref() == Some(alias))
                    .map(|(i, _)| i.clone())
                    .collect()
            })
            .unwrap_or_default())
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
    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let w = self.world.w();
        let links = w.links.get(&self.ns);
        let index = links
            .and_then(|l| l.get(bridge))
            .ok_or_else(|| LinkError::NotFound(bridge.into()))?
            .0
            .index;
        Ok(links
            .into_iter()
            .flat_map(|l| l.values())
            .filter(|(i, _)| i.master == Some(index))
            .map(|(i, _)| i.clone())
            .collect())
    }
    async fn hairpin(&self, port: &str) -> Result<bool, LinkError> {
        Ok(self.world.w().hairpin.contains(port))
    }
    async fn enable_forwarding(&self, v4: bool, v6: bool) -> Result<(), LinkError> {
        let mut w = self.world.w();
        fail(&mut w, "enable_forwarding")?;
        let f = w
            .forwarding
            .entry(self.ns.clone())
            .or_insert(ForwardingState {
                ipv4: Some(false),
                ipv6: Some(false),
            });
        if v4 {
            f.ipv4 = Some(true);
        }
        if v6 && f.ipv6.is_some() {
            f.ipv6 = Some(true);
        }
        Ok(())
    }
}

#[async_trait]
impl ForwardingSysctl for Handle {
    async fn forwarding(&self) -> Result<ForwardingState, LinkError> {
        Ok(self
            .world
            .w()
            .forwarding
            .get(&self.ns)
            .copied()
            .unwrap_or(ForwardingState {
                ipv4: Some(false),
                ipv6: Some(false),
            }))
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
