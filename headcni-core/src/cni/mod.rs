//! The CNI protocol: versions, environment, `CNI_ARGS`, configuration, results and errors
//! (CNI spec 1.1.0, with results convertible to 1.0.0, 0.4.0, 0.3.1 and 0.3.0).

mod args;
mod conf;
mod env;
mod error;
mod result;
mod version;

pub use args::{CniArgs, is_mac};
pub use conf::{GcAttachment, NetConf, ParsedConf, RuntimeConfig, peek_version};
pub use env::{CniEnv, Command, is_valid_id, validate_ifname};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{CniVersion, SUPPORTED_VERSIONS, UnsupportedVersion, negotiate};

/// The VERSION answer: `{"cniVersion": <echo of the request>, "supportedVersions": [...]}`.
///
/// The spec says to echo the request's version (the Go reference answers its own latest).
/// `request_version` is `None` when stdin had no usable `cniVersion`; then the latest is used.
pub fn version_reply(request_version: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": request_version.unwrap_or(CniVersion::LATEST.as_str()),
        "supportedVersions": SUPPORTED_VERSIONS.map(CniVersion::as_str),
    })
}
