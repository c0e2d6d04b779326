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
//! at most 1.0.0: libcni 1.1 cannot decode a 1.1.0 result ("unsupported CNI result
//! version"). Both come from [`ChainVersions`]: the versions every chained plugin answered
//! to VERSION (Debian bookworm's reference portmap/bandwidth 1.1.1 refuse a 1.1.0
//! configuration, so with them the list stops at 1.0.0; see [`super::chain_versions`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::chain_versions::ChainVersions;
use crate::ipam::Strategy;

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
    /// `cniVersion` and `cniVersions`: what HeadCNI and every chained plugin accept
    /// ([`super::chain_versions::decide`]; [`ChainVersions::headcni_only`] without a chain).
    pub versions: &'a ChainVersions,
    /// `dns` of HeadCNI's plugin object (nameservers, search domains), from the daemon's
    /// `[magic_dns]`; `None` or empty: no `dns` key. The plugin returns it in the ADD
    /// result's `dns` (CNI spec 1.1.0 §Result), which runtimes such as podman write to the
    /// container's `resolv.conf` (the kubelet ignores it).
    pub dns: Option<&'a crate::cni::Dns>,
}

/// The conflist the daemon writes, typed (CNI spec 1.1.0 §"Network configuration lists"):
/// HeadCNI's plugin first, then the chained plugins as given. Serializes to the JSON in the
/// module documentation (`plugins` = `[plugin, chained...]`); deserializing refuses a list
/// whose first plugin is not HeadCNI's ([`PLUGIN_TYPE`]) or lacks one of its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflist {
    /// `cniVersion`, e.g. `1.0.0` ([`ChainVersions::cni_version`]).
    pub cni_version: String,
    /// `cniVersions` (libcni ≥ 1.2), ascending ([`ChainVersions::cni_versions`]); empty
    /// when absent.
    pub cni_versions: Vec<String>,
    /// `name`: the network name.
    pub name: String,
    /// `plugins[0]`: HeadCNI's plugin.
    pub plugin: HeadcniPlugin,
    /// `plugins[1..]`: the chained plugins, verbatim.
    pub chained: Vec<Value>,
}

/// HeadCNI's plugin object in the conflist (`plugins[0]`); the keys are a subset of
/// [`crate::plugin::BridgeConf`]'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadcniPlugin {
    /// `type`: [`PLUGIN_TYPE`].
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// `bridge`: the bridge name.
    pub bridge: String,
    /// `mtu` (bytes) of the bridge and the pods' interfaces.
    pub mtu: u32,
    /// `isGateway`: the bridge carries the gateway address.
    pub is_gateway: bool,
    /// `isDefaultGateway`: the pods' default route goes through the gateway.
    pub is_default_gateway: bool,
    /// `hairpinMode` on the bridge ports.
    pub hairpin_mode: bool,
    /// `daemonSocket`: the node agent's event socket path; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_socket: Option<String>,
    /// `dns` (CNI spec 1.1.0 §"Network configuration" `dns`): omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::cni::Dns>,
    /// `ipam`: HeadCNI's IPAM section.
    pub ipam: ConflistIpam,
}

/// The `ipam` section of HeadCNI's plugin object (host-local compatible keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflistIpam {
    /// `type`: [`IPAM_PLUGIN_TYPE`].
    #[serde(rename = "type")]
    pub ipam_type: String,
    /// `ranges`: one range set per PodCIDR, IPv4 first, each one range of the whole subnet.
    pub ranges: Vec<Vec<ConflistRange>>,
    /// `routes`: a default route per family present.
    pub routes: Vec<ConflistRoute>,
    /// `dataDir`: the IPAM store root (a path, lossily UTF-8).
    pub data_dir: String,
    /// `strategy`: the allocation strategy.
    pub strategy: Strategy,
}

/// One range of a range set: `{"subnet": "10.244.1.0/24"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflistRange {
    /// `subnet`: a PodCIDR.
    pub subnet: IpNetwork,
}

/// One route: `{"dst": "0.0.0.0/0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflistRoute {
    /// `dst`: the destination.
    pub dst: IpNetwork,
}

impl Conflist {
    /// Builds the conflist from `p`. Deterministic: equal parameters give an equal value, so
    /// the daemon can compare it with what is on disk.
    pub fn new(p: &ConflistParams) -> Conflist {
        let mut cidrs: Vec<IpNetwork> = p.pod_cidrs.to_vec();
        // IPv4 first (a stable sort keeps the given order within a family).
        cidrs.sort_by_key(|c| c.is_ipv6());
        let ranges = cidrs
            .iter()
            .map(|&subnet| vec![ConflistRange { subnet }])
            .collect();
        let mut routes = Vec::new();
        for (present, any) in [
            (
                cidrs.iter().any(IpNetwork::is_ipv4),
                IpAddr::from(Ipv4Addr::UNSPECIFIED),
            ),
            (
                cidrs.iter().any(IpNetwork::is_ipv6),
                IpAddr::from(Ipv6Addr::UNSPECIFIED),
            ),
        ] {
            // A /0 prefix is valid for both families.
            if let (true, Ok(dst)) = (present, IpNetwork::new(any, 0)) {
                routes.push(ConflistRoute { dst });
            }
        }
        Conflist {
            cni_version: p.versions.cni_version.as_str().to_owned(),
            cni_versions: p
                .versions
                .cni_versions
                .iter()
                .map(|v| v.as_str().to_owned())
                .collect(),
            name: p.network_name.to_owned(),
            plugin: HeadcniPlugin {
                plugin_type: PLUGIN_TYPE.to_owned(),
                bridge: p.bridge.to_owned(),
                mtu: p.mtu,
                is_gateway: true,
                is_default_gateway: true,
                hairpin_mode: true,
                daemon_socket: p.daemon_socket.map(|s| s.to_string_lossy().into_owned()),
                dns: p.dns.filter(|d| !d.is_empty()).cloned(),
                ipam: ConflistIpam {
                    ipam_type: IPAM_PLUGIN_TYPE.to_owned(),
                    ranges,
                    routes,
                    data_dir: p.data_dir.to_string_lossy().into_owned(),
                    strategy: p.strategy,
                },
            },
            chained: p.chained.to_vec(),
        }
    }

    /// Parses a conflist HeadCNI wrote (JSON bytes). Errors: not JSON, or not of this shape.
    pub fn parse(bytes: &[u8]) -> Result<Conflist, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON value (object keys in sorted order, as `serde_json::Value` keeps them).
    pub fn to_value(&self) -> Value {
        // Serializing plain structs, strings, numbers and `Value`s into a `Value` cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The PodCIDRs of the IPAM range sets (the first range's subnet of each set), in order.
    pub fn pod_cidrs(&self) -> Vec<IpNetwork> {
        self.plugin
            .ipam
            .ranges
            .iter()
            .filter_map(|set| set.first().map(|r| r.subnet))
            .collect()
    }
}

impl Serialize for Conflist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Plugins<'a>(&'a HeadcniPlugin, &'a [Value]);
        impl Serialize for Plugins<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(1 + self.1.len()))?;
                seq.serialize_element(self.0)?;
                for p in self.1 {
                    seq.serialize_element(p)?;
                }
                seq.end()
            }
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            cni_versions: &'a [String],
            name: &'a str,
            plugins: Plugins<'a>,
        }
        Wire {
            cni_version: &self.cni_version,
            cni_versions: &self.cni_versions,
            name: &self.name,
            plugins: Plugins(&self.plugin, &self.chained),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Conflist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            cni_version: String,
            #[serde(default)]
            cni_versions: Vec<String>,
            name: String,
            plugins: Vec<Value>,
        }
        let w = Wire::deserialize(d)?;
        let mut plugins = w.plugins.into_iter();
        let first = plugins
            .next()
            .ok_or_else(|| D::Error::custom("the conflist has no plugins"))?;
        let plugin: HeadcniPlugin = serde_json::from_value(first).map_err(D::Error::custom)?;
        if plugin.plugin_type != PLUGIN_TYPE {
            return Err(D::Error::custom(format!(
                "the first plugin is {:?}, not {PLUGIN_TYPE:?}",
                plugin.plugin_type
            )));
        }
        Ok(Conflist {
            cni_version: w.cni_version,
            cni_versions: w.cni_versions,
            name: w.name,
            plugin,
            chained: plugins.collect(),
        })
    }
}

/// Renders the conflist as JSON: [`Conflist::new`] then [`Conflist::to_value`].
/// Deterministic: equal parameters give an equal value, so the daemon can compare it with
/// what is on disk.
pub fn render(p: &ConflistParams) -> Value {
    Conflist::new(p).to_value()
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
    use serde_json::json;

    fn portmap() -> Value {
        json!({"type": "portmap", "capabilities": {"portMappings": true}})
    }

    static HEADCNI_ONLY: std::sync::LazyLock<ChainVersions> =
        std::sync::LazyLock::new(ChainVersions::headcni_only);

    fn params<'a>(cidrs: &'a [IpNetwork], chained: &'a [Value]) -> ConflistParams<'a> {
        ConflistParams {
            versions: &HEADCNI_ONLY,
            network_name: "headcni",
            bridge: "headcni0",
            mtu: 1280,
            pod_cidrs: cidrs,
            data_dir: Path::new("/var/lib/cni/networks"),
            strategy: Strategy::Sequential,
            daemon_socket: Some(Path::new("/run/headcni/daemon.sock")),
            dns: None,
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

    /// The versions come from the chain's decision.
    #[test]
    fn versions_come_from_the_chain() {
        use crate::node::chain_versions::{ChainProbe, PluginProbe, decide};
        let cidrs: Vec<IpNetwork> = vec!["10.244.1.0/24".parse().unwrap()];
        let chained = [portmap()];
        let versions = decide(&[ChainProbe {
            plugin_type: "portmap".into(),
            probe: PluginProbe::Supported(vec!["0.4.0".into(), "1.0.0".into()]),
        }]);
        let mut p = params(&cidrs, &chained);
        p.versions = &versions;
        let v = render(&p);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["cniVersions"], json!(["0.4.0", "1.0.0"]));
        assert_eq!(
            Conflist::parse(v.to_string().as_bytes())
                .unwrap()
                .to_value(),
            v
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

    /// The typed conflist round-trips through its JSON, and parsing refuses a list that is
    /// not HeadCNI's.
    #[test]
    fn typed_round_trip() {
        let cidrs: Vec<IpNetwork> = vec![
            "fd00:10:244:1::/64".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ];
        let chained = [portmap()];
        let typed = Conflist::new(&params(&cidrs, &chained));
        let bytes = serde_json::to_vec_pretty(&render(&params(&cidrs, &chained))).unwrap();
        let parsed = Conflist::parse(&bytes).unwrap();
        assert_eq!(parsed, typed);
        assert_eq!(parsed.to_value(), render(&params(&cidrs, &chained)));
        assert_eq!(
            parsed.pod_cidrs(),
            vec![cidrs[1], cidrs[0]],
            "IPv4 first, one per range set"
        );
        assert_eq!(parsed.chained, chained);
        for bad in [
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [portmap()]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "headcni"}]}),
        ] {
            assert!(
                Conflist::parse(bad.to_string().as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn dns_goes_into_the_plugin_object_and_the_plugin_reads_it_back() {
        let cidrs = [IpNetwork::V4("10.244.1.0/24".parse().unwrap())];
        let dns = crate::cni::Dns {
            nameservers: vec!["100.100.100.100".into()],
            search: vec!["tailnet.lab".into()],
            ..Default::default()
        };
        let mut p = params(&cidrs, &[]);
        p.dns = Some(&dns);
        let v = render(&p);
        assert_eq!(
            v["plugins"][0]["dns"],
            json!({"nameservers": ["100.100.100.100"], "search": ["tailnet.lab"]})
        );
        let parsed = Conflist::parse(v.to_string().as_bytes()).expect("parse");
        assert_eq!(parsed.plugin.dns.as_ref(), Some(&dns));
        // What the runtime hands the plugin: the list's cniVersion/name plus plugins[0].
        let mut one = v["plugins"][0].clone();
        one["cniVersion"] = v["cniVersion"].clone();
        one["name"] = v["name"].clone();
        let conf: NetConf<BridgeConf> = serde_json::from_value(one).expect("netconf");
        assert_eq!(conf.dns.as_ref(), Some(&dns));
        // Empty or absent: no key at all.
        let empty = crate::cni::Dns::default();
        p.dns = Some(&empty);
        assert!(render(&p)["plugins"][0].get("dns").is_none());
        p.dns = None;
        assert!(render(&p)["plugins"][0].get("dns").is_none());
    }
}
