//! [`render_fragment`]: the policy fragment a HeadCNI cluster needs, as HuJSON with comments.

use std::fmt::Write as _;

use ipnetwork::IpNetwork;

use super::{PolicyError, PolicyVersion};

/// Who approves the PodCIDR routes in `autoApprovers.routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    /// A tag (`tag:headcni`): matches only nodes carrying it, i.e. nodes registered with a
    /// pre-auth key whose `aclTags` has it (daemon mode: `[tailscale] advertise_tags` /
    /// the bootstrap key's tags). Headscale ≥ 0.28 `Tag.Resolve`.
    Tag(String),
    /// A user name without `@` (`ops`): matches only that user's untagged nodes (Headscale
    /// `Username.resolve` skips tagged nodes). Rendered `ops` on 0.25, `ops@` since 0.26.
    User(String),
}

/// What a cluster needs from the Headscale policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequirements {
    /// The cluster CIDR(s): every node's PodCIDR lies inside one of them.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// The Headscale policy generation.
    pub version: PolicyVersion,
    /// The route approver.
    pub approver: Approver,
    /// With a tag approver: the user owning the tag in `tagOwners` (a bare name, rendered per
    /// version). Required for [`Approver::Tag`]: Headscale refuses a policy that uses a tag
    /// missing from `tagOwners` (`ErrTagNotDefined`).
    pub tag_owner: Option<String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

impl PolicyRequirements {
    /// Checks the requirements can make a policy Headscale accepts: at least one cluster CIDR,
    /// a tag `tag:<letter>[A-Za-z0-9-_.]*` (v2 `Tag.Validate`), a user and a tag owner made of
    /// `[A-Za-z0-9-_.@]`, 1–128 characters.
    ///
    /// Errors: [`PolicyError::Requirements`] naming the problem.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Requirements(m));
        if self.cluster_cidrs.is_empty() {
            return bad("no cluster CIDR".into());
        }
        if let Some(c) = self.cluster_cidrs.iter().find(|c| c.prefix() == 0) {
            return bad(format!("cluster CIDR {c} would be an exit route"));
        }
        match &self.approver {
            Approver::Tag(t) => {
                let rest = t.strip_prefix("tag:").unwrap_or_default();
                if !rest.starts_with(|c: char| c.is_ascii_alphabetic())
                    || !valid_name(rest)
                    || rest.contains('@')
                {
                    return bad(format!(
                        "tag {t:?}: expected tag:<letter>[A-Za-z0-9-_.]* (Headscale Tag.Validate)"
                    ));
                }
                match &self.tag_owner {
                    Some(o) if valid_name(o) => {}
                    Some(o) => return bad(format!("tag owner {o:?} is not a user name")),
                    None => {
                        return bad(format!(
                            "a tag approver needs a tag owner (tagOwners[{t:?}])"
                        ));
                    }
                }
            }
            Approver::User(u) => {
                if !valid_name(u) {
                    return bad(format!("user {u:?} is not a user name"));
                }
            }
        }
        Ok(())
    }

    /// The approver as the policy writes it (`tag:headcni`, `ops` on 0.25, `ops@` after).
    pub fn approver_token(&self) -> String {
        match &self.approver {
            Approver::Tag(t) => t.clone(),
            Approver::User(u) => self.version.user_token(u),
        }
    }

    fn cidrs(&self) -> Vec<String> {
        self.cluster_cidrs.iter().map(|c| c.to_string()).collect()
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The policy fragment for `req`, as HuJSON with comments explaining each piece: `tagOwners`
/// for a tag approver, one ACL rule (source: the approver's nodes and the cluster CIDRs,
/// destination: the cluster CIDRs, every port), and `autoApprovers.routes` mapping each
/// cluster CIDR to the approver. Merged into an existing policy, its keys are added to the
/// same-named sections.
///
/// Errors: [`PolicyError::Requirements`] (see [`PolicyRequirements::validate`]).
pub fn render_fragment(req: &PolicyRequirements) -> Result<String, PolicyError> {
    req.validate()?;
    let v = req.version;
    let approver = req.approver_token();
    let cidrs = req.cidrs();
    let mut src = vec![approver.clone()];
    src.extend(cidrs.iter().cloned());
    let dst: Vec<String> = cidrs.iter().map(|c| format!("{c}:*")).collect();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// HeadCNI: the Headscale {v} policy pieces for cluster CIDR(s) {}.",
        cidrs.join(", ")
    );
    o.push_str("// Merge each section into your policy (keep your own entries).\n{\n");
    if let (Approver::Tag(t), Some(owner)) = (&req.approver, &req.tag_owner) {
        let owner = v.user_token(owner);
        o.push_str(
            "  // The approver tag must be owned: Headscale refuses a policy that uses a tag\n  \
             // missing from tagOwners. Nodes get the tag from their pre-auth key's aclTags.\n",
        );
        let _ = writeln!(o, "  \"tagOwners\": {{\n    {t:?}: [{owner:?}],\n  }},");
    }
    if v.filters_routes_by_acl() {
        o.push_str(
            "  // Headscale >= 0.26 shows a peer's pod route only to nodes an ACL lets reach it\n  \
             // (ReduceRoutes); the cluster CIDR as source lets pod-addressed packets through\n  \
             // the receiving node's packet filter.\n",
        );
    } else {
        o.push_str(
            "  // Headscale 0.25 shows peers an ACL lets reach (routes are not filtered); the\n  \
             // cluster CIDR as source lets pod-addressed packets through the packet filter.\n",
        );
    }
    let _ = writeln!(
        o,
        "  \"acls\": [\n    {{\"action\": \"accept\", \"src\": [{}], \"dst\": [{}]}},\n  ],",
        quoted(&src),
        quoted(&dst)
    );
    let who = match &req.approver {
        Approver::Tag(_) => "only nodes carrying the tag",
        Approver::User(_) => "only that user's untagged nodes",
    };
    let _ = writeln!(
        o,
        "  // A PodCIDR inside a cluster CIDR is approved when the node matches the approver\n  \
         // ({who})."
    );
    o.push_str("  \"autoApprovers\": {\n    \"routes\": {\n");
    for c in &cidrs {
        let _ = writeln!(o, "      {c:?}: [{approver:?}],");
    }
    o.push_str("    },\n  },\n}\n");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_hujson;
    use serde_json::json;

    fn req(v: PolicyVersion, a: Approver) -> PolicyRequirements {
        PolicyRequirements {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            version: v,
            approver: a,
            tag_owner: Some("admin".into()),
        }
    }

    #[test]
    fn tag_fragment_is_hujson_with_every_piece() {
        let t = render_fragment(&req(
            PolicyVersion::V0_29,
            Approver::Tag("tag:headcni".into()),
        ))
        .unwrap();
        assert!(t.contains("// "), "{t}");
        let v = parse_hujson(&t).unwrap();
        assert_eq!(v["tagOwners"], json!({"tag:headcni": ["admin@"]}));
        assert_eq!(
            v["acls"],
            json!([{"action": "accept", "src": ["tag:headcni", "10.244.0.0/16"],
                     "dst": ["10.244.0.0/16:*"]}])
        );
        assert_eq!(
            v["autoApprovers"],
            json!({"routes": {"10.244.0.0/16": ["tag:headcni"]}})
        );
    }

    #[test]
    fn user_form_follows_the_version() {
        let old =
            render_fragment(&req(PolicyVersion::V0_25, Approver::User("ops".into()))).unwrap();
        let v = parse_hujson(&old).unwrap();
        assert_eq!(
            v["autoApprovers"]["routes"]["10.244.0.0/16"],
            json!(["ops"])
        );
        assert!(v.get("tagOwners").is_none());
        let new =
            render_fragment(&req(PolicyVersion::V0_28, Approver::User("ops".into()))).unwrap();
        let v = parse_hujson(&new).unwrap();
        assert_eq!(
            v["autoApprovers"]["routes"]["10.244.0.0/16"],
            json!(["ops@"])
        );
    }

    #[test]
    fn bad_requirements_are_refused() {
        let mut r = req(PolicyVersion::V0_29, Approver::Tag("tag:1x".into()));
        assert!(render_fragment(&r).is_err());
        r.approver = Approver::Tag("tag:ok".into());
        r.tag_owner = None;
        assert!(render_fragment(&r).is_err());
        r.approver = Approver::User("a b".into());
        assert!(render_fragment(&r).is_err());
        r.approver = Approver::User("ops".into());
        r.cluster_cidrs.clear();
        assert!(render_fragment(&r).is_err());
    }
}
