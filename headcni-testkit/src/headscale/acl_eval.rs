//! Evaluating the fake's policy against its nodes, per Headscale generation: alias
//! resolution (`hscontrol/policy/v2/types.go` `Tag.resolve`, `Username.resolve`,
//! `Group.resolve`, `Asterix.resolve`; 0.25 `hscontrol/policy/acls.go` `ExpandAlias`),
//! route auto-approval (`hscontrol/policy/v2/policy.go` `NodeCanApproveRoute`; 0.25
//! `acls_types.go` `GetRouteApprovers`), peer visibility (`hscontrol/types/node.go`
//! `CanAccess`, `policy.ReduceNodes`) and the ACL filtering of each peer's routes
//! (`CanAccessRoute`, `policy.ReduceRoutes`, ≥ 0.26).
//!
//! Addresses are sets of prefixes; a rule's wire destination `*` is every address (Headscale
//! emits `"*"` and `util.ParseIPSet("*")` is `0.0.0.0/0` + `::/0`), while a source `*` is,
//! since 0.29, the CGNAT and ULA ranges plus every approved subnet route
//! (`srcIPsWithRoutes`).

use std::net::IpAddr;

use headcni_headscale::policy::PolicyVersion;
use ipnetwork::IpNetwork;

use super::acl::Policy;

/// What the policy needs to know about a node.
#[derive(Debug, Clone)]
pub(super) struct Facts {
    pub(super) id: u64,
    pub(super) user: String,
    pub(super) tags: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    /// Approved ∩ announced, exit routes excluded (`Node.SubnetRoutes`).
    pub(super) subnet: Vec<IpNetwork>,
}

type Set = Vec<IpNetwork>;

fn net(s: &str) -> IpNetwork {
    s.parse()
        .unwrap_or_else(|_| IpNetwork::from(IpAddr::from([0, 0, 0, 0])))
}

fn all() -> Set {
    vec![net("0.0.0.0/0"), net("::/0")]
}

fn host(ip: IpAddr) -> IpNetwork {
    IpNetwork::from(ip)
}

fn has_ip(set: &Set, ip: IpAddr) -> bool {
    set.iter().any(|p| p.contains(ip))
}

fn overlaps(set: &Set, q: &IpNetwork) -> bool {
    set.iter()
        .any(|p| p.is_ipv4() == q.is_ipv4() && (p.contains(q.network()) || q.contains(p.network())))
}

fn contains(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

/// A compiled rule: (sources, destinations).
pub(super) type Matcher = (Set, Set);

impl Policy {
    fn v2(&self) -> bool {
        self.version >= PolicyVersion::V0_26
    }

    fn user_nodes(&self, token: &str, nodes: &[Facts]) -> Set {
        let name = if self.v2() {
            if !token.contains('@') {
                return Vec::new();
            }
            token.strip_suffix('@').unwrap_or(token)
        } else {
            token
        };
        nodes
            .iter()
            .filter(|n| n.tags.is_empty() && n.user == name)
            .flat_map(|n| n.ips.iter().map(|i| host(*i)))
            .collect()
    }

    /// The addresses `alias` stands for; `src`: as a rule source or approver.
    pub(super) fn resolve(&self, alias: &str, nodes: &[Facts], src: bool) -> Set {
        if alias == "*" {
            if src && self.version.wildcard_is_tailnet() {
                let mut s = vec![net("100.64.0.0/10"), net("fd7a:115c:a1e0::/48")];
                s.extend(nodes.iter().flat_map(|n| n.subnet.iter().copied()));
                return s;
            }
            return all();
        }
        if let Ok(p) = alias.parse::<IpNetwork>() {
            return vec![p];
        }
        if let Some(p) = self.hosts.get(alias) {
            return vec![*p];
        }
        if alias.starts_with("tag:") {
            return nodes
                .iter()
                .filter(|n| n.tags.iter().any(|t| t == alias))
                .flat_map(|n| n.ips.iter().map(|i| host(*i)))
                .collect();
        }
        if alias.starts_with("group:") {
            return self
                .groups
                .get(alias)
                .into_iter()
                .flatten()
                .flat_map(|u| self.user_nodes(u, nodes))
                .collect();
        }
        match alias {
            "autogroup:member" => {
                return nodes
                    .iter()
                    .filter(|n| n.tags.is_empty())
                    .flat_map(|n| n.ips.iter().map(|i| host(*i)))
                    .collect();
            }
            "autogroup:tagged" => {
                return nodes
                    .iter()
                    .filter(|n| !n.tags.is_empty())
                    .flat_map(|n| n.ips.iter().map(|i| host(*i)))
                    .collect();
            }
            _ => {}
        }
        self.user_nodes(alias, nodes)
    }

    /// The rules as address sets; `None` when the policy has no `acls` (allow all).
    pub(super) fn matchers(&self, nodes: &[Facts]) -> Option<Vec<Matcher>> {
        let rules = self.acls.as_ref()?;
        Some(
            rules
                .iter()
                .map(|r| {
                    let s = r
                        .src
                        .iter()
                        .flat_map(|a| self.resolve(a, nodes, true))
                        .collect();
                    let d = r
                        .dst
                        .iter()
                        .filter(|a| a.as_str() != "autogroup:internet")
                        .flat_map(|a| self.resolve(a, nodes, false))
                        .collect();
                    (s, d)
                })
                .collect(),
        )
    }

    /// True when `node` may have the (non-exit) `route` auto-approved: an
    /// `autoApprovers.routes` prefix contains the route and one of its approvers resolves to
    /// one of the node's addresses.
    pub(super) fn can_approve(&self, node: &Facts, nodes: &[Facts], route: &IpNetwork) -> bool {
        self.auto_routes.iter().any(|(p, approvers)| {
            contains(p, route)
                && approvers.iter().any(|a| {
                    let set = self.resolve(a, nodes, true);
                    node.ips.iter().any(|ip| has_ip(&set, *ip))
                })
        })
    }

    fn can_access(&self, m: &[Matcher], a: &Facts, b: &Facts) -> bool {
        m.iter().any(|(s, d)| {
            let src = a.ips.iter().any(|i| has_ip(s, *i))
                || (self.version >= PolicyVersion::V0_29
                    && a.subnet.iter().any(|r| overlaps(s, r)));
            let dst = b.ips.iter().any(|i| has_ip(d, *i))
                || if self.v2() {
                    b.subnet.iter().any(|r| overlaps(d, r))
                } else {
                    // 0.25 `Node.CanAccess`: an enabled route counts by its network address.
                    b.subnet.iter().any(|r| has_ip(d, r.network()))
                };
            src && dst
        })
    }

    /// `viewer` and `peer` see each other (either may reach the other).
    pub(super) fn peer_visible(&self, m: Option<&[Matcher]>, viewer: &Facts, peer: &Facts) -> bool {
        m.is_none_or(|m| self.can_access(m, viewer, peer) || self.can_access(m, peer, viewer))
    }

    /// `viewer` gets a peer's `route` in its netmap (0.25: always).
    pub(super) fn route_visible(
        &self,
        m: Option<&[Matcher]>,
        viewer: &Facts,
        route: &IpNetwork,
    ) -> bool {
        let Some(m) = m else { return true };
        if !self.version.filters_routes_by_acl() {
            return true;
        }
        let v29 = self.version >= PolicyVersion::V0_29;
        m.iter().any(|(s, d)| {
            let me_src = viewer.ips.iter().any(|i| has_ip(s, *i));
            let me_dst = viewer.ips.iter().any(|i| has_ip(d, *i));
            (me_src && overlaps(d, route))
                || (overlaps(s, route) && me_dst)
                || (v29
                    && ((viewer.subnet.iter().any(|r| overlaps(s, r)) && overlaps(d, route))
                        || (overlaps(s, route) && viewer.subnet.iter().any(|r| overlaps(d, r)))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, user: &str, tags: &[&str], subnet: &[&str]) -> Facts {
        Facts {
            id,
            user: user.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ips: super::super::state::node_ips(id),
            subnet: subnet.iter().map(|s| net(s)).collect(),
        }
    }

    fn pol(v: PolicyVersion, text: &str) -> Policy {
        Policy::parse(text, v).unwrap()
    }

    const AA: &str = r#"{"tagOwners": {"tag:headcni": ["admin@"]}, "autoApprovers": {"routes":
        {"10.244.0.0/16": ["tag:headcni", "ops@"]}}}"#;

    #[test]
    fn tag_approves_only_tagged_nodes_and_user_only_untagged() {
        let p = pol(PolicyVersion::V0_29, AA);
        let tagged = node(1, "ops", &["tag:headcni"], &[]);
        let plain = node(2, "ops", &[], &[]);
        let other = node(3, "dev", &[], &[]);
        let other_tagged = node(4, "dev", &["tag:other"], &[]);
        let nodes = vec![
            tagged.clone(),
            plain.clone(),
            other.clone(),
            other_tagged.clone(),
        ];
        let r = net("10.244.1.0/24");
        assert!(p.can_approve(&tagged, &nodes, &r), "tag");
        assert!(p.can_approve(&plain, &nodes, &r), "user's untagged node");
        assert!(!p.can_approve(&other, &nodes, &r), "another user");
        assert!(!p.can_approve(&other_tagged, &nodes, &r));
        // containment, not overlap from below
        assert!(!p.can_approve(&tagged, &nodes, &net("10.0.0.0/8")));
        assert!(!p.can_approve(&tagged, &nodes, &net("10.245.0.0/24")));
        // a user-owned node that is tagged is not the user's
        let p = pol(
            PolicyVersion::V0_29,
            r#"{"tagOwners": {"tag:x": ["ops@"]}, "autoApprovers": {"routes": {"10.244.0.0/16": ["ops@"]}}}"#,
        );
        let t = node(5, "ops", &["tag:x"], &[]);
        assert!(!p.can_approve(&t, std::slice::from_ref(&t), &r));
    }

    #[test]
    fn user_form_per_version() {
        let n = node(1, "ops", &[], &[]);
        let r = net("10.244.1.0/24");
        let v1 = pol(
            PolicyVersion::V0_25,
            r#"{"autoApprovers": {"routes": {"10.244.0.0/16": ["ops"]}}}"#,
        );
        assert!(v1.can_approve(&n, std::slice::from_ref(&n), &r));
        let v1 = pol(
            PolicyVersion::V0_25,
            r#"{"autoApprovers": {"routes": {"10.244.0.0/16": ["ops@"]}}}"#,
        );
        assert!(
            !v1.can_approve(&n, std::slice::from_ref(&n), &r),
            "0.25 has no user ops@"
        );
        assert!(
            Policy::parse(
                r#"{"autoApprovers": {"routes": {"10.244.0.0/16": ["ops"]}}}"#,
                PolicyVersion::V0_26
            )
            .is_err()
        );
    }

    #[test]
    fn group_members_approve() {
        let p = pol(
            PolicyVersion::V0_28,
            r#"{"groups": {"group:k8s": ["ops@"]}, "autoApprovers": {"routes": {"10.244.0.0/16": ["group:k8s"]}}}"#,
        );
        let n = node(1, "ops", &[], &[]);
        assert!(p.can_approve(&n, std::slice::from_ref(&n), &net("10.244.1.0/24")));
    }

    #[test]
    fn routes_are_filtered_by_acl_since_0_26() {
        let a = node(1, "ops", &[], &["10.244.1.0/24"]);
        let b = node(2, "ops", &[], &["10.244.2.0/24"]);
        let nodes = vec![a.clone(), b.clone()];
        let only_nodes = r#"{"acls": [{"action": "accept", "src": ["ops@"], "dst": ["ops@:*"]}]}"#;
        let with_pods =
            r#"{"acls": [{"action": "accept", "src": ["ops@"], "dst": ["10.244.0.0/16:*"]}]}"#;
        let route = net("10.244.2.0/24");
        for v in [
            PolicyVersion::V0_26,
            PolicyVersion::V0_28,
            PolicyVersion::V0_29,
        ] {
            let p = pol(v, only_nodes);
            let m = p.matchers(&nodes);
            assert!(p.peer_visible(m.as_deref(), &a, &b));
            assert!(!p.route_visible(m.as_deref(), &a, &route), "{v}");
            let p = pol(v, with_pods);
            let m = p.matchers(&nodes);
            assert!(p.route_visible(m.as_deref(), &a, &route), "{v}");
        }
        let p = pol(PolicyVersion::V0_25, &only_nodes.replace("ops@", "ops"));
        let m = p.matchers(&nodes);
        assert!(
            p.route_visible(m.as_deref(), &a, &route),
            "0.25 does not filter routes"
        );
        // no acls key: allow all; an empty list: deny all
        let p = pol(PolicyVersion::V0_29, "{}");
        assert!(p.route_visible(p.matchers(&nodes).as_deref(), &a, &route));
        let p = pol(PolicyVersion::V0_29, r#"{"acls": []}"#);
        let m = p.matchers(&nodes);
        assert!(!p.route_visible(m.as_deref(), &a, &route));
        assert!(!p.peer_visible(m.as_deref(), &a, &b));
    }

    #[test]
    fn wildcard_source_is_the_tailnet_since_0_29() {
        let a = node(1, "ops", &[], &[]);
        let p = pol(
            PolicyVersion::V0_29,
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
        );
        let s = p.resolve("*", std::slice::from_ref(&a), true);
        assert!(
            !has_ip(&s, "10.244.1.5".parse().unwrap()),
            "not pod addresses"
        );
        assert!(has_ip(&s, "100.64.0.1".parse().unwrap()));
        let p = pol(
            PolicyVersion::V0_28,
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
        );
        assert!(has_ip(
            &p.resolve("*", &[a], true),
            "10.244.1.5".parse().unwrap()
        ));
    }

    #[test]
    fn invalid_policies_are_refused() {
        for (v, bad) in [
            (
                PolicyVersion::V0_29,
                r#"{"autoApprovers": {"routes": {"10.0.0.0/8": ["tag:x"]}}}"#,
            ),
            (
                PolicyVersion::V0_29,
                r#"{"acls": [{"action": "accept", "src": ["group:g"], "dst": ["*:*"]}]}"#,
            ),
            (
                PolicyVersion::V0_29,
                r#"{"acls": [{"action": "drop", "src": ["*"], "dst": ["*:*"]}]}"#,
            ),
            (
                PolicyVersion::V0_29,
                r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*"]}]}"#,
            ),
            (
                PolicyVersion::V0_29,
                r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:99999"]}]}"#,
            ),
            (PolicyVersion::V0_29, r#"{"bogus": 1}"#),
            (PolicyVersion::V0_28, r#"{"tagOwners": {"tag:1x": []}}"#),
            (PolicyVersion::V0_26, r#"{"tagOwners": {"tag:x": ["ops"]}}"#),
            (
                PolicyVersion::V0_29,
                r#"{"autoApprovers": {"routes": {"10.0.0.0/33": ["ops@"]}}}"#,
            ),
            (
                PolicyVersion::V0_29,
                r#"{"acls": [{"action": "accept", "src": ["nohost"], "dst": ["*:*"]}]}"#,
            ),
            (PolicyVersion::V0_25, "{"),
        ] {
            assert!(Policy::parse(bad, v).is_err(), "{v}: {bad}");
        }
        // HuJSON is accepted
        assert!(Policy::parse("{ // c\n \"acls\": [],\n}", PolicyVersion::V0_29).is_ok());
        // 0.25 ignores unknown fields
        assert!(Policy::parse(r#"{"bogus": 1}"#, PolicyVersion::V0_25).is_ok());
    }
}
