//! Issue 9 item 6: the out-of-tree plugin example (`examples/out_of_tree_plugin.rs`, built
//! on the entry point with its own namespace backend) runs as a runtime runs a plugin:
//! exec'ed with the `CNI_*` environment and the configuration on stdin.
//!
//! `cargo test` builds the examples before it runs the tests; when only this test was
//! built (`cargo test --test out_of_tree_plugin`), it builds the example first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const EXAMPLE: &str = "out_of_tree_plugin";

/// The example binary: `<target>/<profile>/examples/out_of_tree_plugin`, next to this test's
/// `deps/` directory; built with the running cargo when it is not there.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("examples").join(EXAMPLE);
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "headcni-plugin", "--example", EXAMPLE])
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "building the example failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs the example with the six `CNI_*` variables (and nothing else from this process's
/// environment) and `stdin`.
fn run(verb: &str, cid: &str, netns: &Path, stdin: &[u8]) -> Out {
    let mut child = Command::new(example())
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for the example");
    Out {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn conf(data_dir: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": "1.1.0",
        "name": "dry-run-net",
        "type": "dry-run-cni",
        "bridge": "dr0",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipam": {
            "type": "headcni-ipam",
            "ranges": [[{"subnet": "10.199.0.0/24"}]],
            "dataDir": data_dir,
        },
    }))
    .expect("conf serialises")
}

#[test]
fn out_of_tree_plugin_answers_add_del_and_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("ipam");
    let netns = tmp.path().join("netns-a");
    std::fs::write(&netns, b"").expect("netns stand-in");
    let conf = conf(&data);

    // VERSION: answered before the configuration is looked at.
    let version = run("VERSION", "", &netns, br#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(version.code, 0, "{}", version.stderr);
    let v = version.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    let supported = v["supportedVersions"]
        .as_array()
        .expect("supportedVersions");
    assert!(supported.contains(&json!("1.1.0")) && supported.contains(&json!("0.4.0")));

    // ADD: a full result from the example's own backend and HeadCNI's in-process IPAM.
    let add = run("ADD", "cid-a", &netns, &conf);
    assert_eq!(add.code, 0, "stdout {} stderr {}", add.stdout, add.stderr);
    let r = add.json();
    assert_eq!(r["cniVersion"], "1.1.0");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 3, "{r}");
    assert_eq!(ifaces[0]["name"], "dr0");
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], netns.display().to_string());
    assert_eq!(r["ips"][0]["address"], "10.199.0.2/24", "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.199.0.1");
    assert_eq!(r["ips"][0]["interface"], 2);
    assert!(
        r["routes"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|x| x["dst"] == "0.0.0.0/0")),
        "{r}"
    );
    // the backend logged what it did, on stderr only
    assert!(
        add.stderr.contains("dry-run: [host] create bridge dr0"),
        "{}",
        add.stderr
    );

    // A second attachment gets the next address (the reservation is real).
    let add_b = run("ADD", "cid-b", &netns, &conf);
    assert_eq!(add_b.code, 0, "{}", add_b.stderr);
    assert_eq!(add_b.json()["ips"][0]["address"], "10.199.0.3/24");

    // DEL: success is an empty stdout; the reservation (host-local layout: one file per
    // address under <dataDir>/<name>/) is released, the other one kept.
    let store = data.join("dry-run-net");
    assert!(store.join("10.199.0.2").is_file());
    let del = run("DEL", "cid-a", &netns, &conf);
    assert_eq!(del.code, 0, "stdout {} stderr {}", del.stdout, del.stderr);
    assert!(del.stdout.is_empty(), "{:?}", del.stdout);
    assert!(
        !store.join("10.199.0.2").exists(),
        "reservation of cid-a kept"
    );
    assert!(
        store.join("10.199.0.3").is_file(),
        "reservation of cid-b lost"
    );
    // DEL is idempotent
    assert_eq!(run("DEL", "cid-a", &netns, &conf).code, 0);
}

#[test]
fn out_of_tree_plugin_answers_errors_with_the_spec_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-netns");
    let conf = conf(&tmp.path().join("ipam"));

    // ADD into a namespace that does not exist: code 3 from the example's backend.
    let add = run("ADD", "cid-a", &missing, &conf);
    assert_eq!(add.code, 3, "{}", add.stdout);
    let e = add.json();
    assert_eq!(e["code"], 3);
    assert_eq!(e["cniVersion"], "1.1.0");
    assert!(e["msg"].as_str().is_some_and(|m| !m.is_empty()));

    // The version gate: GC is 1.1.0 only (code 1, incompatible CNI versions).
    let old =
        br#"{"cniVersion":"0.4.0","name":"n","type":"dry-run-cni","ipam":{"type":"headcni-ipam"}}"#;
    let gc = run("GC", "", &missing, old);
    assert_eq!(gc.code, 1, "{}", gc.stdout);
    assert_eq!(gc.json()["cniVersion"], "0.4.0");
}
