//! Shared harness of the CNI protocol integration tests.
//!
//! Every test execs the built `headcni` binary exactly as a runtime does (all six `CNI_*`
//! variables, empty strings where unused; the configuration on stdin; the result or error
//! JSON on stdout; the exit status checked) **inside a per-test "node" network namespace**
//! (`pre_exec` + `setns(CLONE_NEWNET)`, like `headcni lab`), so the bridge never touches the
//! host's network. Every namespace, temp dir and store is unique per test and removed by a
//! Drop guard, also when the test panics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The plugin binary under test.
pub const EXE: &str = env!("CARGO_BIN_EXE_headcni");

/// Directory of Debian's reference plugins (package containernetworking-plugins).
pub const REF_CNI_DIR: &str = "/usr/lib/cni";

/// The six CNI variables libcni always sets.
pub const CNI_VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

// ---------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------

/// A named network namespace `/run/netns/<name>`, deleted on drop (the one fixture, in
/// crate headcni-testkit).
pub use headcni_testkit::Ns;

// ---------------------------------------------------------------------------------------
// Running a plugin as a runtime does
// ---------------------------------------------------------------------------------------

/// One plugin invocation's environment (all six `CNI_*` variables; empty = unused).
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl CniEnv {
    /// An attachment verb's environment.
    pub fn attach(command: &str, cid: &str, netns: &str, ifname: &str, path: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: cid.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: String::new(),
            path: path.into(),
        }
    }

    /// A STATUS/GC/VERSION environment (attachment variables empty, as libcni sends them).
    pub fn global(command: &str, path: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            path: path.into(),
            ..CniEnv::default()
        }
    }

    pub fn with_args(mut self, args: &str) -> CniEnv {
        self.args = args.into();
        self
    }

    fn pairs(&self) -> [(&'static str, &str); 6] {
        [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ]
    }
}

/// What a plugin invocation produced.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    /// stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// Asserts exit 0 and returns stdout as JSON (or `Null` when stdout is empty).
    pub fn ok(&self, what: &str) -> Value {
        assert_eq!(self.code, Some(0), "{what}: expected success, got {self}");
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: the plugin panicked: {self}"
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Checks a CNI error: non-zero exit, an error JSON on stdout (`code`, non-empty `msg`,
    /// `cniVersion`), exit status = code when it fits in a byte (else 1), no panic, and the
    /// exact `code` when given. Returns the JSON or what is wrong.
    pub fn check_err(&self, code: Option<u64>) -> Result<Value, String> {
        if self.signal.is_some() {
            return Err("killed by a signal".into());
        }
        if self.code == Some(0) {
            return Err("expected an error, got success".into());
        }
        if self.stderr.contains("panicked") {
            return Err("the plugin panicked".into());
        }
        let v: Value = serde_json::from_str(self.stdout.trim())
            .map_err(|e| format!("stdout is not an error JSON ({e})"))?;
        let got = v["code"].as_u64().ok_or("error JSON has no numeric code")?;
        if v["msg"].as_str().is_none_or(str::is_empty) {
            return Err("error JSON has no msg".into());
        }
        if !v["cniVersion"].is_string() {
            return Err("error JSON has no cniVersion".into());
        }
        let want_exit = if got <= 255 { got as i32 } else { 1 };
        if self.code != Some(want_exit) {
            return Err(format!("exit status is not the error code {got}"));
        }
        if let Some(c) = code
            && got != c
        {
            return Err(format!("wrong error code {got}, want {c}"));
        }
        Ok(v)
    }

    /// Asserts an error of a Go reference plugin: non-zero exit and `{"code", "msg"}` on
    /// stdout (skel 1.1.1 writes no `cniVersion` in errors and always exits 1).
    pub fn ref_err(&self, what: &str) -> Value {
        assert_ne!(self.code, Some(0), "{what}: expected an error: {self}");
        let v: Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: stdout is not an error JSON ({e}): {self}"));
        assert!(v["code"].is_u64(), "{what}: no code: {self}");
        assert!(v["msg"].is_string(), "{what}: no msg: {self}");
        v
    }

    /// Asserts a CNI error (see [`Out::check_err`]); returns the JSON.
    pub fn err(&self, what: &str) -> Value {
        self.check_err(None)
            .unwrap_or_else(|e| panic!("{what}: {e}: {self}"))
    }

    /// Asserts a CNI error with this exact code; returns the JSON.
    pub fn err_code(&self, code: u64, what: &str) -> Value {
        self.check_err(Some(code))
            .unwrap_or_else(|e| panic!("{what}: {e}: {self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} signal {:?} after {:?}; stdout: {:?}; stderr: {:?}",
            self.code,
            self.signal,
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Spawns `binary` (with `argv0` as its argv[0]) inside the network namespace `node` with
/// the given CNI environment, and writes `stdin` to it (then closes it).
pub fn spawn_in(node: &Ns, binary: &Path, env: &CniEnv, stdin: &[u8]) -> (Child, Instant) {
    let (mut cmd, node_file) = node.command(binary);
    for (k, v) in env.pairs() {
        cmd.env(k, v);
    }
    cmd.env_remove("HEADCNI_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
    drop(node_file);
    if let Some(mut s) = child.stdin.take() {
        // A plugin that exits (or is killed) before reading closes the pipe: ignore EPIPE.
        let _ = s.write_all(stdin);
    }
    (child, started)
}

/// Waits for a spawned plugin and collects its output.
pub fn finish(child: Child, started: Instant) -> Out {
    let out = child.wait_with_output().expect("waiting for the plugin");
    Out {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Runs `binary` inside `node` as a runtime does and waits for it.
pub fn run_in(node: &Ns, binary: &Path, env: &CniEnv, stdin: &[u8]) -> Out {
    let (child, started) = spawn_in(node, binary, env, stdin);
    finish(child, started)
}

/// Runs the `headcni` binary inside `node`.
pub fn headcni(node: &Ns, env: &CniEnv, stdin: &[u8]) -> Out {
    run_in(node, Path::new(EXE), env, stdin)
}

// ---------------------------------------------------------------------------------------
// A per-test network: node netns, bridge, IPAM store, configuration
// ---------------------------------------------------------------------------------------

/// A test network: its own node netns, bridge name, subnet `10.123.<octet>.0/24`, IPAM
/// `dataDir` in a temp dir, and a `CNI_PATH` directory holding a `headcni` and a
/// `headcni-ipam` symlink to the binary under test.
pub struct Net {
    pub tag: String,
    pub node: Ns,
    /// The network `name`.
    pub name: String,
    pub bridge: String,
    pub octet: u8,
    /// Holds `data/` (the IPAM `dataDir`) and `bin/` (the symlinks).
    pub tmp: tempfile::TempDir,
}

impl Net {
    /// `tag` must be unique among all tests (≤ 12 bytes); `octet` too (10.123.<octet>.0/24).
    pub fn new(tag: &str, octet: u8) -> Net {
        assert!(
            tag.len() <= 12,
            "test tag {tag:?} is too long for a bridge name"
        );
        let node = Ns::new(tag, "node");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hct-{tag}-"))
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(tmp.path().join("data")).expect("mkdir data");
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir bin");
        for n in ["headcni", "headcni-ipam"] {
            std::os::unix::fs::symlink(EXE, bin.join(n)).expect("symlink the plugin");
        }
        Net {
            tag: tag.to_owned(),
            node,
            name: format!("hct-{tag}"),
            bridge: format!("hcb{tag}"),
            octet,
            tmp,
        }
    }

    /// A pod netns `hct-<tag>-<pid>-<suffix>`.
    pub fn pod(&self, suffix: &str) -> Ns {
        Ns::new(&self.tag, suffix)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.tmp.path().join("bin")
    }

    /// `CNI_PATH`: our symlinks, then the reference plugins.
    pub fn cni_path(&self) -> String {
        format!("{}:{REF_CNI_DIR}", self.bin_dir().display())
    }

    /// The store directory `<dataDir>/<name>`.
    pub fn store(&self) -> PathBuf {
        self.data_dir().join(&self.name)
    }

    pub fn subnet(&self) -> String {
        format!("10.123.{}.0/24", self.octet)
    }

    pub fn gateway(&self) -> String {
        format!("10.123.{}.1", self.octet)
    }

    /// A single-plugin `headcni` configuration.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "headcni",
            "bridge": self.bridge,
            "mtu": 1400,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipam": {
                "type": "headcni-ipam",
                "ranges": [[{"subnet": self.subnet()}]],
                "dataDir": self.data_dir(),
            }
        })
    }

    /// Runs `headcni` in the node netns.
    pub fn run(&self, env: &CniEnv, conf: &Value) -> Out {
        headcni(&self.node, env, conf.to_string().as_bytes())
    }

    /// An attachment verb through `headcni`.
    pub fn verb(&self, command: &str, conf: &Value, cid: &str, netns: &str, ifname: &str) -> Out {
        self.run(
            &CniEnv::attach(command, cid, netns, ifname, &self.cni_path()),
            conf,
        )
    }

    pub fn add(&self, conf: &Value, cid: &str, pod: &Ns) -> Out {
        self.verb("ADD", conf, cid, &pod.path_str(), "eth0")
    }

    /// ADD that must succeed; returns the result.
    pub fn add_ok(&self, conf: &Value, cid: &str, pod: &Ns) -> Value {
        self.add(conf, cid, pod).ok(&format!("ADD {cid}"))
    }

    /// DEL (with `prevResult` when given, as runtimes do for ≥ 0.4.0).
    pub fn del(&self, conf: &Value, cid: &str, netns: &str, prev: Option<&Value>) -> Out {
        let mut c = conf.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        self.verb("DEL", &c, cid, netns, "eth0")
    }

    pub fn check(&self, conf: &Value, cid: &str, pod: &Ns, prev: &Value) -> Out {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.verb("CHECK", &c, cid, &pod.path_str(), "eth0")
    }

    /// IP reservation files of the store: file name (a parseable IP) → content. The `lock`,
    /// `last_reserved_ip.*` and any index files are not reservations.
    pub fn reservations(&self) -> BTreeMap<String, String> {
        reservations_in(&self.store())
    }

    /// The IPv4 address of the first `ips[]` entry of a result (without prefix).
    pub fn result_ip(result: &Value) -> String {
        let a = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("result has no ips[0].address: {result}"));
        a.split('/').next().unwrap_or_default().to_owned()
    }
}

/// IP reservation files of a host-local-layout store directory.
pub fn reservations_in(store: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(store) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<IpAddr>().is_ok() {
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.insert(name, content);
        }
    }
    out
}

/// File mode bits (`& 0o777`).
pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Whether `ip` (no prefix) is in `10.123.<octet>.0/24`.
pub fn in_subnet(ip: &str, octet: u8) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..3] == [10, 123, octet])
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny deterministic PRNG (xorshift64*) for the garbage-input loops.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max as u64 + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}
