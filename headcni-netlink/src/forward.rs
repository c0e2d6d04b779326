//! HeadCNI's accept rules in the host's `filter FORWARD` chain, through whichever iptables
//! backend the host uses, and a check for other firewalls that would still drop pod traffic.
//!
//! The rule set is [`headcni_core::node::forward::ForwardRules`]; here it is read back with
//! `iptables -S` and written with one `iptables-restore --noflush` transaction per family,
//! only when it differs ([`ensure`]), and removed on uninstall ([`remove`]).
//!
//! # Which iptables
//! A host's rules live either in the legacy xtables (`iptables-legacy`) or in nftables'
//! compatibility tables (`iptables-nft`); writing to the other one has no effect on the
//! rules that decide. [`detect_backend`] decides as the Kubernetes iptables wrapper does
//! (kubernetes-sigs/iptables-wrappers `iptables-wrapper-installer.sh`): the backend holding
//! kubelet's/kube-proxy's hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`), else the
//! one with more rules, nft on a tie.
//!
//! # Network namespace, time and size
//! Every function runs the tools as child processes in the **calling thread's** network
//! namespace (see the crate docs), each bounded by [`TOOL_TIMEOUT`] (and `-w` for the xtables
//! lock) and [`OUTPUT_CAP`]; they block, so async callers use `spawn_blocking`.

use std::time::Duration;

use headcni_core::node::forward::{self, CHAIN, ForwardRules, IpFamily};
use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::process::{self, RunError};

/// Budget for one run of an iptables tool (the xtables lock wait, `-w 5`, included).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a tool's stdout/stderr kept (a host with a huge rule set is read in part:
/// the counts of [`detect_backend`] are then lower bounds).
pub const OUTPUT_CAP: usize = 16 << 20;
/// The xtables lock wait passed to every iptables call, in seconds.
const LOCK_WAIT: &str = "5";

/// Errors of the `filter FORWARD` operations.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A tool could not be run (not installed: Debian package `iptables`), timed out, or
    /// failed; `op` says what was being done, `reason` has the tool's stderr.
    #[error("{op}: {reason}")]
    Tool {
        /// What was being done, e.g. `iptables-nft -S FORWARD`.
        op: String,
        /// Why it failed.
        reason: String,
    },
}

/// The iptables backend of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Legacy xtables: `iptables-legacy`, `ip6tables-legacy`.
    Legacy,
    /// nftables compatibility: `iptables-nft`, `ip6tables-nft`.
    Nft,
    /// Neither variant is installed under its own name: plain `iptables` / `ip6tables`.
    System,
}

impl Backend {
    /// `(iptables, iptables-restore)` program names for `family`.
    pub fn programs(self, family: IpFamily) -> (&'static str, &'static str) {
        match (self, family) {
            (Backend::Legacy, IpFamily::V4) => ("iptables-legacy", "iptables-legacy-restore"),
            (Backend::Legacy, IpFamily::V6) => ("ip6tables-legacy", "ip6tables-legacy-restore"),
            (Backend::Nft, IpFamily::V4) => ("iptables-nft", "iptables-nft-restore"),
            (Backend::Nft, IpFamily::V6) => ("ip6tables-nft", "ip6tables-nft-restore"),
            (Backend::System, IpFamily::V4) => ("iptables", "iptables-restore"),
            (Backend::System, IpFamily::V6) => ("ip6tables", "ip6tables-restore"),
        }
    }

    /// `legacy`, `nft` or `system`, for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            Backend::System => "system",
        }
    }
}

fn tool_err(op: String) -> impl FnOnce(RunError) -> ForwardError {
    move |e| ForwardError::Tool {
        op,
        reason: e.to_string(),
    }
}

/// The rule lines (`-A ...`) and whether the hint chains are present, from `*-save` of both
/// families; `None` when the variant is not installed.
fn save_summary(v4: &str, v6: &str) -> Option<(usize, bool)> {
    let mut lines = 0;
    let mut hint = false;
    let mut any = false;
    for prog in [v4, v6] {
        let Ok(o) = process::run(prog, &[], None, TOOL_TIMEOUT, OUTPUT_CAP) else {
            continue;
        };
        any = true;
        for l in o.stdout.lines() {
            if l.starts_with('-') {
                lines += 1;
            }
            if l.contains("KUBE-IPTABLES-HINT") || l.contains("KUBE-KUBELET-CANARY") {
                hint = true;
            }
        }
    }
    any.then_some((lines, hint))
}

/// Decides the host's iptables backend (see the module docs): hint chains first, then the
/// variant with more rules, nft on a tie; [`Backend::System`] when neither variant's `-save`
/// can be run.
pub fn detect_backend() -> Backend {
    let nft = save_summary("iptables-nft-save", "ip6tables-nft-save");
    let legacy = save_summary("iptables-legacy-save", "ip6tables-legacy-save");
    match (nft, legacy) {
        (Some((_, true)), _) => Backend::Nft,
        (_, Some((_, true))) => Backend::Legacy,
        (Some((n, _)), Some((l, _))) if l > n => Backend::Legacy,
        (Some(_), _) => Backend::Nft,
        (None, Some(_)) => Backend::Legacy,
        (None, None) => Backend::System,
    }
}

/// `iptables -S FORWARD` and `iptables -S HEADCNI-FWD` (`None`: no such chain) of one family.
fn observe(backend: Backend, family: IpFamily) -> Result<(String, Option<String>), ForwardError> {
    let (ipt, _) = backend.programs(family);
    let op = format!("{ipt} -S FORWARD");
    let fwd = process::run(
        ipt,
        &["-w", LOCK_WAIT, "-S", "FORWARD"],
        None,
        TOOL_TIMEOUT,
        OUTPUT_CAP,
    )
    .map_err(tool_err(op.clone()))?;
    if !fwd.success {
        return Err(ForwardError::Tool {
            op,
            reason: fwd.reason(),
        });
    }
    let chain = process::run(
        ipt,
        &["-w", LOCK_WAIT, "-S", CHAIN],
        None,
        TOOL_TIMEOUT,
        OUTPUT_CAP,
    )
    .map_err(tool_err(format!("{ipt} -S {CHAIN}")))?;
    Ok((fwd.stdout, chain.success.then_some(chain.stdout)))
}

fn restore(backend: Backend, family: IpFamily, input: &str) -> Result<(), ForwardError> {
    let (_, prog) = backend.programs(family);
    let op = format!("{prog} --noflush");
    let o = process::run(
        prog,
        &["-w", LOCK_WAIT, "--noflush"],
        Some(input),
        TOOL_TIMEOUT,
        OUTPUT_CAP,
    )
    .map_err(tool_err(op.clone()))?;
    if o.success {
        Ok(())
    } else {
        Err(ForwardError::Tool {
            op,
            reason: o.reason(),
        })
    }
}

/// What [`ensure`] found and did, per family it looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardReport {
    /// Whether any rule was written or removed.
    pub changed: bool,
    /// The `FORWARD` policies seen, e.g. `[(V4, "DROP")]`.
    pub policies: Vec<(IpFamily, String)>,
}

/// Makes `filter FORWARD` accept forwarded traffic from and to `cidrs` (the node's pod CIDRs
/// and the cluster CIDRs) in the calling thread's namespace, for each family that has a CIDR;
/// removes HeadCNI's chain from a family that has none. Writes nothing when the rules are in
/// place.
///
/// Errors: a tool missing, timing out or failing ([`ForwardError::Tool`], with its stderr,
/// e.g. `Permission denied (you must be root)`).
pub fn ensure(backend: Backend, cidrs: &[IpNetwork]) -> Result<ForwardReport, ForwardError> {
    let mut report = ForwardReport::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        let rules = ForwardRules::new(family, cidrs);
        if rules.is_empty() {
            report.changed |= remove_family(backend, family)?;
            continue;
        }
        let (fwd, chain) = observe(backend, family)?;
        if let Some(p) = forward::forward_policy(&fwd) {
            report.policies.push((family, p.to_owned()));
        }
        if rules.in_place(&fwd, chain.as_deref()) {
            continue;
        }
        restore(
            backend,
            family,
            &rules.restore_input(!forward::has_jump(&fwd)),
        )?;
        report.changed = true;
    }
    Ok(report)
}

/// Whether the accept rules for `cidrs` are in place in every family that has a CIDR (a
/// family without one is not looked at). Reads only.
///
/// Errors: [`ForwardError::Tool`].
pub fn in_place(backend: Backend, cidrs: &[IpNetwork]) -> Result<bool, ForwardError> {
    for family in [IpFamily::V4, IpFamily::V6] {
        let rules = ForwardRules::new(family, cidrs);
        if rules.is_empty() {
            continue;
        }
        let (fwd, chain) = observe(backend, family)?;
        if !rules.in_place(&fwd, chain.as_deref()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes HeadCNI's jump and chain from one family; `Ok(false)` when there was none (also
/// when the family's `filter` table cannot be used at all, e.g. IPv6 disabled).
fn remove_family(backend: Backend, family: IpFamily) -> Result<bool, ForwardError> {
    let Ok((fwd, chain)) = observe(backend, family) else {
        return Ok(false);
    };
    let jumps = fwd
        .lines()
        .filter(|l| l.trim() == ForwardRules::jump_line())
        .count();
    if jumps == 0 && chain.is_none() {
        return Ok(false);
    }
    let mut input = String::from("*filter\n");
    for _ in 0..jumps {
        input.push_str(&ForwardRules::jump_line().replacen("-A ", "-D ", 1));
        input.push('\n');
    }
    if chain.is_some() {
        input.push_str(&format!("-F {CHAIN}\n-X {CHAIN}\n"));
    }
    input.push_str("COMMIT\n");
    restore(backend, family, &input)?;
    Ok(true)
}

/// Uninstall: removes HeadCNI's jump and chain from both families' `filter` tables.
/// Returns whether anything was removed.
///
/// Errors: [`ForwardError::Tool`] when a removal was needed and failed.
pub fn remove(backend: Backend) -> Result<bool, ForwardError> {
    let v4 = remove_family(backend, IpFamily::V4)?;
    let v6 = remove_family(backend, IpFamily::V6)?;
    Ok(v4 || v6)
}

/// nftables base chains on the `forward` hook with policy `drop` that neither iptables
/// (`ip filter`, `ip6 filter`) nor HeadCNI (`inet <own_table>`) owns, as `family table
/// chain` strings: firewalls whose drop HeadCNI's accept rules cannot override (an accept in
/// one base chain does not stop another base chain from dropping). Empty when `nft` is not
/// installed.
///
/// Errors: `nft` ran and failed.
pub fn foreign_forward_drops(own_table: &str) -> Result<Vec<String>, ForwardError> {
    let o = match process::run(
        "nft",
        &["-j", "list", "chains"],
        None,
        TOOL_TIMEOUT,
        OUTPUT_CAP,
    ) {
        Ok(o) => o,
        Err(RunError::Spawn { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(tool_err("nft -j list chains".to_owned())(e)),
    };
    if !o.success {
        return Err(ForwardError::Tool {
            op: "nft -j list chains".to_owned(),
            reason: o.reason(),
        });
    }
    let doc: Value = serde_json::from_str(&o.stdout).map_err(|e| ForwardError::Tool {
        op: "nft -j list chains".to_owned(),
        reason: format!("output is not nftables JSON: {e}"),
    })?;
    Ok(drops_in(&doc, own_table))
}

/// The foreign dropping forward base chains of a `nft -j list chains` document.
fn drops_in(doc: &Value, own_table: &str) -> Vec<String> {
    let Some(items) = doc.get("nftables").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("hook").and_then(Value::as_str) == Some("forward"))
        .filter(|c| c.get("policy").and_then(Value::as_str) == Some("drop"))
        .filter_map(|c| {
            let family = c.get("family")?.as_str()?;
            let table = c.get("table")?.as_str()?;
            let name = c.get("name")?.as_str()?;
            let iptables = matches!(family, "ip" | "ip6") && table == "filter";
            let ours = family == "inet" && table == own_table;
            (!iptables && !ours).then(|| format!("{family} {table} {name}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_drops_skip_iptables_and_our_table() {
        let doc = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "headcni", "name": "forward", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "fw", "name": "in", "hook": "input", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "ok", "name": "fwd", "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "inet", "table": "fw", "name": "regular"}}
        ]});
        assert_eq!(drops_in(&doc, "headcni"), vec!["inet fw fwd".to_owned()]);
        assert!(drops_in(&serde_json::json!({}), "headcni").is_empty());
    }
}
