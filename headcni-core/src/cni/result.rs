//! The CNI success result (CNI spec 1.1.0 §"Success"), convertible to 1.0.0, 0.4.0 and 0.3.x.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{CniError, ErrorCode};
use super::version::CniVersion;

/// One interface of a result (`interfaces[]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name, e.g. `eth0`, `headcni0`, `veth1a2b3c4d`.
    pub name: String,
    /// MAC address, lower-case colon form; omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU in bytes (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path (`CNI_NETNS`) for container-side interfaces; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// vhost-user socket path (1.1.0).
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// PCI ID of a device (1.1.0).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address of a result (`ips[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces[]` of the interface carrying the address; absent in IPAM results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// The address with the subnet's prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNetwork,
    /// The default gateway of this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// One route of a result (`routes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination, e.g. `0.0.0.0/0`.
    pub dst: IpNetwork,
    /// Next hop; when absent the runtime may use the address's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU in bytes (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// TCP advertised MSS in bytes (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope: 0 global, 253 link, 254 host (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route to `dst`, optionally via `gw`, with no 1.1.0 attributes.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings (`dns`), also the NetConf `dns` key. Emitted as `{}` when empty, like the
/// reference plugins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    /// Name server addresses, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// `true` when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI success result in its newest (1.1.0) form; [`CniResult::to_json`] writes any
/// supported version. An IPAM plugin's abbreviated result is the same type with no
/// `interfaces` and no `ips[].interface`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces created or used, host side first by convention.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

const V11_INTERFACE_KEYS: [&str; 3] = ["mtu", "socketPath", "pciID"];
const V11_ROUTE_KEYS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// The result JSON for `version`: 1.1.0 keeps every field; 1.0.0 drops the 1.1.0
    /// interface and route attributes; 0.4.0/0.3.x also add `ips[].version` (`"4"`/`"6"`).
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("cniVersion".into(), Value::String(version.as_str().into()));
        }
        if version < CniVersion::V1_1_0 {
            strip_keys(&mut v["interfaces"], &V11_INTERFACE_KEYS);
            strip_keys(&mut v["routes"], &V11_ROUTE_KEYS);
        }
        if version.has_ip_version_field()
            && let Value::Array(ips) = &mut v["ips"]
        {
            for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                let fam = if cfg.address.is_ipv4() { "4" } else { "6" };
                ip["version"] = Value::String(fam.into());
            }
        }
        v
    }

    /// Parses a result of any supported version (for example a `prevResult` or a delegated
    /// IPAM plugin's answer). `ips[].version` and unknown keys are ignored. A 0.1/0.2 result
    /// (`ip4`/`ip6`) or a shape that does not fit is a decode error (code 6).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            return Err(
                CniError::new(ErrorCode::Decode, "unsupported result format")
                    .with_details("results of CNI 0.1.0/0.2.0 (ip4/ip6) are not supported"),
            );
        }
        serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(ErrorCode::Decode, "failed to decode result").with_details(e.to_string())
        })
    }

    /// Index of the interface named `name` whose `sandbox` equals `sandbox`.
    pub fn interface_index(&self, name: &str, sandbox: Option<&str>) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && i.sandbox.as_deref() == sandbox)
    }
}

fn strip_keys(list: &mut Value, keys: &[&str]) {
    if let Value::Array(items) = list {
        for item in items {
            if let Value::Object(m) = item {
                for k in keys {
                    m.remove(*k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "headcni0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1280),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1280),
                    sandbox: Some("/run/netns/a".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(1),
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                },
                IpConfig {
                    interface: Some(1),
                    address: "fd00:244::5/64".parse().unwrap(),
                    gateway: None,
                },
            ],
            routes: vec![Route {
                mtu: Some(1280),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v110_keeps_everything() {
        let v = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1280);
        assert_eq!(v["routes"][0]["mtu"], 1280);
        assert_eq!(v["dns"], json!({}));
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn older_versions_drop_and_add_fields() {
        let v = sample().to_json(CniVersion::V1_0_0);
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["ips"][0].get("version").is_none());
        let v = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
    }

    #[test]
    fn parse_back_any_version() {
        for ver in crate::cni::SUPPORTED_VERSIONS {
            let mut expect = sample();
            if ver < CniVersion::V1_1_0 {
                for i in &mut expect.interfaces {
                    i.mtu = None;
                }
                expect.routes[0].mtu = None;
            }
            assert_eq!(
                CniResult::from_json(&sample().to_json(ver)).unwrap(),
                expect,
                "{ver}"
            );
        }
        assert_eq!(
            CniResult::from_json(&json!({"ip4": {}})).unwrap_err().code,
            6
        );
        assert_eq!(
            CniResult::from_json(&json!({"ips": 3})).unwrap_err().code,
            6
        );
    }
}
