//! The CNI protocol surface of the `headcni` binary: VERSION, and malformed requests (every
//! one must give the documented error code as error JSON on stdout, never a panic, and must
//! leave nothing behind).

mod common;

use common::{CniEnv, Net, Out, Rng};
use serde_json::{Value, json};

const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn supported(v: &Value) -> Vec<String> {
    v["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedVersions in {v}"))
        .iter()
        .map(|s| s.as_str().expect("version string").to_owned())
        .collect()
}

#[test]
fn version_echoes_request_and_lists_supported_versions() {
    let net = Net::new("ver", 1);
    let env = CniEnv::global("VERSION", "");
    for req in ALL_VERSIONS {
        let out = common::headcni(
            &net.node,
            &env,
            json!({"cniVersion": req}).to_string().as_bytes(),
        );
        let v = out.ok(&format!("VERSION {req}"));
        assert_eq!(v["cniVersion"], req, "VERSION must echo the request: {out}");
        let mut got = supported(&v);
        got.sort();
        assert_eq!(got, ALL_VERSIONS, "supportedVersions: {out}");
    }
    // A full network configuration works too (libcni sends the plugin's config).
    let out = net.run(&env, &net.conf("0.4.0"));
    assert_eq!(out.ok("VERSION with a full conf")["cniVersion"], "0.4.0");

    // Empty stdin: still a VERSION reply.
    let out = common::headcni(&net.node, &env, b"");
    let v = out.ok("VERSION with empty stdin");
    let got = supported(&v);
    for want in ALL_VERSIONS {
        assert!(got.iter().any(|g| g == want), "{want} missing: {out}");
    }
    let echoed = v["cniVersion"].as_str().expect("cniVersion string");
    assert!(
        got.iter().any(|g| g == echoed),
        "cniVersion {echoed} not supported: {out}"
    );

    // VERSION needs nothing but CNI_COMMAND: unset attachment variables are fine.
    let out = common::headcni(
        &net.node,
        &CniEnv::global("VERSION", "/nonexistent"),
        b"{\"cniVersion\":\"1.0.0\"}",
    );
    assert_eq!(
        out.ok("VERSION with a bogus CNI_PATH")["cniVersion"],
        "1.0.0"
    );
}

/// One malformed request and the code it must give.
struct Case {
    what: &'static str,
    env: CniEnv,
    conf: Vec<u8>,
    code: u64,
}

#[test]
fn malformed_requests_give_the_documented_codes() {
    let net = Net::new("malf", 40);
    let pod = net.pod("pod");
    let good = net.conf("1.1.0");
    let cp = net.cni_path();
    let pp = pod.path_str();
    let add = || CniEnv::attach("ADD", "cid-malformed", &pp, "eth0", &cp);
    let conf_with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string().into_bytes()
    };
    let good_b = good.to_string().into_bytes();
    let not_netns = net.tmp.path().join("not-a-netns");
    std::fs::write(&not_netns, b"plain file").expect("write file");

    let mut cases = vec![
        Case {
            what: "missing CNI_COMMAND (empty, the other variables set)",
            env: CniEnv {
                command: String::new(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "unknown CNI_COMMAND",
            env: CniEnv {
                command: "FROB".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "lower-case CNI_COMMAND",
            env: CniEnv {
                command: "add".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "missing CNI_CONTAINERID on ADD",
            env: CniEnv {
                container_id: String::new(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "missing CNI_IFNAME on ADD",
            env: CniEnv {
                ifname: String::new(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "missing CNI_NETNS on ADD",
            env: CniEnv {
                netns: String::new(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "missing CNI_NETNS on CHECK",
            env: CniEnv {
                command: "CHECK".into(),
                netns: String::new(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "16-byte CNI_IFNAME",
            env: CniEnv {
                ifname: "abcdefghijklmnop".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "CNI_IFNAME with '/'",
            env: CniEnv {
                ifname: "et/h0".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "CNI_IFNAME '..'",
            env: CniEnv {
                ifname: "..".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "container id starting with '-'",
            env: CniEnv {
                container_id: "-bad".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "container id with '/'",
            env: CniEnv {
                container_id: "a/b".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "container id with a space",
            env: CniEnv {
                container_id: "a b".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "CNI_ARGS unknown key without IgnoreUnknown",
            env: add().with_args("FOO=bar"),
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "CNI_ARGS IP=notanip",
            env: add().with_args("IgnoreUnknown=1;IP=notanip"),
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "stdin not JSON",
            env: add(),
            conf: b"this is not json".to_vec(),
            code: 6,
        },
        Case {
            what: "stdin truncated JSON",
            env: add(),
            conf: good_b[..good_b.len() / 2].to_vec(),
            code: 6,
        },
        Case {
            what: "cniVersion 99.0.0",
            env: add(),
            conf: conf_with(&|c| c["cniVersion"] = json!("99.0.0")),
            code: 1,
        },
        Case {
            what: "missing name",
            env: add(),
            conf: conf_with(&|c| {
                c.as_object_mut().expect("object").remove("name");
            }),
            code: 7,
        },
        Case {
            what: "name with '/'",
            env: add(),
            conf: conf_with(&|c| c["name"] = json!("a/b")),
            code: 7,
        },
        Case {
            what: "mtu 10",
            env: add(),
            conf: conf_with(&|c| c["mtu"] = json!(10)),
            code: 7,
        },
        Case {
            what: "mtu 70000",
            env: add(),
            conf: conf_with(&|c| c["mtu"] = json!(70000)),
            code: 7,
        },
        Case {
            what: "missing ipam",
            env: add(),
            conf: conf_with(&|c| {
                c.as_object_mut().expect("object").remove("ipam");
            }),
            code: 7,
        },
        Case {
            what: "ipam without type",
            env: add(),
            conf: conf_with(&|c| {
                c["ipam"].as_object_mut().expect("object").remove("type");
            }),
            code: 7,
        },
        Case {
            what: "overlapping ranges",
            env: add(),
            conf: conf_with(&|c| {
                c["ipam"]["ranges"] =
                    json!([[{"subnet": "10.123.40.0/24"}], [{"subnet": "10.123.40.0/25"}]])
            }),
            code: 7,
        },
        Case {
            what: "subnet with host bits set",
            env: add(),
            conf: conf_with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.123.40.5/24"}]])),
            code: 7,
        },
        Case {
            what: "16-byte bridge name",
            env: add(),
            conf: conf_with(&|c| c["bridge"] = json!("abcdefghijklmnop")),
            code: 7,
        },
        Case {
            what: "CNI_NETNS is a plain file",
            env: CniEnv {
                netns: not_netns.display().to_string(),
                ..add()
            },
            conf: good_b.clone(),
            code: 3,
        },
        Case {
            what: "CNI_NETNS does not exist",
            env: CniEnv {
                netns: "/run/netns/hct-malf-does-not-exist".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 3,
        },
        Case {
            what: "CNI_NETNS is the plugin's own netns (the node's named netns)",
            env: CniEnv {
                netns: net.node.path_str(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "CNI_NETNS is /proc/self/ns/net",
            env: CniEnv {
                netns: "/proc/self/ns/net".into(),
                ..add()
            },
            conf: good_b.clone(),
            code: 4,
        },
        Case {
            what: "CHECK with cniVersion 0.3.1",
            env: CniEnv {
                command: "CHECK".into(),
                ..add()
            },
            conf: conf_with(&|c| c["cniVersion"] = json!("0.3.1")),
            code: 1,
        },
        Case {
            what: "STATUS with cniVersion 1.0.0",
            env: CniEnv::global("STATUS", &cp),
            conf: conf_with(&|c| c["cniVersion"] = json!("1.0.0")),
            code: 1,
        },
        Case {
            what: "GC with cniVersion 1.0.0",
            env: CniEnv::global("GC", &cp),
            conf: conf_with(&|c| c["cniVersion"] = json!("1.0.0")),
            code: 1,
        },
    ];
    // The same environment errors on DEL (container id / ifname are required there too).
    cases.push(Case {
        what: "missing CNI_CONTAINERID on DEL",
        env: CniEnv {
            command: "DEL".into(),
            container_id: String::new(),
            ..add()
        },
        conf: good_b.clone(),
        code: 4,
    });

    let mut failures = Vec::new();
    for c in &cases {
        let out = common::headcni(&net.node, &c.env, &c.conf);
        if let Err(e) = out.check_err(Some(c.code)) {
            failures.push(format!("- {} (want code {}): {e}: {out}", c.what, c.code));
        }
    }
    // Nothing of all that may have left state behind.
    assert!(
        net.reservations().is_empty(),
        "malformed requests reserved addresses: {:?}",
        net.reservations()
    );
    assert!(
        pod.link("eth0").is_none(),
        "malformed requests created eth0 in the pod"
    );
    assert!(
        net.node.veths().is_empty(),
        "malformed requests left veths: {:?}",
        net.node.veths()
    );
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A random JSON value of bounded depth.
fn random_json(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 1),
        2 => json!(rng.next() as i64),
        3 => json!(*rng.pick(&[
            "",
            "1.1.0",
            "0.3.1",
            "headcni",
            "eth0",
            "10.123.41.0/24",
            "\u{0}",
            "ü",
            "-1",
            "host-local"
        ])),
        4 => json!(f64::from(rng.below(1000) as u32) / 7.0),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "cniVersion",
                "name",
                "type",
                "bridge",
                "mtu",
                "ipam",
                "ranges",
                "subnet",
                "routes",
                "dns",
                "prevResult",
                "runtimeConfig",
                "args",
                "isGateway",
                "cni.dev/valid-attachments",
                "strategy",
                "hairpinMode",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(5) {
                m.insert((*rng.pick(&keys)).to_owned(), random_json(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// A request of random shape. The IPAM `dataDir` is always the test's own, so even a request
/// that happens to be valid cannot touch the host's stores.
fn random_request(rng: &mut Rng, net: &Net, pod_path: &str) -> (CniEnv, Vec<u8>) {
    // (An empty CNI_COMMAND is covered by the malformed-request table.)
    let commands = [
        "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "ADDD", "\u{7f}", "DEL\n",
    ];
    let ids = ["c1", "", "-x", "a/b", "abc.def_g-h", "ü", "x y"];
    let ifnames = ["eth0", "", "abcdefghijklmnopq", "..", "e:0", "net1"];
    let netns = [
        pod_path,
        "",
        "/proc/self/ns/net",
        "/nonexistent",
        "/dev/null",
        "/proc/self/ns/mnt",
    ];
    let args = [
        "",
        "IgnoreUnknown=1",
        "IP=1.2.3",
        "IgnoreUnknown=1;IP=10.123.41.300",
        "=;=;",
        "A=B=C",
        "IgnoreUnknown=1;MAC=zz",
    ];
    let env = if rng.below(2) == 0 {
        // A well-formed environment, so that the configuration parsing is what is tested.
        let command = *rng.pick(&["ADD", "DEL", "CHECK", "GC", "STATUS"]);
        CniEnv::attach(command, "c1", pod_path, "eth0", &net.cni_path())
    } else {
        CniEnv {
            command: (*rng.pick(&commands)).to_owned(),
            container_id: (*rng.pick(&ids)).to_owned(),
            netns: (*rng.pick(&netns)).to_owned(),
            ifname: (*rng.pick(&ifnames)).to_owned(),
            args: (*rng.pick(&args)).to_owned(),
            path: net.cni_path(),
        }
    };
    let stdin = match rng.below(4) {
        0 => rng.bytes(200),
        1 => random_json(rng, 3).to_string().into_bytes(),
        2 => {
            // A valid configuration with random values in random keys (never dataDir).
            let version: &str = rng.pick::<&str>(&ALL_VERSIONS);
            let mut c = net.conf(version);
            let key = *rng.pick(&[
                "cniVersion",
                "name",
                "type",
                "bridge",
                "mtu",
                "isGateway",
                "dns",
                "prevResult",
                "runtimeConfig",
                "args",
            ]);
            c[key] = random_json(rng, 2);
            if rng.below(2) == 0 {
                let k = *rng.pick(&[
                    "ranges",
                    "routes",
                    "strategy",
                    "resolvConf",
                    "subnet",
                    "type",
                ]);
                c["ipam"][k] = random_json(rng, 3);
            }
            c.to_string().into_bytes()
        }
        _ => {
            // A valid configuration, byte-mangled outside `"dataDir":"..."` (a mangled key
            // or path could make a valid request write outside the test's temp dir).
            let mut b = net.conf("1.1.0").to_string().into_bytes();
            let text = String::from_utf8_lossy(&b).into_owned();
            let from = text.find("\"dataDir\":").expect("dataDir in the conf");
            let to = from + 11 + text[from + 11..].find('"').expect("dataDir value") + 1;
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = rng.below(b.len() as u64) as usize;
                if !(from..=to).contains(&i) {
                    b[i] = rng.next() as u8;
                }
            }
            let cut = b.len() - rng.below(b.len() as u64 / 3) as usize;
            b.truncate(cut);
            b
        }
    };
    (env, stdin)
}

#[test]
fn random_garbage_never_panics_and_always_answers_in_protocol() {
    let net = Net::new("garb", 41);
    let pod = net.pod("pod");
    let mut rng = Rng(0x4845_4144_434e_4931 ^ u64::from(std::process::id()));
    let mut failures = Vec::new();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..120 {
        let (env, stdin) = random_request(&mut rng, &net, &pod.path_str());
        let out: Out = common::headcni(&net.node, &env, &stdin);
        let desc = format!(
            "#{i} env {env:?} stdin {:?}",
            String::from_utf8_lossy(&stdin)
        );
        let code = serde_json::from_str::<Value>(out.stdout.trim())
            .ok()
            .and_then(|v| v["code"].as_u64());
        *codes
            .entry(format!("exit {:?} code {code:?}", out.code))
            .or_default() += 1;
        if out.stderr.contains("panicked") || out.signal.is_some() {
            failures.push(format!("{desc}: panic/signal: {out}"));
            continue;
        }
        let verdict = if out.code == Some(0) {
            // success: nothing (DEL/CHECK/GC/STATUS) or one JSON object (ADD/VERSION)
            match serde_json::from_str::<Value>(out.stdout.trim()) {
                _ if out.stdout.trim().is_empty() => Ok(()),
                Ok(v) if v.is_object() => Ok(()),
                _ => Err("success output is not one JSON object".to_owned()),
            }
        } else {
            out.check_err(None).and_then(|v| {
                if v["code"] == 199 {
                    Err("internal error (a bug)".to_owned())
                } else {
                    Ok(())
                }
            })
        };
        if let Err(e) = verdict {
            failures.push(format!("{desc}: {e}: {out}"));
        }
    }
    eprintln!("outcomes of the garbage requests: {codes:?}");
    // The generator must reach several distinct error paths, or it tests nothing.
    assert!(
        codes.len() >= 4,
        "the garbage requests hit too few distinct outcomes: {codes:?}"
    );
    assert!(
        failures.is_empty(),
        "{} garbage requests misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Issue 9 item 3: the entry point returns its warnings and `headcni` writes them to stderr
/// (`headcni: <message>`); stdout stays exactly the protocol's one JSON document.
#[test]
fn warnings_go_to_stderr_and_stdout_stays_the_result() {
    let net = Net::new("warn", 42);
    let pod = net.pod("pod");
    let mut conf = net.conf("1.1.0");
    conf["ipMasq"] = json!(true);
    let (cp, pp) = (net.cni_path(), pod.path_str());
    let add = common::headcni(
        &net.node,
        &CniEnv::attach("ADD", "cid-warn", &pp, "eth0", &cp),
        conf.to_string().as_bytes(),
    );
    let r = add.ok("ADD with ipMasq");
    assert_eq!(r["cniVersion"], "1.1.0", "{add}");
    assert!(
        add.stderr.contains(
            "headcni: ipMasq is ignored: masquerade is done by the node daemon's nftables table"
        ),
        "{add}"
    );
    let del = common::headcni(
        &net.node,
        &CniEnv::attach("DEL", "cid-warn", &pp, "eth0", &cp),
        conf.to_string().as_bytes(),
    );
    assert_eq!(del.ok("DEL"), Value::Null, "{del}");
}
