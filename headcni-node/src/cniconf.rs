//! The daemon's CNI conflist: built as a typed [`Conflist`] from the configuration, written
//! atomically and only when it changes.
//!
//! The writer touches exactly two names in the configuration directory: its own conflist and
//! its own temporary file `.<name>.tmp.<pid>` (hidden, and not ending in `.conf`,
//! `.conflist` or `.json`, so container runtimes never load it). It never lists, renames,
//! moves, edits or deletes any other file there (the Go original renamed every other
//! configuration to `*.headcni_bak`).
//!
//! A write is: create the temp file (0644) → write → fsync → rename over the conflist →
//! fsync the directory. A runtime reading the directory at any moment sees either the old
//! or the new complete file.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use headcni_core::node::chain_versions::ChainVersions;
use headcni_core::node::cniconf::{Conflist, ConflistParams};
use headcni_core::node::conflist_sink::{ConflistOnDisk, ConflistSink};
use ipnetwork::IpNetwork;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;

/// The conflist's file mode.
pub const CONFLIST_MODE: u32 = 0o644;
/// The mode of a configuration directory this writer creates.
pub const CONF_DIR_MODE: u32 = 0o755;

/// The temporary file name used while writing `file_name`.
pub fn temp_name(file_name: &str) -> String {
    format!(".{file_name}.tmp.{}", std::process::id())
}

fn check_name(file_name: &str) -> io::Result<()> {
    if file_name.is_empty()
        || file_name.contains('/')
        || file_name == "."
        || file_name == ".."
        || file_name.contains('\0')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{file_name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) with mode 0755 when missing (whatever the umask). An existing
/// directory keeps its mode.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(CONF_DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(CONF_DIR_MODE))
}

/// The conflist's bytes: pretty JSON with a final newline.
fn to_bytes(conflist: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(conflist).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Writes `bytes` to `dir/name` atomically with `mode`, through `dir/temp`.
fn atomic_write(dir: &Path, name: &str, temp: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp: PathBuf = dir.join(temp);
    let result = (|| {
        // Our own temp name: a leftover from a crashed run with the same pid is replaced.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(Permissions::from_mode(mode))?; // the umask may have removed bits
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `conflist` (a [`Conflist`], or any JSON-serializable value) to `conf_dir/file_name`
/// as pretty JSON with sorted keys, unless the file already holds the same JSON (compared
/// parsed, so formatting does not matter). Creates `conf_dir` (0755) if missing and restores
/// mode 0644 on an unchanged file if it drifted. Returns `Ok(true)` when written.
///
/// Errors: `file_name` is not a plain file name, `conflist` does not serialize as JSON
/// ([`io::ErrorKind::InvalidData`]), or the file system's.
pub fn write_if_changed<T: Serialize + ?Sized>(
    conf_dir: &Path,
    file_name: &str,
    conflist: &T,
) -> io::Result<bool> {
    check_name(file_name)?;
    let conflist = serde_json::to_value(conflist)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let conflist = &conflist;
    ensure_dir(conf_dir)?;
    let path = conf_dir.join(file_name);
    match std::fs::read(&path) {
        Ok(existing) => {
            if serde_json::from_slice::<Value>(&existing).ok().as_ref() == Some(conflist) {
                let meta = std::fs::metadata(&path)?;
                if meta.permissions().mode() & 0o7777 != CONFLIST_MODE {
                    std::fs::set_permissions(&path, Permissions::from_mode(CONFLIST_MODE))?;
                }
                return Ok(false);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    atomic_write(
        conf_dir,
        file_name,
        &temp_name(file_name),
        &to_bytes(conflist),
        CONFLIST_MODE,
    )?;
    Ok(true)
}

/// Removes `conf_dir/file_name` (and only it). `Ok(false)` when it was not there.
pub fn remove(conf_dir: &Path, file_name: &str) -> io::Result<bool> {
    check_name(file_name)?;
    match std::fs::remove_file(conf_dir.join(file_name)) {
        Ok(()) => {
            sync_dir(conf_dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The file [`ConflistSink`]: `dir/file_name`, read with [`Conflist::parse`], written with
/// [`write_if_changed`] (atomic, only when changed, mode 0644), removed with [`remove`] (only
/// this file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConflistSink {
    dir: PathBuf,
    file_name: String,
}

impl FileConflistSink {
    /// The sink `dir/file_name` (e.g. `[cni] conf_dir` and `[cni] conflist_name`).
    pub fn new(dir: impl Into<PathBuf>, file_name: impl Into<String>) -> FileConflistSink {
        FileConflistSink {
            dir: dir.into(),
            file_name: file_name.into(),
        }
    }

    /// The sink of `[cni] conf_dir` / `[cni] conflist_name`.
    pub fn for_config(cfg: &Config) -> FileConflistSink {
        FileConflistSink::new(&cfg.cni.conf_dir, &cfg.cni.conflist_name)
    }

    /// The conflist's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }
}

impl ConflistSink for FileConflistSink {
    fn location(&self) -> String {
        self.path().display().to_string()
    }

    /// `Ok(None)` when the file is missing (or its directory is) or is not a HeadCNI
    /// conflist; [`ConflistOnDisk::canonical`] when its JSON equals the parsed conflist's and
    /// its mode is [`CONFLIST_MODE`] (what [`write_if_changed`] compares).
    fn read(&self) -> io::Result<Option<ConflistOnDisk>> {
        check_name(&self.file_name)?;
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Ok(conflist) = Conflist::parse(&bytes) else {
            return Ok(None);
        };
        let same_json = serde_json::from_slice::<Value>(&bytes).ok() == Some(conflist.to_value());
        let mode_ok = std::fs::metadata(&path)?.permissions().mode() & 0o7777 == CONFLIST_MODE;
        Ok(Some(ConflistOnDisk {
            conflist,
            canonical: same_json && mode_ok,
        }))
    }

    fn write_if_changed(&self, conflist: &Conflist) -> io::Result<bool> {
        write_if_changed(&self.dir, &self.file_name, conflist)
    }

    fn remove(&self) -> io::Result<bool> {
        remove(&self.dir, &self.file_name)
    }
}

/// The daemon's conflist from the configuration, the node's CIDRs, the MTU in use
/// (`[cni] mtu`, else the tailnet interface's, resolved by the caller) and the versions the
/// chain accepts ([`crate::chain::ChainProber`]).
pub fn conflist_for(
    cfg: &Config,
    pod_cidrs: &[IpNetwork],
    mtu: u32,
    versions: &ChainVersions,
) -> Conflist {
    Conflist::new(&ConflistParams {
        versions,
        network_name: &cfg.cni.network_name,
        bridge: &cfg.cni.bridge,
        mtu,
        pod_cidrs,
        data_dir: &cfg.cni.data_dir,
        strategy: cfg.cni.ipam_strategy,
        daemon_socket: cfg.cni.daemon_socket_path(),
        chained: &cfg.cni.chained,
        dns: cfg.magic_dns.conflist_dns().as_ref(),
    })
}

/// [`conflist_for`] as JSON ([`Conflist::to_value`]).
pub fn render_for(
    cfg: &Config,
    pod_cidrs: &[IpNetwork],
    mtu: u32,
    versions: &ChainVersions,
) -> Value {
    conflist_for(cfg, pod_cidrs, mtu, versions).to_value()
}

/// Builds and writes the daemon's conflist as a reconcile pass does: the chained plugins in
/// `[cni] bin_dir` are asked for their versions (blocking, [`crate::chain::ChainProber`]),
/// then [`conflist_for`] + [`write_if_changed`] into `[cni] conf_dir` as
/// `[cni] conflist_name`. Returns `Ok(true)` when written.
pub fn ensure(cfg: &Config, pod_cidrs: &[IpNetwork], mtu: u32) -> io::Result<bool> {
    let versions =
        crate::chain::ChainProber::new().versions_blocking(&cfg.cni.bin_dir, &cfg.cni.chained);
    write_if_changed(
        &cfg.cni.conf_dir,
        &cfg.cni.conflist_name,
        &conflist_for(cfg, pod_cidrs, mtu, &versions),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    const NAME: &str = "10-headcni.conflist";

    fn conflist(subnet: &str) -> Value {
        let mut cfg = Config::default();
        cfg.cni.data_dir = "/var/lib/cni/networks".into();
        render_for(
            &cfg,
            &[subnet.parse().unwrap()],
            1280,
            &ChainVersions::headcni_only(),
        )
    }

    /// (content, mtime, inode, mode) of every entry but ours.
    fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime, u64, u32)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != NAME)
            .map(|p| {
                let m = std::fs::symlink_metadata(&p).unwrap();
                let content = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    (content, m.modified().unwrap(), m.ino(), m.mode()),
                )
            })
            .collect()
    }

    #[test]
    fn creates_the_dir_and_writes_0644() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc/cni/net.d");
        assert!(write_if_changed(&dir, NAME, &conflist("10.244.1.0/24")).unwrap());
        let m = std::fs::metadata(&dir).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o777, CONF_DIR_MODE);
        let f = std::fs::metadata(dir.join(NAME)).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o644);
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(dir.join(NAME)).unwrap()).unwrap();
        assert_eq!(on_disk, conflist("10.244.1.0/24"));
        // nothing else appeared (no leftover temp file)
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(NAME)]);
    }

    #[test]
    fn rewrites_only_on_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let a = conflist("10.244.1.0/24");
        assert!(write_if_changed(dir, NAME, &a).unwrap());
        let ino = std::fs::metadata(dir.join(NAME)).unwrap().ino();
        assert!(!write_if_changed(dir, NAME, &a).unwrap());
        assert_eq!(
            std::fs::metadata(dir.join(NAME)).unwrap().ino(),
            ino,
            "not rewritten"
        );
        // same JSON, other formatting: still unchanged
        std::fs::write(dir.join(NAME), serde_json::to_vec(&a).unwrap()).unwrap();
        let ino = std::fs::metadata(dir.join(NAME)).unwrap().ino();
        assert!(!write_if_changed(dir, NAME, &a).unwrap());
        assert_eq!(std::fs::metadata(dir.join(NAME)).unwrap().ino(), ino);
        // a drifted mode is restored without a rewrite
        std::fs::set_permissions(dir.join(NAME), Permissions::from_mode(0o600)).unwrap();
        assert!(!write_if_changed(dir, NAME, &a).unwrap());
        assert_eq!(
            std::fs::metadata(dir.join(NAME)).unwrap().mode() & 0o7777,
            0o644
        );
        // a change is written through a new inode (rename), atomically
        let b = conflist("10.244.2.0/24");
        assert!(write_if_changed(dir, NAME, &b).unwrap());
        let m = std::fs::metadata(dir.join(NAME)).unwrap();
        assert_ne!(m.ino(), ino);
        assert_eq!(m.mode() & 0o7777, 0o644);
        // a corrupt file is replaced
        std::fs::write(dir.join(NAME), b"{half").unwrap();
        assert!(write_if_changed(dir, NAME, &b).unwrap());
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(dir.join(NAME)).unwrap()).unwrap();
        assert_eq!(on_disk, b);
    }

    #[test]
    fn never_touches_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let old = SystemTime::now() - Duration::from_secs(86_400);
        for (name, body) in [
            (
                "10-flannel.conflist",
                &b"{\"name\":\"cbr0\",\"plugins\":[]}"[..],
            ),
            ("05-cilium.conf", b"{\"type\":\"cilium-cni\"}"),
            ("99-loopback.conf", b"{\"type\":\"loopback\"}"),
            ("87-podman.json", b"{}"),
            ("cni.yaml", b"a: b\n"),
            ("10-headcni.conflist.headcni_bak", b"old backup"),
            (".10-headcni.conflist.tmp.999999", b"someone else's temp"),
            ("README", b"not a config"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::fs::create_dir(dir.join("multus.d")).unwrap();
        std::os::unix::fs::symlink("99-loopback.conf", dir.join("00-link.conf")).unwrap();
        let before = snapshot(dir);
        assert_eq!(before.len(), 10);

        assert!(write_if_changed(dir, NAME, &conflist("10.244.1.0/24")).unwrap());
        assert!(!write_if_changed(dir, NAME, &conflist("10.244.1.0/24")).unwrap());
        assert!(write_if_changed(dir, NAME, &conflist("10.244.9.0/24")).unwrap());
        assert_eq!(snapshot(dir), before, "other files changed after writes");
        assert!(remove(dir, NAME).unwrap());
        assert!(!remove(dir, NAME).unwrap());
        assert_eq!(snapshot(dir), before, "other files changed after remove");
        assert!(!dir.join(NAME).exists());
    }

    #[test]
    fn temp_names_are_ignored_by_runtimes() {
        let t = temp_name(NAME);
        assert!(t.starts_with('.'));
        for ext in [".conf", ".conflist", ".json"] {
            assert!(!t.ends_with(ext), "{t}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "..", "a/b", "../x.conflist"] {
            assert!(
                write_if_changed(tmp.path(), bad, &json!({})).is_err(),
                "{bad}"
            );
            assert!(remove(tmp.path(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        // the target is a directory: rename fails after the temp file was written
        std::fs::create_dir(tmp.path().join(NAME)).unwrap();
        std::fs::write(tmp.path().join(NAME).join("x"), b"x").unwrap();
        assert!(write_if_changed(tmp.path(), NAME, &conflist("10.244.1.0/24")).is_err());
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(NAME)]);
    }

    #[test]
    fn file_sink_reads_what_it_wrote_and_reports_drift() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = FileConflistSink::new(tmp.path().join("net.d"), NAME);
        assert_eq!(sink.read().unwrap(), None, "no directory yet");
        let mut cfg = Config::default();
        cfg.cni.data_dir = "/var/lib/cni/networks".into();
        let c = conflist_for(
            &cfg,
            &["10.244.1.0/24".parse().unwrap()],
            1280,
            &ChainVersions::headcni_only(),
        );
        assert!(sink.write_if_changed(&c).unwrap());
        let d = sink.read().unwrap().unwrap();
        assert!(d.canonical);
        assert_eq!(d.conflist, c);
        assert!(!sink.write_if_changed(&c).unwrap());
        // a drifted mode or a key added by hand: same conflist, not canonical
        std::fs::set_permissions(sink.path(), Permissions::from_mode(0o600)).unwrap();
        assert!(!sink.read().unwrap().unwrap().canonical);
        assert!(
            !sink.write_if_changed(&c).unwrap(),
            "only the mode is restored"
        );
        assert!(sink.read().unwrap().unwrap().canonical);
        let mut v = c.to_value();
        v["extra"] = json!(1);
        std::fs::write(sink.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        let d = sink.read().unwrap().unwrap();
        assert_eq!((d.conflist == c, d.canonical), (true, false));
        std::fs::write(sink.path(), b"{half").unwrap();
        assert_eq!(sink.read().unwrap(), None, "not a conflist");
        assert!(sink.remove().unwrap());
        assert!(!sink.remove().unwrap());
        assert_eq!(
            sink.location(),
            tmp.path().join("net.d").join(NAME).display().to_string()
        );
    }

    #[test]
    fn ensure_uses_the_config() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.cni.conf_dir = tmp.path().join("net.d");
        cfg.cni.conflist_name = "20-hc.conflist".into();
        cfg.cni.daemon_socket = PathBuf::new();
        assert!(ensure(&cfg, &["10.244.1.0/24".parse().unwrap()], 1400).unwrap());
        let v: Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join("net.d/20-hc.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["plugins"][0]["mtu"], 1400);
        assert!(v["plugins"][0].get("daemonSocket").is_none());
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert!(!ensure(&cfg, &["10.244.1.0/24".parse().unwrap()], 1400).unwrap());
    }
}
