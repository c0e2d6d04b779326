//! Which CNI versions the conflist offers, decided from what every chained plugin answered
//! to `CNI_COMMAND=VERSION` (CNI spec 1.1.0 §"VERSION": `{"cniVersion": …,
//! "supportedVersions": [...]}`). Pure: the node agent execs the plugins
//! (`headcni_node::chain`) and hands the answers to [`decide`].
//!
//! The rule:
//! - `cniVersions` = HeadCNI's versions ([`CONFLIST_VERSIONS`]) that every chained plugin
//!   lists. A libcni ≥ 1.2 runtime (containerd 2.x) picks the highest listed version it
//!   supports, so it always picks one every plugin accepts.
//! - `cniVersion` = the highest of those not above [`OLD_RUNTIME_CEILING`] (1.0.0): libcni
//!   1.1 runtimes (containerd 1.6, podman 4.3) read `cniVersion` only and cannot decode a
//!   1.1.0 result ("unsupported CNI result version"), so 1.1.0 is only ever offered through
//!   `cniVersions`. Only when no common version is ≤ 1.0.0 is it the highest common one.
//! - A chained plugin that is missing, or whose answer is unusable (exit ≠ 0, not JSON, no
//!   `supportedVersions`, timed out): its versions are unknown, so it is assumed to accept
//!   what the reference plugins ≤ 1.4 accept, the versions up to 1.0.0 (the choice HeadCNI
//!   made before it asked). The problem is reported ([`ChainVersions::problems`]).
//! - No version in common: the conflist keeps 1.0.0 alone (ADD then fails with the
//!   plugin's own "incompatible CNI versions") and the problem is reported.

use crate::cni::CniVersion;

/// HeadCNI's versions the conflist can offer, ascending (0.3.0 is not offered: runtimes use
/// 0.3.1).
pub const CONFLIST_VERSIONS: [CniVersion; 4] = [
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

/// The highest `cniVersion` written while a lower common version exists: 1.0.0, the newest
/// libcni 1.1 can decode results of.
pub const OLD_RUNTIME_CEILING: CniVersion = CniVersion::V1_0_0;

/// The most `supportedVersions` entries read from one answer.
pub const MAX_SUPPORTED_VERSIONS: usize = 64;

/// The most bytes of one `supportedVersions` entry.
pub const MAX_VERSION_STRING_BYTES: usize = 32;

/// What probing one chained plugin found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginProbe {
    /// Its `supportedVersions`, as answered (strings HeadCNI does not know are kept and
    /// ignored by [`decide`]).
    Supported(Vec<String>),
    /// No executable of that name in the plugin directory (the detail says where).
    Missing(String),
    /// It could not be asked, or its answer is not a VERSION answer (the detail says why).
    Unusable(String),
}

/// One chained plugin and what its probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProbe {
    /// The plugin's `type` (or a placeholder when the object has none).
    pub plugin_type: String,
    /// The probe's outcome.
    pub probe: PluginProbe,
}

/// The versions the conflist offers, and what stood in the way of a full answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVersions {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `cniVersions`, ascending.
    pub cni_versions: Vec<CniVersion>,
    /// One line per chained plugin that is missing or answered nothing usable, and one when
    /// no version is common to the chain; empty when every plugin answered.
    pub problems: Vec<String>,
}

impl ChainVersions {
    /// The versions offered with no chained plugin: every one of [`CONFLIST_VERSIONS`],
    /// `cniVersion` [`OLD_RUNTIME_CEILING`].
    pub fn headcni_only() -> ChainVersions {
        decide(&[])
    }
}

/// Parses a plugin's VERSION answer (stdout): a JSON object whose `supportedVersions` is an
/// array of strings. Bounded: at most [`MAX_SUPPORTED_VERSIONS`] entries of at most
/// [`MAX_VERSION_STRING_BYTES`] bytes each.
///
/// # Errors
/// A short reason for people: not JSON, not an object, `supportedVersions` missing, not an
/// array of strings, too many or too long entries.
pub fn parse_version_reply(stdout: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("the VERSION answer is not JSON: {e}"))?;
    let list = v
        .get("supportedVersions")
        .ok_or_else(|| "the VERSION answer has no supportedVersions".to_owned())?
        .as_array()
        .ok_or_else(|| "supportedVersions is not an array".to_owned())?;
    if list.len() > MAX_SUPPORTED_VERSIONS {
        return Err(format!(
            "supportedVersions lists more than {MAX_SUPPORTED_VERSIONS} entries"
        ));
    }
    list.iter()
        .map(|e| match e.as_str() {
            Some(s) if s.len() <= MAX_VERSION_STRING_BYTES => Ok(s.to_owned()),
            Some(_) => Err(format!(
                "a supportedVersions entry is longer than {MAX_VERSION_STRING_BYTES} bytes"
            )),
            None => Err("a supportedVersions entry is not a string".to_owned()),
        })
        .collect()
}

/// Decides the conflist's `cniVersion` and `cniVersions` from the chained plugins' probes
/// (the rule is in the module documentation). Deterministic; never fails.
pub fn decide(chain: &[ChainProbe]) -> ChainVersions {
    let mut common: Vec<CniVersion> = CONFLIST_VERSIONS.to_vec();
    let mut problems = Vec::new();
    for p in chain {
        match &p.probe {
            PluginProbe::Supported(list) => {
                common.retain(|v| list.iter().any(|s| s == v.as_str()));
            }
            PluginProbe::Missing(detail) => {
                problems.push(format!(
                    "chained plugin {:?} is missing: {detail}",
                    p.plugin_type
                ));
                common.retain(|v| *v <= OLD_RUNTIME_CEILING);
            }
            PluginProbe::Unusable(detail) => {
                problems.push(format!(
                    "chained plugin {:?} answered no usable VERSION: {detail}",
                    p.plugin_type
                ));
                common.retain(|v| *v <= OLD_RUNTIME_CEILING);
            }
        }
    }
    if common.is_empty() {
        let types: Vec<&str> = chain.iter().map(|p| p.plugin_type.as_str()).collect();
        problems.push(format!(
            "no CNI version is supported by headcni and every chained plugin {types:?}; \
             the conflist offers {OLD_RUNTIME_CEILING} only"
        ));
        common.push(OLD_RUNTIME_CEILING);
    }
    let cni_version = common
        .iter()
        .copied()
        .filter(|v| *v <= OLD_RUNTIME_CEILING)
        .max()
        .or_else(|| common.iter().copied().max())
        .unwrap_or(OLD_RUNTIME_CEILING);
    ChainVersions {
        cni_version,
        cni_versions: common,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::CniVersion::*;

    fn supported(t: &str, versions: &[&str]) -> ChainProbe {
        ChainProbe {
            plugin_type: t.into(),
            probe: PluginProbe::Supported(versions.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    /// Debian bookworm's reference plugins 1.1.1 answer this (exec'd in
    /// headcni-cli/tests/interop.rs).
    const DEBIAN_1_1_1: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

    #[test]
    fn headcni_alone_offers_everything_with_1_0_0_for_old_runtimes() {
        let v = ChainVersions::headcni_only();
        assert_eq!(v.cni_version, V1_0_0);
        assert_eq!(v.cni_versions, CONFLIST_VERSIONS);
        assert!(v.problems.is_empty());
    }

    #[test]
    fn reference_plugins_cap_the_list_at_1_0_0() {
        let v = decide(&[
            supported("portmap", &DEBIAN_1_1_1),
            supported("bandwidth", &DEBIAN_1_1_1),
        ]);
        assert_eq!(v.cni_versions, [V0_3_1, V0_4_0, V1_0_0]);
        assert_eq!(v.cni_version, V1_0_0);
        assert!(v.problems.is_empty());
    }

    #[test]
    fn a_chain_that_speaks_1_1_0_is_offered_1_1_0_in_the_list_only() {
        let v = decide(&[supported("t", &["0.4.0", "1.0.0", "1.1.0", "2.0.0"])]);
        assert_eq!(v.cni_versions, [V0_4_0, V1_0_0, V1_1_0]);
        assert_eq!(v.cni_version, V1_0_0, "libcni 1.1 reads cniVersion only");
        // a libcni ≥ 1.2 runtime supporting 1.1.0 picks it
        let picked = crate::cni::negotiate(
            Some(v.cni_version.as_str()),
            v.cni_versions.iter().map(|v| v.as_str()),
        );
        assert_eq!(picked, Some(V1_1_0));
    }

    #[test]
    fn the_oldest_plugin_wins() {
        let v = decide(&[
            supported("new", &["0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
            supported("old", &["0.3.0", "0.3.1", "0.4.0"]),
        ]);
        assert_eq!(v.cni_versions, [V0_3_1, V0_4_0].to_vec());
        assert_eq!(v.cni_version, V0_4_0);
    }

    #[test]
    fn only_1_1_0_in_common_is_the_cni_version_too() {
        let v = decide(&[supported("t", &["1.1.0"])]);
        assert_eq!((v.cni_version, v.cni_versions), (V1_1_0, vec![V1_1_0]));
    }

    #[test]
    fn missing_or_unusable_falls_back_to_at_most_1_0_0_and_is_reported() {
        let v = decide(&[
            supported("t", &["1.0.0", "1.1.0"]),
            ChainProbe {
                plugin_type: "portmap".into(),
                probe: PluginProbe::Missing("not in /opt/cni/bin".into()),
            },
            ChainProbe {
                plugin_type: "weird".into(),
                probe: PluginProbe::Unusable("exit status 1".into()),
            },
        ]);
        assert_eq!((v.cni_version, v.cni_versions), (V1_0_0, vec![V1_0_0]));
        assert_eq!(
            v.problems,
            [
                "chained plugin \"portmap\" is missing: not in /opt/cni/bin",
                "chained plugin \"weird\" answered no usable VERSION: exit status 1"
            ]
        );
    }

    #[test]
    fn nothing_in_common_keeps_1_0_0_and_says_so() {
        let v = decide(&[supported("a", &["0.4.0"]), supported("b", &["1.1.0"])]);
        assert_eq!((v.cni_version, v.cni_versions), (V1_0_0, vec![V1_0_0]));
        assert_eq!(v.problems.len(), 1);
        assert!(v.problems[0].contains("no CNI version"), "{:?}", v.problems);
        let v = decide(&[supported("a", &["0.1.0", "0.2.0", "garbage"])]);
        assert_eq!(v.cni_versions, [V1_0_0]);
        assert_eq!(v.problems.len(), 1);
    }

    #[test]
    fn version_replies_are_parsed_and_bounded() {
        assert_eq!(
            parse_version_reply(br#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#)
                .unwrap(),
            ["0.4.0", "1.0.0"]
        );
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"cniVersion":"1.0.0"}"#,
            br#"{"supportedVersions":"1.0.0"}"#,
            br#"{"supportedVersions":[1]}"#,
        ] {
            assert!(parse_version_reply(bad).is_err(), "{bad:?}");
        }
        let many =
            serde_json::json!({"supportedVersions": vec!["1.0.0"; MAX_SUPPORTED_VERSIONS + 1]});
        assert!(parse_version_reply(many.to_string().as_bytes()).is_err());
        let long =
            serde_json::json!({"supportedVersions": ["1".repeat(MAX_VERSION_STRING_BYTES + 1)]});
        assert!(parse_version_reply(long.to_string().as_bytes()).is_err());
    }
}
