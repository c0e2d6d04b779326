//! The plugin's whole entry point (`headcni_plugin::entry`: environment + stdin → stdout +
//! exit status) on the recording fake namespace backend, all verbs, both roles.
//!
//! Input: up to 4 requests separated by a line `%%`, run in order against one fake world
//! and one IPAM store. A request is header lines `KEY=VALUE` (raw bytes: `CNI_*` variables,
//! or `ROLE=ipam` for `headcni-ipam`), an empty line, then stdin. Seeds:
//! `fuzz/corpus/plugin_entry/`.
//!
//! For safety the request is confined before it runs: `CNI_PATH` is an empty temp dir (no
//! delegate can be found, so nothing is exec'ed), and when stdin is a JSON object an
//! absolute `ipam.dataDir` becomes the run's temp dir (an empty or relative one is kept: it
//! must be refused), `ipam.resolvConf` is dropped and `daemonSocket` points nowhere.
//!
//! Checks: never panics (libfuzzer aborts on any panic, also a caught one; a caught panic
//! would also be code 199); stdout is empty only for a successful DEL/CHECK/GC/STATUS,
//! otherwise exactly one JSON document; exit status 0 iff that document is not an error;
//! an error has `code` (= exit status when it fits a byte, else 1), `msg` and a
//! `cniVersion` of at most 64 bytes.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use headcni_plugin::{Role, entry};
use headcni_core::plugin::testing::FakeNs;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static RUN: AtomicU64 = AtomicU64::new(0);

struct Request {
    role: Role,
    vars: Vec<(OsString, OsString)>,
    stdin: Vec<u8>,
}

fn parse_request(bytes: &[u8]) -> Request {
    let (head, stdin) = match bytes.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&bytes[..i], &bytes[i + 2..]),
        None => (&b""[..], bytes),
    };
    let mut role = Role::Main;
    let mut vars = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else { continue };
        let (k, v) = (&line[..eq], &line[eq + 1..]);
        if k == b"ROLE" {
            if v == b"ipam" {
                role = Role::Ipam;
            }
            continue;
        }
        vars.push((OsString::from_vec(k.to_vec()), OsString::from_vec(v.to_vec())));
    }
    Request { role, vars, stdin: stdin.to_vec() }
}

/// Confines a request to `root` (see the module docs).
fn confine(req: &mut Request, root: &Path) {
    req.vars.retain(|(k, _)| k != "CNI_PATH");
    req.vars.push(("CNI_PATH".into(), root.join("bin").into_os_string()));
    let Ok(Value::Object(mut conf)) = serde_json::from_slice::<Value>(&req.stdin) else {
        return;
    };
    conf.insert("daemonSocket".into(), Value::String(root.join("none.sock").display().to_string()));
    if let Some(Value::Object(ipam)) = conf.get_mut("ipam") {
        // An empty or relative dataDir stays: the plugin must refuse it (code 7) before
        // creating anything.
        let relative = ipam
            .get("dataDir")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.starts_with('/'));
        if !relative {
            ipam.insert("dataDir".into(), Value::String(root.join("data").display().to_string()));
        }
        ipam.remove("resolvConf");
    }
    req.stdin = serde_json::to_vec(&Value::Object(conf)).expect("a JSON value serialises");
}

fn command(req: &Request) -> Option<&[u8]> {
    req.vars
        .iter()
        .rev()
        .find(|(k, _)| k == "CNI_COMMAND")
        .map(|(_, v)| v.as_encoded_bytes())
}

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir().join(format!(
        "hc-fuzz-entry-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(root.join("bin")).expect("temp dir");
    let ns = FakeNs::default();
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while parts.len() < 3 {
        match rest.windows(4).position(|w| w == b"\n%%\n") {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + 4..];
            }
            None => break,
        }
    }
    parts.push(rest);
    for part in parts {
        let mut req = parse_request(part);
        confine(&mut req, &root);
        let verb = command(&req).map(<[u8]>::to_vec);
        let answer = entry(req.role, req.vars, &req.stdin, &ns);
        if answer.stdout.is_empty() {
            assert_eq!(answer.exit_code, 0, "no output but a failure");
            assert!(
                matches!(verb.as_deref(), Some(b"DEL" | b"CHECK" | b"GC" | b"STATUS")),
                "empty success output for {verb:?}"
            );
            continue;
        }
        let v: Value = serde_json::from_slice(&answer.stdout).expect("stdout is one JSON document");
        let is_error = v.get("code").is_some() && v.get("msg").is_some();
        assert_eq!(answer.exit_code == 0, !is_error, "exit {} with {v}", answer.exit_code);
        if is_error {
            let code = v["code"].as_u64().expect("numeric code");
            assert_ne!(code, 199, "internal error (a caught panic?): {v}");
            let want = if (1..=255).contains(&code) { code as i32 } else { 1 };
            assert_eq!(answer.exit_code, want, "{v}");
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            let ver = v["cniVersion"].as_str().expect("cniVersion");
            assert!(ver.len() <= 64, "{v}");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
});
