//! Network configuration as a plugin receives it on stdin (CNI spec 1.1.0 §"Network
//! configuration" and §"Deriving request configuration from plugin configuration").

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::env::is_valid_id;
use super::error::{CniError, ErrorCode};
use super::result::Dns;
use super::version::CniVersion;

/// One attachment in a GC request's `cni.dev/valid-attachments` (CNI spec 1.1.0 §"GC").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    /// The container ID of a live attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface name.
    pub ifname: String,
}

/// `runtimeConfig`: the capability arguments the runtime passes (CNI CONVENTIONS.md).
///
/// Only the capabilities HeadCNI's IPAM consumes are typed (`ips`, `ipRanges`, `mac`); the
/// rest (`portMappings`, `bandwidth`, `dns`, `aliases`, …) is kept in `other` untouched for
/// chained plugins. containerd writes Go field names (`IPRanges`, `MAC`), podman camelCase;
/// both are accepted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// Requested addresses (`"10.244.1.7/24"` or `"10.244.1.7"`).
    #[serde(default, alias = "IPs", skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Extra range sets, prepended to the IPAM ranges (host-local semantics).
    #[serde(
        default,
        rename = "ipRanges",
        alias = "IPRanges",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_ranges: Vec<Vec<crate::ipam::RangeConf>>,
    /// Requested MAC address of the container interface.
    #[serde(default, alias = "MAC", skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Every other capability argument, untouched.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A plugin's request configuration: the standard keys plus the plugin's own keys `P`
/// (flattened, so `P` sees every key that is not standard).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetConf<P> {
    /// The negotiated version, as sent.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network name: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`; host-local uses it as a directory name.
    pub name: String,
    /// The plugin type (binary name).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The IPAM section, kept raw: it is handed whole to the IPAM plugin (delegated or in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    /// DNS settings for the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Capability arguments.
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: RuntimeConfig,
    /// The previous plugin's result (chained ADD) or the final ADD result (DEL, CHECK).
    #[serde(
        default,
        rename = "prevResult",
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// The `args` key (e.g. `args.cni.ips`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// GC: the attachments to keep (spec 1.1.0 after the rename).
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// GC: the same list under its spec-v1.1.0-tag name; libcni sends both.
    #[serde(
        default,
        rename = "cni.dev/attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_attachments: Option<Vec<GcAttachment>>,
    /// The plugin's own keys.
    #[serde(flatten)]
    pub plugin: P,
}

/// The parsed, version-checked request configuration and its raw JSON (needed to delegate
/// to another plugin with the complete configuration unchanged).
#[derive(Debug, Clone)]
pub struct ParsedConf<P> {
    /// The request's version.
    pub version: CniVersion,
    /// The typed configuration.
    pub conf: NetConf<P>,
    /// The configuration exactly as received (as a JSON value).
    pub raw: Value,
}

/// Reads the `cniVersion` of a request without validating anything else, for error replies
/// in the right version. Returns `None` when the bytes are not a JSON object with a string
/// `cniVersion`.
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_owned)
}

impl<P: DeserializeOwned> NetConf<P> {
    /// Parses a request configuration.
    ///
    /// Errors: not JSON or not an object → 6; missing `cniVersion` → 1 (libcni treats it as
    /// 0.1.0); a bad or unsupported version → 6 or 1 ([`CniVersion::parse_config_version`]);
    /// a key of the wrong type or a missing required key → 7 (decode errors of typed fields
    /// are config errors); a missing or invalid `name`/`type` → 7.
    pub fn parse(bytes: &[u8]) -> Result<ParsedConf<P>, CniError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(ErrorCode::Decode, "failed to decode network configuration")
                .with_details(e.to_string())
        })?;
        let Some(obj) = raw.as_object() else {
            return Err(CniError::new(
                ErrorCode::Decode,
                "network configuration is not a JSON object",
            ));
        };
        let version = match obj.get("cniVersion") {
            None | Some(Value::Null) => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleVersion,
                    "incompatible CNI versions",
                )
                .with_details("config has no cniVersion (0.1.0 is not supported)"));
            }
            Some(Value::String(s)) => CniVersion::parse_config_version(s)?,
            Some(other) => {
                return Err(CniError::new(ErrorCode::Decode, "invalid cniVersion")
                    .with_details(format!("{other} is not a string")));
            }
        };
        for key in ["name", "type"] {
            match obj.get(key) {
                Some(Value::String(_)) => {}
                None => {
                    return Err(CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("network configuration has no {key:?}"),
                    ));
                }
                Some(_) => {
                    return Err(CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("{key:?} must be a string"),
                    ));
                }
            }
        }
        let conf: NetConf<P> = serde_json::from_value(raw.clone()).map_err(|e| {
            CniError::new(ErrorCode::InvalidConfig, "invalid network configuration")
                .with_details(e.to_string())
        })?;
        if !is_valid_id(&conf.name) {
            return Err(
                CniError::new(ErrorCode::InvalidConfig, "invalid network name").with_details(
                    format!("{:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$", conf.name),
                ),
            );
        }
        if conf.plugin_type.is_empty() || conf.plugin_type.contains('/') || conf.plugin_type == ".."
        {
            return Err(
                CniError::new(ErrorCode::InvalidConfig, "invalid plugin type").with_details(
                    format!("{:?} is not a plugin binary name", conf.plugin_type),
                ),
            );
        }
        Ok(ParsedConf { version, conf, raw })
    }
}

impl<P> NetConf<P> {
    /// The GC keep-list: `cni.dev/valid-attachments`, else `cni.dev/attachments`; `None` if
    /// neither key is present.
    pub fn gc_valid_attachments(&self) -> Option<&[GcAttachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, Serialize, Default)]
    struct Mine {
        #[serde(default)]
        bridge: Option<String>,
        #[serde(default)]
        mtu: Option<u32>,
    }

    fn parse(v: Value) -> Result<ParsedConf<Mine>, CniError> {
        NetConf::<Mine>::parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_plugin_keys_and_capabilities() {
        let p = parse(json!({
            "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "headcni",
            "bridge": "hc0", "mtu": 1280, "unknownKey": true,
            "ipam": {"type": "headcni-ipam"},
            "runtimeConfig": {"portMappings": [{"HostPort": 8080}], "IPs": ["10.0.0.5/24"], "MAC": "02:00:00:00:00:09"},
            "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(p.version, CniVersion::V1_1_0);
        assert_eq!(p.conf.plugin.bridge.as_deref(), Some("hc0"));
        assert_eq!(p.conf.plugin.mtu, Some(1280));
        assert_eq!(p.conf.runtime_config.ips, vec!["10.0.0.5/24"]);
        assert_eq!(
            p.conf.runtime_config.mac.as_deref(),
            Some("02:00:00:00:00:09")
        );
        assert!(p.conf.runtime_config.other.contains_key("portMappings"));
        assert_eq!(p.conf.gc_valid_attachments().unwrap()[0].container_id, "a");
        assert_eq!(p.raw["unknownKey"], true);
    }

    #[test]
    fn error_codes() {
        assert_eq!(NetConf::<Mine>::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::<Mine>::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(
            parse(json!({"name": "n", "type": "t"})).unwrap_err().code,
            1
        );
        assert_eq!(
            parse(json!({"cniVersion": "9.9.9", "name": "n", "type": "t"}))
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(
            parse(json!({"cniVersion": 1, "name": "n", "type": "t"}))
                .unwrap_err()
                .code,
            6
        );
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "type": "t"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": "../x", "type": "t"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "a/b"}))
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "mtu": "big"}))
                .unwrap_err()
                .code,
            7
        );
    }
}
