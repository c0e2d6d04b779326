//! `headcni install`: copy the binary into the CNI bin dir atomically and link headcni-ipam to it.
//!
//! The binary is written to a hidden temp file in the bin dir (same filesystem), fsynced,
//! made 0755 and renamed over `headcni`. A runtime that execs `headcni` at any moment gets
//! either the old or the new complete binary; a copy of the old binary that is still running
//! keeps its (now unlinked) inode, so there is no "text file busy" (which a plain `cp` onto a
//! running executable fails with) and never a partially written binary. `headcni-ipam` is a
//! relative symlink to `headcni` (the binary dispatches on its invocation name), replaced the
//! same way (temp symlink + rename). An identical binary is left alone.
//!
//! An install that was interrupted (the init container killed mid-copy, the node rebooted)
//! leaves its temp file (`.headcni.tmp.<pid>`) behind. Every install takes `flock(LOCK_EX)`
//! on [`LOCK_NAME`] in the bin dir for its whole duration, and under that lock removes every
//! such leftover: a temp file that exists while the lock is held belongs to no running
//! install (pids do not tell that: each container has its own pid namespace, the lock works
//! across them because it is on the shared host directory).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The IPAM plugin's name, a symlink to [`BINARY_NAME`]: [`headcni_core::defaults::IPAM_TYPE`].
pub use headcni_core::defaults::IPAM_TYPE as IPAM_LINK_NAME;
/// The plugin binary's name in the bin dir (runtimes exec the plugin `type`):
/// [`headcni_core::defaults::PLUGIN_TYPE`].
pub use headcni_core::defaults::PLUGIN_TYPE as BINARY_NAME;
/// The binary's mode.
pub const BINARY_MODE: u32 = 0o755;
/// The lock file every install holds (`flock(LOCK_EX)`) in the bin dir, mode 0600.
pub const LOCK_NAME: &str = ".headcni.install.lock";

/// `headcni install`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct InstallArgs {
    /// The CNI plugin directory.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The binary to install [default: this executable].
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,
}

/// Runs `headcni install`.
pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    let source = match &args.source {
        Some(s) => s.clone(),
        None => std::env::current_exe().context("locating the running headcni binary")?,
    };
    let changed = install_binary(&source, &args.bin_dir).with_context(|| {
        format!(
            "installing {} into {}",
            source.display(),
            args.bin_dir.display()
        )
    })?;
    let dest = args.bin_dir.join(BINARY_NAME);
    if changed {
        println!(
            "installed {} ({} -> {BINARY_NAME})",
            dest.display(),
            args.bin_dir.join(IPAM_LINK_NAME).display()
        );
    } else {
        println!("{} is up to date", dest.display());
    }
    Ok(())
}

/// The temp file name prefix of `name` (`.headcni.tmp.`), followed by the installer's pid.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp.")
}

/// Takes the install lock of `dir` (created 0600 when missing), blocking until a concurrent
/// install finishes. Released when the returned file is dropped.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_NAME))?;
    f.lock()?;
    Ok(f)
}

/// Removes the temp files of interrupted installs of [`BINARY_NAME`] and
/// [`IPAM_LINK_NAME`] from `dir` (call it with the install lock held). Returns their names,
/// sorted.
fn remove_leftovers(dir: &Path) -> io::Result<Vec<String>> {
    let prefixes = [temp_prefix(BINARY_NAME), temp_prefix(IPAM_LINK_NAME)];
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_ours = prefixes.iter().any(|p| {
            name.strip_prefix(p.as_str())
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        if !is_ours {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    removed.sort();
    Ok(removed)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `true` when `a` and `b` have the same bytes.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `dest` already is a regular 0755 file with `source`'s bytes.
fn up_to_date(source: &Path, dest: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.mode() & 0o7777 != BINARY_MODE {
        return Ok(false);
    }
    let src = std::fs::metadata(source)?;
    if src.dev() == meta.dev() && src.ino() == meta.ino() {
        return Ok(true); // installing the installed binary
    }
    same_content(source, dest)
}

/// Copies `source` to `dir/temp` (0755, fsynced) and renames it to `dir/name`. On error the
/// temp file is removed and `dir/name` is untouched.
fn copy_atomically(source: &Path, dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{}{}", temp_prefix(name), std::process::id()));
    let result = (|| {
        let mut src = File::open(source)?;
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(BINARY_MODE)
            .open(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.set_permissions(Permissions::from_mode(BINARY_MODE))?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes `dir/link` a symlink to `target` (temp symlink + rename). `Ok(true)` if changed.
fn ensure_symlink(dir: &Path, link: &str, target: &str) -> io::Result<bool> {
    let path = dir.join(link);
    if let Ok(t) = std::fs::read_link(&path)
        && t == Path::new(target)
    {
        return Ok(false);
    }
    let tmp = dir.join(format!("{}{}", temp_prefix(link), std::process::id()));
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("replacing {}: {e}", path.display()),
        ));
    }
    Ok(true)
}

/// Installs `source` as `bin_dir/headcni` (atomic replace, 0755; skipped when identical) and
/// makes `bin_dir/headcni-ipam` a symlink to it. Creates `bin_dir` (0755) when missing.
/// Holds the install lock ([`LOCK_NAME`]) throughout and first removes the temp files of
/// interrupted installs. Returns `Ok(true)` when the binary or the symlink changed (a removed
/// leftover alone is no change).
pub fn install_binary(source: &Path, bin_dir: &Path) -> io::Result<bool> {
    let src_meta = std::fs::metadata(source)?;
    if !src_meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", source.display()),
        ));
    }
    if !bin_dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(bin_dir)?;
        std::fs::set_permissions(bin_dir, Permissions::from_mode(0o755))?;
    }
    let _lock = lock_dir(bin_dir)?;
    let leftovers = remove_leftovers(bin_dir)?;
    let dest = bin_dir.join(BINARY_NAME);
    let mut changed = false;
    if !up_to_date(source, &dest)? {
        copy_atomically(source, bin_dir, BINARY_NAME)?;
        changed = true;
    }
    changed |= ensure_symlink(bin_dir, IPAM_LINK_NAME, BINARY_NAME)?;
    if changed || !leftovers.is_empty() {
        sync_dir(bin_dir)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn write_exe(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Spawns, retrying ETXTBSY: another test thread may fork while this test's file was
    /// open for writing, and the forked child holds the descriptor until its own exec.
    fn spawn_retry(cmd: &mut Command) -> std::process::Child {
        for _ in 0..50 {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r.unwrap(),
            }
        }
        panic!("ETXTBSY persists");
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_NAME)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn fresh_install_then_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let src = write_exe(tmp.path(), "src", b"#!/bin/sh\necho v1\n");
        let bin = tmp.path().join("opt/cni/bin");
        assert!(install_binary(&src, &bin).unwrap());
        let dest = bin.join("headcni");
        let m = std::fs::symlink_metadata(&dest).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(&dest).unwrap(), b"#!/bin/sh\necho v1\n");
        assert_eq!(
            std::fs::read_link(bin.join("headcni-ipam")).unwrap(),
            Path::new("headcni")
        );
        assert_eq!(std::fs::metadata(&bin).unwrap().mode() & 0o777, 0o755);
        assert_eq!(entries(&bin), ["headcni", "headcni-ipam"]);

        let (ino, mtime) = (m.ino(), m.modified().unwrap());
        assert!(
            !install_binary(&src, &bin).unwrap(),
            "identical: no rewrite"
        );
        let m2 = std::fs::symlink_metadata(&dest).unwrap();
        assert_eq!((m2.ino(), m2.modified().unwrap()), (ino, mtime));
        // installing the installed binary itself is a no-op too
        assert!(!install_binary(&dest, &bin).unwrap());
        assert_eq!(entries(&bin), ["headcni", "headcni-ipam"]);
    }

    #[test]
    fn upgrade_while_the_old_binary_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        // the "old" headcni is a copy of sleep, and it is running
        assert!(install_binary(Path::new("/bin/sleep"), &bin).unwrap());
        let mut child = spawn_retry(
            Command::new(bin.join("headcni"))
                .arg0("sleep") // multi-call coreutils builds dispatch on argv[0]
                .arg("30")
                .stdin(Stdio::null()),
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "old binary runs");
        // a plain in-place write would need the running file opened for writing; the
        // installer never does that, so the upgrade succeeds
        let new = write_exe(tmp.path(), "new", b"#!/bin/sh\nexit 0\n");
        let r = install_binary(&new, &bin);
        let still_running = child.try_wait().unwrap().is_none();
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).ok();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(r.unwrap(), "upgrade reported a change");
        assert!(still_running, "the old process was not disturbed");
        assert_eq!(
            std::fs::read(bin.join("headcni")).unwrap(),
            b"#!/bin/sh\nexit 0\n"
        );
        if let Some(exe) = exe {
            assert!(
                exe.to_string_lossy().ends_with("(deleted)"),
                "the old process keeps the old inode: {exe:?}"
            );
        }
        assert_eq!(entries(&bin), ["headcni", "headcni-ipam"]);
        // the new binary is complete and executable
        let st = spawn_retry(&mut Command::new(bin.join("headcni")))
            .wait()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn symlink_is_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let src = write_exe(tmp.path(), "src", b"binary");
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // an old copy (a regular file) where the symlink belongs
        write_exe(&bin, "headcni-ipam", b"old ipam copy");
        assert!(install_binary(&src, &bin).unwrap());
        assert_eq!(
            std::fs::read_link(bin.join("headcni-ipam")).unwrap(),
            Path::new("headcni")
        );
        // a symlink to the wrong target
        std::fs::remove_file(bin.join("headcni-ipam")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/host-local", bin.join("headcni-ipam")).unwrap();
        assert!(install_binary(&src, &bin).unwrap(), "only the link changed");
        assert_eq!(
            std::fs::read_link(bin.join("headcni-ipam")).unwrap(),
            Path::new("headcni")
        );
        assert_eq!(std::fs::read(bin.join("headcni-ipam")).unwrap(), b"binary");
        assert!(!install_binary(&src, &bin).unwrap());
        // a wrong mode is fixed by a reinstall
        std::fs::set_permissions(bin.join("headcni"), Permissions::from_mode(0o700)).unwrap();
        assert!(install_binary(&src, &bin).unwrap());
        assert_eq!(
            std::fs::metadata(bin.join("headcni")).unwrap().mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn a_failed_install_keeps_the_old_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let src = write_exe(tmp.path(), "src", b"v1");
        let bin = tmp.path().join("bin");
        install_binary(&src, &bin).unwrap();
        assert!(install_binary(&tmp.path().join("missing"), &bin).is_err());
        assert!(
            install_binary(tmp.path(), &bin).is_err(),
            "a directory is not a binary"
        );
        assert_eq!(std::fs::read(bin.join("headcni")).unwrap(), b"v1");
        assert_eq!(entries(&bin), ["headcni", "headcni-ipam"]);
        // a directory in the symlink's place is reported, the binary stays
        std::fs::remove_file(bin.join("headcni-ipam")).unwrap();
        std::fs::create_dir(bin.join("headcni-ipam")).unwrap();
        std::fs::write(bin.join("headcni-ipam/x"), b"x").unwrap();
        assert!(install_binary(&src, &bin).is_err());
        assert_eq!(entries(&bin), ["headcni", "headcni-ipam"]);
    }

    #[test]
    fn an_interrupted_copy_is_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        let src = write_exe(tmp.path(), "src", b"v2 complete");
        let bin = tmp.path().join("bin");
        install_binary(&write_exe(tmp.path(), "old", b"v1"), &bin).unwrap();
        // What a killed install of another container (another pid namespace) left: a
        // partial copy, and a temp symlink.
        std::fs::write(bin.join(".headcni.tmp.4242"), b"v2 comp").unwrap();
        std::os::unix::fs::symlink("headcni", bin.join(".headcni-ipam.tmp.17")).unwrap();
        // Not ours: kept.
        std::fs::write(bin.join(".headcni.tmp.notapid"), b"x").unwrap();
        std::fs::write(bin.join("portmap"), b"x").unwrap();
        assert!(install_binary(&src, &bin).unwrap());
        assert_eq!(
            entries(&bin),
            [".headcni.tmp.notapid", "headcni", "headcni-ipam", "portmap"]
        );
        assert_eq!(std::fs::read(bin.join("headcni")).unwrap(), b"v2 complete");
        // A leftover next to an up-to-date binary is removed too (no change reported).
        std::fs::write(bin.join(".headcni.tmp.1"), b"v").unwrap();
        assert!(!install_binary(&src, &bin).unwrap());
        assert!(!bin.join(".headcni.tmp.1").exists());
    }

    #[test]
    fn the_install_lock_is_exclusive_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let held = lock_dir(tmp.path()).unwrap();
        let other = File::open(tmp.path().join(LOCK_NAME)).unwrap();
        assert!(
            matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "a second install waits"
        );
        drop(held);
        other.try_lock().unwrap();
        let mode = std::fs::metadata(tmp.path().join(LOCK_NAME))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn run_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let src = write_exe(tmp.path(), "src", b"v1");
        let args = InstallArgs {
            bin_dir: tmp.path().join("bin"),
            source: Some(src),
        };
        run(&args).unwrap();
        run(&args).unwrap();
        let bad = InstallArgs {
            bin_dir: tmp.path().join("bin"),
            source: Some(tmp.path().join("nope")),
        };
        let e = format!("{:#}", run(&bad).unwrap_err());
        assert!(e.contains("nope"), "{e}");
    }
}
