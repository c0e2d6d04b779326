//! The CNI protocol: versions, environment, `CNI_ARGS`, configuration, results and errors
//! (CNI spec 1.1.0, with results convertible to 1.0.0, 0.4.0, 0.3.1 and 0.3.0).

mod args;
mod conf;
mod env;
mod error;
mod result;
mod version;

/// The most bytes a plugin reads from stdin (the request configuration): 16 MiB. A longer
/// request is refused with code 6 (CNI spec 1.1.0 §"Error": failed to decode content)
/// before any parsing. A request is one plugin's configuration plus `prevResult`, runtime
/// arguments and a GC keep-list: tens of KiB even for a node with a thousand attachments.
/// What a request may cost to parse is bounded separately by [`MAX_JSON_VALUES`].
pub const MAX_STDIN_BYTES: usize = 16 << 20;

pub use args::{CniArgs, is_mac};
pub use conf::{
    GcAttachment, MAX_ECHOED_VERSION_BYTES, MAX_JSON_VALUES, MAX_NETWORK_NAME_BYTES,
    MAX_PLUGIN_TYPE_BYTES, NetConf, ParsedConf, RuntimeConfig, cap_echoed_version, check_json_size,
    peek_version, validate_plugin_type,
};
pub use env::{CniEnv, Command, is_valid_id, validate_ifname};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{CniVersion, SUPPORTED_VERSIONS, UnsupportedVersion, negotiate};

/// The VERSION answer: `{"cniVersion": <echo of the request>, "supportedVersions": [...]}`.
///
/// The spec says to echo the request's version (the Go reference answers its own latest).
/// `request_version` is `None` when stdin had no usable `cniVersion`; then the latest is used.
/// The echo is capped at [`MAX_ECHOED_VERSION_BYTES`] ([`cap_echoed_version`]).
pub fn version_reply(request_version: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cap_echoed_version(request_version.unwrap_or(CniVersion::LATEST.as_str())),
        "supportedVersions": SUPPORTED_VERSIONS.map(CniVersion::as_str),
    })
}
