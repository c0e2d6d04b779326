//! Writes the daemon's readiness file (`<dir of [cni] daemon_socket>/ready.json`,
//! [`headcni_core::node::ready_file`]) for the plugin's CNI STATUS: atomically (a temporary
//! file in the same directory, fsync, rename), mode 0644, after every reconcile pass; removed
//! on a clean shutdown, so STATUS says 51 at once rather than when the file goes stale.

use std::fs::{OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use headcni_core::node::ready_file::{READY_FILE_NAME, ReadyFile, ready_file_path};

/// The readiness document for a pass that ended with `not_ready` reasons and `add_blocked`
/// reasons, written now, for a daemon reconciling every `interval`.
pub fn document(not_ready: &[String], add_blocked: &[String], interval: Duration) -> ReadyFile {
    ReadyFile {
        ready: not_ready.is_empty(),
        reasons: not_ready.to_vec(),
        add_blocked: add_blocked.to_vec(),
        written_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        reconcile_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Writes `doc` as the readiness file of the daemon whose event socket is `daemon_socket`
/// (creating the directory, 0755, when missing). Atomic: a reader sees the old or the new
/// complete file.
///
/// # Errors
/// The file system's.
pub fn write(daemon_socket: &Path, doc: &ReadyFile) -> io::Result<()> {
    let path = ready_file_path(daemon_socket);
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let bytes =
        serde_json::to_vec(doc).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = dir.join(format!(".{READY_FILE_NAME}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.set_permissions(Permissions::from_mode(0o644))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the readiness file (clean shutdown). Missing is fine.
///
/// # Errors
/// The file system's, other than "not found".
pub fn remove(daemon_socket: &Path) -> io::Result<()> {
    match std::fs::remove_file(ready_file_path(daemon_socket)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::node::ready_file::{ReadyObservation, status_verdict};

    #[test]
    fn written_atomically_and_read_back_by_the_status_decision() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run/daemon.sock");
        let reasons = vec!["control plane: not-approved: waiting".to_owned()];
        write(&sock, &document(&reasons, &[], Duration::from_secs(30))).unwrap();
        let path = ready_file_path(&sock);
        let bytes = std::fs::read(&path).unwrap();
        let now = document(&[], &[], Duration::ZERO).written_at_unix_ms;
        let e = status_verdict(
            ReadyObservation::Read {
                bytes: &bytes,
                now_unix_ms: now,
            },
            &path,
        )
        .unwrap_err();
        assert_eq!(e.code, 51);
        write(&sock, &document(&[], &[], Duration::from_secs(30))).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        status_verdict(
            ReadyObservation::Read {
                bytes: &bytes,
                now_unix_ms: now,
            },
            &path,
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from(READY_FILE_NAME)],
            "no temp file left"
        );
        remove(&sock).unwrap();
        remove(&sock).unwrap();
        assert!(!path.exists());
    }
}
