//! Network namespaces for tests and the lab: named namespaces with `ip netns` semantics
//! ([`create_named`], [`delete_named`]), the one helper that makes a child process enter
//! namespaces between fork and exec ([`enter_on_exec`]), and the per-test fixture [`Ns`]
//! (deleted on drop, also when the test panics).
//!
//! Code that must run *in-process* inside a namespace uses
//! [`headcni_netlink::netns::run_in_netns`] (a fresh thread that enters and exits), never a
//! `setns` on a thread of the caller. Sources: `setns(2)`, `unshare(2)`, `ip-netns(8)`.

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use headcni_netlink::netns::run_in_netns;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde_json::Value;

/// Directory holding named network namespaces (bind mounts), as used by `ip netns`.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of [`named_path`], [`create_named`] and [`delete_named`].
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A namespace name is empty, longer than 255 bytes, contains `/` or NUL, or is `.`/`..`.
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
    /// [`create_named`] found `/run/netns/<name>` already present.
    #[error("network namespace {0:?} already exists")]
    AlreadyExists(String),
    /// A file-system, mount or thread operation failed (creating needs `CAP_SYS_ADMIN`).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>, source: impl Into<io::Error>) -> NetnsError {
    NetnsError::Io {
        what: what.into(),
        source: source.into(),
    }
}

/// `/run/netns/<name>` after validating `name` (non-empty, ≤ 255 bytes, no `/` or NUL,
/// not `.` or `..`).
///
/// Errors: [`NetnsError::InvalidName`].
pub fn named_path(name: &str) -> Result<PathBuf, NetnsError> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(NetnsError::InvalidName(name.to_owned()));
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Serialises the `/run/netns` mount setup within this process.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Makes `/run/netns` exist and be a shared mount point, like `ip netns add` does:
/// `mount --make-rshared /run/netns`, and if it is not a mount point yet, bind-mount it onto
/// itself first.
fn prepare_run_dir() -> Result<(), NetnsError> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_RUN_DIR)
        .map_err(|e| io_err(format!("create {NETNS_RUN_DIR}"), e))?;
    let make_shared = || {
        nix::mount::mount(
            Some("none"),
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then make it shared.
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| io_err(format!("bind mount {NETNS_RUN_DIR}"), e))?;
            make_shared().map_err(|e| io_err(format!("make {NETNS_RUN_DIR} shared"), e))
        }
        Err(e) => Err(io_err(format!("make {NETNS_RUN_DIR} shared"), e)),
    }
}

/// Creates a new, empty network namespace pinned at `/run/netns/<name>` (`ip netns add`
/// semantics, usable with `ip netns exec` afterwards) and returns that path.
///
/// A fresh thread calls `unshare(CLONE_NEWNET)` and bind-mounts `/proc/thread-self/ns/net`
/// onto the file, then exits. The new namespace has only a `lo` link, down.
///
/// Errors: [`NetnsError::InvalidName`], [`NetnsError::AlreadyExists`], [`NetnsError::Io`]
/// (needs `CAP_SYS_ADMIN`).
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    let path = named_path(name)?;
    prepare_run_dir()?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::AlreadyExists(name.to_owned()));
        }
        Err(e) => return Err(io_err(format!("create {}", path.display()), e)),
    }
    let target = path.clone();
    let result = std::thread::Builder::new()
        .name("netns-create".to_owned())
        .spawn(move || -> Result<(), NetnsError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err("unshare(CLONE_NEWNET)", e))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io_err(format!("bind mount netns onto {}", target.display()), e))
        })
        .map_err(|e| io_err("spawn netns thread", e))
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err(io_err("netns thread", io::Error::other("panicked"))))
        });
    if let Err(e) = result {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Deletes the named network namespace `/run/netns/<name>` (`ip netns del` semantics):
/// `umount2(MNT_DETACH)` and unlink. The namespace itself disappears once nothing else
/// references it. `Ok(())` if it does not exist.
///
/// Errors: [`NetnsError::InvalidName`], [`NetnsError::Io`].
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    let path = named_path(name)?;
    match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io_err(format!("umount {}", path.display()), e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", path.display()), e)),
    }
}

// ---------------------------------------------------------------------------------------
// Entering namespaces between fork and exec
// ---------------------------------------------------------------------------------------

/// Where a child process goes before exec (see [`enter_on_exec`]). Paths are namespace
/// files: `ip netns` bind mounts, pinned mount namespaces, or `/proc/<pid>/ns/*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The network namespace to enter (host path).
    pub net: Option<PathBuf>,
    /// A mount namespace entered first (then `chdir("/")`).
    pub mnt: Option<PathBuf>,
    /// A network namespace path opened *after* entering `mnt` (e.g. a pod's
    /// `/run/netns/<pod>` in its node's `/run`); replaces `net`.
    pub inner_net: Option<PathBuf>,
    /// Start a new session (`setsid`), so the child outlives the caller's session.
    pub setsid: bool,
}

impl Target {
    /// Only the network namespace `path`.
    pub fn net(path: impl Into<PathBuf>) -> Target {
        Target {
            net: Some(path.into()),
            ..Target::default()
        }
    }
}

/// Keeps the namespace files of an [`enter_on_exec`] open until the child is spawned; drop
/// it after `spawn`/`output` returned.
#[derive(Debug)]
pub struct HeldFds {
    _net: Option<File>,
    _mnt: Option<File>,
}

fn open_ns(p: &Path) -> io::Result<File> {
    File::open(p).map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", p.display())))
}

/// Makes the child of `cmd` enter `target`'s namespaces between fork and exec (`setns(2)` on
/// files opened now, in the parent; then `setsid` when asked). The only code in the tests and
/// the lab that calls `setns` in a `pre_exec`: further `pre_exec` hooks registered later
/// (e.g. a private mount namespace) run after it, inside the namespaces.
///
/// Errors: a namespace file that cannot be opened, a NUL byte in `inner_net`. Entering
/// errors surface from `spawn`.
pub fn enter_on_exec(cmd: &mut Command, target: &Target) -> io::Result<HeldFds> {
    let net = target.net.as_deref().map(open_ns).transpose()?;
    let mnt = target.mnt.as_deref().map(open_ns).transpose()?;
    let inner = match &target.inner_net {
        Some(p) => Some(
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a netns path"))?,
        ),
        None => None,
    };
    let net_fd: Option<RawFd> = net.as_ref().map(AsRawFd::as_raw_fd);
    let mnt_fd: Option<RawFd> = mnt.as_ref().map(AsRawFd::as_raw_fd);
    let setsid = target.setsid;
    // SAFETY: only async-signal-safe syscalls (setns, chdir, open, close, setsid) on
    // descriptors and a C string prepared before fork; the files stay open in the parent
    // (`HeldFds`) until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let last = || Err(io::Error::last_os_error());
            if let Some(m) = mnt_fd {
                if libc::setns(m, libc::CLONE_NEWNS) != 0 {
                    return last();
                }
                if libc::chdir(c"/".as_ptr()) != 0 {
                    return last();
                }
            }
            match (&inner, net_fd) {
                (Some(path), _) => {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return last();
                    }
                    let r = libc::setns(fd, libc::CLONE_NEWNET);
                    libc::close(fd);
                    if r != 0 {
                        return last();
                    }
                }
                (None, Some(fd)) => {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return last();
                    }
                }
                (None, None) => {}
            }
            if setsid && libc::setsid() < 0 {
                return last();
            }
            Ok(())
        });
    }
    Ok(HeldFds {
        _net: net,
        _mnt: mnt,
    })
}

// ---------------------------------------------------------------------------------------
// The per-test fixture
// ---------------------------------------------------------------------------------------

/// A named network namespace `/run/netns/<name>` for one test, deleted on drop (also when
/// the test panics), with `ip netns exec` helpers that read its state as JSON.
#[derive(Debug)]
pub struct Ns {
    /// The `ip netns` name.
    pub name: String,
    /// `/run/netns/<name>`.
    pub path: PathBuf,
}

impl Ns {
    /// Creates `hct-<tag>-<pid>-<suffix>` (a leftover of a crashed run with the same pid is
    /// removed first).
    pub fn new(tag: &str, suffix: &str) -> Ns {
        Ns::named(&format!("hct-{tag}-{}-{suffix}", std::process::id()))
    }

    /// Creates `/run/netns/<name>` under exactly this name (a leftover of a crashed run is
    /// removed first). Panics when it cannot.
    pub fn named(name: &str) -> Ns {
        let _ = delete_named(name);
        let path = create_named(name).unwrap_or_else(|e| panic!("creating test netns {name}: {e}"));
        Ns {
            name: name.to_owned(),
            path,
        }
    }

    /// A command whose child enters this namespace before exec ([`enter_on_exec`]). The
    /// returned guard must stay alive until the child is spawned.
    pub fn command(&self, program: impl AsRef<OsStr>) -> (Command, HeldFds) {
        let mut cmd = Command::new(program);
        let fds = enter_on_exec(&mut cmd, &Target::net(&self.path))
            .unwrap_or_else(|e| panic!("netns {}: {e}", self.name));
        (cmd, fds)
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.path, f)
            .unwrap_or_else(|e| panic!("running inside netns {}: {e}", self.name))
    }

    /// `nft -j list table inet <table>` in this namespace: `Ok(json)` or `Err(stderr)` when
    /// the table does not exist.
    pub fn nft_table(&self, table: &str) -> Result<Value, String> {
        let out = self.exec(&["nft", "-j", "list", "table", "inet", table]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j output is not JSON: {e}"))
    }

    /// `CNI_NETNS` for this namespace.
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// `ip netns exec <name> <args...>`.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running ip netns exec {} {args:?}: {e}", self.name))
    }

    /// `ip netns exec`, stdout as a string; panics with the output when it fails.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "ip netns exec {} {args:?} failed ({}): stdout {} stderr {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec`: whether it succeeded (the output is printed to stderr when not).
    pub fn succeeds(&self, args: &[&str]) -> bool {
        let out = self.exec(args);
        if !out.status.success() {
            eprintln!(
                "ip netns exec {} {args:?} failed: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// `ip netns exec`: stdout, whether it succeeded or not.
    pub fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(args).stdout).into_owned()
    }

    /// `ip -j link show` in this namespace: every link as JSON.
    pub fn links(&self) -> Vec<Value> {
        let s = self.exec_ok(&["ip", "-j", "-d", "link", "show"]);
        match serde_json::from_str(&s) {
            Ok(Value::Array(a)) => a,
            other => panic!("ip -j link show in {}: unexpected {other:?}", self.name),
        }
    }

    /// The link `name`, if present.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    /// Names of the links whose master is `bridge`.
    pub fn bridge_ports(&self, bridge: &str) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l["master"] == bridge)
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Names of every veth link.
    pub fn veths(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The global-scope addresses (`a.b.c.d/len`) on `dev` (IPv6 link-local ones are the
    /// kernel's, not the plugin's), or `None` when `dev` does not exist.
    pub fn addresses(&self, dev: &str) -> Option<Vec<String>> {
        let out = self.exec(&["ip", "-j", "addr", "show", "dev", dev]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut addrs = Vec::new();
        for l in v.as_array()? {
            for a in l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["scope"] == "global")
            {
                addrs.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                ));
            }
        }
        Some(addrs)
    }

    /// `ip -j route show <args>` as JSON.
    pub fn routes(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["ip", "-j", "route", "show"];
        a.extend_from_slice(args);
        let s = self.exec_ok(&a);
        serde_json::from_str::<Value>(&s)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Whether one ICMP echo to `dst` is answered (up to 3 tries: the first may wait for
    /// ARP, and the machine is shared).
    pub fn ping(&self, dst: &str) -> bool {
        (0..3).any(|_| {
            self.exec(&["ping", "-n", "-c1", "-W2", dst])
                .status
                .success()
        })
    }

    /// Reads a sysctl (`/proc/sys/...`) inside this namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let p = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec_ok(&["cat", &p]).trim().to_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = delete_named(&self.name) {
            eprintln!("cleanup of netns {} failed: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "x\0y", &"n".repeat(256)] {
            assert!(matches!(named_path(bad), Err(NetnsError::InvalidName(_))));
            assert!(matches!(create_named(bad), Err(NetnsError::InvalidName(_))));
        }
        assert_eq!(named_path("a").unwrap(), Path::new("/run/netns/a"));
    }
}
