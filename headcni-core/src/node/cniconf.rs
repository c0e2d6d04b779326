//! The CNI conflist the node daemon writes (`/etc/cni/net.d/10-headcni.conflist`): HeadCNI's
//! plugin first, then the configured chained plugins in the order given.
//!
//! ```json
//! {"cniVersion": "1.0.0", "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
//!  "name": "headcni",
//!  "plugins": [
//!    {"type": "headcni", "bridge": "headcni0", "mtu": 1280, "isGateway": true,
//!     "isDefaultGateway": true, "hairpinMode": true, "daemonSocket": "/run/headcni/daemon.sock",
//!     "ipam": {"type": "headcni-ipam",
//!              "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
//!              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
//!              "dataDir": "/var/lib/cni/networks", "strategy": "sequential"}},
//!    {"type": "portmap", "capabilities": {"portMappings": true}}]}
//! ```
//!
//! `cniVersions` (libcni ≥ 1.2) lets a runtime pick the highest version it knows; older
//! runtimes (containerd 1.6, podman 4.3: libcni 1.1) read `cniVersion` only, and it must be
//! 1.0.0: libcni 1.1 cannot decode a 1.1.0 result ("unsupported CNI result version"), and
//! Debian bookworm's reference portmap/bandwidth (1.1.1) refuse a 1.1.0 configuration
//! (observed in headcni-cli/tests/runtime_podman.rs and runtime_containerd.rs).

use std::path::Path;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::ipam::Strategy;

/// The conflist's `cniVersion`: 1.0.0, the newest version libcni 1.1 (containerd 1.6,
/// podman 4.3) and the reference plugins ≤ 1.4 accept; newer runtimes use `cniVersions`.
pub const CONFLIST_VERSION: &str = "1.0.0";
/// The conflist's `cniVersions`: every version the plugin implements, ascending.
pub const CONFLIST_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The IPAM plugin's type ([`crate::defaults::IPAM_TYPE`]).
pub use crate::defaults::IPAM_TYPE as IPAM_PLUGIN_TYPE;
/// The main plugin's type ([`crate::defaults::PLUGIN_TYPE`]).
pub use crate::defaults::PLUGIN_TYPE;

/// What the conflist is made of.
#[derive(Debug, Clone)]
pub struct ConflistParams<'a> {
    /// The network name (`name`; also the IPAM store directory under `data_dir`).
    pub network_name: &'a str,
    /// The bridge name.
    pub bridge: &'a str,
    /// The MTU of the bridge and the pods' interfaces.
    pub mtu: u32,
    /// The node's PodCIDR(s): one range set each, IPv4 first.
    pub pod_cidrs: &'a [IpNetwork],
    /// The IPAM store root (`dataDir`).
    pub data_dir: &'a Path,
    /// The IPAM allocation strategy.
    pub strategy: Strategy,
    /// The daemon's event socket, when the plugin should report ADD/DEL.
    pub daemon_socket: Option<&'a Path>,
    /// Plugin objects appended after HeadCNI's, in this order.
    pub chained: &'a [Value],
}

/// Renders the conflist. Deterministic: equal parameters give an equal value, so the daemon
/// can compare it with what is on disk.
pub fn render(p: &ConflistParams) -> Value {
    let mut cidrs: Vec<IpNetwork> = p.pod_cidrs.to_vec();
    // IPv4 first (a stable sort keeps the given order within a family).
    cidrs.sort_by_key(|c| c.is_ipv6());
    let ranges: Vec<Value> = cidrs
        .iter()
        .map(|c| json!([{ "subnet": c.to_string() }]))
        .collect();
    let mut routes = Vec::new();
    if cidrs.iter().any(IpNetwork::is_ipv4) {
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if cidrs.iter().any(IpNetwork::is_ipv6) {
        routes.push(json!({ "dst": "::/0" }));
    }
    let mut plugin = json!({
        "type": PLUGIN_TYPE,
        "bridge": p.bridge,
        "mtu": p.mtu,
        "isGateway": true,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "ipam": {
            "type": IPAM_PLUGIN_TYPE,
            "ranges": ranges,
            "routes": routes,
            "dataDir": p.data_dir.to_string_lossy(),
            "strategy": p.strategy,
        }
    });
    if let Some(sock) = p.daemon_socket {
        plugin["daemonSocket"] = json!(sock.to_string_lossy());
    }
    let mut plugins = vec![plugin];
    plugins.extend(p.chained.iter().cloned());
    json!({
        "cniVersion": CONFLIST_VERSION,
        "cniVersions": CONFLIST_VERSIONS,
        "name": p.network_name,
        "plugins": plugins,
    })
}

/// The per-plugin request configurations a runtime derives from a conflist (libcni's
/// `buildOneConfig`: each plugin object gets the list's `name` and `cniVersion`).
pub fn plugin_configs(conflist: &Value) -> Vec<Value> {
    let name = conflist.get("name").cloned().unwrap_or(Value::Null);
    let version = conflist.get("cniVersion").cloned().unwrap_or(Value::Null);
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let mut p = p.clone();
                    if let Some(o) = p.as_object_mut() {
                        o.insert("name".into(), name.clone());
                        o.insert("cniVersion".into(), version.clone());
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::NetConf;
    use crate::ipam::IpamConf;
    use crate::plugin::BridgeConf;

    fn portmap() -> Value {
        json!({"type": "portmap", "capabilities": {"portMappings": true}})
    }

    fn params<'a>(cidrs: &'a [IpNetwork], chained: &'a [Value]) -> ConflistParams<'a> {
        ConflistParams {
            network_name: "headcni",
            bridge: "headcni0",
            mtu: 1280,
            pod_cidrs: cidrs,
            data_dir: Path::new("/var/lib/cni/networks"),
            strategy: Strategy::Sequential,
            daemon_socket: Some(Path::new("/run/headcni/daemon.sock")),
            chained,
        }
    }

    #[test]
    fn dual_stack_shape() {
        let cidrs: Vec<IpNetwork> = vec![
            "fd00:10:244:1::/64".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ];
        let bw = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
        let chained = [portmap(), bw.clone()];
        let v = render(&params(&cidrs, &chained));
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
                "name": "headcni",
                "plugins": [
                    {"type": "headcni", "bridge": "headcni0", "mtu": 1280, "isGateway": true,
                     "isDefaultGateway": true, "hairpinMode": true,
                     "daemonSocket": "/run/headcni/daemon.sock",
                     "ipam": {"type": "headcni-ipam",
                              "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
                              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                              "dataDir": "/var/lib/cni/networks", "strategy": "sequential"}},
                    {"type": "portmap", "capabilities": {"portMappings": true}},
                    bw
                ]
            })
        );
    }

    #[test]
    fn single_stack_and_options() {
        let cidrs: Vec<IpNetwork> = vec!["fd00:1::/64".parse().unwrap()];
        let mut p = params(&cidrs, &[]);
        p.daemon_socket = None;
        p.strategy = Strategy::DensePack;
        let v = render(&p);
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 1);
        assert!(plugins[0].get("daemonSocket").is_none());
        assert_eq!(plugins[0]["ipam"]["routes"], json!([{"dst": "::/0"}]));
        assert_eq!(plugins[0]["ipam"]["strategy"], "dense-pack");
    }

    /// Every plugin parses as a runtime would send it; HeadCNI's own keys and IPAM validate.
    #[test]
    fn parses_as_the_plugin_would() {
        for cidrs in [
            vec!["10.244.1.0/24".parse::<IpNetwork>().unwrap()],
            vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ],
        ] {
            let chained = [portmap()];
            let v = render(&params(&cidrs, &chained));
            let confs = plugin_configs(&v);
            assert_eq!(confs.len(), 2);
            for c in &confs {
                let parsed = NetConf::<BridgeConf>::parse(c.to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("{c}: {e:?}"));
                assert_eq!(parsed.conf.name, "headcni");
            }
            let main = NetConf::<BridgeConf>::parse(confs[0].to_string().as_bytes()).unwrap();
            main.conf.plugin.validate().unwrap();
            assert_eq!(main.conf.plugin.mtu, Some(1280));
            assert!(main.conf.plugin.hairpin_mode && main.conf.plugin.is_default_gateway);
            assert_eq!(
                main.conf.plugin.daemon_socket.as_deref(),
                Some("/run/headcni/daemon.sock")
            );
            let ipam = IpamConf::parse(main.conf.ipam.as_ref().unwrap()).unwrap();
            let sets = ipam.range_sets(&[]).unwrap();
            assert_eq!(sets.len(), cidrs.len());
            assert_eq!(ipam.strategy, Strategy::Sequential);
            assert_eq!(ipam.routes.len(), cidrs.len());
        }
    }
}
