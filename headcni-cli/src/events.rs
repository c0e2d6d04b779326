//! The best-effort plugin → daemon event protocol, shared by both sides.
//!
//! After each ADD/DEL/CHECK/GC/STATUS the plugin sends one [`PluginEvent`] to the node daemon
//! (which keeps the pod table and the CNI metrics). Nothing in the plugin waits on the daemon:
//! [`send`] never blocks, never fails the CNI operation, and is silent when no daemon listens.
//!
//! # Transport: one JSON document per `SOCK_DGRAM` unix datagram
//!
//! A datagram socket was chosen over a stream socket because it fits a fire-and-forget event
//! exactly:
//! - one `sendto(2)` per event, no connection, no framing: a datagram is delivered whole or
//!   not at all, so the daemon never sees half a message and never needs a per-connection
//!   task or read timeout;
//! - with `MSG_DONTWAIT` (here: a non-blocking socket) the call returns at once in every
//!   case: delivered, `ENOENT` (no socket file: no daemon), `ECONNREFUSED` (stale socket file,
//!   daemon gone) or `EAGAIN` (the daemon's receive queue is full: the event is dropped, which
//!   is what "best effort" means). A stream socket would need a non-blocking `connect`, a
//!   poll with a deadline and a write that may block on a slow reader;
//! - unix datagrams are reliable and ordered on Linux (no loss unless the queue is full), so
//!   nothing is given up for the normal case.
//!
//! Access control is the socket file's mode (0600, root only; see
//! [`crate::daemon::events::serve`]): `sendto` on a unix socket needs write permission on it.
//! Unknown JSON fields are ignored by the daemon so that the protocol can grow.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the daemon listens for plugin events (a `hostPath` shared by the plugin on the host
/// and the daemon in its pod).
pub const DEFAULT_SOCKET: &str = "/run/headcni/daemon.sock";

/// The largest event the daemon accepts, in bytes. [`send`] refuses larger events rather than
/// having them truncated.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// The CNI verbs an event may carry (anything else is a malformed event for the daemon).
pub const VERBS: [&str; 6] = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"];

/// One plugin invocation, as reported to the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PluginEvent {
    /// The CNI verb (`ADD`, `DEL`, `CHECK`, `GC`, `STATUS`).
    pub verb: String,
    /// `CNI_CONTAINERID` (empty for verbs without one, e.g. `STATUS`).
    pub container_id: String,
    /// `CNI_IFNAME` (empty for verbs without one).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, if present.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`, if present.
    pub pod_name: Option<String>,
    /// The addresses of the ADD result (empty otherwise).
    pub ips: Vec<IpAddr>,
    /// Whether the operation succeeded.
    pub ok: bool,
    /// The CNI error code when it failed.
    pub code: Option<u32>,
    /// How long the operation took, in microseconds.
    pub duration_us: u64,
}

impl PluginEvent {
    /// The JSON wire form, or `None` if it is larger than [`MAX_EVENT_BYTES`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let buf = serde_json::to_vec(self).ok()?;
        (buf.len() <= MAX_EVENT_BYTES).then_some(buf)
    }

    /// Parses one datagram; `None` for anything that is not a well-formed event with a known
    /// verb (the daemon counts those as malformed).
    pub fn decode(buf: &[u8]) -> Option<PluginEvent> {
        if buf.len() > MAX_EVENT_BYTES {
            return None;
        }
        let ev: PluginEvent = serde_json::from_slice(buf).ok()?;
        VERBS.contains(&ev.verb.as_str()).then_some(ev)
    }
}

/// Sends `ev` to the daemon listening on `socket`, best effort: returns whether the datagram
/// was handed to the daemon's socket.
///
/// Never blocks (non-blocking socket: a full queue drops the event), never panics, and logs
/// nothing when the daemon is absent (`ENOENT`/`ECONNREFUSED`), which is the normal case on a
/// node without the daemon. Other failures are logged at debug level only, because the
/// plugin's stderr belongs to the container runtime.
pub fn send(socket: &Path, ev: &PluginEvent) -> bool {
    let Some(buf) = ev.encode() else {
        tracing::debug!(
            verb = %ev.verb,
            "plugin event larger than {MAX_EVENT_BYTES} bytes, not sent"
        );
        return false;
    };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("plugin event socket: {e}");
            return false;
        }
    };
    if let Err(e) = sock.set_nonblocking(true) {
        tracing::debug!("plugin event socket: {e}");
        return false;
    }
    match sock.send_to(&buf, socket) {
        Ok(n) => n == buf.len(),
        Err(e) => {
            match e.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => {}
                ErrorKind::WouldBlock => {
                    tracing::debug!("daemon event queue full, plugin event dropped");
                }
                _ => tracing::debug!("plugin event to {}: {e}", socket.display()),
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(verb: &str) -> PluginEvent {
        PluginEvent {
            verb: verb.to_owned(),
            container_id: "c1".to_owned(),
            ifname: "eth0".to_owned(),
            pod_namespace: Some("default".to_owned()),
            pod_name: Some("web".to_owned()),
            ips: vec!["10.244.1.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))],
            ok: true,
            code: None,
            duration_us: 1234,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = ev("ADD");
        let buf = e.encode().unwrap_or_default();
        assert_eq!(PluginEvent::decode(&buf), Some(e));
    }

    #[test]
    fn decode_rejects_garbage_unknown_verbs_and_oversize() {
        assert_eq!(PluginEvent::decode(b"not json"), None);
        assert_eq!(PluginEvent::decode(b"{}"), None);
        let bad = ev("REBOOT").encode().unwrap_or_default();
        assert_eq!(PluginEvent::decode(&bad), None);
        let mut big = ev("ADD");
        big.container_id = "x".repeat(MAX_EVENT_BYTES);
        assert_eq!(big.encode(), None);
        assert_eq!(PluginEvent::decode(&vec![b' '; MAX_EVENT_BYTES + 1]), None);
    }

    #[test]
    fn decode_ignores_unknown_fields() {
        let mut v = serde_json::to_value(ev("DEL")).unwrap_or_default();
        v["future_field"] = serde_json::json!(42);
        let buf = serde_json::to_vec(&v).unwrap_or_default();
        assert_eq!(
            PluginEvent::decode(&buf).map(|e| e.verb),
            Some("DEL".into())
        );
    }

    #[test]
    fn send_to_missing_socket_is_false() {
        let dir = std::env::temp_dir().join(format!("headcni-ev-missing-{}", std::process::id()));
        assert!(!send(&dir.join("nope.sock"), &ev("ADD")));
    }
}
