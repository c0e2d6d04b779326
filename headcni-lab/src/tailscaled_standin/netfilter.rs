//! tailscaled's netfilter rules on Linux, as nftables tables of their own (`ip ts-filter`
//! with base chains `ts-input`/`ts-forward`, `ip ts-nat` with `ts-postrouting`, and the same
//! two tables in family `ip6`), built with the nftables crate's JSON schema and applied
//! atomically through `nft -j -f -`.
//!
//! Rules (tailscale v1.102.3 util/linuxfw/iptables_runner.go, table in
//! control-plane-apis.md §2.6): `ts-forward`: `iifname TUN` → mark 0x40000; mark/0xff0000 ==
//! 0x40000 → accept; [stateful filtering: `oifname TUN` and ct state not
//! established/related → drop]; `oifname TUN ip saddr 100.64.0.0/10` → drop; `oifname TUN`
//! → accept. `ts-input`: `iifname lo` from 100.64.0.0/10 → accept (loopback rule), `iifname != TUN ip saddr 100.64.0.0/10` → drop. `ts-postrouting`
//! (NoSNAT false): mark/0xff0000 == 0x40000 → masquerade.
//!
//! IPv6 (`ip6` tables) as tailscaled's `addBase6` (v1.102.3 util/linuxfw/iptables_runner.go
//! and nftables_runner.go, both add the same rules): `ts-input`: `iifname TUN` → accept;
//! `ts-forward`: `iifname TUN` → mark 0x40000; marked → accept; [stateful filtering: as for
//! IPv4, `AddStatefulRule` runs on every table]; `oifname TUN` → accept (there is no
//! counterpart of the CGNAT drop: tailscaled's own TODO). `ts-postrouting` (NoSNAT false):
//! marked → masquerade (`AddSNATRule` runs on every NAT table). tailscaled's per-address
//! loopback rule (`AddLoopbackRule`, `iifname lo ip6 saddr <own address>` → accept) is left
//! out: the IPv6 `ts-input` has no drop rule for it to precede, so it changes no verdict.
//!
//! The headcni daemon's `inet headcni` table is never touched.

use nftables::schema::Nftables;
use serde_json::{Value, json};

/// Filter table name.
pub const FILTER_TABLE: &str = "ts-filter";
/// NAT table name.
pub const NAT_TABLE: &str = "ts-nat";
/// Subnet-route fwmark (tsconst/linuxfw.go@v1.102.3).
pub const SUBNET_ROUTE_MARK: u32 = 0x40000;
/// fwmark mask.
pub const MARK_MASK: u32 = 0xff0000;

/// What decides the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetfilterConfig {
    /// TUN name.
    pub tun: String,
    /// `NoSNAT` pref: no masquerade when true.
    pub no_snat: bool,
    /// Stateful filtering (`NoStatefulFiltering` false).
    pub stateful: bool,
}

/// A netfilter failure.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// The batch does not fit the nftables schema (a bug).
    #[error("nftables schema: {0}")]
    Schema(String),
    /// `nft` failed.
    #[error("nft: {0}")]
    Nft(String),
}

fn m(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn cgnat() -> Value {
    json!({"prefix": {"addr": "100.64.0.0", "len": 10}})
}

fn saddr() -> Value {
    json!({"payload": {"protocol": "ip", "field": "saddr"}})
}

/// The nftables families of the tables: IPv4 (`ip`) and IPv6 (`ip6`).
const FAMILIES: [&str; 2] = ["ip", "ip6"];

fn marked() -> Value {
    m(
        "==",
        json!({"&": [meta("mark"), MARK_MASK]}),
        json!(SUBNET_ROUTE_MARK),
    )
}

fn rule(family: &str, table: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr}}})
}

fn table(family: &str, name: &str) -> Value {
    json!({"table": {"family": family, "name": name}})
}

/// The batch (as nft JSON) that replaces the four tables (`ts-filter`, `ts-nat` of families
/// `ip` and `ip6`) with the rules for `cfg`.
pub fn batch(cfg: &NetfilterConfig) -> Value {
    let mut cmds = vec![];
    for family in FAMILIES {
        family_cmds(cfg, family, &mut cmds);
    }
    json!({ "nftables": cmds })
}

/// The commands of one family's two tables.
fn family_cmds(cfg: &NetfilterConfig, family: &str, cmds: &mut Vec<Value>) {
    let v4 = family == "ip";
    let tun = json!(cfg.tun);
    for t in [FILTER_TABLE, NAT_TABLE] {
        // add + delete + add: replaces the table atomically whether or not it existed.
        cmds.push(json!({"add": table(family, t)}));
        cmds.push(json!({"delete": table(family, t)}));
        cmds.push(json!({"add": table(family, t)}));
    }
    let chain = |t: &str, name: &str, ty: &str, hook: &str, prio: i32| {
        json!({"add": {"chain": {"family": family, "table": t, "name": name, "type": ty,
            "hook": hook, "prio": prio, "policy": "accept"}}})
    };
    cmds.push(chain(FILTER_TABLE, "ts-input", "filter", "input", 0));
    cmds.push(chain(FILTER_TABLE, "ts-forward", "filter", "forward", 0));
    cmds.push(chain(
        NAT_TABLE,
        "ts-postrouting",
        "nat",
        "postrouting",
        100,
    ));
    if v4 {
        // Loopback traffic of the node's own tailnet address (iptables_runner.go
        // AddLoopbackRule).
        cmds.push(rule(
            family,
            FILTER_TABLE,
            "ts-input",
            vec![
                m("==", meta("iifname"), json!("lo")),
                m("==", saddr(), cgnat()),
                json!({"accept": null}),
            ],
        ));
        cmds.push(rule(
            family,
            FILTER_TABLE,
            "ts-input",
            vec![
                m("!=", meta("iifname"), tun.clone()),
                m("==", saddr(), cgnat()),
                json!({"drop": null}),
            ],
        ));
    } else {
        // addBase6: "Explicitly allow all other inbound traffic to the tun interface".
        cmds.push(rule(
            family,
            FILTER_TABLE,
            "ts-input",
            vec![
                m("==", meta("iifname"), tun.clone()),
                json!({"accept": null}),
            ],
        ));
    }
    cmds.push(rule(
        family,
        FILTER_TABLE,
        "ts-forward",
        vec![
            m("==", meta("iifname"), tun.clone()),
            json!({"mangle": {"key": meta("mark"), "value": SUBNET_ROUTE_MARK}}),
        ],
    ));
    cmds.push(rule(
        family,
        FILTER_TABLE,
        "ts-forward",
        vec![marked(), json!({"accept": null})],
    ));
    if cfg.stateful {
        // "not established/related" = one of the other conntrack states.
        cmds.push(rule(
            family,
            FILTER_TABLE,
            "ts-forward",
            vec![
                m("==", meta("oifname"), tun.clone()),
                m(
                    "in",
                    json!({"ct": {"key": "state"}}),
                    json!(["new", "invalid", "untracked"]),
                ),
                json!({"drop": null}),
            ],
        ));
    }
    if v4 {
        cmds.push(rule(
            family,
            FILTER_TABLE,
            "ts-forward",
            vec![
                m("==", meta("oifname"), tun.clone()),
                m("==", saddr(), cgnat()),
                json!({"drop": null}),
            ],
        ));
    }
    cmds.push(rule(
        family,
        FILTER_TABLE,
        "ts-forward",
        vec![
            m("==", meta("oifname"), tun.clone()),
            json!({"accept": null}),
        ],
    ));
    if !cfg.no_snat {
        cmds.push(rule(
            family,
            NAT_TABLE,
            "ts-postrouting",
            vec![marked(), json!({"masquerade": null})],
        ));
    }
}

fn run(doc: &Value) -> Result<(), NetfilterError> {
    let parsed: Nftables =
        serde_json::from_value(doc.clone()).map_err(|e| NetfilterError::Schema(e.to_string()))?;
    nftables::helper::apply_ruleset(&parsed).map_err(|e| NetfilterError::Nft(e.to_string()))
}

/// Replaces the four tables with the rules for `cfg` (one atomic transaction, in the
/// calling process's network namespace).
///
/// Errors: [`NetfilterError`].
pub fn apply(cfg: &NetfilterConfig) -> Result<(), NetfilterError> {
    run(&batch(cfg))
}

/// Deletes the four tables if present (tailscaled's `NfTablesCleanUp`).
///
/// Errors: [`NetfilterError::Nft`].
pub fn remove() -> Result<(), NetfilterError> {
    let mut cmds = vec![];
    for family in FAMILIES {
        for t in [FILTER_TABLE, NAT_TABLE] {
            cmds.push(json!({"add": table(family, t)}));
            cmds.push(json!({"delete": table(family, t)}));
        }
    }
    run(&json!({ "nftables": cmds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_fits_the_schema_and_follows_prefs() {
        let mut cfg = NetfilterConfig {
            tun: "ts9".into(),
            no_snat: false,
            stateful: true,
        };
        let all = batch(&cfg).to_string();
        assert!(serde_json::from_value::<Nftables>(batch(&cfg)).is_ok());
        assert!(all.contains("masquerade") && all.contains("untracked"));
        cfg.no_snat = true;
        cfg.stateful = false;
        let none = batch(&cfg).to_string();
        assert!(!none.contains("masquerade") && !none.contains("untracked"));
    }

    /// The rules of `family`'s `chain`, as JSON text each.
    fn rules_of(cfg: &NetfilterConfig, family: &str, chain: &str) -> Vec<String> {
        batch(cfg)["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"]["rule"].as_object())
            .filter(|r| r["family"] == family && r["chain"] == chain)
            .map(|r| Value::Object(r.clone()).to_string())
            .collect()
    }

    #[test]
    fn ipv6_tables_follow_add_base6() {
        let cfg = NetfilterConfig {
            tun: "ts9".into(),
            no_snat: false,
            stateful: false,
        };
        let input = rules_of(&cfg, "ip6", "ts-input");
        assert_eq!(input.len(), 1, "{input:?}");
        assert!(input[0].contains("iifname") && input[0].contains("accept"));
        let fwd = rules_of(&cfg, "ip6", "ts-forward");
        // mark, marked → accept, oifname → accept: no CGNAT-like drop for IPv6.
        assert_eq!(fwd.len(), 3, "{fwd:?}");
        assert!(fwd.iter().all(|r| !r.contains("saddr")), "{fwd:?}");
        assert!(fwd[2].contains("oifname") && fwd[2].contains("accept"));
        assert_eq!(rules_of(&cfg, "ip6", "ts-postrouting").len(), 1);
        assert_eq!(rules_of(&cfg, "ip", "ts-forward").len(), 4);
        let stateful = NetfilterConfig {
            stateful: true,
            no_snat: true,
            ..cfg
        };
        let fwd = rules_of(&stateful, "ip6", "ts-forward");
        assert_eq!(fwd.len(), 4);
        assert!(
            fwd[2].contains("untracked"),
            "before the final accept: {fwd:?}"
        );
        assert!(
            rules_of(&stateful, "ip6", "ts-postrouting").is_empty(),
            "NoSNAT"
        );
        assert!(serde_json::from_value::<Nftables>(batch(&stateful)).is_ok());
    }
}
