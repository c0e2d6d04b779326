//! An out-of-tree CNI plugin built on HeadCNI's entry point, with its own namespace backend.
//!
//! `dry-run-cni` speaks the whole CNI protocol (ADD, DEL, CHECK, GC, STATUS, VERSION; the
//! version gate, error JSON, IPAM in-process or delegated from `CNI_PATH`) through
//! [`headcni_plugin::Plugin`], but its [`Namespaces`] backend touches no kernel: it keeps the
//! links, addresses and routes one invocation would make in memory and logs every change on
//! stderr (`dry-run: ...`). IPAM is real: with `ipam.type: headcni-ipam` the reservations
//! land in `ipam.dataDir` as usual, so ADD hands out addresses and DEL releases them.
//!
//! ```text
//! cargo build -p headcni-plugin --example out_of_tree_plugin
//! CNI_COMMAND=ADD CNI_CONTAINERID=c1 CNI_NETNS=/tmp/any-file CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
//!   target/debug/examples/out_of_tree_plugin < conf.json
//! ```
//!
//! `CNI_NETNS` must name an existing file (any file: nothing is entered). A real backend
//! implements the same trait on netlink (HeadCNI's is `headcni_netlink::NetlinkNamespaces`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use headcni_core::link::{
    BridgeSpec, LinkError, LinkInfo, LinkManager, RouteManager, RouteSpec, VethPair, VethSpec,
};
use headcni_core::plugin::Namespaces;
use headcni_plugin::{Plugin, Role};
use ipnetwork::IpNetwork;

/// The key of the plugin's own namespace.
const HOST: &str = "host";

/// One link of the model: what the kernel would report, its addresses, its bridge ports'
/// hairpin flag.
#[derive(Clone)]
struct Link {
    info: LinkInfo,
    addresses: Vec<IpNetwork>,
    hairpin: bool,
}

/// The in-memory model: namespace → link name → link, namespace → routes.
#[derive(Default)]
struct Model {
    links: BTreeMap<String, BTreeMap<String, Link>>,
    routes: BTreeMap<String, Vec<RouteSpec>>,
    next_index: u32,
}

/// The dry-run backend: clones share one [`Model`].
#[derive(Clone, Default)]
struct DryRun(Arc<Mutex<Model>>);

impl DryRun {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`DryRun`] handle bound to one namespace.
struct Handle {
    ns: String,
    backend: DryRun,
}

fn log(ns: &str, what: std::fmt::Arguments<'_>) {
    eprintln!("dry-run: [{ns}] {what}");
}

impl Handle {
    fn new_link(&self, m: &mut Model, name: &str, kind: &str, mtu: Option<u32>) -> LinkInfo {
        m.next_index += 1;
        let i = m.next_index;
        LinkInfo {
            index: i,
            name: name.to_owned(),
            mac: Some(format!(
                "02:00:00:00:{:02x}:{:02x}",
                i >> 8 & 0xff,
                i & 0xff
            )),
            mtu: mtu.unwrap_or(1500),
            up: true,
            master: None,
            kind: Some(kind.to_owned()),
            alias: None,
            peer_index: None,
            link_netnsid: None,
        }
    }
}

#[async_trait]
impl LinkManager for Handle {
    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let m = self.backend.model();
        Ok(m.links
            .get(&self.ns)
            .and_then(|l| l.get(name))
            .map(|l| l.info.clone()))
    }

    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<LinkInfo, LinkError> {
        let mut m = self.backend.model();
        let existing = m
            .links
            .get(&self.ns)
            .and_then(|l| l.get(&spec.name))
            .cloned();
        let mut link = match existing {
            Some(l) if l.info.kind.as_deref() != Some("bridge") => {
                return Err(LinkError::Exists(spec.name.clone()));
            }
            Some(l) => l,
            None => {
                log(&self.ns, format_args!("create bridge {}", spec.name));
                Link {
                    info: self.new_link(&mut m, &spec.name, "bridge", spec.mtu),
                    addresses: Vec::new(),
                    hairpin: false,
                }
            }
        };
        for a in &spec.addresses {
            if !link.addresses.contains(a) {
                log(&self.ns, format_args!("add address {a} to {}", spec.name));
                link.addresses.push(*a);
            }
        }
        let info = link.info.clone();
        m.links
            .entry(self.ns.clone())
            .or_default()
            .insert(spec.name.clone(), link);
        Ok(info)
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<VethPair, LinkError> {
        let peer_ns = spec.container_netns.display().to_string();
        let mut m = self.backend.model();
        let taken =
            |m: &Model, ns: &str, name: &str| m.links.get(ns).is_some_and(|l| l.contains_key(name));
        if taken(&m, &self.ns, &spec.host_name) {
            return Err(LinkError::Exists(spec.host_name.clone()));
        }
        if taken(&m, &peer_ns, &spec.container_name) {
            return Err(LinkError::Exists(spec.container_name.clone()));
        }
        let master = match &spec.master {
            Some(b) => Some(
                m.links
                    .get(&self.ns)
                    .and_then(|l| l.get(b))
                    .map(|l| l.info.index)
                    .ok_or_else(|| LinkError::NotFound(b.clone()))?,
            ),
            None => None,
        };
        let mut host = self.new_link(&mut m, &spec.host_name, "veth", spec.mtu);
        let mut container = self.new_link(&mut m, &spec.container_name, "veth", spec.mtu);
        host.master = master;
        host.peer_index = Some(container.index);
        container.peer_index = Some(host.index);
        if let Some(mac) = &spec.container_mac {
            container.mac = Some(mac.to_ascii_lowercase());
        }
        log(
            &self.ns,
            format_args!(
                "create veth {} (master {:?}) peer {} in {peer_ns}",
                spec.host_name, spec.master, spec.container_name
            ),
        );
        for (ns, info, hairpin) in [
            (self.ns.clone(), host.clone(), spec.hairpin),
            (peer_ns, container.clone(), false),
        ] {
            m.links.entry(ns).or_default().insert(
                info.name.clone(),
                Link {
                    info,
                    addresses: Vec::new(),
                    hairpin,
                },
            );
        }
        Ok(VethPair { host, container })
    }

    async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let mut m = self.backend.model();
        let Some(link) = m.links.get_mut(&self.ns).and_then(|l| l.remove(name)) else {
            return Ok(false);
        };
        log(&self.ns, format_args!("delete link {name}"));
        // a veth pair dies together
        if let Some(peer) = link.info.peer_index {
            for links in m.links.values_mut() {
                links.retain(|_, l| l.info.index != peer);
            }
        }
        Ok(true)
    }

    async fn set_alias(&self, name: &str, alias: &str) -> Result<(), LinkError> {
        let mut m = self.backend.model();
        let link = m
            .links
            .get_mut(&self.ns)
            .and_then(|l| l.get_mut(name))
            .ok_or_else(|| LinkError::NotFound(name.to_owned()))?;
        link.info.alias = Some(alias.to_owned());
        log(&self.ns, format_args!("set alias of {name} to {alias}"));
        Ok(())
    }

    async fn links_with_alias(&self, alias: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let m = self.backend.model();
        Ok(m.links
            .get(&self.ns)
            .into_iter()
            .flat_map(|l| l.values())
            .filter(|l| l.info.alias.as_deref() == Some(alias))
            .map(|l| l.info.clone())
            .collect())
    }

    async fn add_address(&self, link: &str, addr: IpNetwork) -> Result<(), LinkError> {
        let mut m = self.backend.model();
        let l = m
            .links
            .get_mut(&self.ns)
            .and_then(|l| l.get_mut(link))
            .ok_or_else(|| LinkError::NotFound(link.to_owned()))?;
        if !l.addresses.contains(&addr) {
            l.addresses.push(addr);
            log(&self.ns, format_args!("add address {addr} to {link}"));
        }
        Ok(())
    }

    async fn addresses(&self, link: &str) -> Result<Vec<IpNetwork>, LinkError> {
        let m = self.backend.model();
        m.links
            .get(&self.ns)
            .and_then(|l| l.get(link))
            .map(|l| l.addresses.clone())
            .ok_or_else(|| LinkError::NotFound(link.to_owned()))
    }

    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<LinkInfo>, LinkError> {
        let m = self.backend.model();
        let links = m
            .links
            .get(&self.ns)
            .ok_or_else(|| LinkError::NotFound(bridge.to_owned()))?;
        let index = links
            .get(bridge)
            .map(|b| b.info.index)
            .ok_or_else(|| LinkError::NotFound(bridge.to_owned()))?;
        Ok(links
            .values()
            .filter(|l| l.info.master == Some(index))
            .map(|l| l.info.clone())
            .collect())
    }

    async fn hairpin(&self, port: &str) -> Result<bool, LinkError> {
        let m = self.backend.model();
        m.links
            .get(&self.ns)
            .and_then(|l| l.get(port))
            .map(|l| l.hairpin)
            .ok_or_else(|| LinkError::NotFound(port.to_owned()))
    }

    async fn enable_forwarding(&self, ipv4: bool, ipv6: bool) -> Result<(), LinkError> {
        log(
            &self.ns,
            format_args!("enable forwarding (IPv4 {ipv4}, IPv6 {ipv6})"),
        );
        Ok(())
    }
}

#[async_trait]
impl RouteManager for Handle {
    async fn add_route(&self, route: &RouteSpec) -> Result<(), LinkError> {
        let mut m = self.backend.model();
        let routes = m.routes.entry(self.ns.clone()).or_default();
        if !routes.contains(route) {
            let via = route.gateway.map(|g: IpAddr| g.to_string());
            log(
                &self.ns,
                format_args!("add route {} via {via:?} dev {:?}", route.dst, route.dev),
            );
            routes.push(route.clone());
        }
        Ok(())
    }

    async fn delete_route(&self, route: &RouteSpec) -> Result<bool, LinkError> {
        let mut m = self.backend.model();
        let routes = m.routes.entry(self.ns.clone()).or_default();
        let before = routes.len();
        routes.retain(|r| r != route);
        Ok(routes.len() != before)
    }

    async fn routes(&self, dev: Option<&str>) -> Result<Vec<RouteSpec>, LinkError> {
        let m = self.backend.model();
        Ok(m.routes
            .get(&self.ns)
            .into_iter()
            .flatten()
            .filter(|r| dev.is_none() || r.dev.as_deref() == dev)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Namespaces for DryRun {
    type Handle = Handle;

    async fn host(&self) -> Result<Handle, LinkError> {
        Ok(Handle {
            ns: HOST.to_owned(),
            backend: self.clone(),
        })
    }

    async fn open(&self, netns: &Path) -> Result<Handle, LinkError> {
        self.is_own(netns).await?;
        Ok(Handle {
            ns: netns.display().to_string(),
            backend: self.clone(),
        })
    }

    /// Any existing file stands for a namespace (looked at without following a symlink
    /// and without opening it, so a FIFO cannot block); it is never the plugin's own.
    async fn is_own(&self, netns: &Path) -> Result<bool, LinkError> {
        match std::fs::symlink_metadata(netns) {
            Ok(_) => Ok(false),
            Err(e) => Err(LinkError::Netns {
                path: netns.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }
}

fn main() {
    let backend = DryRun::default();
    // The whole protocol in one call; this plugin has no HeadCNI node daemon to tell.
    let answer = Plugin::new(Role::Main, &backend)
        .without_events()
        .call_reader(std::env::vars_os(), std::io::stdin().lock());
    // The library prints nothing: warnings (e.g. failed rollback steps) are ours to report.
    for w in &answer.warnings {
        eprintln!("dry-run-cni: {w}");
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&answer.stdout);
    let _ = out.flush();
    std::process::exit(answer.exit_code);
}
