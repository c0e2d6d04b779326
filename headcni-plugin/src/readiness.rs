//! STATUS's view of the node daemon: reads its readiness file
//! ([`headcni_core::node::ready_file`], next to the `daemonSocket`) without waiting on the
//! daemon, and answers with [`status_verdict`].
//!
//! The read is bounded: `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused, a FIFO never
//! blocks the open), a regular file only, at most [`MAX_READY_FILE_BYTES`] + 1 bytes read.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use headcni_core::cni::CniError;
use headcni_core::node::ready_file::{
    MAX_READY_FILE_BYTES, ReadyObservation, ready_file_path, status_verdict,
};

/// The file's bytes (`Ok(None)` when missing), or why it cannot be used.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err("it is a symlink".to_owned());
        }
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    let mut buf = Vec::new();
    file.take(MAX_READY_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    Ok(Some(buf))
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC
}

/// The daemon's part of STATUS for the daemon whose event socket is `daemon_socket`: `Ok`
/// when its readiness file is fresh and says ready, else code 50 or 51 naming the reason
/// ([`status_verdict`]).
pub(crate) fn daemon_status(daemon_socket: &Path) -> Result<(), CniError> {
    let path = ready_file_path(daemon_socket);
    let now_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    match read_bounded(&path) {
        Ok(None) => status_verdict(ReadyObservation::Missing, &path),
        Ok(Some(bytes)) => status_verdict(
            ReadyObservation::Read {
                bytes: &bytes,
                now_unix_ms,
            },
            &path,
        ),
        Err(why) => status_verdict(ReadyObservation::Unreadable(&why), &path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_directories_are_refused_missing_is_51() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("daemon.sock");
        let ready = tmp.path().join("ready.json");
        let e = daemon_status(&sock).unwrap_err();
        assert_eq!(e.code, 51);
        assert!(e.details.contains("no readiness file"), "{e:?}");

        let real = tmp.path().join("real.json");
        std::fs::write(
            &real,
            br#"{"ready":true,"writtenAtUnixMs":0,"reconcileIntervalMs":1000}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(&real, &ready).unwrap();
        let e = daemon_status(&sock).unwrap_err();
        assert!(e.details.contains("symlink"), "{e:?}");
        std::fs::remove_file(&ready).unwrap();

        nix::unistd::mkfifo(&ready, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = daemon_status(&sock).unwrap_err();
        assert!(e.details.contains("not a regular file"), "{e:?}");
        std::fs::remove_file(&ready).unwrap();

        std::fs::create_dir(&ready).unwrap();
        assert_eq!(daemon_status(&sock).unwrap_err().code, 51);
        std::fs::remove_dir(&ready).unwrap();

        // fresh and ready
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        std::fs::write(
            &ready,
            format!(r#"{{"ready":true,"writtenAtUnixMs":{now},"reconcileIntervalMs":1000}}"#),
        )
        .unwrap();
        daemon_status(&sock).unwrap();
        // written a day ago: stale
        std::fs::write(
            &ready,
            format!(
                r#"{{"ready":true,"writtenAtUnixMs":{},"reconcileIntervalMs":1000}}"#,
                now - 86_400_000
            ),
        )
        .unwrap();
        assert_eq!(daemon_status(&sock).unwrap_err().code, 51);
    }
}
