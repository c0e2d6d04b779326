//! CNI specification versions and negotiation (CNI spec 1.1.0 §"Version considerations").

use std::fmt;
use std::str::FromStr;

use super::error::{CniError, ErrorCode};

/// A CNI specification version that HeadCNI can speak.
///
/// Versions 0.1.0 and 0.2.0 use a different result shape (`ip4`/`ip6`) and are not supported.
/// The order of the variants is the order of the versions, so `<`/`>` compare versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum CniVersion {
    /// 0.3.0: first version with the `interfaces`/`ips` result.
    V0_3_0,
    /// 0.3.1: as 0.3.0 (common in Kubernetes configs).
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: removes `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS, GC, `cniVersions`, interface `mtu`/`socketPath`/`pciID`, route `mtu`/`advmss`/`priority`/`table`/`scope`.
    V1_1_0,
}

/// Every version HeadCNI answers in VERSION, oldest first (the `supportedVersions` list).
pub const SUPPORTED_VERSIONS: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    /// The newest version HeadCNI implements.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The canonical string form, e.g. `"1.1.0"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn supports_status_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Results before 1.0.0 carry `ips[].version` (`"4"` or `"6"`).
    pub fn has_ip_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Parses a config's `cniVersion` with the spec's error codes: a string that is not a
    /// version is a decode error (code 6); a well-formed version HeadCNI does not speak is an
    /// incompatible version (code 1) whose details list the supported versions.
    pub fn parse_config_version(s: &str) -> Result<CniVersion, CniError> {
        if let Ok(v) = s.parse() {
            return Ok(v);
        }
        let well_formed = {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if well_formed {
            Err(
                CniError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions")
                    .with_details(format!(
                        "config is {s:?}, plugin supports {:?}",
                        SUPPORTED_VERSIONS.map(CniVersion::as_str)
                    )),
            )
        } else {
            Err(CniError::new(ErrorCode::Decode, "invalid cniVersion")
                .with_details(format!("{s:?} is not a version string")))
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`CniVersion::from_str`]: the string is not a supported version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?}")]
pub struct UnsupportedVersion(pub String);

impl FromStr for CniVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED_VERSIONS
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_owned()))
    }
}

impl serde::Serialize for CniVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CniVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Picks the version a runtime would use for a network configuration list: the highest of
/// `cniVersion` and `cniVersions` that HeadCNI supports (CNI spec 1.1.0 §"Network
/// configuration lists": `cniVersions`). Returns `None` when none is supported.
pub fn negotiate<'a>(
    cni_version: Option<&'a str>,
    cni_versions: impl IntoIterator<Item = &'a str>,
) -> Option<CniVersion> {
    cni_version
        .into_iter()
        .chain(cni_versions)
        .filter_map(|s| s.parse().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(v.as_str().parse::<CniVersion>().unwrap(), v);
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V1_0_0);
        assert!(!CniVersion::V0_3_1.supports_check());
        assert!(CniVersion::V0_4_0.supports_check());
        assert!(!CniVersion::V1_0_0.supports_status_gc());
        assert!(CniVersion::V1_1_0.supports_status_gc());
    }

    #[test]
    fn config_version_errors_carry_spec_codes() {
        assert_eq!(
            CniVersion::parse_config_version("99.0.0").unwrap_err().code,
            1
        );
        assert_eq!(
            CniVersion::parse_config_version("0.2.0").unwrap_err().code,
            1
        );
        assert_eq!(CniVersion::parse_config_version("one").unwrap_err().code, 6);
        assert_eq!(CniVersion::parse_config_version("1.0").unwrap_err().code, 6);
        assert_eq!(
            CniVersion::parse_config_version("1.0.0").unwrap(),
            CniVersion::V1_0_0
        );
    }

    #[test]
    fn negotiation_takes_highest_supported() {
        assert_eq!(
            negotiate(Some("1.0.0"), ["0.4.0", "1.1.0", "2.0.0"]),
            Some(CniVersion::V1_1_0)
        );
        assert_eq!(negotiate(Some("0.2.0"), []), None);
    }
}
