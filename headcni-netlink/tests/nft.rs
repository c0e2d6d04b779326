//! `headcni_netlink::nft` against the real `nft` binary, each test in its own network
//! namespace `hcdp-<tag>-<pid>` (run as root; Debian `nftables` installed). Nothing runs in
//! the test process's own namespace: every `nft` child is spawned from a thread inside the
//! test namespace (`netns::run_in_netns`).

use headcni_core::node::masq::{self, MasqueradePlan, MasqueradeSpec};
use headcni_netlink::nft::{self, NftError};
use ipnetwork::IpNetwork;
use serde_json::Value;

/// A named namespace `hcdp-<tag>-<pid>`, deleted on drop (also when the test panics).
struct Ns(headcni_testkit::Ns);

impl Ns {
    fn new(tag: &str) -> Ns {
        Ns(headcni_testkit::Ns::named(&format!(
            "hcdp-{tag}-{}",
            std::process::id()
        )))
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f)
    }

    /// `nft <args>` inside the namespace; panics on failure; returns stdout.
    fn nft(&self, args: &[&str]) -> String {
        self.0.exec_ok(&[&["nft"][..], args].concat())
    }
}

fn nets(s: &[&str]) -> Vec<IpNetwork> {
    s.iter().map(|c| c.parse().expect("test CIDR")).collect()
}

fn plan_for(table: &str, pods: &[&str], cluster: &[&str]) -> MasqueradePlan {
    let mut spec = MasqueradeSpec::new(nets(pods), nets(cluster));
    spec.table = table.to_owned();
    masq::plan(&spec).expect("valid test spec")
}

/// The elements of set `name` in an `nft -j list table` document, as strings.
fn set_elements(doc: &Value, name: &str) -> Vec<String> {
    doc["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("set"))
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("set {name} in {doc}"))["elem"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => format!(
                "{}/{}",
                other["prefix"]["addr"].as_str().expect("prefix addr"),
                other["prefix"]["len"]
            ),
        })
        .collect()
}

#[test]
fn apply_creates_the_table_and_is_idempotent() {
    let ns = Ns::new("idem");
    let plan = plan_for(
        "headcni",
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["10.244.0.0/16", "fd00:10:244::/56"],
    );
    assert_eq!(ns.run(|| nft::list("headcni")).unwrap(), None);

    assert!(ns.run(|| nft::apply(&plan)).unwrap(), "first apply writes");
    let text = ns.nft(&["list", "table", "inet", "headcni"]);
    println!("{text}");
    for needle in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr @pod_v4 ip daddr != @nomasq_v4 masquerade fully-random",
        "ip6 saddr @pod_v6 ip6 daddr != @nomasq_v6 masquerade fully-random",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let live = ns.run(|| nft::list("headcni")).unwrap().expect("table");
    assert_eq!(
        set_elements(&live, "nomasq_v4"),
        ["10.244.0.0/16", "100.64.0.0/10", "224.0.0.0/4"]
    );
    assert_eq!(
        set_elements(&live, "nomasq_v6"),
        ["fd00:10:244::/56", "fd7a:115c:a1e0::/48", "ff00::/8"]
    );
    assert_eq!(set_elements(&live, "pod_v6"), ["fd00:10:244:1::/64"]);

    // Second apply: nothing written. The handles in the JSON listing change on any
    // replace, so an identical listing proves the table was not rebuilt.
    let before = ns.nft(&["-j", "-a", "list", "table", "inet", "headcni"]);
    assert!(
        !ns.run(|| nft::apply(&plan)).unwrap(),
        "second apply is a no-op"
    );
    assert!(
        !ns.run(|| nft::apply(&plan)).unwrap(),
        "third apply is a no-op"
    );
    assert_eq!(
        ns.nft(&["-j", "-a", "list", "table", "inet", "headcni"]),
        before
    );
}

#[test]
fn host_and_adjacent_elements_round_trip_without_churn() {
    let ns = Ns::new("elems");
    let mut spec = MasqueradeSpec::new(nets(&["10.244.1.0/24"]), vec![]);
    spec.extra_no_masq = nets(&[
        "192.0.2.7/32",
        "198.51.100.0/25",
        "198.51.100.128/25",
        "2001:db8::1/128",
    ]);
    let plan = masq::plan(&spec).unwrap();
    assert!(ns.run(|| nft::apply(&plan)).unwrap());
    assert!(!ns.run(|| nft::apply(&plan)).unwrap());
    let live = ns.run(|| nft::list("headcni")).unwrap().expect("table");
    assert_eq!(
        set_elements(&live, "nomasq_v4"),
        [
            "10.244.1.0/24",
            "100.64.0.0/10",
            "192.0.2.7",
            "198.51.100.0/25",
            "198.51.100.128/25",
            "224.0.0.0/4"
        ]
    );
}

#[test]
fn changed_plan_replaces_the_table_and_tampering_is_repaired() {
    let ns = Ns::new("change");
    let v1 = plan_for("headcni", &["10.244.1.0/24"], &["10.244.0.0/16"]);
    let v2 = plan_for(
        "headcni",
        &["10.244.1.0/24"],
        &["10.244.0.0/16", "10.96.0.0/12"],
    );
    assert!(!ns.run(|| nft::in_place(&v1)).unwrap(), "no table yet");
    assert!(ns.run(|| nft::apply(&v1)).unwrap());
    assert!(ns.run(|| nft::in_place(&v1)).unwrap());
    assert!(!ns.run(|| nft::in_place(&v2)).unwrap(), "stale for v2");
    assert!(
        ns.run(|| nft::apply(&v2)).unwrap(),
        "new cluster CIDR rewrites"
    );
    let live = ns.run(|| nft::list("headcni")).unwrap().expect("table");
    assert_eq!(
        set_elements(&live, "nomasq_v4"),
        [
            "10.96.0.0/12",
            "10.244.0.0/16",
            "100.64.0.0/10",
            "224.0.0.0/4"
        ]
    );
    let text = ns.nft(&["list", "table", "inet", "headcni"]);
    assert_eq!(text.matches("masquerade fully-random").count(), 1, "{text}");
    assert!(!ns.run(|| nft::apply(&v2)).unwrap());

    // Someone adds a rule and an element to our table: the next apply restores the plan.
    ns.nft(&[
        "add",
        "rule",
        "inet",
        "headcni",
        "postrouting",
        "ip",
        "daddr",
        "203.0.113.9",
        "accept",
    ]);
    ns.nft(&[
        "add",
        "element",
        "inet",
        "headcni",
        "pod_v4",
        "{ 10.250.0.0/16 }",
    ]);
    assert!(!ns.run(|| nft::in_place(&v2)).unwrap(), "drift is seen");
    assert!(ns.run(|| nft::apply(&v2)).unwrap(), "drift is repaired");
    assert!(ns.run(|| nft::in_place(&v2)).unwrap());
    let text = ns.nft(&["list", "table", "inet", "headcni"]);
    assert!(
        !text.contains("203.0.113.9") && !text.contains("10.250.0.0"),
        "{text}"
    );
    assert!(!ns.run(|| nft::apply(&v2)).unwrap());
}

#[test]
fn a_rejected_batch_leaves_the_old_table_in_place() {
    let ns = Ns::new("atomic");
    let good = plan_for("headcni", &["10.244.1.0/24"], &["10.244.0.0/16"]);
    assert!(ns.run(|| nft::apply(&good)).unwrap());
    let before = ns.nft(&["-j", "-a", "list", "table", "inet", "headcni"]);

    // A hand-made plan nftables refuses (overlapping intervals in one set): the whole
    // transaction, including its `delete table`, is rolled back.
    let mut bad = good.clone();
    bad.sets[1].elements = nets(&["10.0.0.0/8", "10.1.0.0/16"]);
    let err = ns.run(|| nft::apply(&bad)).unwrap_err();
    assert!(matches!(err, NftError::Nft { .. }), "{err}");
    // nft's own reason is in the error, not lost on the process's stderr.
    assert!(err.to_string().contains("conflicting intervals"), "{err}");
    assert_eq!(
        ns.nft(&["-j", "-a", "list", "table", "inet", "headcni"]),
        before
    );
}

#[test]
fn remove_deletes_only_our_table() {
    let ns = Ns::new("remove");
    ns.nft(&["add", "table", "inet", "other"]);
    ns.nft(&[
        "add",
        "chain",
        "inet",
        "other",
        "post",
        "{ type nat hook postrouting priority srcnat; }",
    ]);
    ns.nft(&["add", "rule", "inet", "other", "post", "counter"]);
    ns.nft(&["add", "table", "ip", "headcni"]); // same name, other family
    let other_before = ns.nft(&["-j", "-a", "list", "table", "inet", "other"]);

    let plan = plan_for("headcni", &["10.244.1.0/24"], &[]);
    assert!(ns.run(|| nft::apply(&plan)).unwrap());
    assert_eq!(
        ns.nft(&["-j", "-a", "list", "table", "inet", "other"]),
        other_before,
        "apply must not touch other tables"
    );

    assert!(ns.run(|| nft::remove("headcni")).unwrap());
    assert_eq!(ns.run(|| nft::list("headcni")).unwrap(), None);
    assert!(!ns.run(|| nft::remove("headcni")).unwrap(), "already gone");
    assert_eq!(
        ns.nft(&["-j", "-a", "list", "table", "inet", "other"]),
        other_before
    );
    let tables = ns.nft(&["list", "tables"]);
    assert!(tables.contains("table inet other"), "{tables}");
    assert!(tables.contains("table ip headcni"), "{tables}");
    assert!(!tables.contains("table inet headcni"), "{tables}");
}

#[test]
fn custom_table_name_and_errors() {
    let ns = Ns::new("custom");
    let plan = plan_for("hc_custom-1", &["10.244.1.0/24"], &[]);
    assert!(ns.run(|| nft::apply(&plan)).unwrap());
    assert!(ns.run(|| nft::list("hc_custom-1")).unwrap().is_some());
    assert_eq!(ns.run(|| nft::list("headcni")).unwrap(), None);
    assert!(ns.run(|| nft::remove("hc_custom-1")).unwrap());
    assert!(matches!(
        ns.run(|| nft::list("no such")),
        Err(NftError::Name(_))
    ));
}
