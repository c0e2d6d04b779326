//! Node contexts: a named network namespace plus a mount namespace pinned at a file, the way
//! `ip netns` pins network namespaces and `unshare --mount=FILE` pins mount namespaces.
//!
//! A node's mount namespace is a private copy of the host's with a fresh tmpfs on `/run`, so
//! every node has its own `/run/wireguard`, `/run/tailscale`, `/run/headcni`, `/run/netns`
//! (its pods' namespaces) and `/run/cni`, exactly where the real programs expect them. The lab's
//! shared directory is bind-mounted at the same path inside, so configuration, keys and logs
//! have one path for the host and every node.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use headcni_testkit::netns::{HeldFds, Target, enter_on_exec};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

fn io_ctx(what: impl std::fmt::Display, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Makes `dir` a private mount point (bind-mounted onto itself), as a mount-namespace file
/// may only be bind-mounted where the mount cannot propagate back into that namespace.
pub fn private_mount_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_ctx(format!("create {}", dir.display()), e))?;
    let make_private = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
    };
    if make_private().is_err() {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| io_ctx(format!("bind {} onto itself", dir.display()), e))?;
        make_private().map_err(|e| io_ctx(format!("make {} private", dir.display()), e))?;
    }
    Ok(())
}

/// Creates a mount namespace pinned at `pin` (a file inside a [`private_mount_dir`]): a
/// private copy of the host's mounts, a fresh tmpfs (0755) on `/run` holding `run_dirs`, and
/// the host directory `shared` bind-mounted at the same path.
///
/// A helper thread unshares its mount namespace and prepares it; this thread pins it with a
/// bind mount of `/proc/<pid>/task/<tid>/ns/mnt` (the host side can see that file, the helper
/// can no longer see `pin`).
pub fn create_mntns(pin: &Path, shared: &Path, run_dirs: &[&str]) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(pin)
        .map_err(|e| io_ctx(format!("create {}", pin.display()), e))?;
    let rel = shared
        .strip_prefix("/run")
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the shared dir must be under /run",
            )
        })?
        .to_path_buf();
    // The new /run is prepared at a staging directory (visible in both namespaces, so the
    // shared dir can be bind-mounted into it), then moved onto /run: a bind mount cannot take
    // its source from another mount namespace.
    let stage = pin.with_extension("stage");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&stage)
        .map_err(|e| io_ctx(format!("create {}", stage.display()), e))?;
    let shared_path = shared.to_path_buf();
    let stage_t = stage.clone();
    let run_dirs: Vec<String> = run_dirs.iter().map(|s| s.to_string()).collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<libc::pid_t>>();
    let (pinned_tx, pinned_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::Builder::new()
        .name("lab-mntns".into())
        .spawn(move || {
            let prepared = (|| -> io::Result<()> {
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
                    .map_err(|e| io_ctx("unshare(CLONE_NEWNS)", e))?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|e| io_ctx("make / rprivate", e))?;
                mount(
                    Some("tmpfs"),
                    &stage_t,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=0755"),
                )
                .map_err(|e| io_ctx("mount the node's tmpfs", e))?;
                for d in &run_dirs {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(stage_t.join(d))?;
                }
                let target = stage_t.join(&rel);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&target)?;
                mount(
                    Some(&shared_path),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| io_ctx(format!("bind the shared dir {}", shared_path.display()), e))?;
                mount(
                    Some(&stage_t),
                    "/run",
                    None::<&str>,
                    MsFlags::MS_MOVE,
                    None::<&str>,
                )
                .map_err(|e| io_ctx("move the node's tmpfs onto /run", e))
            })();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let _ = ready_tx.send(prepared.map(|()| tid));
            let _ = pinned_rx.recv();
        })
        .map_err(|e| io_ctx("spawn the mount-namespace thread", e))?;
    let result = match ready_rx.recv() {
        Ok(Ok(tid)) => {
            let src = format!("/proc/{}/task/{tid}/ns/mnt", std::process::id());
            mount(
                Some(src.as_str()),
                pin,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io_ctx(format!("pin the mount namespace at {}", pin.display()), e))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the mount-namespace thread died")),
    };
    let _ = pinned_tx.send(());
    let _ = helper.join();
    let _ = std::fs::remove_dir(&stage);
    if result.is_err() {
        let _ = std::fs::remove_file(pin);
    }
    result
}

/// Unpins a namespace file (lazy unmount) and removes it; `Ok` when it is already gone.
pub fn unpin(pin: &Path) -> io::Result<()> {
    let _ = umount2(pin, MntFlags::MNT_DETACH);
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_ctx(format!("remove {}", pin.display()), e)),
    }
}

/// Where a process or thread runs: a network namespace and optionally a mount namespace (both
/// given as pinned files), and optionally a network namespace path resolved *inside* that
/// mount namespace (a pod's `/run/netns/<pod>` in its node's `/run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The network namespace file (host path), e.g. `/run/netns/hclab-node-1`.
    pub net: PathBuf,
    /// The node's pinned mount namespace, if any.
    pub mnt: Option<PathBuf>,
    /// A netns path inside `mnt` that replaces `net` once the mount namespace is entered.
    pub inner_net: Option<PathBuf>,
}

impl Ctx {
    /// Only a network namespace (the host's mounts).
    pub fn net(net: impl Into<PathBuf>) -> Ctx {
        Ctx {
            net: net.into(),
            mnt: None,
            inner_net: None,
        }
    }

    /// Runs `f` on a fresh thread inside this context and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let net =
            File::open(&self.net).map_err(|e| io_ctx(format!("open {}", self.net.display()), e))?;
        let mnt = match &self.mnt {
            Some(p) => Some(File::open(p).map_err(|e| io_ctx(format!("open {}", p.display()), e))?),
            None => None,
        };
        let inner = self.inner_net.clone();
        std::thread::Builder::new()
            .name("lab-ctx".into())
            .spawn(move || -> io::Result<T> {
                if let Some(m) = &mnt {
                    unshare(CloneFlags::CLONE_FS).map_err(|e| io_ctx("unshare(CLONE_FS)", e))?;
                    setns(m, CloneFlags::CLONE_NEWNS).map_err(|e| io_ctx("setns(mnt)", e))?;
                }
                match &inner {
                    Some(p) => {
                        let f = File::open(p)
                            .map_err(|e| io_ctx(format!("open {}", p.display()), e))?;
                        setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| io_ctx("setns(net)", e))?;
                    }
                    None => setns(&net, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| io_ctx("setns(net)", e))?,
                }
                Ok(f())
            })
            .map_err(|e| io_ctx("spawn a namespace thread", e))?
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    /// A [`Command`] whose child enters this context before exec (and, with `detach`, starts
    /// a new session so it outlives the lab command), through headcni-testkit's
    /// [`enter_on_exec`]. The returned guard keeps the namespace files open until the command
    /// is spawned; drop it afterwards.
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        detach: bool,
    ) -> io::Result<(Command, CtxFds)> {
        let mut cmd = Command::new(program);
        let target = Target {
            net: Some(self.net.clone()),
            mnt: self.mnt.clone(),
            inner_net: self.inner_net.clone(),
            setsid: detach,
        };
        let fds = enter_on_exec(&mut cmd, &target)?;
        Ok((cmd, fds))
    }
}

/// Keeps a [`Ctx::command`]'s namespace files open until the child is spawned.
pub type CtxFds = HeldFds;

/// The inode of a namespace file (`/proc/<pid>/ns/net` or a pinned file), to match processes
/// to lab namespaces.
pub fn ns_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Every process whose network or mount namespace is one of `inodes`.
pub fn processes_in(net_inodes: &[u64], mnt_inodes: &[u64]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let base = PathBuf::from(format!("/proc/{pid}/ns"));
            ns_inode(&base.join("net")).is_some_and(|i| net_inodes.contains(&i))
                || ns_inode(&base.join("mnt")).is_some_and(|i| mnt_inodes.contains(&i))
        })
        .collect()
}

/// SIGTERM to `pids`, up to `grace` for them to exit, then SIGKILL to the rest.
pub fn terminate(pids: &[i32], grace: std::time::Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    let alive = |p: i32| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p);
    while std::time::Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|&&p| alive(p)) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
