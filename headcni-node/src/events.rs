//! The daemon side of the plugin event socket: receives [`PluginEvent`] datagrams (see
//! [`headcni_core::events`] for the protocol and why it is datagram-based), keeps the pod table in
//! [`DaemonState::pods`](crate::state::DaemonState) and feeds the CNI metrics.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::{PodEntry, SharedState};
use headcni_core::events::{MAX_DURATION_US, MAX_EVENT_BYTES, PluginEvent};

/// The most pod attachments the table holds; further ADDs are counted but not stored, so that
/// a runaway sender cannot grow the daemon without bound (a node runs ~110 pods by default).
pub const MAX_PODS: usize = 8192;

/// An upper bound of the memory one pod-table entry takes, in bytes, given the field bounds
/// [`PluginEvent::decode`] enforces: the key (`containerID/ifname`, ≤ 256 + 1 + 15 bytes),
/// the entry's strings (≤ 256 + 15 + 63 + 253 bytes), up to 8 addresses (17 bytes each),
/// the inline key and entry (160 bytes, doubled for half-full B-tree nodes) and the
/// allocator's per-allocation overhead (6 allocations × 32 bytes): about 1.5 KiB, rounded up.
pub const MAX_POD_ENTRY_BYTES: usize = 2048;

/// An upper bound of the pod table's memory, in bytes: [`MAX_PODS`] × [`MAX_POD_ENTRY_BYTES`]
/// = 16 MiB.
pub const MAX_POD_TABLE_BYTES: usize = MAX_PODS * MAX_POD_ENTRY_BYTES;

/// The pod-table key of an attachment: `containerID/ifname`.
pub fn pod_key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// Applies one event to the pod table and the metrics: a successful ADD inserts (or replaces)
/// the attachment, any DEL removes it (the runtime has given up on the attachment even when
/// DEL failed, and it retries DEL on its own); other verbs only count.
///
/// `ev` is expected to come from [`PluginEvent::decode`] (bounded fields); the duration is
/// clamped to [`MAX_DURATION_US`] here too, so that no caller can corrupt the histogram.
pub fn apply(state: &SharedState, metrics: &Metrics, ev: PluginEvent) {
    // u64 microseconds → f64 seconds, exact below 2^53 µs.
    let duration_us = ev.duration_us.min(MAX_DURATION_US);
    metrics.record_cni(&ev.verb, ev.ok, duration_us as f64 / 1e6);
    let key = pod_key(&ev.container_id, &ev.ifname);
    let mut st = state.write().unwrap_or_else(|e| e.into_inner());
    match ev.verb.as_str() {
        "ADD" if ev.ok && !ev.container_id.is_empty() => {
            if st.pods.len() >= MAX_PODS && !st.pods.contains_key(&key) {
                tracing::warn!("pod table full ({MAX_PODS} entries), ADD event not recorded");
            } else {
                st.pods.insert(
                    key,
                    PodEntry {
                        container_id: ev.container_id,
                        ifname: ev.ifname,
                        namespace: ev.pod_namespace,
                        name: ev.pod_name,
                        ips: ev.ips,
                        added_at: SystemTime::now(),
                    },
                );
            }
        }
        "DEL" => {
            st.pods.remove(&key);
        }
        _ => {}
    }
    metrics.set_pods(st.pods.len() as u64);
}

/// Why the plugin event socket could not be served ([`serve`]).
#[derive(Debug, thiserror::Error)]
pub enum EventSocketError {
    /// A live socket is bound at the path (another daemon).
    #[error("{} is in use by a running process (another headcni daemon?)", .0.display())]
    InUse(PathBuf),
    /// A socket that refuses a datagram probe for another reason than "nobody bound"
    /// (e.g. `EPROTOTYPE`: another program's stream socket).
    #[error(
        "{} exists and is not a stale headcni socket ({reason}); refusing to replace it",
        path.display()
    )]
    NotStale {
        /// The path.
        path: PathBuf,
        /// The probe's error.
        reason: std::io::Error,
    },
    /// Something that is not a socket is at the path.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// The path has no file name (e.g. `/`).
    #[error("{} has no file name", .0.display())]
    NoFileName(PathBuf),
    /// An I/O step failed; `step` says which (e.g. `binding /run/headcni/.daemon.sock.1.tmp`).
    #[error("{step}")]
    Io {
        /// The step.
        step: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds `socket` for plugin events, mode 0600, without a window in which the socket is
/// reachable with a looser mode: it is bound under a temporary name in the (root-owned, 0755)
/// parent directory, chmod'ed, then renamed over `socket`. Refuses to replace a live socket
/// (another daemon) or a file that is not a socket.
fn bind(socket: &Path) -> Result<UnixDatagram, EventSocketError> {
    let io = |step: String| move |source| EventSocketError::Io { step, source };
    let parent = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io(format!("creating {}", parent.display())))?;
    match std::fs::symlink_metadata(socket) {
        Ok(md) if md.file_type().is_socket() => {
            let probe = std::os::unix::net::UnixDatagram::unbound()
                .map_err(io("creating a probe socket".to_owned()))?;
            match probe.connect(socket) {
                Ok(()) => return Err(EventSocketError::InUse(socket.to_path_buf())),
                // Nobody bound to it any more: a leftover of a daemon that died.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                // E.g. EPROTOTYPE: a live stream socket of some other program.
                Err(e) => {
                    return Err(EventSocketError::NotStale {
                        path: socket.to_path_buf(),
                        reason: e,
                    });
                }
            }
            tracing::info!("removing stale event socket {}", socket.display());
        }
        Ok(_) => return Err(EventSocketError::NotASocket(socket.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("inspecting {}", socket.display()))(e)),
    }
    let file_name = socket
        .file_name()
        .ok_or_else(|| EventSocketError::NoFileName(socket.to_path_buf()))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let sock = UnixDatagram::bind(&tmp).map_err(io(format!("binding {}", tmp.display())))?;
    let finish = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod 0600 {}", tmp.display())))
        .and_then(|()| {
            std::fs::rename(&tmp, socket).map_err(io(format!(
                "renaming {} to {}",
                tmp.display(),
                socket.display()
            )))
        });
    if let Err(e) = finish {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(sock)
}

/// Removes `socket` if it is still the inode this daemon bound (a newer daemon may already
/// have replaced it).
fn remove_own(socket: &Path, ino: Option<(u64, u64)>) {
    if let (Some((dev, ino)), Ok(md)) = (ino, std::fs::symlink_metadata(socket))
        && md.dev() == dev
        && md.ino() == ino
        && let Err(e) = std::fs::remove_file(socket)
    {
        tracing::warn!("removing {}: {e}", socket.display());
    }
}

/// Serves the plugin event socket until `cancel`: creates the parent directory (0755),
/// replaces a stale socket, binds with mode 0600 (root only), and applies every well-formed
/// event to the pod table and the CNI metrics ([`apply`]). Malformed datagrams, and events
/// breaking a field bound of [`PluginEvent::decode`], are counted
/// (`headcni_plugin_events_total{result="malformed"}`) and ignored. On cancel it returns
/// `Ok(())` and removes the socket.
pub async fn serve(
    socket: PathBuf,
    state: SharedState,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), EventSocketError> {
    let sock = bind(&socket)?;
    let ino = std::fs::symlink_metadata(&socket)
        .ok()
        .map(|md| (md.dev(), md.ino()));
    tracing::info!("plugin event socket on {}", socket.display());
    // One byte more than the largest event, so that an oversized datagram is seen as such
    // (recv truncates silently) and rejected.
    let mut buf = vec![0u8; MAX_EVENT_BYTES + 1];
    let result = loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            r = sock.recv(&mut buf) => r,
        };
        match n {
            Ok(n) => match PluginEvent::decode(buf.get(..n).unwrap_or_default()) {
                Ok(ev) => {
                    metrics.record_plugin_event(true);
                    tracing::debug!(verb = %ev.verb, container = %ev.container_id, ok = ev.ok, "plugin event");
                    apply(&state, &metrics, ev);
                }
                Err(e) => {
                    metrics.record_plugin_event(false);
                    tracing::debug!("malformed plugin event ({n} bytes) ignored: {e}");
                }
            },
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(source) => {
                break Err(EventSocketError::Io {
                    step: "receiving plugin events".to_owned(),
                    source,
                });
            }
        }
    };
    drop(sock);
    remove_own(&socket, ino);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DaemonState;
    use std::sync::RwLock;

    fn ev(verb: &str, cid: &str, ok: bool) -> PluginEvent {
        PluginEvent {
            verb: verb.into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod_namespace: Some("ns".into()),
            pod_name: Some("p".into()),
            ips: vec![],
            ok,
            code: None,
            duration_us: 500,
        }
    }

    #[test]
    fn apply_add_del() {
        let st: SharedState = Arc::new(RwLock::new(DaemonState::new("n", "host")));
        let m = Metrics::new();
        apply(&st, &m, ev("ADD", "a", true));
        apply(&st, &m, ev("ADD", "b", false));
        apply(&st, &m, ev("CHECK", "a", true));
        assert_eq!(st.read().map(|s| s.pods.len()).unwrap_or(0), 1);
        assert!(m.encode().contains("headcni_pods 1"));
        apply(&st, &m, ev("DEL", "a", false));
        assert_eq!(st.read().map(|s| s.pods.len()).unwrap_or(9), 0);
        assert!(m.encode().contains("headcni_pods 0"));
    }

    #[test]
    fn apply_clamps_the_duration() {
        let st: SharedState = Arc::new(RwLock::new(DaemonState::new("n", "host")));
        let m = Metrics::new();
        let mut e = ev("DEL", "a", true);
        e.duration_us = u64::MAX;
        apply(&st, &m, e);
        assert!(
            m.encode()
                .contains("headcni_cni_operation_duration_seconds_sum{verb=\"DEL\"} 600.0\n"),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn bind_refuses_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("daemon.sock");
        std::fs::write(&p, b"x").expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt.block_on(async { bind(&p).map(|_| ()) });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).expect("still there"), b"x");
    }

    #[test]
    fn bind_refuses_a_live_stream_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("daemon.sock");
        let _other = std::os::unix::net::UnixListener::bind(&p).expect("listener");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt.block_on(async { bind(&p).map(|_| ()) });
        assert!(err.is_err());
        assert!(
            std::os::unix::net::UnixStream::connect(&p).is_ok(),
            "left alone"
        );
    }
}
