//! [`check_policy`]: what an operator's policy lacks for a HeadCNI cluster, one [`Finding`]
//! per missing piece.

use std::fmt;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use super::fragment::{Approver, PolicyRequirements};
use super::{PolicyError, PolicyVersion, parse_hujson};

/// One missing or wrong piece of a policy, with what Headscale does because of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The document is not a HuJSON object: Headscale refuses to load it.
    Invalid(String),
    /// The approver tag is not a key of `tagOwners`: Headscale refuses the policy
    /// (`ErrTagNotDefined`, `hscontrol/policy/v2/types.go` `validate`) and no node carries a
    /// tag nobody owns.
    TagNotOwned {
        /// The tag.
        tag: String,
    },
    /// The approver user is written in the other version's form (`ops` vs `ops@`): on 0.25 a
    /// token with `@` matches no user (`findUserFromToken`), since 0.26 one without `@` is a
    /// parse error (`Username.Validate`).
    UserForm {
        /// As written in the policy.
        found: String,
        /// As this version needs it.
        expected: String,
    },
    /// No `autoApprovers.routes` prefix containing the cluster CIDR lists the approver: the
    /// PodCIDR routes are never auto-approved.
    NoAutoApprover {
        /// The cluster CIDR.
        cidr: IpNetwork,
        /// The approver token expected.
        approver: String,
    },
    /// No `accept` ACL rule has the approver's nodes as source and a destination covering the
    /// cluster CIDR: since 0.26 peers do not see each other's pod routes (`ReduceRoutes`), on
    /// 0.25 nodes that are not otherwise allowed do not see each other at all.
    NoRouteAcl {
        /// The cluster CIDR.
        cidr: IpNetwork,
        /// The approver token expected as a source (or `*`, a group of the user, an
        /// autogroup).
        approver: String,
    },
    /// No `accept` ACL rule lets pod addresses (the cluster CIDR, or `*`) reach the cluster
    /// CIDR: the receiving node's packet filter drops pod-to-pod packets.
    NoPodSource {
        /// The cluster CIDR.
        cidr: IpNetwork,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Invalid(e) => write!(f, "Headscale would refuse this policy: {e}"),
            Finding::TagNotOwned { tag } => write!(
                f,
                "tagOwners has no {tag:?}: Headscale refuses a policy using an unowned tag, and no node can carry it"
            ),
            Finding::UserForm { found, expected } => write!(
                f,
                "user {found:?} is written for another Headscale version: this one needs {expected:?}"
            ),
            Finding::NoAutoApprover { cidr, approver } => write!(
                f,
                "autoApprovers.routes has no prefix containing {cidr} approved by {approver:?}: PodCIDR routes stay unapproved"
            ),
            Finding::NoRouteAcl { cidr, approver } => write!(
                f,
                "no accept rule from {approver:?} (or *) to {cidr}: peers do not get each other's pod routes"
            ),
            Finding::NoPodSource { cidr } => write!(
                f,
                "no accept rule from {cidr} (or *) to {cidr}: pod-to-pod packets are dropped by the receiving node"
            ),
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn contains(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

struct Doc<'a> {
    root: &'a Map<String, Value>,
    req: &'a PolicyRequirements,
}

impl Doc<'_> {
    /// A host alias (`hosts`) or a literal IP/prefix, as a prefix.
    fn prefix_of(&self, s: &str) -> Option<IpNetwork> {
        let lit = self
            .root
            .get("hosts")
            .and_then(|h| h.get(s))
            .and_then(Value::as_str)
            .unwrap_or(s);
        lit.parse::<IpNetwork>().ok()
    }

    fn group_has(&self, group: &str, token: &str) -> bool {
        strings(self.root.get("groups").and_then(|g| g.get(group))).contains(&token)
    }

    /// `alias` covers every node the approver matches.
    fn matches_approver(&self, alias: &str) -> bool {
        let token = self.req.approver_token();
        let v2 = self.req.version >= PolicyVersion::V0_26;
        alias == "*"
            || alias == token
            || (alias.starts_with("group:") && self.group_has(alias, &token))
            || match self.req.approver {
                Approver::Tag(_) => v2 && alias == "autogroup:tagged",
                Approver::User(_) => v2 && alias == "autogroup:member",
            }
    }

    /// `alias` (a source) covers every address of `cidr`.
    fn covers_source(&self, alias: &str, cidr: &IpNetwork) -> bool {
        alias == "*" || self.prefix_of(alias).is_some_and(|p| contains(&p, cidr))
    }

    /// `dst` (`host:ports`) covers some of `cidr` (Headscale matches by overlap).
    fn covers_dest(&self, dst: &str, cidr: &IpNetwork) -> bool {
        let host = dst.rsplit_once(':').map_or(dst, |(h, _)| h);
        host == "*"
            || self
                .prefix_of(host)
                .is_some_and(|p| contains(&p, cidr) || contains(cidr, &p))
    }

    fn acls(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.root
            .get("acls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .filter(|r| r.get("action").and_then(Value::as_str) == Some("accept"))
    }

    /// No `acls` key (or `null`) is allow-all in Headscale (`FilterAllowAll`); `[]` denies.
    fn rule_allows(&self, src_ok: impl Fn(&str) -> bool, cidr: &IpNetwork) -> bool {
        if self.root.get("acls").is_none_or(Value::is_null) {
            return true;
        }
        self.acls().any(|r| {
            strings(r.get("src")).into_iter().any(&src_ok)
                && strings(r.get("dst"))
                    .into_iter()
                    .any(|d| self.covers_dest(d, cidr))
        })
    }

    fn approvers_for(&self, cidr: &IpNetwork) -> Vec<&str> {
        self.root
            .get("autoApprovers")
            .and_then(|a| a.get("routes"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.parse::<IpNetwork>().is_ok_and(|p| contains(&p, cidr)))
            .flat_map(|(_, v)| strings(Some(v)))
            .collect()
    }
}

/// Checks `policy` (HuJSON text) against `req`: the approver tag owned, every cluster CIDR
/// auto-approved for the approver (user written in this version's form), an ACL rule from the
/// approver's nodes to each cluster CIDR, and one from each cluster CIDR to itself. An empty
/// result means nothing HeadCNI needs is missing (the rest of the policy is not judged).
///
/// Errors: [`PolicyError::Requirements`] for unusable requirements; a document that does not
/// parse is a [`Finding::Invalid`], not an error.
pub fn check_policy(policy: &str, req: &PolicyRequirements) -> Result<Vec<Finding>, PolicyError> {
    req.validate()?;
    let value = match parse_hujson(policy) {
        Ok(v) => v,
        Err(e) => return Ok(vec![Finding::Invalid(e.to_string())]),
    };
    let Some(root) = value.as_object() else {
        return Ok(vec![Finding::Invalid("not a JSON object".into())]);
    };
    let doc = Doc { root, req };
    let mut out = Vec::new();
    let token = req.approver_token();
    if let Approver::Tag(t) = &req.approver
        && root
            .get("tagOwners")
            .and_then(|o| o.get(t.as_str()))
            .is_none()
    {
        out.push(Finding::TagNotOwned { tag: t.clone() });
    }
    for cidr in &req.cluster_cidrs {
        let approvers = doc.approvers_for(cidr);
        let approved = approvers
            .iter()
            .any(|a| *a == token || (a.starts_with("group:") && doc.group_has(a, &token)));
        if !approved {
            let other_form = match &req.approver {
                Approver::User(u) if !u.contains('@') => {
                    let other = if token.ends_with('@') {
                        u.clone()
                    } else {
                        format!("{u}@")
                    };
                    approvers.iter().any(|a| *a == other).then_some(other)
                }
                _ => None,
            };
            match other_form {
                Some(found) => out.push(Finding::UserForm {
                    found,
                    expected: token.clone(),
                }),
                None => out.push(Finding::NoAutoApprover {
                    cidr: *cidr,
                    approver: token.clone(),
                }),
            }
        }
        if !doc.rule_allows(|s| doc.matches_approver(s), cidr) {
            out.push(Finding::NoRouteAcl {
                cidr: *cidr,
                approver: token.clone(),
            });
        }
        if !doc.rule_allows(|s| doc.covers_source(s, cidr), cidr) {
            out.push(Finding::NoPodSource { cidr: *cidr });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::render_fragment;

    fn req(v: PolicyVersion, a: Approver) -> PolicyRequirements {
        PolicyRequirements {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            version: v,
            approver: a,
            tag_owner: Some("admin".into()),
        }
    }

    fn tag() -> Approver {
        Approver::Tag("tag:headcni".into())
    }

    #[test]
    fn the_fragment_passes_its_own_check() {
        for v in PolicyVersion::ALL {
            for a in [tag(), Approver::User("ops".into())] {
                let r = req(v, a);
                let f = render_fragment(&r).unwrap();
                assert_eq!(check_policy(&f, &r).unwrap(), vec![], "{v} {f}");
            }
        }
    }

    #[test]
    fn each_missing_piece_is_reported() {
        let r = req(PolicyVersion::V0_29, tag());
        let cidr: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let full = serde_json::json!({
            "tagOwners": {"tag:headcni": ["admin@"]},
            "acls": [{"action": "accept", "src": ["tag:headcni", "10.244.0.0/16"],
                      "dst": ["10.244.0.0/16:*"]}],
            "autoApprovers": {"routes": {"10.244.0.0/16": ["tag:headcni"]}},
        });
        let check = |v: &serde_json::Value| check_policy(&v.to_string(), &r).unwrap();
        assert_eq!(check(&full), vec![]);
        let mut p = full.clone();
        p.as_object_mut().unwrap().remove("tagOwners");
        assert_eq!(
            check(&p),
            vec![Finding::TagNotOwned {
                tag: "tag:headcni".into()
            }]
        );
        let mut p = full.clone();
        p["autoApprovers"]["routes"] = serde_json::json!({"10.244.1.0/24": ["tag:headcni"]});
        assert_eq!(
            check(&p),
            vec![Finding::NoAutoApprover {
                cidr,
                approver: "tag:headcni".into()
            }]
        );
        let mut p = full.clone();
        p["acls"][0]["src"] = serde_json::json!(["10.244.0.0/16"]);
        assert_eq!(
            check(&p),
            vec![Finding::NoRouteAcl {
                cidr,
                approver: "tag:headcni".into()
            }]
        );
        let mut p = full.clone();
        p["acls"][0]["src"] = serde_json::json!(["tag:headcni"]);
        assert_eq!(check(&p), vec![Finding::NoPodSource { cidr }]);
        let mut p = full.clone();
        p["acls"][0]["dst"] = serde_json::json!(["tag:headcni:*"]);
        assert_eq!(
            check(&p),
            vec![
                Finding::NoRouteAcl {
                    cidr,
                    approver: "tag:headcni".into()
                },
                Finding::NoPodSource { cidr }
            ]
        );
        assert!(matches!(
            check_policy("{", &r).unwrap().as_slice(),
            [Finding::Invalid(_)]
        ));
        // `*` to `*` covers everything HeadCNI needs except the approver
        let open = r#"{"tagOwners": {"tag:headcni": []}, "acls": [{"action": "accept",
            "src": ["*"], "dst": ["*:*"]}], "autoApprovers": {"routes":
            {"10.0.0.0/8": ["tag:headcni"]}}}"#;
        assert_eq!(check_policy(open, &r).unwrap(), vec![]);
        // no `acls` key allows everything; an empty list nothing
        let mut p = full.clone();
        p.as_object_mut().unwrap().remove("acls");
        assert_eq!(check(&p), vec![]);
        p["acls"] = serde_json::json!([]);
        assert_eq!(check(&p).len(), 2);
    }

    #[test]
    fn user_in_the_wrong_form_is_named() {
        let r = req(PolicyVersion::V0_25, Approver::User("ops".into()));
        let p = r#"{"acls": [{"action": "accept", "src": ["ops", "10.244.0.0/16"],
            "dst": ["10.244.0.0/16:*"]}], "autoApprovers": {"routes":
            {"10.244.0.0/16": ["ops@"]}}}"#;
        assert_eq!(
            check_policy(p, &r).unwrap(),
            vec![Finding::UserForm {
                found: "ops@".into(),
                expected: "ops".into()
            }]
        );
        let r = req(PolicyVersion::V0_26, Approver::User("ops".into()));
        let p = p.replace("\"ops\"", "\"ops@\"");
        assert_eq!(check_policy(&p, &r).unwrap(), vec![]);
    }
}
