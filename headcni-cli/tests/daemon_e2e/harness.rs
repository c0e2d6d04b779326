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
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
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
        let file = File::open(&ns.path)
            .unwrap_or_else(|e| panic!("opening netns {}: {e}", ns.path.display()));
        let (tx, rx) = std::sync::mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("fakes-{}", ns.name))
            .spawn(move || {
                // SAFETY: plain setns(2) on a valid fd owned by `file`, on this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = tx.send(Err(format!("setns: {e}")));
                    return;
                }
                drop(file);
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
    pub headers: String,
    pub body: String,
}

fn get_inner(addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<HttpResp, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(HttpResp {
        status,
        headers: head.to_owned(),
        body,
    })
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
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

/// Parses `a="x",b="y"`.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once("=\"") {
        let k = k.trim_start_matches(',').trim().to_owned();
        let mut val = String::new();
        let mut chars = v.char_indices();
        let mut end = v.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            o => o,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                o => val.push(o),
            }
        }
        out.insert(k, val);
        rest = &v[end..];
    }
    out
}

/// The value of the sample `name` whose labels include `labels` (first match).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (n, l, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(a), Some(b)) if a < b => {
                (&line[..a], parse_labels(&line[a + 1..b]), &line[b + 1..])
            }
            _ => match line.split_once(' ') {
                Some((n, rest)) => (n, BTreeMap::new(), rest),
                None => continue,
            },
        };
        if n != name
            || !labels
                .iter()
                .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
        {
            continue;
        }
        return rest.split_whitespace().next().and_then(|v| v.parse().ok());
    }
    None
}

/// Converts an OpenMetrics exposition to the Prometheus 0.0.4 text format the way Prometheus
/// maps the two (promtool 2.42 only parses 0.0.4): counter families are named with their
/// `_total` suffix, `info` becomes a gauge `<name>_info`, `# UNIT` and `# EOF` go away.
/// Checks the OpenMetrics structure on the way (one final `# EOF`, unit suffixes, every
/// sample of a declared family). 0.0.4 input is returned unchanged.
pub fn openmetrics_to_text(om: &str) -> Result<String, String> {
    if !om.contains("# EOF") {
        return Ok(om.to_owned());
    }
    if !om.ends_with("# EOF\n") || om.matches("# EOF").count() != 1 {
        return Err("OpenMetrics must end with exactly one # EOF".into());
    }
    let types: BTreeMap<String, String> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    let mut out = String::new();
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').ok_or(format!("bad {line}"))?;
            if !name.ends_with(&format!("_{unit}")) {
                return Err(format!("unit suffix missing: {line}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').ok_or(format!("bad {line}"))?;
            out.push_str(&match ty {
                "counter" => format!("# TYPE {name}_total counter"),
                "info" => format!("# TYPE {name}_info gauge"),
                _ => line.to_owned(),
            });
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("bad {line}"))?;
            out.push_str(&match types.get(name).map(String::as_str) {
                Some("counter") => format!("# HELP {name}_total {help}"),
                Some("info") => format!("# HELP {name}_info {help}"),
                _ => line.to_owned(),
            });
        } else {
            if line.starts_with('#') {
                return Err(format!("unexpected comment {line}"));
            }
            let sample = line.split(['{', ' ']).next().unwrap_or_default();
            let declared = types.iter().any(|(name, ty)| {
                let suffixes: &[&str] = match ty.as_str() {
                    "counter" => &["_total", "_created"],
                    "info" => &["_info"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| sample == format!("{name}{s}"))
            });
            if !declared {
                return Err(format!("sample {sample} of an undeclared family"));
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// `promtool check metrics` on `text` (stdin): `Ok(output)` or `Err(output)`.
pub fn promtool_check(text: &str) -> Result<String, String> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed: it is required to check /metrics \
                 (Debian package `prometheus`: apt-get install prometheus)"
            )
        });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().expect("promtool");
    let msg = format!(
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(msg)
    } else {
        Err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_parse() {
        let t = "# TYPE x counter\nx_total{verb=\"ADD\",result=\"ok\"} 1\nheadcni_ready 1\n\
                 r{route=\"10.0.0.0/24\",state=\"approved\"} 0 1700000000\n# EOF\n";
        assert_eq!(
            sample(t, "x_total", &[("verb", "ADD"), ("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(sample(t, "x_total", &[("verb", "DEL")]), None);
        assert_eq!(sample(t, "headcni_ready", &[]), Some(1.0));
        assert_eq!(
            sample(t, "r", &[("route", "10.0.0.0/24"), ("state", "approved")]),
            Some(0.0)
        );
    }

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

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
