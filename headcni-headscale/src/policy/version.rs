//! [`PolicyVersion`]: the Headscale policy generations that differ for HeadCNI.

use std::fmt;
use std::str::FromStr;

use super::PolicyError;

/// A Headscale policy generation, as far as HeadCNI's needs differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyVersion {
    /// 0.25 (policy v1, `hscontrol/policy/acls.go`): users are bare names (`ops`), a tag
    /// resolves to nodes with the tag forced (pre-auth key `aclTags`) or requested and owned;
    /// peers' routes are not filtered by the ACL (only peers are).
    V0_25,
    /// 0.26–0.27 (policy v2, `hscontrol/policy/v2/types.go`): users need `@` (`ops@`); a tag
    /// resolves to nodes carrying it and to nodes of its owners requesting it
    /// (`Hostinfo.RequestTags`); each peer's routes are filtered by the ACL
    /// (`ReduceRoutes`).
    V0_26,
    /// 0.28: a tag resolves only to nodes carrying it (`Tag.Resolve`); a user only to its
    /// untagged nodes.
    V0_28,
    /// 0.29: `*` as a source resolves to the CGNAT and ULA ranges plus the approved subnet
    /// routes (not every address); a subnet router also sees routes its own subnets may reach
    /// (`CanAccessRoute`).
    V0_29,
    /// Headscale main (0.30 development): as 0.29 for the policy.
    Main,
}

impl PolicyVersion {
    /// Every generation, oldest first.
    pub const ALL: [PolicyVersion; 5] = [
        PolicyVersion::V0_25,
        PolicyVersion::V0_26,
        PolicyVersion::V0_28,
        PolicyVersion::V0_29,
        PolicyVersion::Main,
    ];

    /// How the policy names user `name`: `name` on 0.25 (policy v1 `findUserFromToken`
    /// matches the name as written), `name@` since 0.26 (policy v2 `Username.Validate`
    /// requires an `@`). A name that already has an `@` (an e-mail) is kept.
    pub fn user_token(self, name: &str) -> String {
        if name.contains('@') || self == PolicyVersion::V0_25 {
            name.to_string()
        } else {
            format!("{name}@")
        }
    }

    /// True when each peer's subnet routes are filtered by the ACL (≥ 0.26,
    /// `hscontrol/policy/policy.go` `ReduceRoutes`).
    pub fn filters_routes_by_acl(self) -> bool {
        self >= PolicyVersion::V0_26
    }

    /// True when tag aliases also match untagged nodes of a tag owner requesting the tag
    /// (0.25–0.27; removed in 0.28).
    pub fn tags_match_requested(self) -> bool {
        self <= PolicyVersion::V0_26
    }

    /// True when `*` as a source is the tailnet ranges plus approved subnet routes rather than
    /// every address (≥ 0.29, `Asterix.resolve` and `srcIPsWithRoutes`).
    pub fn wildcard_is_tailnet(self) -> bool {
        self >= PolicyVersion::V0_29
    }

    /// True when unknown policy fields are refused (≥ 0.27: `json.RejectUnknownMembers`;
    /// 0.26 and policy v1 ignore them). 0.26–0.27 share one variant, so this reports the
    /// stricter 0.27.
    pub fn rejects_unknown_fields(self) -> bool {
        self >= PolicyVersion::V0_26
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyVersion::V0_25 => "0.25",
            PolicyVersion::V0_26 => "0.26-0.27",
            PolicyVersion::V0_28 => "0.28",
            PolicyVersion::V0_29 => "0.29",
            PolicyVersion::Main => "main",
        })
    }
}

impl FromStr for PolicyVersion {
    type Err = PolicyError;

    /// `0.25`, `0.26`, `0.27`, `0.28`, `0.29` (a patch level and a leading `v` are accepted),
    /// `main` or `0.30`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_start_matches('v');
        let minor = t
            .strip_prefix("0.")
            .map(|r| r.split(['.', '-']).next().unwrap_or_default());
        Ok(match (t, minor) {
            ("main", _) | (_, Some("30")) => PolicyVersion::Main,
            (_, Some("25")) => PolicyVersion::V0_25,
            (_, Some("26" | "27")) => PolicyVersion::V0_26,
            (_, Some("28")) => PolicyVersion::V0_28,
            (_, Some("29")) => PolicyVersion::V0_29,
            _ => return Err(PolicyError::UnknownVersion(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!("0.25.1".parse(), Ok(PolicyVersion::V0_25));
        assert_eq!("v0.27.1".parse(), Ok(PolicyVersion::V0_26));
        assert_eq!("0.28".parse(), Ok(PolicyVersion::V0_28));
        assert_eq!("0.29.2".parse(), Ok(PolicyVersion::V0_29));
        assert_eq!("main".parse(), Ok(PolicyVersion::Main));
        assert!("0.24".parse::<PolicyVersion>().is_err());
        assert!("".parse::<PolicyVersion>().is_err());
    }

    #[test]
    fn user_tokens() {
        assert_eq!(PolicyVersion::V0_25.user_token("ops"), "ops");
        assert_eq!(PolicyVersion::V0_26.user_token("ops"), "ops@");
        assert_eq!(PolicyVersion::V0_29.user_token("a@b.c"), "a@b.c");
    }
}
