//! End to end: `headcni daemon` inside a per-scenario "node" network namespace against the
//! Headscale and tailscaled fakes (issue 3, items 1, 4, 5, 7, 9 and "Done when": the daemon
//! reaches ready and `headcni status` shows the approved route).
//!
//! Every scenario creates `hce2e-<tag>-<pid>` (a node namespace with `lo` up and a TUN
//! `tailscale0`), starts FakeHeadscale on 127.0.0.1 **of that namespace** (from a thread that
//! entered it) and FakeTailscaled on a unix socket in a temp dir, writes the daemon's TOML
//! (every path in the temp dir, `reconcile_interval_secs = 1`), and execs the built binary
//! inside the namespace. The HTTP endpoints are queried, and `headcni status` / `uninstall`
//! and the CNI plugin are exec'ed, from inside the namespace too. Nothing touches the host's
//! network, /etc/cni, /var/run/tailscale or /run/headcni. Drop guards clean up on panic.
//!
//! Measured numbers are printed as `E2E-NUMBERS ...` lines (`cargo test -- --nocapture`).

mod common;
#[path = "daemon_e2e/harness.rs"]
mod harness;
#[path = "daemon_e2e/ipn_bus.rs"]
mod ipn_bus;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use harness::{
    Cfg, Daemon, DirSnapshot, Fakes, FakesSpec, HttpResp, Ns, http_get, http_get_accept,
    masq_rules, plugin, run_cli, sample, show, snapshot_dir, write_mode,
};
use headcni_headscale::localapi::{OptBool, Prefs};
use headcni_testkit::metrics::{openmetrics_to_text, promtool_check};
use headcni_testkit::{
    FakeApiVersion, FakeHeadscaleOptions, Fault, default_prefs, random_node_key,
};
use ipnetwork::IpNetwork;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const CLUSTER: &str = "10.250.0.0/16";
const POD: &str = "10.250.1.0/24";
const ADMIN: &str = "192.168.77.0/24";
const PEER_POD: &str = "10.250.2.0/24";
const PEER_OTHER: &str = "10.250.9.0/24";
const TAILNET_V4: &str = "100.64.0.0/10";
const CONFLIST: &str = "10-headcni.conflist";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test CIDR")
}

fn sorted(mut v: Vec<IpNetwork>) -> Vec<IpNetwork> {
    v.sort();
    v
}

/// Lower-case without `-`, `_` and blanks: "NotApproved", "not-approved" → "notapproved".
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// One node
// ---------------------------------------------------------------------------------------

struct NodeOpts {
    version: FakeApiVersion,
    auto_approvers: Vec<IpNetwork>,
    prefs: Prefs,
    pod_cidr: Option<&'static str>,
    mtu: Option<u32>,
    /// MTU of the `tailscale0` TUN in the node namespace.
    iface_mtu: u32,
    approval: &'static str,
    /// Mode of the API key file; `None`: no key file in the config.
    key_mode: Option<u32>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            version: FakeApiVersion::V0_29,
            auto_approvers: Vec::new(),
            prefs: default_prefs(),
            pod_cidr: Some(POD),
            mtu: Some(1280),
            iface_mtu: 1280,
            approval: "api",
            key_mode: Some(0o600),
        }
    }
}

/// A node: its namespace, the fakes, a temp dir with conf_dir/bin_dir/data_dir/state_dir and
/// the daemon's TOML. Field order = drop order: fakes, namespace, temp dir.
struct Node {
    fakes: Fakes,
    ns: Ns,
    name: String,
    cfg: Cfg,
    cfg_path: PathBuf,
    logs: std::cell::Cell<u32>,
    tmp: tempfile::TempDir,
}

impl Node {
    fn new(tag: &str, o: NodeOpts) -> Node {
        assert!(tag.len() <= 8, "tag {tag} too long for a bridge name");
        let name = format!("hce2e-{tag}-{}", std::process::id());
        let ns = Ns::named(&name);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        // A TUN named like tailscaled's (no process attached: the MTU is what matters).
        ns.exec_ok(&["ip", "tuntap", "add", "dev", "tailscale0", "mode", "tun"]);
        ns.exec_ok(&[
            "ip",
            "link",
            "set",
            "tailscale0",
            "mtu",
            &o.iface_mtu.to_string(),
            "up",
        ]);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("tempdir");
        let d = tmp.path();
        for sub in ["net.d", "bin", "data", "state", "ts"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
        }
        for b in ["headcni", "headcni-ipam"] {
            std::os::unix::fs::symlink(harness::EXE, d.join("bin").join(b)).expect("symlink");
        }
        let fakes = Fakes::start(
            &ns,
            FakesSpec {
                headscale: FakeHeadscaleOptions {
                    version: o.version,
                    // The node's user is "ops" (below); the policy names it as Headscale
                    // ≥ 0.26 needs (`ops@`), or as 0.25 needs (`ops`).
                    policy: (!o.auto_approvers.is_empty()).then(|| {
                        let user = FakeHeadscaleOptions {
                            version: o.version,
                            ..FakeHeadscaleOptions::default()
                        }
                        .policy_version()
                        .user_token("ops");
                        let routes: serde_json::Map<String, serde_json::Value> = o
                            .auto_approvers
                            .iter()
                            .map(|p| (p.to_string(), serde_json::json!([user])))
                            .collect();
                        serde_json::json!({"autoApprovers": {"routes": routes}}).to_string()
                    }),
                    ..FakeHeadscaleOptions::default()
                },
                ts_socket: d.join("ts").join("tailscaled.sock"),
                hostname: name.clone(),
                user: "ops".into(),
                prefs: o.prefs.clone(),
            },
        );
        let api_key_file = o.key_mode.map(|m| {
            let p = d.join("api-key");
            write_mode(&p, fakes.api_key.as_bytes(), m);
            p
        });
        let cfg = Cfg {
            node_name: name.clone(),
            pod_cidr: o.pod_cidr.map(str::to_owned),
            cluster_cidr: CLUSTER.into(),
            conf_dir: d.join("net.d"),
            bin_dir: d.join("bin"),
            data_dir: d.join("data"),
            bridge: format!("hce{tag}"),
            mtu: o.mtu,
            daemon_socket: d.join("run").join("daemon.sock"),
            mode: "host".into(),
            ts_socket: d.join("ts").join("tailscaled.sock"),
            interface: "tailscale0".into(),
            hs_url: Some(fakes.url.clone()),
            api_key_file,
            approval: o.approval.into(),
            state_dir: d.join("state"),
            reconcile_secs: 1,
            tailscale_extra: String::new(),
            headscale_extra: String::new(),
        };
        let cfg_path = d.join("config.toml");
        let node = Node {
            fakes,
            ns,
            name,
            cfg,
            cfg_path,
            logs: std::cell::Cell::new(0),
            tmp,
        };
        node.write_cfg();
        node
    }

    fn write_cfg(&self) {
        std::fs::write(&self.cfg_path, self.cfg.render()).expect("write config");
    }

    fn cfg_arg(&self) -> String {
        self.cfg_path.display().to_string()
    }

    /// Starts `headcni daemon --config <toml>` inside the node namespace.
    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let n = self.logs.get() + 1;
        self.logs.set(n);
        let log = self.tmp.path().join(format!("daemon-{n}.log"));
        let cfg = self.cfg_arg();
        Daemon::spawn(&self.ns, &["daemon", "--config", &cfg], env, &log)
    }

    fn conflist_path(&self) -> PathBuf {
        self.cfg.conf_dir.join(CONFLIST)
    }

    fn conflist(&self) -> Option<Value> {
        let s = std::fs::read_to_string(self.conflist_path()).ok()?;
        Some(
            serde_json::from_str(&s)
                .unwrap_or_else(|e| panic!("the conflist is not JSON ({e}): {s}")),
        )
    }

    fn get(&self, path: &str) -> Result<HttpResp, String> {
        http_get(&self.ns, path)
    }

    fn status(&self) -> Result<Value, String> {
        let r = self.get("/status")?;
        if r.status != 200 {
            return Err(format!("/status answered {}: {}", r.status, r.body));
        }
        serde_json::from_str(&r.body).map_err(|e| format!("/status is not JSON ({e}): {}", r.body))
    }

    /// Waits until `/readyz` answers 200; the time since the daemon was spawned.
    fn wait_ready(&self, d: &mut Daemon, timeout: Duration) -> Duration {
        d.wait_for(timeout, "/readyz 200", || {
            let r = self.get("/readyz")?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("/readyz {}: {}", r.status, r.body.trim()))
            }
        });
        d.started.elapsed()
    }

    /// Waits until `/readyz` answers 503 and `pred` holds for its body; returns the body.
    fn wait_not_ready(
        &self,
        d: &mut Daemon,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        d.wait_for(timeout, what, || {
            let r = self.get("/readyz")?;
            if r.status == 503 && pred(&r.body) {
                Ok(r.body)
            } else {
                Err(format!("/readyz {}: {}", r.status, r.body.trim()))
            }
        })
    }

    fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.ns, args, &[])
    }

    fn headcni_status(&self) -> Output {
        self.cli(&["status", "--listen", harness::LISTEN])
    }

    /// Puts files of other CNI configurations into conf_dir (which the daemon must never
    /// touch) and returns the directory's snapshot.
    fn seed_conf_dir(&self) -> DirSnapshot {
        let d = &self.cfg.conf_dir;
        let other =
            json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]});
        std::fs::write(d.join("00-other.conflist"), other.to_string()).expect("write");
        std::fs::write(d.join("10-headcni.conf"), b"{\"not\": \"ours\"}\n").expect("write");
        write_mode(&d.join("99-zz.conf"), b"{}\n", 0o600);
        snapshot_dir(d)
    }

    /// The other files are byte-for-byte, mtime, mode and inode identical, and the only new
    /// entry is the conflist (when `with_conflist`): no temp file left behind.
    fn assert_conf_dir_untouched(&self, before: &DirSnapshot, with_conflist: bool) {
        let mut now = snapshot_dir(&self.cfg.conf_dir);
        let ours = now.remove(CONFLIST);
        assert_eq!(
            ours.is_some(),
            with_conflist,
            "conflist presence in {}",
            self.cfg.conf_dir.display()
        );
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "conf_dir holds exactly the other files (plus ours)"
        );
        for (name, was) in before {
            assert_eq!(now.get(name), Some(was), "{name} was modified");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks shared by the scenarios
// ---------------------------------------------------------------------------------------

fn contains_str(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(a) => a.iter().any(|x| contains_str(x, s)),
        Value::Object(o) => o.values().any(|x| contains_str(x, s)),
        _ => false,
    }
}

/// The conflist: a CNI conflist whose first plugin is `headcni` with this bridge, MTU and
/// subnet; 0644.
fn check_conflist(node: &Node, cl: &Value, subnet: &str, mtu: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.conflist_path())
        .expect("stat conflist")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "conflist mode");
    assert!(cl["cniVersion"].is_string(), "cniVersion: {cl}");
    assert!(
        cl["name"].as_str().is_some_and(|n| !n.is_empty()),
        "name: {cl}"
    );
    let p = &cl["plugins"][0];
    assert_eq!(p["type"], "headcni", "first plugin: {cl}");
    assert_eq!(p["bridge"], node.cfg.bridge.as_str(), "bridge: {cl}");
    assert_eq!(p["mtu"], mtu, "mtu: {cl}");
    assert!(
        contains_str(&p["ipam"], subnet),
        "subnet {subnet} in ipam: {cl}"
    );
    assert!(
        contains_str(&p["ipam"], &node.cfg.data_dir.display().to_string()),
        "ipam dataDir is [cni] data_dir: {cl}"
    );
}

/// `inet headcni`: a nat/postrouting chain with a masquerade rule for traffic from the pod
/// CIDR to anything but the cluster CIDR and the tailnet range.
fn check_nft(node: &Node, pod: &str) {
    let listing = node
        .ns
        .nft_table("headcni")
        .unwrap_or_else(|e| panic!("nft list table inet headcni: {e}"));
    let (rules, chains) = masq_rules(&listing);
    assert!(
        chains
            .iter()
            .any(|(_, ty, hook, prio)| ty == "nat" && hook == "postrouting" && *prio == 100),
        "a nat chain on postrouting at srcnat: {chains:?}\n{listing}"
    );
    let ok = rules.iter().any(|r| {
        r.has("saddr", "==", pod)
            && r.has("daddr", "!=", CLUSTER)
            && r.has("daddr", "!=", TAILNET_V4)
    });
    assert!(
        ok,
        "a masquerade rule: saddr {pod}, daddr not in {CLUSTER} / {TAILNET_V4}: {rules:?}\n{listing}"
    );
    // Nothing masquerades traffic *to* the cluster CIDR.
    assert!(
        !rules.iter().any(|r| r.has("daddr", "==", CLUSTER)),
        "{rules:?}"
    );
}

/// `headcni status` (human): exit 0, the node, the PodCIDR with its source, the route
/// advertised + approved + primary, READY.
fn check_status_output(node: &Node, pod: &str, source: &str, peer: Option<&str>) -> String {
    let out = node.headcni_status();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "headcni status: {}", show(&out));
    assert!(text.contains(&node.name), "node name in:\n{text}");
    let pod_line = text
        .lines()
        .find(|l| l.contains("PodCIDR"))
        .unwrap_or_else(|| panic!("no PodCIDR line in:\n{text}"));
    assert!(
        pod_line.contains(pod) && pod_line.contains(source),
        "PodCIDR {pod} (source {source}) in {pod_line:?}:\n{text}"
    );
    let route_line = text
        .lines()
        .find(|l| l.trim_start().starts_with(pod))
        .unwrap_or_else(|| panic!("no route line for {pod} in:\n{text}"));
    let cells: Vec<&str> = route_line.split_whitespace().collect();
    assert!(
        cells.iter().filter(|c| **c == "yes").count() >= 3 && !cells.contains(&"no"),
        "route {pod} wanted/advertised/approved/primary: {route_line:?}\n{text}"
    );
    if let Some(p) = peer {
        assert!(
            text.lines()
                .any(|l| l.contains(p) && !l.trim_start().starts_with(p)),
            "peer pod CIDR {p} in:\n{text}"
        );
    }
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert_eq!(last.trim(), "READY", "last line of:\n{text}");
    text
}

/// `/metrics`: promtool-clean (0.0.4 text, converted from OpenMetrics as Prometheus maps
/// them when the daemon answers OpenMetrics), `headcni_ready 1`, and the route's state.
fn check_metrics(node: &Node, pod: &str) -> String {
    let r = http_get_accept(&node.ns, "/metrics", Some("text/plain;version=0.0.4"))
        .expect("GET /metrics");
    assert_eq!(r.status, 200, "/metrics: {r:?}");
    eprintln!(
        "E2E-NUMBERS metrics: {}",
        r.headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-type"))
            .unwrap_or("no content-type")
    );
    let text = openmetrics_to_text(&r.body)
        .unwrap_or_else(|e| panic!("/metrics is not well-formed: {e}\n{}", r.body));
    if let Err(e) = promtool_check(&text) {
        panic!(
            "promtool check metrics failed: {e}\n--- checked text ---\n{text}\n--- /metrics ---\n{}",
            r.body
        );
    }
    assert_eq!(
        sample(&r.body, "headcni_ready", &[]),
        Some(1.0),
        "headcni_ready 1 in\n{}",
        r.body
    );
    for state in ["advertised", "approved", "primary"] {
        assert_eq!(
            sample(
                &r.body,
                "headcni_route_state",
                &[("route", pod), ("state", state)]
            ),
            Some(1.0),
            "headcni_route_state{{route={pod},state={state}}} 1 in\n{}",
            r.body
        );
    }
    r.body
}

fn assert_secret_not_leaked(node: &Node, d: &Daemon, extra: &[&str]) {
    let key = &node.fakes.api_key;
    assert!(
        !d.logs().contains(key.as_str()),
        "the API key is in the daemon's log"
    );
    for e in extra {
        assert!(!e.contains(key.as_str()), "the API key is in an output");
    }
}

fn routes_of(v: &Value) -> Vec<IpNetwork> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str()?.parse().ok())
                .collect::<Vec<IpNetwork>>()
        })
        .unwrap_or_default()
}

/// The Headscale writes were for this node and this node's PodCIDR only: approve_routes on
/// our node id with exactly (previous approvals ∪ PodCIDR), or enable on our PodCIDR's row;
/// never a disable or delete.
fn check_headscale_writes(node: &Node, me: u64, previously_approved: &[IpNetwork]) {
    let ex = node.fakes.hs.exchanges();
    // Route row id → (node id, prefix), from every route listing the daemon read (≤ 0.25).
    let mut rows = std::collections::BTreeMap::new();
    for x in &ex {
        if let Some(list) = x
            .response_json
            .as_ref()
            .and_then(|v| v["routes"].as_array())
        {
            for r in list {
                if let (Some(id), Some(p)) = (r["id"].as_str(), r["prefix"].as_str()) {
                    let nid = r["node"]["id"].as_str().unwrap_or_default().to_owned();
                    rows.insert(id.to_owned(), (nid, p.to_owned()));
                }
            }
        }
    }
    let mut writes = 0;
    for x in ex.iter().filter(|x| x.method != "GET") {
        writes += 1;
        assert_ne!(x.method, "DELETE", "no deletes: {x:?}");
        assert_eq!(x.method, "POST", "{x:?}");
        if let Some(rid) = x
            .path
            .strip_prefix("/api/v1/routes/")
            .and_then(|r| r.strip_suffix("/enable"))
        {
            assert_eq!(
                rows.get(rid),
                Some(&(me.to_string(), POD.to_owned())),
                "enable only our PodCIDR's row: {x:?}"
            );
        } else {
            assert_eq!(
                x.path,
                format!("/api/v1/node/{me}/approve_routes"),
                "only our node's approvals: {x:?}"
            );
            let sent = sorted(routes_of(
                &x.request_json.clone().unwrap_or_default()["routes"],
            ));
            let mut want = previously_approved.to_vec();
            want.push(net(POD));
            assert_eq!(sent, sorted(want), "the union, nothing else: {x:?}");
        }
    }
    assert!(writes >= 1, "the daemon approved through the API");
}

// ---------------------------------------------------------------------------------------
// 1 + 6: host mode, API approval, both API generations
// ---------------------------------------------------------------------------------------

fn host_mode_api(tag: &str, version: FakeApiVersion) {
    let exit4 = net("0.0.0.0/0");
    let exit6 = net("::/0");
    // v0.29: MTU from the config; v0.25: no MTU in the config, the default is tailscale0's.
    let (mtu_cfg, iface_mtu) = match version {
        FakeApiVersion::V0_25 => (None, 1350),
        _ => (Some(1280), 1280),
    };
    let want_mtu = mtu_cfg.unwrap_or(iface_mtu);
    let node = Node::new(
        tag,
        NodeOpts {
            version,
            prefs: Prefs {
                advertise_routes: vec![net(ADMIN), exit4, exit6],
                route_all: false,
                no_snat: false,
                ..default_prefs()
            },
            mtu: mtu_cfg,
            iface_mtu,
            ..NodeOpts::default()
        },
    );
    let hs = &node.fakes.hs;
    let me = node.fakes.node_id();
    // A peer with an approved pod CIDR (seen through the tailnet) and an unapproved route.
    let peer = hs.register_node(&format!("{}-peer", node.name), "ops", &random_node_key());
    hs.announce_routes(peer.id, &[net(PEER_POD), net(PEER_OTHER)]);
    hs.set_approved(peer.id, &[net(PEER_POD)]);
    let before = node.seed_conf_dir();

    let mut d = node.start(&[]);
    let t_ready = node.wait_ready(&mut d, READY_TIMEOUT);
    eprintln!("E2E-NUMBERS {tag}: /readyz 200 after {t_ready:?}");

    // conflist, rewritten only when its content changes (two more reconciles here)
    let cl = node.conflist().expect("conflist written");
    check_conflist(&node, &cl, POD, want_mtu);
    node.assert_conf_dir_untouched(&before, true);
    let written = snapshot_dir(&node.cfg.conf_dir);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        snapshot_dir(&node.cfg.conf_dir).get(CONFLIST),
        written.get(CONFLIST),
        "an unchanged conflist is not rewritten (same inode, mtime, content)"
    );

    // data plane
    check_nft(&node, POD);
    let br = node.ns.link(&node.cfg.bridge).expect("bridge exists");
    assert_eq!(br["mtu"], want_mtu, "bridge MTU: {br}");
    assert_eq!(
        node.ns.addresses(&node.cfg.bridge),
        Some(vec!["10.250.1.1/24".to_owned()]),
        "bridge gateway address"
    );
    assert_eq!(node.ns.sysctl("net.ipv4.ip_forward"), "1");

    // control plane: approved for exactly this node, nothing else approved by us
    let mine = hs.node(me).expect("our node");
    assert_eq!(
        mine.approved,
        vec![net(POD)],
        "{version:?}: only our PodCIDR: {mine:?}"
    );
    assert_eq!(mine.primary, vec![net(POD)], "{mine:?}");
    assert_eq!(
        hs.node(peer.id).expect("peer").approved,
        vec![net(PEER_POD)],
        "the peer's approvals are untouched"
    );
    check_headscale_writes(&node, me, &[]);
    let prefs = node.fakes.ts.prefs();
    assert_eq!(
        prefs.advertise_routes,
        vec![net(ADMIN), exit4, exit6, net(POD)],
        "AdvertiseRoutes keeps the admin and exit routes, gains the PodCIDR"
    );
    assert!(prefs.route_all, "RouteAll");
    assert!(prefs.no_snat, "NoSNAT");
    assert_eq!(
        prefs.no_stateful_filtering,
        OptBool::True,
        "NoStatefulFiltering"
    );

    // /status, /healthz, headcni status, /metrics
    let st = node.status().expect("/status");
    assert_eq!(st["pod_cidr_source"], "config", "{st}");
    assert_eq!(routes_of(&st["pod_cidrs"]), vec![net(POD)], "{st}");
    assert_eq!(st["conflist_written"], true, "{st}");
    assert_eq!(st["masquerade_ready"], true, "{st}");
    assert!(
        routes_of(&st["control"]["routes"]["approved"]).contains(&net(POD)),
        "{st}"
    );
    let h = node.get("/healthz").expect("/healthz");
    assert_eq!((h.status, h.body.trim()), (200, "ok"));
    let text = check_status_output(&node, POD, "config", Some(PEER_POD));
    eprintln!("E2E-NUMBERS {tag}: headcni status:\n{text}");
    let js = node.cli(&["status", "--listen", harness::LISTEN, "--json"]);
    assert_eq!(js.status.code(), Some(0), "{}", show(&js));
    let jv: Value = serde_json::from_slice(&js.stdout).expect("status --json is JSON");
    assert_eq!(jv["node_name"], node.name.as_str());
    let metrics = check_metrics(&node, POD);
    assert_secret_not_leaked(&node, &d, &[&text, &metrics, &stdout(&js)]);

    // A plain stop is not an uninstall: exit 0, the route stays advertised and approved.
    d.signal(Signal::SIGTERM);
    let (st, took) = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM\n{}", d.tail()));
    eprintln!("E2E-NUMBERS {tag}: exit after SIGTERM in {took:?}");
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after SIGTERM\n{}",
        d.tail()
    );
    assert!(node.fakes.ts.prefs().advertise_routes.contains(&net(POD)));
    assert_eq!(hs.node(me).expect("node").approved, vec![net(POD)]);
}

/// Scenario 1: host mode, API approval, Headscale v0.29.
#[test]
fn host_mode_api_v0_29_reaches_ready_and_status_shows_the_approved_route() {
    host_mode_api("v29", FakeApiVersion::V0_29);
}

/// Scenario 6: the same against the 0.25 route-row API (`/api/v1/routes` + enable).
#[test]
fn host_mode_api_v0_25_route_rows() {
    host_mode_api("v25", FakeApiVersion::V0_25);
}

// ---------------------------------------------------------------------------------------
// 2: plugin ↔ daemon
// ---------------------------------------------------------------------------------------

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn plugin_events_reach_the_daemon_and_add_never_waits_on_it() {
    let node = Node::new("plg", NodeOpts::default());
    let mut d = node.start(&[]);
    node.wait_ready(&mut d, READY_TIMEOUT);

    // The network configuration as a runtime derives it from the conflist.
    let cl = node.conflist().expect("conflist");
    let mut conf = cl["plugins"][0].clone();
    conf["name"] = cl["name"].clone();
    conf["cniVersion"] = cl["cniVersion"].clone();
    let pod = Ns::named(&format!("{}-pod", node.name));
    let bin = node.cfg.bin_dir.clone();
    let pod_path = pod.path_str();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1";
    let add = |cid: &str| plugin(&node.ns, "ADD", cid, &pod_path, args, &bin, &conf);
    let del = |cid: &str, prev: &Value| {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        plugin(&node.ns, "DEL", cid, &pod_path, args, &bin, &c)
    };
    let pod_net = net(POD);

    let cid = "hce2e-plg-c0";
    let a = add(cid);
    let res = a.ok("ADD");
    let ip_s = res["ips"][0]["address"].as_str().expect("ips[0].address");
    let ip: IpNetwork = ip_s.parse().expect("address");
    assert!(pod_net.contains(ip.ip()), "{ip} in {POD}");
    assert_eq!(
        pod.addresses("eth0"),
        Some(vec![ip_s.to_owned()]),
        "the pod has its address"
    );
    let t0 = Instant::now();
    let ip_str = ip.ip().to_string();
    d.wait_for(Duration::from_secs(2), "the pod in /status", || {
        let st = node.status()?;
        let pods = st["pods"].as_object().cloned().unwrap_or_default();
        pods.values()
            .find(|p| {
                p["container_id"] == cid
                    && p["ifname"] == "eth0"
                    && p["namespace"] == "default"
                    && p["name"] == "web-1"
                    && p["ips"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == ip_str.as_str()))
            })
            .map(|_| ())
            .ok_or_else(|| format!("pods: {}", st["pods"]))
    });
    eprintln!(
        "E2E-NUMBERS plg: ADD visible in /status after {:?}",
        t0.elapsed()
    );
    d.wait_for(
        Duration::from_secs(2),
        "one successful ADD in /metrics",
        || {
            let m = node.get("/metrics")?;
            match sample(
                &m.body,
                "headcni_cni_operations_total",
                &[("verb", "ADD"), ("result", "ok")],
            ) {
                Some(1.0) => Ok(()),
                other => Err(format!("ADD ok = {other:?}\n{}", m.body)),
            }
        },
    );
    d.wait_for(
        Duration::from_secs(3),
        "one IPAM allocation in /metrics",
        || {
            let m = node.get("/metrics")?;
            match sample(
                &m.body,
                "headcni_ipam_allocated_addresses",
                &[("range", POD)],
            ) {
                Some(1.0) => Ok(()),
                other => Err(format!("allocated = {other:?}")),
            }
        },
    );
    let st = node.headcni_status();
    assert!(
        stdout(&st).contains("default/web-1") && stdout(&st).contains(&ip_str),
        "headcni status lists the pod: {}",
        show(&st)
    );
    del(cid, &res).ok("DEL");
    d.wait_for(Duration::from_secs(2), "the pod gone from /status", || {
        let st = node.status()?;
        if st["pods"].as_object().is_some_and(|p| p.is_empty()) {
            Ok(())
        } else {
            Err(format!("pods: {}", st["pods"]))
        }
    });
    d.wait_for(
        Duration::from_secs(2),
        "one successful DEL in /metrics",
        || {
            let m = node.get("/metrics")?;
            match sample(
                &m.body,
                "headcni_cni_operations_total",
                &[("verb", "DEL"), ("result", "ok")],
            ) {
                Some(1.0) => Ok(()),
                other => Err(format!("DEL ok = {other:?}")),
            }
        },
    );

    // ADD latency: daemon running, daemon stopped (SIGSTOP: its socket exists but nobody
    // reads; more events than a unix datagram queue holds), daemon gone (SIGTERM).
    let cycle = |label: &str, n: usize| -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let cid = format!("hce2e-plg-{label}{i}");
                let a = add(&cid);
                let r = a.ok(&format!("ADD {cid} ({label})"));
                let ip: IpNetwork = r["ips"][0]["address"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("address");
                assert!(pod_net.contains(ip.ip()));
                del(&cid, &r).ok(&format!("DEL {cid} ({label})"));
                a.elapsed
            })
            .collect()
    };
    let running = cycle("run", 5);
    d.signal(Signal::SIGSTOP);
    let stopped = cycle("stop", 8);
    d.signal(Signal::SIGCONT);
    d.signal(Signal::SIGTERM);
    let (st, _) = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM\n{}", d.tail()));
    assert_eq!(st.code(), Some(0), "{}", d.tail());
    let gone = cycle("gone", 5);
    eprintln!(
        "E2E-NUMBERS plg: ADD median with daemon {:?}, daemon SIGSTOPped {:?}, no daemon {:?} \
         (all: {running:?} / {stopped:?} / {gone:?})",
        median(&mut running.clone()),
        median(&mut stopped.clone()),
        median(&mut gone.clone()),
    );
    drop(pod);
}

// ---------------------------------------------------------------------------------------
// 3: signals
// ---------------------------------------------------------------------------------------

#[test]
fn sighup_reloads_keeping_env_override_and_sigterm_exits_cleanly() {
    let env_cidr = "10.250.3.0/24";
    let mut node = Node::new(
        "sig",
        NodeOpts {
            pod_cidr: None,
            ..NodeOpts::default()
        },
    );
    let mut d = node.start(&[("NODE_POD_CIDR", env_cidr)]);
    node.wait_ready(&mut d, READY_TIMEOUT);
    let st = node.status().expect("/status");
    assert_eq!(st["pod_cidr_source"], "env", "{st}");
    assert_eq!(routes_of(&st["pod_cidrs"]), vec![net(env_cidr)], "{st}");
    check_conflist(&node, &node.conflist().expect("conflist"), env_cidr, 1280);
    let sock = node.cfg.daemon_socket.clone();
    {
        use std::os::unix::fs::FileTypeExt;
        let md = std::fs::symlink_metadata(&sock).expect("event socket exists");
        assert!(md.file_type().is_socket(), "{} is a socket", sock.display());
    }

    // SIGHUP with a changed file: the change is applied, the env override survives.
    node.cfg.mtu = Some(1300);
    node.write_cfg();
    let log = d.log.clone();
    let reloads = move || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .to_lowercase()
            .matches("reloaded")
            .count()
    };
    let before = reloads();
    d.signal(Signal::SIGHUP);
    d.wait_for(Duration::from_secs(5), "a reload log line", || {
        if reloads() > before {
            Ok(())
        } else {
            Err("no new line saying reloaded".into())
        }
    });
    d.wait_for(
        Duration::from_secs(10),
        "the reloaded MTU in the conflist",
        || match node.conflist() {
            Some(c) if c["plugins"][0]["mtu"] == 1300 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    node.wait_ready(&mut d, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500)); // one more reconcile after the reload
    let r = node.get("/readyz").expect("/readyz");
    assert_eq!(
        r.status,
        200,
        "still ready after SIGHUP: {r:?}\n{}",
        d.tail()
    );
    let st = node.status().expect("/status");
    assert_eq!(st["pod_cidr_source"], "env", "env override kept: {st}");
    assert_eq!(routes_of(&st["pod_cidrs"]), vec![net(env_cidr)], "{st}");
    assert!(d.exited().is_none(), "the same process keeps running");
    assert!(
        !d.logs().to_lowercase().contains("reload failed"),
        "{}",
        d.tail()
    );

    // SIGTERM: exit 0 within 5 s, the event socket and the endpoint are gone.
    d.signal(Signal::SIGTERM);
    let (status, took) = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM\n{}", d.tail()));
    eprintln!("E2E-NUMBERS sig: exit after SIGTERM in {took:?}");
    assert_eq!(status.code(), Some(0), "exit status\n{}", d.tail());
    assert!(
        std::fs::symlink_metadata(&sock).is_err(),
        "the event socket {} is removed",
        sock.display()
    );
    assert!(node.get("/healthz").is_err(), "nothing listens any more");
}

// ---------------------------------------------------------------------------------------
// 4: fault injection
// ---------------------------------------------------------------------------------------

fn control_reason(body: &str) -> Option<String> {
    body.lines()
        .find(|l| l.to_lowercase().contains("control plane"))
        .map(str::to_owned)
}

#[test]
fn headscale_faults_and_prefs_drift() {
    let node = Node::new("flt", NodeOpts::default());
    let hs = &node.fakes.hs;
    let me = node.fakes.node_id();
    // Headscale answers 500 to everything from the start.
    hs.inject(Fault::ServerError, 100_000);
    let mut d = node.start(&[]);
    let body = node.wait_not_ready(
        &mut d,
        Duration::from_secs(20),
        "503 with a control-plane reason caused by the 500s",
        |b| {
            control_reason(b).is_some_and(|l| {
                !norm(&l).contains("notreconciled") && !norm(&l).contains("notyet")
            })
        },
    );
    eprintln!(
        "E2E-NUMBERS flt: 500 → not ready: {}",
        control_reason(&body).unwrap_or_default()
    );
    let h = node.get("/healthz").expect("/healthz");
    assert_eq!(h.status, 200, "liveness does not depend on Headscale");
    assert!(
        node.conflist().is_some(),
        "the conflist does not wait for Headscale"
    );
    assert_eq!(node.status().expect("/status")["conflist_written"], true);
    assert!(
        hs.exchanges().iter().any(|x| x.injected && x.status == 500),
        "the daemon did call the failing Headscale"
    );
    assert!(hs.node(me).expect("node").approved.is_empty());

    // The fault clears: ready again.
    hs.clear_faults();
    let t = Instant::now();
    node.wait_ready(&mut d, Duration::from_secs(20));
    eprintln!(
        "E2E-NUMBERS flt: ready {:?} after the 500s stopped",
        t.elapsed()
    );
    assert_eq!(hs.node(me).expect("node").approved, vec![net(POD)]);

    // Somebody flips RouteAll / NoSNAT / NoStatefulFiltering: repaired by the next reconcile.
    let mut p = node.fakes.ts.prefs();
    p.route_all = false;
    p.no_snat = false;
    p.no_stateful_filtering = OptBool::False;
    node.fakes.ts.set_prefs(p);
    let t = Instant::now();
    d.wait_for(Duration::from_secs(5), "prefs repaired", || {
        let p = node.fakes.ts.prefs();
        if p.route_all && p.no_snat && p.no_stateful_filtering == OptBool::True {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });
    eprintln!("E2E-NUMBERS flt: prefs repaired after {:?}", t.elapsed());
    assert!(node.fakes.ts.prefs().advertise_routes.contains(&net(POD)));
    node.wait_ready(&mut d, Duration::from_secs(10));

    // The API key is revoked (401) while the route needs approving again.
    hs.revoke_api_keys();
    hs.set_approved(me, &[]);
    let body = node.wait_not_ready(
        &mut d,
        Duration::from_secs(20),
        "503 with a refused/auth reason",
        |b| {
            control_reason(b).is_some_and(|l| {
                let l = norm(&l);
                l.contains("refused") || l.contains("unauthor") || l.contains("401")
            })
        },
    );
    eprintln!(
        "E2E-NUMBERS flt: 401 → {}",
        control_reason(&body).unwrap_or_default()
    );
    assert_eq!(node.get("/healthz").expect("/healthz").status, 200);
    assert!(node.conflist().is_some(), "the conflist stays");
    assert_secret_not_leaked(&node, &d, &[&body]);
}

/// Headscale answers, but only after 4 s, and `[headscale] timeout_secs = 1`: not ready with
/// an unreachable/timeout reason within a bounded time, liveness and the conflist unaffected;
/// ready again once Headscale answers promptly.
#[test]
fn headscale_timeouts_make_not_ready_without_blocking() {
    let mut node = Node::new("tmo", NodeOpts::default());
    node.cfg.headscale_extra = "timeout_secs = 1\n".into();
    node.write_cfg();
    let hs = &node.fakes.hs;
    hs.inject(Fault::Delay(Duration::from_secs(4)), 10_000);
    let mut d = node.start(&[]);
    let body = node.wait_not_ready(
        &mut d,
        Duration::from_secs(20),
        "503 with a control-plane reason caused by Headscale timeouts (timeout_secs = 1)",
        |b| {
            control_reason(b).is_some_and(|l| {
                let l = norm(&l);
                l.contains("unreachable") || l.contains("timedout") || l.contains("timeout")
            })
        },
    );
    eprintln!(
        "E2E-NUMBERS tmo: {:?} after start: {}",
        d.started.elapsed(),
        control_reason(&body).unwrap_or_default()
    );
    let t = Instant::now();
    let h = node.get("/healthz").expect("/healthz");
    assert_eq!(h.status, 200);
    eprintln!("E2E-NUMBERS tmo: /healthz answered in {:?}", t.elapsed());
    assert!(
        node.conflist().is_some(),
        "the conflist does not wait for Headscale"
    );
    hs.clear_faults();
    let t = Instant::now();
    node.wait_ready(&mut d, Duration::from_secs(30));
    eprintln!(
        "E2E-NUMBERS tmo: ready {:?} after Headscale answered promptly again",
        t.elapsed()
    );
}

#[test]
fn group_readable_api_key_file_is_refused() {
    let node = Node::new(
        "key",
        NodeOpts {
            key_mode: Some(0o640),
            ..NodeOpts::default()
        },
    );
    let mut d = node.start(&[]);
    // Either the daemon refuses to start, or it runs not ready with a refused reason; in both
    // cases it says why and never uses the key.
    let t0 = Instant::now();
    let why = loop {
        if let Some(st) = d.exited() {
            assert_ne!(st.code(), Some(0), "{}", d.tail());
            break d.logs();
        }
        if let Ok(r) = node.get("/readyz")
            && r.status == 503
            && let Some(l) = control_reason(&r.body)
            && norm(&l).contains("refused")
        {
            break r.body;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "neither refused nor exited within 15 s\n{}",
            d.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "E2E-NUMBERS key: {}",
        why.lines()
            .filter(|l| l.contains("mode"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let w = why.to_lowercase();
    assert!(
        w.contains("api-key") || w.contains("api key") || w.contains("api_key"),
        "names the key file: {why}"
    );
    assert!(
        ["mode", "permission", "readable", "0640", "640"]
            .iter()
            .any(|k| w.contains(k)),
        "says why: {why}"
    );
    assert!(
        node.fakes.hs.exchanges().iter().all(|x| x.method == "GET"),
        "no approval with a refused key"
    );
    assert!(
        !d.logs().contains(node.fakes.api_key.as_str()),
        "key not logged"
    );
}

// ---------------------------------------------------------------------------------------
// 5: autoApprovers mode
// ---------------------------------------------------------------------------------------

#[test]
fn auto_approvers_policy_approves_and_daemon_is_ready() {
    let node = Node::new(
        "aut",
        NodeOpts {
            auto_approvers: vec![net(CLUSTER)],
            approval: "auto-approvers",
            key_mode: None,
            ..NodeOpts::default()
        },
    );
    let me = node.fakes.node_id();
    let mut d = node.start(&[]);
    let t = node.wait_ready(&mut d, READY_TIMEOUT);
    eprintln!("E2E-NUMBERS aut: ready after {t:?}");
    assert_eq!(
        node.fakes.hs.node(me).expect("node").approved,
        vec![net(POD)]
    );
    assert!(
        node.fakes.hs.exchanges().iter().all(|x| x.method == "GET"),
        "no API writes without a key"
    );
    let p = node.fakes.ts.prefs();
    assert!(p.advertise_routes.contains(&net(POD)) && p.route_all && p.no_snat);
    check_status_output(&node, POD, "config", None);
}

#[test]
fn auto_approvers_without_policy_is_not_ready_but_writes_the_conflist() {
    let node = Node::new(
        "aun",
        NodeOpts {
            approval: "auto-approvers",
            key_mode: None,
            ..NodeOpts::default()
        },
    );
    let mut d = node.start(&[]);
    // The data plane does not wait for the approval.
    d.wait_for(
        Duration::from_secs(15),
        "conflist + masquerade while unapproved",
        || {
            let st = node.status()?;
            if node.conflist().is_some()
                && st["conflist_written"] == true
                && st["masquerade_ready"] == true
            {
                Ok(())
            } else {
                Err(format!("{st}"))
            }
        },
    );
    check_nft(&node, POD);
    let t0 = Instant::now();
    let body = node.wait_not_ready(
        &mut d,
        Duration::from_secs(40),
        "503 with a not-approved reason",
        |b| control_reason(b).is_some_and(|l| norm(&l).contains("notapproved")),
    );
    eprintln!(
        "E2E-NUMBERS aun: not-approved reported {:?} after the data plane ({:?} after start): {}",
        t0.elapsed(),
        d.started.elapsed(),
        control_reason(&body).unwrap_or_default()
    );
    assert!(
        node.fakes.ts.prefs().advertise_routes.contains(&net(POD)),
        "advertised"
    );
    let out = node.headcni_status();
    assert!(stdout(&out).contains("NOT READY"), "{}", show(&out));
    assert_ne!(out.status.code(), Some(0), "not ready: non-zero exit");
}

// ---------------------------------------------------------------------------------------
// 7: uninstall
// ---------------------------------------------------------------------------------------

#[test]
fn uninstall_withdraws_the_route_and_removes_table_and_conflist() {
    let node = Node::new(
        "uni",
        NodeOpts {
            prefs: Prefs {
                advertise_routes: vec![net(ADMIN)],
                ..default_prefs()
            },
            ..NodeOpts::default()
        },
    );
    let hs = &node.fakes.hs;
    let me = node.fakes.node_id();
    hs.set_approved(me, &[net(ADMIN)]); // an admin's approval, not ours
    let before = node.seed_conf_dir();
    let mut d = node.start(&[]);
    node.wait_ready(&mut d, READY_TIMEOUT);
    assert_eq!(
        sorted(hs.node(me).expect("node").approved),
        sorted(vec![net(ADMIN), net(POD)])
    );
    check_headscale_writes(&node, me, &[net(ADMIN)]);
    d.signal(Signal::SIGTERM);
    let (st, _) = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.tail());
    assert!(node.ns.nft_table("headcni").is_ok());

    let cfg = node.cfg_arg();
    let t = Instant::now();
    let out = node.cli(&["uninstall", "--config", &cfg]);
    eprintln!("E2E-NUMBERS uni: uninstall took {:?}", t.elapsed());
    assert_eq!(
        out.status.code(),
        Some(0),
        "headcni uninstall: {}",
        show(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(node.fakes.api_key.as_str())
            && !stdout(&out).contains(node.fakes.api_key.as_str()),
        "key not printed"
    );
    let prefs = node.fakes.ts.prefs();
    assert_eq!(
        prefs.advertise_routes,
        vec![net(ADMIN)],
        "PodCIDR withdrawn, admin route kept"
    );
    let n = hs.node(me).expect("node");
    assert_eq!(
        n.approved,
        vec![net(ADMIN)],
        "our approval withdrawn, the admin's kept: {n:?}"
    );
    assert!(!n.announced.contains(&net(POD)), "{n:?}");
    assert!(!n.primary.contains(&net(POD)), "{n:?}");
    let gone = node.ns.nft_table("headcni");
    assert!(gone.is_err(), "inet headcni is gone: {gone:?}");
    assert!(!node.conflist_path().exists(), "conflist removed");
    node.assert_conf_dir_untouched(&before, false);
}

// ---------------------------------------------------------------------------------------
// 8: daemon mode refuses to run next to a host tailscaled
// ---------------------------------------------------------------------------------------

#[test]
fn daemon_mode_refuses_when_a_host_tailscaled_answers() {
    let mut node = Node::new("dmr", NodeOpts::default());
    // The host socket path of daemon mode's check is not configurable (it is the constant
    // /var/run/tailscale/tailscaled.sock): the daemon runs in a private mount namespace where
    // /run/tailscale is the fake tailscaled's directory. The host's path is never touched.
    let tmp = node.tmp.path().to_path_buf();
    node.cfg.mode = "daemon".into();
    node.cfg.ts_socket = tmp.join("dedicated").join("tailscaled.sock");
    node.cfg.interface = "headcni01".into();
    node.cfg.tailscale_extra = format!(
        "tailscaled_path = {}\nstate_dir = {}\n",
        toml::Value::String(tmp.join("no-such-tailscaled").display().to_string()),
        toml::Value::String(tmp.join("ts-state").display().to_string()),
    );
    node.write_cfg();
    let cfg = node.cfg_arg();
    let mut d = Daemon::spawn_with(
        &node.ns,
        &["daemon", "--config", &cfg],
        &[],
        &tmp.join("daemon-dmr.log"),
        Some(&tmp.join("ts")),
    );
    let (st, took) = d.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "daemon mode kept running next to a host tailscaled\n{}",
            d.tail()
        )
    });
    let log = d.logs();
    eprintln!(
        "E2E-NUMBERS dmr: refused in {took:?} with {st}; LocalAPI requests to the host tailscaled: {}",
        node.fakes.ts.requests().len()
    );
    assert_ne!(st.code(), Some(0), "non-zero exit\n{log}");
    assert!(
        !node.fakes.ts.requests().is_empty(),
        "the daemon asked the tailscaled at the host path (the test's mount namespace works)"
    );
    let l = log.to_lowercase();
    assert!(
        l.contains("tailscaled") && (l.contains("host") || l.contains("already")),
        "says why: {log}"
    );
    assert!(
        !node.cfg.ts_socket.exists() && !tmp.join("ts-state").join("tailscaled.state").exists(),
        "no dedicated tailscaled was started"
    );
}

// ---------------------------------------------------------------------------------------
// CNI STATUS from the daemon's readiness file (issue 11 item 6)
// ---------------------------------------------------------------------------------------

/// STATUS answers 51 (limited connectivity) while this node's route is not approved, 0 once
/// an admin approves it, and 51 again once the daemon has stopped (it removes its readiness
/// file). The plugin is exec'd with the configuration a runtime derives from the conflist.
#[test]
fn status_is_51_until_the_route_is_approved() {
    let node = Node::new(
        "sts",
        NodeOpts {
            approval: "auto-approvers",
            key_mode: None,
            ..NodeOpts::default()
        },
    );
    let mut d = node.start(&[]);
    node.wait_not_ready(
        &mut d,
        Duration::from_secs(40),
        "503 with a not-approved reason",
        |b| control_reason(b).is_some_and(|l| norm(&l).contains("notapproved")),
    );
    let cl = node.conflist().expect("conflist");
    let mut conf = cl["plugins"][0].clone();
    conf["name"] = cl["name"].clone();
    // STATUS exists from 1.1.0 on. (Here the chained portmap is not in bin_dir, so the
    // conflist offers at most 1.0.0; a runtime calls STATUS only when every chained plugin
    // speaks 1.1.0. The plugin's answer is what this test is about.)
    conf["cniVersion"] = json!("1.1.0");
    let bin = node.cfg.bin_dir.clone();
    let status = || plugin(&node.ns, "STATUS", "", "", "", &bin, &conf);

    // The file is rewritten every pass: wait until a pass has written the reason.
    d.wait_for(
        Duration::from_secs(10),
        "STATUS 51 naming the approval",
        || {
            let out = status();
            let e: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            if out.code == Some(51)
                && e["code"] == 51
                && e["details"]
                    .as_str()
                    .is_some_and(|s| norm(s).contains("notapproved"))
            {
                Ok(())
            } else {
                Err(format!("{:?}: {}", out.code, out.stdout))
            }
        },
    );

    let me = node.fakes.node_id();
    node.fakes.hs.set_approved(me, &[net(POD)]); // an admin approves the route
    node.wait_ready(&mut d, READY_TIMEOUT);
    d.wait_for(Duration::from_secs(10), "STATUS 0 once approved", || {
        let out = status();
        if out.code == Some(0) && out.stdout.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}: {}", out.code, out.stdout))
        }
    });

    d.signal(Signal::SIGTERM);
    let (st, _) = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.tail());
    let out = status();
    assert_eq!(out.code, Some(51), "daemon gone: {}", out.stdout);
    assert!(out.stdout.contains("not running"), "{}", out.stdout);
}
