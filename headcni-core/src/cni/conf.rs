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

/// The most bytes of a request's `cniVersion` that are echoed back (VERSION's reply and
/// every error JSON): a longer string is cut at a character boundary at or below this.
pub const MAX_ECHOED_VERSION_BYTES: usize = 64;

/// The longest network `name` (bytes): Linux's `NAME_MAX`, since the IPAM store is the
/// directory `<dataDir>/<name>` (host-local's layout).
pub const MAX_NETWORK_NAME_BYTES: usize = 255;

/// The longest plugin `type` (bytes): Linux's `NAME_MAX`, since it is a file name in a
/// `CNI_PATH` directory.
pub const MAX_PLUGIN_TYPE_BYTES: usize = 255;

/// The most JSON values (every object, array, key, string, number, bool and null counts
/// one) a request configuration may hold; checked without building anything before the
/// configuration is parsed. 100,000 is ~20,000 GC keep-list entries; the bound keeps the
/// parse's memory proportional to it rather than to the input (a `serde_json::Value` costs
/// 32 bytes and more per value, so megabytes of tiny array items cost gigabytes).
pub const MAX_JSON_VALUES: usize = 100_000;

/// Counts JSON values, failing past a limit, without allocating.
struct CountValues<'a>(&'a std::cell::Cell<usize>);

impl CountValues<'_> {
    fn tick<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.0.get().checked_sub(1) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(format!(
                "more than {MAX_JSON_VALUES} JSON values"
            ))),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for CountValues<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountValues<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(CountValues(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key_seed(CountValues(self.0))?.is_some() {
            map.next_value_seed(CountValues(self.0))?;
        }
        Ok(())
    }
}

/// Checks that `bytes` is one JSON document of at most [`MAX_JSON_VALUES`] values, in one
/// pass that builds nothing. Errors: code 6 (CNI spec 1.1.0 §"Error": failed to decode).
pub fn check_json_size(bytes: &[u8]) -> Result<(), CniError> {
    use serde::de::DeserializeSeed;
    let left = std::cell::Cell::new(MAX_JSON_VALUES);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    CountValues(&left)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            CniError::new(ErrorCode::Decode, "failed to decode network configuration")
                .with_details(e.to_string())
        })
}

/// `s` cut to at most [`MAX_ECHOED_VERSION_BYTES`] at a character boundary.
pub fn cap_echoed_version(s: &str) -> &str {
    if s.len() <= MAX_ECHOED_VERSION_BYTES {
        return s;
    }
    let mut end = MAX_ECHOED_VERSION_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads the `cniVersion` of a request without validating anything else, for error replies
/// in the right version. Returns `None` when the bytes are not a JSON object with a string
/// `cniVersion`; the string is capped by [`cap_echoed_version`].
///
/// The rest of the document is skipped without being built (serde's `IgnoredAny`), so the
/// peek costs no memory proportional to the input.
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion", default)]
        cni_version: Option<String>,
    }
    let p: Peek = serde_json::from_slice(bytes).ok()?;
    p.cni_version.map(|v| cap_echoed_version(&v).to_owned())
}

/// Validates a plugin `type` (the NetConf `type`, `ipam.type`, a chained plugin's `type`):
/// it names a file in a `CNI_PATH` directory, never a path. Allowed: 1–255 bytes of ASCII
/// letters, digits, `.`, `_`, `-` and `+`, starting with a letter, digit or `_` (so never
/// `.`, `..`, a hidden file, an option-like `-x`, a `/`, NUL or whitespace).
///
/// Errors: code 7 (invalid network configuration, CNI spec 1.1.0 §"Error"): the name comes
/// from the configuration, and no plugin lookup is attempted (compare
/// CVE-2021-20206, where libcni resolved `../` in a `type`).
pub fn validate_plugin_type(plugin_type: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(
            CniError::new(ErrorCode::InvalidConfig, "invalid plugin type").with_details(format!(
                "{:?} is not a plugin binary name: {why}",
                cap_echoed_version(plugin_type)
            )),
        )
    };
    let mut bytes = plugin_type.bytes();
    match bytes.next() {
        None => return bad("it is empty"),
        Some(c) if c.is_ascii_alphanumeric() || c == b'_' => {}
        Some(_) => return bad("it must start with a letter, a digit or '_'"),
    }
    if plugin_type.len() > MAX_PLUGIN_TYPE_BYTES {
        return bad("it is longer than 255 bytes");
    }
    if !bytes.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+')) {
        return bad("only letters, digits, '.', '_', '-' and '+' are allowed");
    }
    Ok(())
}

impl<P: DeserializeOwned> NetConf<P> {
    /// Parses a request configuration.
    ///
    /// Errors: not JSON, more than [`MAX_JSON_VALUES`] values, or not an object → 6; missing `cniVersion` → 1 (libcni treats it as
    /// 0.1.0); a bad or unsupported version → 6 or 1 ([`CniVersion::parse_config_version`]);
    /// a key of the wrong type or a missing required key → 7 (decode errors of typed fields
    /// are config errors); a missing or invalid `name`/`type` → 7.
    pub fn parse(bytes: &[u8]) -> Result<ParsedConf<P>, CniError> {
        check_json_size(bytes)?;
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
        validate_plugin_type(&conf.plugin_type)?;
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

    #[test]
    fn plugin_types_are_file_names_never_paths() {
        for ok in [
            "host-local",
            "headcni-ipam",
            "static",
            "calico_ipam",
            "x",
            "a.b+c",
            "_x",
        ] {
            validate_plugin_type(ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../../../tmp/x",
            "/tmp/x",
            "a/b",
            ".hidden",
            "-x",
            "a\0b",
            "a b",
            "é",
            long.as_str(),
        ] {
            let e = validate_plugin_type(bad).unwrap_err();
            assert_eq!(e.code, 7, "{bad:?}");
        }
        assert!(validate_plugin_type(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn value_count_is_bounded_before_parsing() {
        let at_limit = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES - 2));
        check_json_size(at_limit.as_bytes()).unwrap();
        let over = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES - 1));
        assert_eq!(check_json_size(over.as_bytes()).unwrap_err().code, 6);
        let conf =
            format!("{{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"pad\":{over}}}");
        assert_eq!(NetConf::<Mine>::parse(conf.as_bytes()).unwrap_err().code, 6);
        assert_eq!(check_json_size(b"{} {}").unwrap_err().code, 6);
    }

    #[test]
    fn echoed_versions_are_capped() {
        let long = format!("{{\"cniVersion\": \"{}\"}}", "é".repeat(100));
        let v = peek_version(long.as_bytes()).unwrap();
        assert!(v.len() <= MAX_ECHOED_VERSION_BYTES && v.len() >= 62, "{v}");
        assert_eq!(
            peek_version(b"{\"cniVersion\": \"1.0.0\", \"x\": [1, 2]}").as_deref(),
            Some("1.0.0")
        );
        assert_eq!(peek_version(b"[1]"), None);
        assert_eq!(peek_version(b"{\"cniVersion\": 1}"), None);
        let reply = crate::cni::version_reply(Some(&"9".repeat(1000)));
        assert_eq!(
            reply["cniVersion"].as_str().unwrap().len(),
            MAX_ECHOED_VERSION_BYTES
        );
    }
}
