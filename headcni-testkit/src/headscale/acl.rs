//! The fake's Headscale policy document: parsed and validated as strictly as the server
//! (Headscale `hscontrol/policy/v2/types.go` `unmarshalPolicy` and `validate` for ≥ 0.26;
//! `hscontrol/policy/acls.go` `LoadACLPolicyFromBytes` and `CompileFilterRules` for 0.25).
//! Evaluation is in `acl_eval`.

use std::collections::BTreeMap;

use headcni_headscale::policy::{PolicyVersion, parse_hujson};
use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

/// A policy the fake refuses, with Headscale's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyRefused(pub String);

/// One ACL rule: sources and destination hosts (ports are validated, not modelled: route and
/// peer visibility do not depend on them).
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) src: Vec<String>,
    pub(super) dst: Vec<String>,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    pub(super) version: PolicyVersion,
    pub(super) groups: BTreeMap<String, Vec<String>>,
    pub(super) hosts: BTreeMap<String, IpNetwork>,
    pub(super) tag_owners: BTreeMap<String, Vec<String>>,
    /// `None`: no `acls` key (Headscale: allow all, `FilterAllowAll`); `Some([])` denies all.
    pub(super) acls: Option<Vec<Rule>>,
    pub(super) auto_routes: Vec<(IpNetwork, Vec<String>)>,
}

fn refuse<T>(m: impl Into<String>) -> Result<T, PolicyRefused> {
    Err(PolicyRefused(m.into()))
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, PolicyRefused> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|x| match x.as_str() {
                Some(s) => Ok(s.to_string()),
                None => refuse(format!("{what}: expected a string, got {x}")),
            })
            .collect(),
        other => refuse(format!("{what}: expected an array, got {other}")),
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<Option<&'a Map<String, Value>>, PolicyRefused> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => refuse(format!("{what}: expected an object, got {other}")),
    }
}

/// Keys of the top-level object per generation (`type Policy struct` json tags).
fn known_keys(v: PolicyVersion) -> &'static [&'static str] {
    match v {
        PolicyVersion::V0_25 => &[
            "groups",
            "hosts",
            "tagOwners",
            "acls",
            "tests",
            "autoApprovers",
            "ssh",
        ],
        PolicyVersion::V0_26 | PolicyVersion::V0_28 => &[
            "groups",
            "hosts",
            "tagOwners",
            "acls",
            "autoApprovers",
            "ssh",
        ],
        PolicyVersion::V0_29 | PolicyVersion::Main => &[
            "groups",
            "hosts",
            "tagOwners",
            "acls",
            "grants",
            "nodeAttrs",
            "autoApprovers",
            "ssh",
            "tests",
            "sshTests",
            "randomizeClientPort",
        ],
    }
}

/// v2 `Tag.Validate`: `tag:` then an ASCII letter.
fn valid_tag(t: &str) -> bool {
    t.strip_prefix("tag:")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Ports of a destination: `*`, or a comma list of `N` / `N-M` (v2 `parsePortRange`).
fn valid_ports(p: &str) -> bool {
    p == "*"
        || p.split(',').all(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= b)
        })
}

impl Policy {
    /// Parses and validates `text` as Headscale `version` would.
    ///
    /// Errors: what Headscale reports (HuJSON syntax, unknown fields ≥ 0.26, undefined tags,
    /// groups or hosts, user names without `@` ≥ 0.26, non-`accept` actions, bad prefixes
    /// and ports, approvers that cannot approve).
    pub(super) fn parse(text: &str, version: PolicyVersion) -> Result<Policy, PolicyRefused> {
        let v2 = version >= PolicyVersion::V0_26;
        let doc = parse_hujson(text).map_err(|e| PolicyRefused(e.to_string()))?;
        let Some(root) = object(&doc, "policy")? else {
            return refuse("policy: expected an object");
        };
        if version.rejects_unknown_fields()
            && let Some(k) = root
                .keys()
                .find(|k| !known_keys(version).contains(&k.as_str()))
        {
            return refuse(format!("unknown field {k:?}"));
        }
        let mut p = Policy {
            version,
            groups: BTreeMap::new(),
            hosts: BTreeMap::new(),
            tag_owners: BTreeMap::new(),
            acls: None,
            auto_routes: Vec::new(),
        };
        for (g, members) in object(root.get("groups").unwrap_or(&Value::Null), "groups")?
            .into_iter()
            .flatten()
        {
            if !g.starts_with("group:") {
                return refuse(format!("group {g:?} must start with \"group:\""));
            }
            let m = string_list(members, g)?;
            if v2 && let Some(u) = m.iter().find(|u| !u.contains('@')) {
                return refuse(format!("invalid username, got: {u:?} (in {g})"));
            }
            p.groups.insert(g.clone(), m);
        }
        for (h, addr) in object(root.get("hosts").unwrap_or(&Value::Null), "hosts")?
            .into_iter()
            .flatten()
        {
            let Some(a) = addr.as_str().and_then(|s| s.parse::<IpNetwork>().ok()) else {
                return refuse(format!("hosts[{h:?}]: not an IP or prefix: {addr}"));
            };
            p.hosts.insert(h.clone(), a);
        }
        for (t, owners) in object(root.get("tagOwners").unwrap_or(&Value::Null), "tagOwners")?
            .into_iter()
            .flatten()
        {
            if !valid_tag(t) {
                return refuse(format!("tagOwners[{t:?}]: tag must be tag:<letter>…"));
            }
            p.tag_owners.insert(t.clone(), string_list(owners, t)?);
        }
        for (t, owners) in &p.tag_owners {
            for o in owners {
                let ok = if o.starts_with("group:") {
                    p.groups.contains_key(o)
                } else if o.starts_with("tag:") {
                    version >= PolicyVersion::V0_28 && p.tag_owners.contains_key(o)
                } else {
                    !v2 || o.contains('@')
                };
                if !ok {
                    return refuse(format!("tagOwners[{t:?}]: invalid owner {o:?}"));
                }
            }
        }
        if let Some(acls) = root.get("acls").filter(|a| !a.is_null()) {
            let Value::Array(list) = acls else {
                return refuse("acls: expected an array");
            };
            let mut rules = Vec::new();
            for (i, r) in list.iter().enumerate() {
                rules.push(p.rule(i, r)?);
            }
            p.acls = Some(rules);
        }
        let aa = object(
            root.get("autoApprovers").unwrap_or(&Value::Null),
            "autoApprovers",
        )?;
        if let Some(aa) = aa {
            if version.rejects_unknown_fields()
                && let Some(k) = aa.keys().find(|k| *k != "routes" && *k != "exitNode")
            {
                return refuse(format!("unknown field {k:?}"));
            }
            for (prefix, approvers) in object(aa.get("routes").unwrap_or(&Value::Null), "routes")?
                .into_iter()
                .flatten()
            {
                let Ok(net) = prefix.parse::<IpNetwork>() else {
                    return refuse(format!("autoApprovers.routes: bad prefix {prefix:?}"));
                };
                let list = string_list(approvers, prefix)?;
                for a in &list {
                    p.check_approver(a)?;
                }
                p.auto_routes.push((net, list));
            }
            for a in string_list(aa.get("exitNode").unwrap_or(&Value::Null), "exitNode")? {
                p.check_approver(&a)?;
            }
        }
        Ok(p)
    }

    fn rule(&self, i: usize, r: &Value) -> Result<Rule, PolicyRefused> {
        let Some(o) = object(r, "acls[]")? else {
            return refuse(format!("acls[{i}]: expected an object"));
        };
        if self.version.rejects_unknown_fields()
            && let Some(k) = o
                .keys()
                .find(|k| !["action", "proto", "src", "dst"].contains(&k.as_str()))
        {
            return refuse(format!("unknown field {k:?}"));
        }
        let action = o.get("action").and_then(Value::as_str).unwrap_or_default();
        if action != "accept" {
            return refuse(format!("acls[{i}]: action {action:?} is not \"accept\""));
        }
        let src = string_list(o.get("src").unwrap_or(&Value::Null), "src")?;
        for s in &src {
            self.check_alias(s, "src")?;
        }
        let mut dst = Vec::new();
        for d in string_list(o.get("dst").unwrap_or(&Value::Null), "dst")? {
            let Some((host, ports)) = d.rsplit_once(':') else {
                return refuse(format!("acls[{i}]: destination {d:?} has no ports"));
            };
            if !valid_ports(ports) {
                return refuse(format!("acls[{i}]: bad ports in {d:?}"));
            }
            self.check_alias(host, "dst")?;
            dst.push(host.to_string());
        }
        Ok(Rule { src, dst })
    }

    fn check_alias(&self, a: &str, side: &str) -> Result<(), PolicyRefused> {
        let v2 = self.version >= PolicyVersion::V0_26;
        if a == "*" || a.parse::<IpNetwork>().is_ok() {
            return Ok(());
        }
        if a.starts_with("tag:") {
            if !self.tag_owners.contains_key(a) {
                return refuse(format!("{side}=tag not defined in policy: {a:?}"));
            }
            return Ok(());
        }
        if a.starts_with("group:") {
            if !self.groups.contains_key(a) {
                return refuse(format!("{side}=group not defined in policy: {a:?}"));
            }
            return Ok(());
        }
        if let Some(ag) = a.strip_prefix("autogroup:") {
            let ok = match ag {
                "member" | "tagged" => v2,
                "internet" => side == "dst",
                _ => false,
            };
            if !ok {
                return refuse(format!("{side}: autogroup {a:?} not supported here"));
            }
            return Ok(());
        }
        if a.contains('@') || self.hosts.contains_key(a) || !v2 {
            // v1 tries users, hosts, addresses in turn and warns when nothing matches.
            return Ok(());
        }
        refuse(format!("{side}: host not defined in policy: {a:?}"))
    }

    fn check_approver(&self, a: &str) -> Result<(), PolicyRefused> {
        if self.version < PolicyVersion::V0_26 {
            return Ok(());
        }
        if a.starts_with("tag:") || a.starts_with("group:") || a.contains('@') {
            return self.check_alias(a, "autoApprovers");
        }
        refuse(format!("autoApprovers: {a:?} cannot be an auto approver"))
    }
}
