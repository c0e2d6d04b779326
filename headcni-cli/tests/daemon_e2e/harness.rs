//! Harness of the `headcni daemon` end-to-end tests: a "node" network namespace per scenario,
//! the Headscale / tailscaled fakes served from a thread inside that namespace, the daemon
//! binary exec'ed inside it (`pre_exec` + `setns`), an HTTP/1.1 client and the CNI plugin
//! runner that connect from inside it, and parsers for `nft -j` and the metrics text.
//!
//! Nothing here touches the host's network: every socket is on 127.0.0.1 of a namespace the
//! test created, or a unix socket in a temp dir. Every resource is released by a Drop guard
//! (also when a test panics): the daemon is killed and reaped, the fakes' runtime is stopped,
//! the namespaces are deleted, the temp dir is removed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use headcni_headscale::localapi::Prefs;
use headcni_testkit::{FakeHeadscale, FakeHeadscaleOptions, FakeTailscaled, HeadscaleControl};
use serde_json::Value;

/// The binary under test.
pub const EXE: &str = env!("CARGO_BIN_EXE_headcni");

/// The daemon's HTTP endpoint inside every node namespace (each namespace has its own port
/// space, so a fixed port cannot collide between scenarios running in parallel).
pub const LISTEN: &str = "127.0.0.1:18081";

/// The daemon's listen address as a `SocketAddr`.
pub fn listen() -> SocketAddr {
    LISTEN.parse().expect("LISTEN is an address")
}

/// Environment variables of the test process that must not leak into the daemon (they would
/// change PodCIDR discovery, the API key source, or turn the binary into a CNI plugin).
const SCRUB_ENV: [&str; 16] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "NODE_NAME",
    "NODE_POD_CIDR",
    "HEADSCALE_API_KEY",
    "HEADSCALE_URL",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HEADCNI_CONFIG",
    "HEADCNI_LOG",
    "RUST_LOG",
];

/// Removes from `cmd` every variable of [`SCRUB_ENV`] and every `HEADCNI_*` / `CNI_*` one of
/// the test process (`HEADCNI_<SECTION>_<KEY>` overrides the daemon's configuration).
fn scrub(cmd: &mut Command) {
    for k in SCRUB_ENV {
        cmd.env_remove(k);
    }
    for (k, _) in std::env::vars_os() {
        let ks = k.to_string_lossy();
        if ks.starts_with("HEADCNI_") || ks.starts_with("CNI_") {
            cmd.env_remove(&k);
        }
    }
}

/// Makes the child of `cmd` see `dir` as `/run/tailscale` (hence
/// `/var/run/tailscale/tailscaled.sock` = `dir/tailscaled.sock`) **in a private mount
/// namespace of its own**: `unshare(CLONE_NEWNS)`, every mount private, a fresh tmpfs on
/// `/run`, `/run/tailscale` bind-mounted from `dir`. The host's `/run` and
/// `/var/run/tailscale` are never touched; the mounts vanish with the child.
pub fn fake_host_tailscale_dir(cmd: &mut Command, dir: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let src = CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: only async-signal-safe syscalls (unshare, mount, mkdir) on pointers to
    // C strings allocated before the fork and owned by the closure.
    unsafe {
        cmd.pre_exec(move || {
            let err = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return err();
            }
            let none = std::ptr::null();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return err();
            }
            if libc::mount(
                c"tmpfs".as_ptr(),
                c"/run".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0755".as_ptr().cast(),
            ) != 0
            {
                return err();
            }
            if libc::mkdir(c"/run/tailscale".as_ptr(), 0o755) != 0 {
                return err();
            }
            if libc::mount(
                src.as_ptr(),
                c"/run/tailscale".as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return err();
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------

pub use crate::common::Ns;

// ---------------------------------------------------------------------------------------
// The fakes, served from a thread inside the node namespace
// ---------------------------------------------------------------------------------------

/// What the fakes start with.
pub struct FakesSpec {
    pub headscale: FakeHeadscaleOptions,
    /// tailscaled's LocalAPI socket (a temp dir path: reachable from every namespace).
    pub ts_socket: PathBuf,
    /// The node's tailnet host name and Headscale user.
    pub hostname: String,
    pub user: String,
    /// tailscaled's prefs at start (it is logged in and `Running`).
    pub prefs: Prefs,
}

/// A FakeHeadscale (TCP on 127.0.0.1 **of the node namespace**) and a FakeTailscaled (unix
/// socket) on a current-thread tokio runtime owned by a dedicated OS thread that entered the
/// node namespace before binding. Dropping stops the runtime and joins the thread.
pub struct Fakes {
    /// Headscale's state (register nodes, approvals, faults, exchanges).
    pub hs: HeadscaleControl,
    /// A valid API key.
    pub api_key: String,
    /// `http://127.0.0.1:<port>` (reachable from the node namespace only).
    pub url: String,
    /// tailscaled (prefs, node id).
    pub ts: Arc<FakeTailscaled>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Started = Result<(HeadscaleControl, String, Arc<FakeTailscaled>), String>;

impl Fakes {
    pub fn start(ns: &Ns, spec: FakesSpec) -> Fakes {
        let (tx, rx) = std::sync::mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns_path = ns.path.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fakes-{}", ns.name))
            .spawn(move || {
                // The runtime lives on a thread inside the namespace until `stop_rx` fires.
                let entered = headcni_netlink::netns::run_in_netns(&ns_path, || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(format!("runtime: {e}")));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let hs = match FakeHeadscale::start(spec.headscale).await {
                            Ok(hs) => hs,
                            Err(e) => {
                                let _ = tx.send(Err(format!("FakeHeadscale: {e}")));
                                return;
                            }
                        };
                        let ts = match FakeTailscaled::start_logged_in(
                            &spec.ts_socket,
                            hs.control(),
                            &spec.hostname,
                            &spec.user,
                            spec.prefs,
                        )
                        .await
                        {
                            Ok(ts) => Arc::new(ts),
                            Err(e) => {
                                let _ = tx.send(Err(format!("FakeTailscaled: {e}")));
                                return;
                            }
                        };
                        let _ = tx.send(Ok((hs.control(), hs.api_key().to_owned(), ts.clone())));
                        let _ = stop_rx.await;
                        drop(ts);
                        drop(hs);
                    });
                });
                if let Err(e) = entered {
                    eprintln!("the fakes' namespace thread: {e}");
                }
            })
            .expect("spawning the fakes thread");
        let (hs, api_key, ts) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the fakes did not start: {e}"))
            .unwrap_or_else(|e| panic!("the fakes did not start: {e}"));
        Fakes {
            url: hs.url().to_owned(),
            hs,
            api_key,
            ts,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// This node's Headscale id.
    pub fn node_id(&self) -> u64 {
        self.ts.node_id().expect("the fake tailscaled is logged in")
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 from inside the namespace
// ---------------------------------------------------------------------------------------

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResp {
    pub status: u16,
    /// The headers as `name: value` lines (names lower-cased).
    pub headers: String,
    pub body: String,
}

fn get_inner(addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<HttpResp, String> {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let r = headcni_testkit::http::request(addr, "GET", path, &headers, None)
        .map_err(|e| e.to_string())?;
    Ok(HttpResp {
        status: r.status,
        headers: r.head(),
        body: r.body,
    })
}

/// `GET path` on the daemon's endpoint, from a thread inside `ns`.
pub fn http_get(ns: &Ns, path: &str) -> Result<HttpResp, String> {
    http_get_accept(ns, path, None)
}

/// `GET path` with an `Accept` header.
pub fn http_get_accept(ns: &Ns, path: &str, accept: Option<&str>) -> Result<HttpResp, String> {
    ns.run(|| get_inner(listen(), path, accept))
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

fn q(s: impl AsRef<str>) -> String {
    toml::Value::String(s.as_ref().to_owned()).to_string()
}

fn qp(p: &Path) -> String {
    q(p.display().to_string())
}

/// The daemon configuration (issue 3's public configuration surface).
#[derive(Debug, Clone)]
pub struct Cfg {
    pub node_name: String,
    pub pod_cidr: Option<String>,
    pub cluster_cidr: String,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub daemon_socket: PathBuf,
    pub mode: String,
    pub ts_socket: PathBuf,
    pub interface: String,
    pub hs_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub approval: String,
    pub state_dir: PathBuf,
    pub reconcile_secs: u64,
    /// Extra raw lines appended to the `[tailscale]` table.
    pub tailscale_extra: String,
    /// Extra raw lines appended to the `[headscale]` table.
    pub headscale_extra: String,
}

impl Cfg {
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("[node]\n");
        s.push_str(&format!("name = {}\n", q(&self.node_name)));
        if let Some(p) = &self.pod_cidr {
            s.push_str(&format!("pod_cidr = {}\n", q(p)));
        }
        s.push_str(&format!("cluster_cidr = {}\n", q(&self.cluster_cidr)));
        s.push_str("\n[cni]\n");
        s.push_str(&format!("conf_dir = {}\n", qp(&self.conf_dir)));
        s.push_str(&format!("bin_dir = {}\n", qp(&self.bin_dir)));
        s.push_str(&format!("data_dir = {}\n", qp(&self.data_dir)));
        s.push_str(&format!("bridge = {}\n", q(&self.bridge)));
        if let Some(m) = self.mtu {
            s.push_str(&format!("mtu = {m}\n"));
        }
        s.push_str("ipam_strategy = \"sequential\"\n");
        s.push_str(&format!("daemon_socket = {}\n", qp(&self.daemon_socket)));
        s.push_str("\n[tailscale]\n");
        s.push_str(&format!("mode = {}\n", q(&self.mode)));
        s.push_str(&format!("socket = {}\n", qp(&self.ts_socket)));
        s.push_str(&format!("interface = {}\n", q(&self.interface)));
        s.push_str(&self.tailscale_extra);
        s.push_str("\n[headscale]\n");
        if let Some(u) = &self.hs_url {
            s.push_str(&format!("url = {}\n", q(u)));
        }
        if let Some(k) = &self.api_key_file {
            s.push_str(&format!("api_key_file = {}\n", qp(k)));
        }
        s.push_str(&format!("approval = {}\n", q(&self.approval)));
        s.push_str(&self.headscale_extra);
        s.push_str("\n[daemon]\n");
        s.push_str(&format!("listen = {}\n", q(LISTEN)));
        s.push_str(&format!("state_dir = {}\n", qp(&self.state_dir)));
        s.push_str(&format!(
            "reconcile_interval_secs = {}\n",
            self.reconcile_secs
        ));
        s
    }
}

/// Writes `content` to `path` with `mode` (created with that mode, then chmod'ed in case of
/// the umask).
pub fn write_mode(path: &Path, content: &[u8], mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    f.write_all(content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory's regular files: name → (content, mtime, mode). For "untouched" checks.
pub type DirSnapshot = BTreeMap<String, (Vec<u8>, SystemTime, u32, u64)>;

pub fn snapshot_dir(dir: &Path) -> DirSnapshot {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let md = std::fs::symlink_metadata(e.path()).expect("stat");
        let content = if md.is_file() {
            std::fs::read(e.path()).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (
                content,
                md.modified().expect("mtime"),
                md.mode() & 0o7777,
                md.ino(),
            ),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// The daemon process
// ---------------------------------------------------------------------------------------

/// A running `headcni daemon` inside a node namespace; killed and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
    status: Option<ExitStatus>,
    pub log: PathBuf,
    pub pid: i32,
    pub started: Instant,
}

impl Daemon {
    /// Spawns `headcni <args...>` inside `ns` with stdout+stderr into `log` and `env` added to
    /// a scrubbed environment.
    pub fn spawn(ns: &Ns, args: &[&str], env: &[(&str, &str)], log: &Path) -> Daemon {
        Daemon::spawn_with(ns, args, env, log, None)
    }

    /// [`Daemon::spawn`], optionally showing `host_tailscale_dir` as `/run/tailscale` to the
    /// daemon only ([`fake_host_tailscale_dir`]).
    pub fn spawn_with(
        ns: &Ns,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
        host_tailscale_dir: Option<&Path>,
    ) -> Daemon {
        let file = File::create(log).expect("daemon log file");
        let (mut cmd, nsfile) = ns.command(EXE);
        if let Some(dir) = host_tailscale_dir {
            fake_host_tailscale_dir(&mut cmd, dir);
        }
        cmd.args(args);
        scrub(&mut cmd);
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log fd"))
            .stderr(file);
        let started = Instant::now();
        let child = cmd.spawn().expect("spawning headcni daemon");
        drop(nsfile);
        Daemon {
            pid: child.id() as i32,
            child: Some(child),
            status: None,
            log: log.to_path_buf(),
            started,
        }
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last lines (for failure messages).
    pub fn tail(&self) -> String {
        let l = self.logs();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The exit status if it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
            self.child = None;
        }
        self.status
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        assert!(self.status.is_none(), "the daemon has already exited");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.pid));
    }

    /// Waits up to `timeout` for the exit; the status and how long it took after the call.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                return Some((st, t0.elapsed()));
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `f` every 100 ms until it gives `Ok`, for at most `timeout`. Panics (with the
    /// last error and the daemon's log) on timeout or when the daemon exits meanwhile.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let t0 = Instant::now();
        loop {
            let last = match f() {
                Ok(v) => return v,
                Err(e) => e,
            };
            if let Some(st) = self.exited() {
                panic!(
                    "waiting for {what}: the daemon exited ({st}); last: {last}\n--- daemon log ---\n{}",
                    self.tail()
                );
            }
            if t0.elapsed() > timeout {
                panic!(
                    "waiting for {what}: not reached within {timeout:?}; last: {last}\n--- daemon log ---\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `headcni <args...>` inside `ns` to completion (scrubbed environment).
pub fn run_cli(ns: &Ns, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (mut cmd, nsfile) = ns.command(EXE);
    cmd.args(args);
    scrub(&mut cmd);
    cmd.envs(env.iter().copied()).stdin(Stdio::null());
    let out = cmd.output().expect("running headcni");
    drop(nsfile);
    out
}

/// A compact rendering of a finished command (for assertion messages).
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?} signal {:?}; stdout: {}; stderr: {}",
        out.status.code(),
        out.status.signal(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

// ---------------------------------------------------------------------------------------
// The CNI plugin, exec'ed as a runtime does
// ---------------------------------------------------------------------------------------

/// One plugin invocation's result.
#[derive(Debug)]
pub struct PluginOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl PluginOut {
    /// Asserts success and returns stdout as JSON (`Null` when empty).
    pub fn ok(&self, what: &str) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: stdout {} stderr {}",
            self.stdout,
            self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.stdout)
                .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {self:?}"))
        }
    }
}

/// Execs `headcni` as the CNI plugin inside `node` (all six `CNI_*` variables set, the
/// configuration on stdin).
pub fn plugin(
    node: &Ns,
    command: &str,
    cid: &str,
    pod_netns: &str,
    cni_args: &str,
    cni_path: &Path,
    conf: &Value,
) -> PluginOut {
    let (mut cmd, nsfile) = node.command(EXE);
    scrub(&mut cmd);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", pod_netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawning the plugin");
    drop(nsfile);
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(conf.to_string().as_bytes());
    }
    // A watchdog instead of a plain wait: a plugin that blocks (e.g. on a stopped daemon)
    // must fail the test, not hang it.
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let elapsed = t0.elapsed();
        let _ = tx.send((out, elapsed));
    });
    let (out, elapsed) = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(x) => x,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the plugin ({command} {cid}) did not finish within 30 s: it blocks");
        }
    };
    let out = out.expect("waiting for the plugin");
    PluginOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------
// nft -j
// ---------------------------------------------------------------------------------------

/// Every address/prefix in `v` as `addr/len` (a bare address gets /32 or /128).
fn prefixes_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.starts_with('@') => {
            if s.contains('/') {
                out.push(s.clone());
            } else if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                out.push(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }));
            }
        }
        Value::Object(o) => {
            if let Some(p) = o.get("prefix")
                && let (Some(a), Some(l)) = (p["addr"].as_str(), p["len"].as_u64())
            {
                out.push(format!("{a}/{l}"));
                return;
            }
            for x in o.values() {
                prefixes_in(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| prefixes_in(x, out)),
        _ => {}
    }
}

/// One masquerade rule of a table listing, with its address matches resolved.
#[derive(Debug, Clone, Default)]
pub struct MasqRule {
    /// `(protocol, field, op, prefixes)`, e.g. `("ip", "saddr", "==", ["10.250.1.0/24"])`.
    pub matches: Vec<(String, String, String, Vec<String>)>,
}

/// A base chain as `(name, type, hook, priority)`.
pub type Chain = (String, String, String, i64);

impl MasqRule {
    /// Whether the rule matches `field` (saddr/daddr) with `op` against a set holding `cidr`.
    pub fn has(&self, field: &str, op: &str, cidr: &str) -> bool {
        self.matches
            .iter()
            .any(|(_, f, o, p)| f == field && o == op && p.iter().any(|x| x == cidr))
    }
}

/// The masquerade rules of an `nft -j list table` output (set references resolved) and the
/// chains as `(name, type, hook, prio)`.
pub fn masq_rules(listing: &Value) -> (Vec<MasqRule>, Vec<Chain>) {
    let items = listing["nftables"].as_array().cloned().unwrap_or_default();
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut chains = Vec::new();
    for it in &items {
        if let Some(s) = it.get("set") {
            let mut p = Vec::new();
            prefixes_in(&s["elem"], &mut p);
            sets.insert(s["name"].as_str().unwrap_or_default().to_owned(), p);
        }
        if let Some(c) = it.get("chain") {
            chains.push((
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["type"].as_str().unwrap_or_default().to_owned(),
                c["hook"].as_str().unwrap_or_default().to_owned(),
                c["prio"].as_i64().unwrap_or(i64::MIN),
            ));
        }
    }
    let mut rules = Vec::new();
    for it in &items {
        let Some(r) = it.get("rule") else { continue };
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        if !exprs.iter().any(|e| e.get("masquerade").is_some()) {
            continue;
        }
        let mut m = MasqRule::default();
        for e in &exprs {
            let Some(mt) = e.get("match") else { continue };
            let payload = &mt["left"]["payload"];
            let (Some(proto), Some(field)) =
                (payload["protocol"].as_str(), payload["field"].as_str())
            else {
                continue;
            };
            let right = &mt["right"];
            let mut p = Vec::new();
            match right.as_str().and_then(|s| s.strip_prefix('@')) {
                Some(set) => p.extend(sets.get(set).cloned().unwrap_or_default()),
                None => prefixes_in(right, &mut p),
            }
            m.matches.push((
                proto.to_owned(),
                field.to_owned(),
                mt["op"].as_str().unwrap_or("==").to_owned(),
                p,
            ));
        }
        rules.push(m);
    }
    (rules, chains)
}

// ---------------------------------------------------------------------------------------
// Metrics text
// ---------------------------------------------------------------------------------------

pub use headcni_testkit::metrics::sample;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_listing_resolves_sets() {
        let v = serde_json::json!({"nftables": [
            {"set": {"name": "pod_v4", "elem": [{"prefix": {"addr": "10.0.1.0", "len": 24}}]}},
            {"set": {"name": "no_v4", "elem": [{"prefix": {"addr": "10.0.0.0", "len": 16}}, "1.2.3.4"]}},
            {"chain": {"name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100}},
            {"rule": {"chain": "postrouting", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pod_v4"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@no_v4"}},
                {"masquerade": {"flags": "fully-random"}}
            ]}}
        ]});
        let (rules, chains) = masq_rules(&v);
        assert_eq!(rules.len(), 1);
        assert!(rules[0].has("saddr", "==", "10.0.1.0/24"));
        assert!(rules[0].has("daddr", "!=", "10.0.0.0/16"));
        assert!(rules[0].has("daddr", "!=", "1.2.3.4/32"));
        assert!(!rules[0].has("daddr", "==", "10.0.0.0/16"));
        assert_eq!(chains[0].1, "nat");
    }
}
