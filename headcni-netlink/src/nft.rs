//! HeadCNI's own nftables table: install, compare, remove.
//!
//! The table content comes from [`headcni_core::node::masq::plan`]; this module turns it into
//! one `nft -j -f -` transaction, built with the [`nftables`] crate's typed JSON schema, and
//! runs the `nft` binary (Debian `nftables`, found on `PATH`). Only the table named in the
//! plan (family `inet`) is ever listed, created or deleted; other tables are never read or
//! written.
//!
//! `nft` is spawned here rather than through `nftables::helper::apply_ruleset`, because
//! that helper leaves `nft`'s stderr attached to the caller's (the daemon's log) and reports
//! a rejected batch without nft's reason; here stdout and stderr are both captured and the
//! reason ends up in [`NftError::Nft`].
//!
//! # Network namespace
//! Every function runs `nft` as a child process, which inherits the network namespace of
//! the **calling thread**. Call them on a thread of the namespace to act on (the daemon's
//! threads are all in the node's namespace; tests use
//! [`crate::netns::run_in_netns`]). They block for the duration of one or two `nft` runs
//! (a few milliseconds); async callers use `tokio::task::spawn_blocking` from a runtime whose
//! threads live in that namespace.
//!
//! # Atomic replace and no churn
//! [`apply`] first lists the live table and compares it with the plan after canonicalising
//! both (handles and the metainfo object removed, `flags` as sorted lists, set elements
//! sorted). When they are equal nothing is written and it returns `Ok(false)`, so a periodic
//! reconcile does not churn the kernel's rule set. Otherwise it sends one batch
//! `add table; delete table; add table; add set...; add chain; add rule...`, which nftables
//! applies as a single transaction: packets see either the old or the new table, never an
//! empty or half-built one, and a failing batch leaves the old table in place.
//! Source: libnftables-json(5), nft(8) ("transactions").

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use headcni_core::node::masq::{self, AddrFamily, MasqError, MasqueradePlan};
use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{self, NfListObject, Nftables};
use nftables::stmt::{Match, NAT, NATFlag, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

/// Errors of the nftables operations.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The table name is not acceptable (see
    /// [`headcni_core::node::masq::validate_table_name`]).
    #[error(transparent)]
    Name(#[from] MasqError),
    /// `nft` could not be run (not installed: Debian package `nftables`), failed (with its
    /// stderr, e.g. `Operation not permitted` without `CAP_NET_ADMIN`), or printed output
    /// that is not the JSON nftables documents.
    #[error("nft {op}: {reason}")]
    Nft {
        /// What was being done, e.g. `list table inet headcni`.
        op: String,
        /// The failure, with `nft`'s stderr when it ran.
        reason: String,
    },
}

/// The `nft` executable, looked up on `PATH`.
const NFT: &str = "nft";

/// Why a run of `nft` failed.
enum RunError {
    /// `nft` ran and exited non-zero; its message (stderr, else stdout), trimmed.
    Failed(String),
    /// `nft` could not be run or its output was not UTF-8.
    Spawn(String),
}

impl RunError {
    fn into_nft_error(self, op: impl Into<String>) -> NftError {
        let reason = match self {
            RunError::Failed(msg) => format!("nft failed: {msg}"),
            RunError::Spawn(msg) => msg,
        };
        NftError::Nft {
            op: op.into(),
            reason,
        }
    }
}

/// Runs `nft <args>` (with `input` on stdin when given) in the calling thread's network
/// namespace and returns its stdout. stdout and stderr are captured.
fn run_nft(args: &[&str], input: Option<&str>) -> Result<String, RunError> {
    let mut cmd = Command::new(NFT);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| RunError::Spawn(format!("cannot run {NFT} (package nftables): {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // nft reads its whole input before it writes anything, so writing first cannot
        // deadlock on a full stdout pipe.
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| RunError::Spawn(format!("write to {NFT} stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RunError::Spawn(format!("wait for {NFT}: {e}")))?;
    let stdout = String::from_utf8(out.stdout)
        .map_err(|e| RunError::Spawn(format!("{NFT} output is not UTF-8: {e}")))?;
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let msg = if stderr.trim().is_empty() {
        stdout.trim().to_owned()
    } else {
        stderr.trim().to_owned()
    };
    Err(RunError::Failed(if msg.is_empty() {
        out.status.to_string()
    } else {
        msg
    }))
}

/// Sends `doc` to `nft -j -f -` as one transaction.
fn run_batch(doc: &Nftables<'_>, op: &str) -> Result<(), NftError> {
    let text = serde_json::to_string(doc).map_err(|e| NftError::Nft {
        op: op.to_owned(),
        reason: format!("serialize batch: {e}"),
    })?;
    run_nft(&["-j", "-f", "-"], Some(&text))
        .map(|_| ())
        .map_err(|e| e.into_nft_error(op))
}

/// Runs `nft -j <args>` and parses the JSON document it prints.
fn run_json(args: &[&str], op: &str) -> Result<Value, RunError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let raw = run_nft(&full, None)?;
    serde_json::from_str(&raw).map_err(|e| RunError::Spawn(format!("invalid JSON from {op}: {e}")))
}

fn family_set_type(f: AddrFamily) -> schema::SetType {
    match f {
        AddrFamily::Ipv4 => schema::SetType::Ipv4Addr,
        AddrFamily::Ipv6 => schema::SetType::Ipv6Addr,
    }
}

/// A set element as nftables lists it: a host prefix as the bare address, otherwise a
/// prefix expression.
fn element(net: &IpNetwork) -> Expression<'static> {
    let host_len = match net {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    };
    let addr = Expression::String(Cow::Owned(net.network().to_string()));
    if net.prefix() == host_len {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: u32::from(net.prefix()),
        }))
    }
}

fn payload(family: AddrFamily, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(family.nft_protocol()),
            field: Cow::Borrowed(field),
        },
    )))
}

fn table_obj(name: &str) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: NfFamily::INet,
        name: Cow::Owned(name.to_owned()),
        handle: None,
    })
}

/// The table's content (sets, chain, rules) as nftables list objects, in the order
/// `nft list table` prints them.
fn content(plan: &MasqueradePlan) -> Vec<NfListObject<'static>> {
    let table = Cow::<'static, str>::Owned(plan.table.clone());
    let mut out = Vec::new();
    for set in &plan.sets {
        out.push(NfListObject::Set(Box::new(schema::Set {
            family: NfFamily::INet,
            table: table.clone(),
            name: Cow::Owned(set.name.clone()),
            handle: None,
            set_type: schema::SetTypeValue::Single(family_set_type(set.family)),
            policy: None,
            flags: Some(HashSet::from([schema::SetFlag::Interval])),
            elem: Some(Cow::Owned(set.elements.iter().map(element).collect())),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
    }
    out.push(NfListObject::Chain(schema::Chain {
        family: NfFamily::INet,
        table: table.clone(),
        name: Cow::Owned(plan.chain.name.clone()),
        newname: None,
        handle: None,
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(plan.chain.priority),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }));
    for rule in &plan.chain.rules {
        let mut expr = vec![
            Statement::Match(Match {
                left: payload(rule.family, "saddr"),
                right: Expression::String(Cow::Owned(format!("@{}", rule.source_set))),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: payload(rule.family, "daddr"),
                right: Expression::String(Cow::Owned(format!("@{}", rule.exempt_set))),
                op: Operator::NEQ,
            }),
        ];
        expr.push(Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: None,
            flags: rule
                .fully_random
                .then(|| HashSet::from([NATFlag::FullyRandom])),
        })));
        out.push(NfListObject::Rule(schema::Rule {
            family: NfFamily::INet,
            table: table.clone(),
            chain: Cow::Owned(plan.chain.name.clone()),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: Some(Cow::Owned(rule.comment.clone())),
        }));
    }
    out
}

/// The transaction [`apply`] sends: `add table`, `delete table` (the `add` before makes the
/// delete succeed when the table is absent), `add table`, then the sets, the chain and the
/// rules.
fn replace_batch(plan: &MasqueradePlan) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table_obj(&plan.table));
    batch.delete(table_obj(&plan.table));
    batch.add(table_obj(&plan.table));
    for obj in content(plan) {
        batch.add(obj);
    }
    batch.to_nftables()
}

/// The JSON document [`apply`] feeds to `nft -j -f -` for `plan` when the live table
/// differs (shape: `{"nftables": [{"add": {"table": ...}}, {"delete": ...}, ...]}`).
/// For logs, docs and tests.
///
/// Errors: [`NftError::Name`] if the plan's table name is invalid.
pub fn batch_json(plan: &MasqueradePlan) -> Result<Value, NftError> {
    masq::validate_table_name(&plan.table)?;
    serde_json::to_value(replace_batch(plan)).map_err(|e| NftError::Nft {
        op: "serialize batch".to_owned(),
        reason: e.to_string(),
    })
}

/// The table as nftables lists it, canonicalised: what [`apply`] compares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Canonical {
    tables: Vec<Value>,
    sets: BTreeMap<String, Value>,
    chains: BTreeMap<String, Value>,
    /// Rules per chain, in chain order.
    rules: BTreeMap<String, Vec<Value>>,
    other: Vec<Value>,
}

/// Recursively removes `handle` keys, turns a `flags` string into a one-element list and
/// sorts `flags` lists and set `elem` lists, so the plan's objects and `nft -j list`'s
/// output compare equal when the kernel holds the same table.
fn canon_value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            if let Some(flags) = map.get_mut("flags") {
                if let Value::String(s) = flags {
                    *flags = Value::Array(vec![Value::String(std::mem::take(s))]);
                }
                if let Value::Array(items) = flags {
                    items.sort_by_key(|a| a.to_string());
                }
            }
            if let Some(Value::Array(items)) = map.get_mut("elem") {
                items.sort_by_key(|a| a.to_string());
            }
            for (_, child) in map.iter_mut() {
                canon_value(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canon_value),
        _ => {}
    }
}

fn canonical<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Canonical {
    let mut c = Canonical::default();
    for obj in objects {
        let Some((kind, body)) = obj
            .as_object()
            .and_then(|m| if m.len() == 1 { m.iter().next() } else { None })
        else {
            c.other.push(obj.clone());
            continue;
        };
        let mut body = body.clone();
        canon_value(&mut body);
        let name = |b: &Value, key: &str| {
            b.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match kind.as_str() {
            "metainfo" => {}
            "table" => c.tables.push(body),
            "set" => {
                c.sets.insert(name(&body, "name"), body);
            }
            "chain" => {
                c.chains.insert(name(&body, "name"), body);
            }
            "rule" => c.rules.entry(name(&body, "chain")).or_default().push(body),
            _ => c.other.push(serde_json::json!({ kind: body })),
        }
    }
    c
}

/// What the live table must look like for `plan`, canonicalised.
fn expected(plan: &MasqueradePlan) -> Result<Canonical, NftError> {
    let mut objects = vec![table_obj(&plan.table)];
    objects.extend(content(plan));
    let values = objects
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|e| NftError::Nft {
            op: "serialize plan".to_owned(),
            reason: e.to_string(),
        })?;
    Ok(canonical(&values))
}

/// Whether `nft -j list tables inet` shows a table called `table`.
fn table_exists(table: &str) -> Result<bool, NftError> {
    let op = "list tables inet";
    let doc =
        run_json(&["list", "tables", masq::TABLE_FAMILY], op).map_err(|e| e.into_nft_error(op))?;
    Ok(objects(&doc).iter().any(|o| {
        o.get("table").is_some_and(|t| {
            t.get("family").and_then(Value::as_str) == Some(masq::TABLE_FAMILY)
                && t.get("name").and_then(Value::as_str) == Some(table)
        })
    }))
}

/// The `nftables` array of an nft JSON document (empty if missing).
fn objects(doc: &Value) -> &[Value] {
    doc.get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The live table `inet <table>` as `nft -j list table inet <table>` prints it (a document
/// `{"nftables": [{"metainfo": ...}, {"table": ...}, {"set": ...}, {"chain": ...},
/// {"rule": ...}]}`), or `None` when the calling thread's network namespace has no such
/// table.
///
/// Errors: [`NftError::Name`] for an invalid name; [`NftError::Nft`] if `nft` is missing,
/// fails for another reason than the table's absence (e.g. `EPERM`) or prints invalid JSON.
pub fn list(table: &str) -> Result<Option<Value>, NftError> {
    masq::validate_table_name(table)?;
    let op = format!("list table {} {table}", masq::TABLE_FAMILY);
    match run_json(&["list", "table", masq::TABLE_FAMILY, table], &op) {
        Ok(doc) => Ok(Some(doc)),
        // nft reports a missing table as a failure with a localised strerror(ENOENT); ask
        // the table list instead of parsing that message.
        Err(e @ RunError::Failed(_)) => match table_exists(table) {
            Ok(false) => Ok(None),
            Ok(true) | Err(_) => Err(e.into_nft_error(op)),
        },
        Err(e) => Err(e.into_nft_error(op)),
    }
}

/// Whether the live table `inet <plan.table>` already equals `plan` (the comparison of
/// [`apply`]; one `nft -j list table`, nothing written). `Ok(false)` when the table is
/// missing or differs. Acts in the calling thread's network namespace.
///
/// Errors: as [`list`].
pub fn in_place(plan: &MasqueradePlan) -> Result<bool, NftError> {
    masq::validate_table_name(&plan.table)?;
    let want = expected(plan)?;
    Ok(list(&plan.table)?.is_some_and(|live| canonical(objects(&live)) == want))
}

/// Makes the live table `inet <plan.table>` equal to `plan`: `Ok(false)` without writing
/// anything when it already is (see the module docs for the comparison), otherwise one
/// atomic `nft -j -f -` transaction that replaces the table (created if absent) and
/// `Ok(true)`. Acts in the calling thread's network namespace; other tables are untouched.
///
/// Errors: [`NftError::Name`] for an invalid table name; [`NftError::Nft`] if `nft` cannot
/// be run or rejects the batch (the previous table, if any, then stays as it was).
pub fn apply(plan: &MasqueradePlan) -> Result<bool, NftError> {
    masq::validate_table_name(&plan.table)?;
    let want = expected(plan)?;
    if let Some(live) = list(&plan.table)?
        && canonical(objects(&live)) == want
    {
        return Ok(false);
    }
    run_batch(
        &replace_batch(plan),
        &format!("replace table {} {}", masq::TABLE_FAMILY, plan.table),
    )?;
    Ok(true)
}

/// Deletes the table `inet <table>` (uninstall): `Ok(true)` if it existed, `Ok(false)` if
/// not. The delete is sent as `add table; delete table` in one transaction, so a table that
/// disappears concurrently is not an error. Acts in the calling thread's network namespace;
/// other tables are untouched.
///
/// Errors: [`NftError::Name`] for an invalid name; [`NftError::Nft`] if `nft` cannot be run
/// or fails.
pub fn remove(table: &str) -> Result<bool, NftError> {
    masq::validate_table_name(table)?;
    let existed = table_exists(table)?;
    if !existed {
        return Ok(false);
    }
    let mut batch = Batch::new();
    batch.add(table_obj(table));
    batch.delete(table_obj(table));
    run_batch(
        &batch.to_nftables(),
        &format!("delete table {} {table}", masq::TABLE_FAMILY),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::node::masq::{MasqueradeSpec, plan};

    fn test_plan() -> MasqueradePlan {
        let mut spec = MasqueradeSpec::new(
            vec!["10.244.1.0/24".parse().unwrap()],
            vec!["10.244.0.0/16".parse().unwrap()],
        );
        spec.extra_no_masq = vec!["192.0.2.7/32".parse().unwrap()];
        plan(&spec).unwrap()
    }

    #[test]
    fn batch_snapshot() {
        let v = batch_json(&test_plan()).unwrap();
        let expected = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "headcni"}}},
            {"delete": {"table": {"family": "inet", "name": "headcni"}}},
            {"add": {"table": {"family": "inet", "name": "headcni"}}},
            {"add": {"set": {"family": "inet", "table": "headcni", "name": "pod_v4",
                "type": "ipv4_addr", "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.244.1.0", "len": 24}}]}}},
            {"add": {"set": {"family": "inet", "table": "headcni", "name": "nomasq_v4",
                "type": "ipv4_addr", "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}},
                         {"prefix": {"addr": "100.64.0.0", "len": 10}},
                         "192.0.2.7",
                         {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}},
            {"add": {"chain": {"family": "inet", "table": "headcni", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"add": {"rule": {"family": "inet", "table": "headcni", "chain": "postrouting",
                "comment": masq::RULE_COMMENT,
                "expr": [
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pod_v4"}},
                    {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@nomasq_v4"}},
                    {"masquerade": {"flags": ["fully-random"]}}
                ]}}}
        ]});
        assert_eq!(v, expected);
    }

    #[test]
    fn canonical_form_ignores_handles_flag_shape_and_element_order() {
        let p = test_plan();
        // What nft 1.0.6 prints for this table (handles, metainfo, single flag as a string,
        // elements in its own order).
        let listed = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "headcni", "handle": 7}},
            {"set": {"family": "inet", "name": "pod_v4", "table": "headcni", "type": "ipv4_addr",
                "handle": 1, "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.244.1.0", "len": 24}}]}},
            {"set": {"family": "inet", "name": "nomasq_v4", "table": "headcni", "type": "ipv4_addr",
                "handle": 2, "flags": ["interval"],
                "elem": ["192.0.2.7",
                         {"prefix": {"addr": "224.0.0.0", "len": 4}},
                         {"prefix": {"addr": "10.244.0.0", "len": 16}},
                         {"prefix": {"addr": "100.64.0.0", "len": 10}}]}},
            {"chain": {"family": "inet", "table": "headcni", "name": "postrouting", "handle": 3,
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "headcni", "chain": "postrouting", "handle": 4,
                "comment": masq::RULE_COMMENT,
                "expr": [
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pod_v4"}},
                    {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@nomasq_v4"}},
                    {"masquerade": {"flags": "fully-random"}}
                ]}}
        ]});
        assert_eq!(canonical(objects(&listed)), expected(&p).unwrap());

        // A different element, a missing rule or an extra rule is a difference.
        let mut changed = listed.clone();
        changed["nftables"][3]["set"]["elem"][0] = Value::String("192.0.2.8".into());
        assert_ne!(canonical(objects(&changed)), expected(&p).unwrap());
        let mut no_rule = listed.clone();
        no_rule["nftables"].as_array_mut().unwrap().pop();
        assert_ne!(canonical(objects(&no_rule)), expected(&p).unwrap());
        let mut extra = listed.clone();
        let rule = extra["nftables"][5].clone();
        extra["nftables"].as_array_mut().unwrap().push(rule);
        assert_ne!(canonical(objects(&extra)), expected(&p).unwrap());
    }

    #[test]
    fn invalid_names_are_rejected_before_running_nft() {
        for bad in ["", "x y", "a;flush ruleset", "-x"] {
            assert!(matches!(list(bad), Err(NftError::Name(_))), "{bad:?}");
            assert!(matches!(remove(bad), Err(NftError::Name(_))), "{bad:?}");
        }
        let mut p = test_plan();
        p.table = "bad name".into();
        assert!(matches!(apply(&p), Err(NftError::Name(_))));
        assert!(matches!(batch_json(&p), Err(NftError::Name(_))));
    }
}
