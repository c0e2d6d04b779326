//! The node daemon's readiness file (`<run dir>/ready.json`, next to its event socket) and
//! the plugin's CNI STATUS decision from it (CNI spec 1.1.0 §"STATUS": code 50 "the plugin
//! is not available", i.e. ADD cannot succeed; code 51 "limited connectivity", i.e. ADD
//! would succeed but the pods would lack connectivity). Pure: the daemon writes the file
//! atomically on every reconcile pass (`headcni_node::ready_file`), the plugin reads it
//! without waiting on the daemon (`headcni-plugin`) and asks [`status_verdict`].
//!
//! ```json
//! {"ready": false, "reasons": ["control plane: not-approved: waiting for approval"],
//!  "addBlocked": [], "writtenAtUnixMs": 1767225600000, "reconcileIntervalMs": 30000}
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cni::{CniError, ErrorCode};

/// The readiness file's name, in the directory of the daemon's event socket.
pub const READY_FILE_NAME: &str = "ready.json";

/// The most bytes the plugin reads from the readiness file (a larger file is unusable).
pub const MAX_READY_FILE_BYTES: usize = 16 * 1024;

/// A file older than this many reconcile intervals (plus [`STALE_SLACK_MS`]) means the
/// daemon is gone or stuck.
pub const STALE_INTERVALS: u64 = 3;

/// Added to the staleness bound: one reconcile pass may wait this long on the control
/// plane before it writes the file.
pub const STALE_SLACK_MS: u64 = 30_000;

/// The reconcile interval assumed from a file: at least 1 s, at most 1 h (a file cannot
/// make itself fresh for longer).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// The most bytes of the reasons quoted in a STATUS error's details.
pub const MAX_DETAILS_BYTES: usize = 1024;

/// The readiness file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyFile {
    /// The node is ready (`/readyz` would answer 200).
    pub ready: bool,
    /// Why not (`/readyz`'s reasons, [`super::readiness::not_ready_reasons`]); empty when
    /// ready.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Why a CNI ADD cannot succeed on this node now (e.g. the bridge cannot be made);
    /// empty when it can.
    #[serde(default)]
    pub add_blocked: Vec<String>,
    /// When the daemon wrote the file, in milliseconds since the Unix epoch.
    pub written_at_unix_ms: u64,
    /// The daemon's `[daemon] reconcile_interval_secs`, in milliseconds.
    pub reconcile_interval_ms: u64,
}

impl ReadyFile {
    /// The age above which the file means the daemon is gone: [`STALE_INTERVALS`] ×
    /// the interval (clamped to 1 s ..= [`MAX_INTERVAL_MS`]) + [`STALE_SLACK_MS`].
    pub fn max_age_ms(&self) -> u64 {
        STALE_INTERVALS * self.reconcile_interval_ms.clamp(1000, MAX_INTERVAL_MS) + STALE_SLACK_MS
    }
}

/// The readiness file of the daemon whose event socket is `daemon_socket`: the socket's
/// directory joined with [`READY_FILE_NAME`].
pub fn ready_file_path(daemon_socket: &Path) -> PathBuf {
    daemon_socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join(READY_FILE_NAME)
}

/// What the plugin found where the readiness file should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyObservation<'a> {
    /// No file (the daemon never ran, or its run directory is gone).
    Missing,
    /// The file could not be read as a regular file within [`MAX_READY_FILE_BYTES`] (a
    /// symlink, a directory, too large, an I/O error); the detail says which.
    Unreadable(&'a str),
    /// The file's bytes, and the time they were read, in ms since the Unix epoch.
    Read {
        /// The content.
        bytes: &'a [u8],
        /// Now.
        now_unix_ms: u64,
    },
}

fn cap(s: String) -> String {
    if s.len() <= MAX_DETAILS_BYTES {
        return s;
    }
    let mut end = MAX_DETAILS_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn limited(msg: &str, details: String) -> CniError {
    CniError::new(ErrorCode::LimitedConnectivity, msg).with_details(cap(details))
}

/// The STATUS answer from the readiness file (`path` names it in messages):
/// - missing, unreadable, not a readiness document, or older than
///   [`ReadyFile::max_age_ms`] → code 51 (the daemon is not running: ADD would work, the
///   pods would not reach other nodes);
/// - fresh with `addBlocked` reasons → code 50 naming them;
/// - fresh and not ready → code 51 naming the reasons (route not approved, tailscaled down,
///   PodCIDR unknown, ...);
/// - fresh and ready → `Ok`.
///
/// A timestamp in the future (clock step) counts as fresh.
///
/// # Errors
/// The [`CniError`] with code 50 or 51, a message and the reasons (at most
/// [`MAX_DETAILS_BYTES`]) as details.
pub fn status_verdict(obs: ReadyObservation<'_>, path: &Path) -> Result<(), CniError> {
    let (bytes, now) = match obs {
        ReadyObservation::Missing => {
            return Err(limited(
                "the headcni daemon is not running",
                format!("no readiness file {}", path.display()),
            ));
        }
        ReadyObservation::Unreadable(why) => {
            return Err(limited(
                "the headcni daemon's readiness is unknown",
                format!("{}: {why}", path.display()),
            ));
        }
        ReadyObservation::Read { bytes, now_unix_ms } => (bytes, now_unix_ms),
    };
    if bytes.len() > MAX_READY_FILE_BYTES {
        return Err(limited(
            "the headcni daemon's readiness is unknown",
            format!(
                "{} is larger than {MAX_READY_FILE_BYTES} bytes",
                path.display()
            ),
        ));
    }
    let file: ReadyFile = serde_json::from_slice(bytes).map_err(|e| {
        limited(
            "the headcni daemon's readiness is unknown",
            format!("{} is not a readiness file: {e}", path.display()),
        )
    })?;
    let age = now.saturating_sub(file.written_at_unix_ms);
    if age > file.max_age_ms() {
        return Err(limited(
            "the headcni daemon is not running",
            format!(
                "{} was last written {} s ago (stale after {} s)",
                path.display(),
                age / 1000,
                file.max_age_ms() / 1000
            ),
        ));
    }
    if !file.add_blocked.is_empty() {
        return Err(
            CniError::new(ErrorCode::NotAvailable, "pods cannot be added on this node")
                .with_details(cap(file.add_blocked.join("; "))),
        );
    }
    if !file.ready {
        let reasons = if file.reasons.is_empty() {
            "the daemon reports not ready".to_owned()
        } else {
            file.reasons.join("; ")
        };
        return Err(limited(
            "this node's pod network is not ready: pods would lack cross-node connectivity",
            reasons,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600_000;

    fn file(ready: bool, reasons: &[&str], blocked: &[&str], written: u64) -> Vec<u8> {
        serde_json::to_vec(&ReadyFile {
            ready,
            reasons: reasons.iter().map(|s| (*s).to_owned()).collect(),
            add_blocked: blocked.iter().map(|s| (*s).to_owned()).collect(),
            written_at_unix_ms: written,
            reconcile_interval_ms: 30_000,
        })
        .unwrap()
    }

    fn verdict(bytes: &[u8]) -> Result<(), CniError> {
        status_verdict(
            ReadyObservation::Read {
                bytes,
                now_unix_ms: NOW,
            },
            Path::new("/run/headcni/ready.json"),
        )
    }

    #[test]
    fn path_is_next_to_the_event_socket() {
        assert_eq!(
            ready_file_path(Path::new("/run/headcni/daemon.sock")),
            Path::new("/run/headcni/ready.json")
        );
    }

    #[test]
    fn ready_and_fresh_is_ok() {
        verdict(&file(true, &[], &[], NOW - 1000)).unwrap();
        verdict(&file(true, &[], &[], NOW + 60_000)).expect("a future stamp is fresh");
    }

    #[test]
    fn not_ready_is_51_naming_the_reason() {
        let e = verdict(&file(
            false,
            &["control plane: not-approved: waiting for approval"],
            &[],
            NOW,
        ))
        .unwrap_err();
        assert_eq!(e.code, 51);
        assert!(e.details.contains("not-approved"), "{e:?}");
        assert_eq!(verdict(&file(false, &[], &[], NOW)).unwrap_err().code, 51);
    }

    #[test]
    fn add_blocked_is_50() {
        let e = verdict(&file(
            false,
            &["x"],
            &["bridge headcni0 cannot be made: File exists"],
            NOW,
        ))
        .unwrap_err();
        assert_eq!(e.code, 50);
        assert!(e.details.contains("bridge headcni0"), "{e:?}");
    }

    #[test]
    fn missing_unreadable_garbage_or_stale_is_51() {
        let p = Path::new("/run/headcni/ready.json");
        for (obs, word) in [
            (ReadyObservation::Missing, "no readiness file"),
            (ReadyObservation::Unreadable("a symlink"), "a symlink"),
        ] {
            let e = status_verdict(obs, p).unwrap_err();
            assert_eq!(e.code, 51);
            assert!(e.details.contains(word), "{e:?}");
        }
        assert_eq!(verdict(b"{half").unwrap_err().code, 51);
        assert_eq!(
            verdict(&vec![b' '; MAX_READY_FILE_BYTES + 1])
                .unwrap_err()
                .code,
            51
        );
        // 3 × 30 s + 30 s = 120 s: at the bound fresh, past it stale, even a ready file
        verdict(&file(true, &[], &[], NOW - 120_000)).unwrap();
        let e = verdict(&file(true, &[], &[], NOW - 120_001)).unwrap_err();
        assert_eq!(e.code, 51);
        assert!(e.details.contains("stale"), "{e:?}");
        // a stale file's addBlocked is stale too: the daemon is gone (51)
        assert_eq!(
            verdict(&file(false, &[], &["bridge"], NOW - 200_000))
                .unwrap_err()
                .code,
            51
        );
    }

    #[test]
    fn a_file_cannot_claim_an_endless_interval_and_details_are_bounded() {
        let mut f: ReadyFile = serde_json::from_slice(&file(true, &[], &[], 0)).unwrap();
        f.reconcile_interval_ms = u64::MAX / 2;
        assert_eq!(f.max_age_ms(), 3 * MAX_INTERVAL_MS + STALE_SLACK_MS);
        f.reconcile_interval_ms = 0;
        assert_eq!(f.max_age_ms(), 3000 + STALE_SLACK_MS);
        let long = "é".repeat(2000);
        let e = verdict(&file(false, &[&long], &[], NOW)).unwrap_err();
        assert!(e.details.len() <= MAX_DETAILS_BYTES + '…'.len_utf8());
    }
}
