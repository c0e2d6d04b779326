//! CNI error results (CNI spec 1.1.0 §"Error" and the well-known error codes).

use serde::{Deserialize, Serialize};

/// The error codes HeadCNI emits.
///
/// Codes 0–99 are the spec's (1.1.0 §"Error"); 100 and up are HeadCNI's own, documented here
/// and in `docs/configuration.md`. A delegated plugin's code is passed through unchanged in
/// [`CniError::code`], so that field is a plain `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration; the message names key and value.
    UnsupportedField = 2,
    /// 3: the container is unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid or missing environment variables; the message names them.
    InvalidEnvironment = 4,
    /// 5: I/O failure (for example reading stdin).
    Io = 5,
    /// 6: failed to decode content (bad JSON, bad version string).
    Decode = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 11: try again later (a transient condition).
    TryAgainLater = 11,
    /// 50: STATUS: the plugin cannot service ADD now.
    NotAvailable = 50,
    /// 51: STATUS: not available, and existing containers may have limited connectivity.
    LimitedConnectivity = 51,
    /// 100: the address pool of a range set is exhausted.
    PoolExhausted = 100,
    /// 101: a requested address (CNI_ARGS `IP=`, `runtimeConfig.ips`, `args.cni.ips`) is taken or outside every range.
    AddressUnavailable = 101,
    /// 102: the interface `CNI_IFNAME` already exists in the container, or a host link name clashes.
    InterfaceExists = 102,
    /// 103: a netlink or namespace operation failed.
    Netlink = 103,
    /// 104: the IPAM store could not be read or written.
    IpamStore = 104,
    /// 105: a delegated plugin could not be run or returned an unreadable answer.
    Delegate = 105,
    /// 106: CHECK found a difference between the attachment and its `prevResult`.
    CheckFailed = 106,
    /// 107: a duplicate ADD for an attachment that already has a different configuration.
    DuplicateAttachment = 107,
    /// 199: an internal error (a bug); the message says where.
    Internal = 199,
}

impl ErrorCode {
    /// The numeric code as it appears in the error JSON.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// A CNI error result: `{"cniVersion", "code", "msg", "details"}` on stdout with a non-zero exit.
///
/// Source: CNI spec 1.1.0 §"Error". `cniVersion` is added when the error is written
/// ([`CniError::to_json`]), because the same error can answer requests of any version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The error code: an [`ErrorCode`] or a delegated plugin's code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details; omitted from the JSON when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code.code(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Sets the details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON for a request of version `cni_version` (any string: the error may be
    /// about the version itself).
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }

    /// The process exit status for this error: never 0. Codes that fit in a byte are used as
    /// the status (a netavark/cni-plugin convention); larger ones exit with 1.
    pub fn exit_code(&self) -> i32 {
        match self.code {
            1..=255 => self.code as i32,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = CniError::new(ErrorCode::InvalidEnvironment, "CNI_IFNAME is missing");
        assert_eq!(
            e.to_json("1.1.0"),
            serde_json::json!({"cniVersion": "1.1.0", "code": 4, "msg": "CNI_IFNAME is missing"})
        );
        let e = e.with_details("x");
        assert_eq!(e.to_json("1.0.0")["details"], "x");
        assert_eq!(e.exit_code(), 4);
        assert_eq!(
            CniError {
                code: 999,
                msg: String::new(),
                details: String::new()
            }
            .exit_code(),
            1
        );
    }
}
