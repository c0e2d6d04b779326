//! The best-effort plugin → daemon event protocol: the datagram format, shared by the plugin
//! (which sends it) and the node agent (which receives it), so that neither links the other.
//!
//! After each ADD/DEL/CHECK/GC/STATUS the plugin sends one [`PluginEvent`] to the node daemon
//! (which keeps the pod table and the CNI metrics). Nothing in the plugin waits on the daemon:
//! its sender (`headcni_cli::events::send`) never blocks, never fails the CNI operation, and is
//! silent when no daemon listens. This module is the format only; it does no I/O.
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
//! `headcni_node::events::serve`): `sendto` on a unix socket needs write permission on it.
//! Unknown JSON fields are ignored by the daemon so that the protocol can grow; every known
//! field is bounded ([`PluginEvent::decode`]), so that a sender cannot grow the daemon's pod
//! table or corrupt its metrics.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where the daemon listens for plugin events (a `hostPath` shared by the plugin on the host
/// and the daemon in its pod).
pub const DEFAULT_SOCKET: &str = "/run/headcni/daemon.sock";

/// The largest event the daemon accepts, in bytes. [`PluginEvent::encode`] refuses larger events
/// rather than having them truncated.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// The CNI verbs an event may carry (anything else is a malformed event for the daemon).
pub const VERBS: [&str; 6] = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"];

/// The longest `container_id` the daemon accepts, in bytes.
///
/// The CNI spec (1.1.0, `CNI_CONTAINERID`) sets no length limit, but every runtime in use
/// allocates 64 hex characters (containerd/CRI, CRI-O, Docker, Podman); 256 leaves four times
/// that for runtimes that prefix or compose IDs, and keeps one pod-table entry small. An event
/// with a longer ID is rejected (the CNI operation itself is not affected).
pub const MAX_CONTAINER_ID_BYTES: usize = 256;

/// The longest `ifname`, in bytes: a Linux interface name (`IFNAMSIZ` 16 with the NUL).
pub const MAX_IFNAME_BYTES: usize = 15;

/// The longest `pod_namespace`, in bytes: a Kubernetes namespace is an RFC 1123 DNS label.
pub const MAX_POD_NAMESPACE_BYTES: usize = 63;

/// The longest `pod_name`, in bytes: a Kubernetes object name is an RFC 1123 DNS subdomain.
pub const MAX_POD_NAME_BYTES: usize = 253;

/// The most addresses one event may carry (an attachment has one per IPAM range: one or two
/// for dual-stack; 8 leaves room for multi-range configurations).
pub const MAX_IPS: usize = 8;

/// The largest `duration_us` recorded, in microseconds (10 minutes): longer durations are
/// clamped to it before they reach the latency histogram. No CNI operation legitimately takes
/// that long (runtimes time ADD out after a few minutes), so a larger value is a broken clock
/// or a broken sender, and must not turn the histogram's sum into garbage.
pub const MAX_DURATION_US: u64 = 10 * 60 * 1_000_000;

/// Why a datagram is not an acceptable [`PluginEvent`] (see [`PluginEvent::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The datagram is larger than [`MAX_EVENT_BYTES`].
    #[error("event of {0} bytes is larger than {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    /// Not a JSON event document.
    #[error("not a JSON event: {0}")]
    Json(String),
    /// A verb not in [`VERBS`].
    #[error("unknown verb")]
    UnknownVerb,
    /// A string field longer than its limit (`field`, its length, the limit; bytes).
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong {
        /// The event field's name.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A field holding characters it cannot hold (control characters anywhere; for
    /// `container_id`, anything outside the CNI spec's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
    #[error("{0} holds invalid characters")]
    InvalidChars(&'static str),
    /// More than [`MAX_IPS`] addresses.
    #[error("{0} addresses, more than {MAX_IPS}")]
    TooManyIps(usize),
}

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

    /// Parses one datagram into an event whose every field is bounded: a known verb,
    /// `container_id` ≤ [`MAX_CONTAINER_ID_BYTES`] in the CNI spec's ID alphabet (or empty),
    /// `ifname` ≤ [`MAX_IFNAME_BYTES`], `pod_namespace` ≤ [`MAX_POD_NAMESPACE_BYTES`],
    /// `pod_name` ≤ [`MAX_POD_NAME_BYTES`], no control characters, at most [`MAX_IPS`]
    /// addresses; `duration_us` is clamped to [`MAX_DURATION_US`].
    ///
    /// # Errors
    /// An [`EventError`] for anything else (the daemon counts those as malformed).
    pub fn decode(buf: &[u8]) -> Result<PluginEvent, EventError> {
        if buf.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge(buf.len()));
        }
        let mut ev: PluginEvent =
            serde_json::from_slice(buf).map_err(|e| EventError::Json(e.to_string()))?;
        ev.validate()?;
        ev.duration_us = ev.duration_us.min(MAX_DURATION_US);
        Ok(ev)
    }

    /// Checks the bounds [`decode`](Self::decode) enforces (except the duration, which is
    /// clamped rather than refused).
    ///
    /// # Errors
    /// The first bound the event breaks.
    pub fn validate(&self) -> Result<(), EventError> {
        if !VERBS.contains(&self.verb.as_str()) {
            return Err(EventError::UnknownVerb);
        }
        let ns = self.pod_namespace.as_deref().unwrap_or("");
        let name = self.pod_name.as_deref().unwrap_or("");
        for (field, value, max) in [
            (
                "container_id",
                self.container_id.as_str(),
                MAX_CONTAINER_ID_BYTES,
            ),
            ("ifname", self.ifname.as_str(), MAX_IFNAME_BYTES),
            ("pod_namespace", ns, MAX_POD_NAMESPACE_BYTES),
            ("pod_name", name, MAX_POD_NAME_BYTES),
        ] {
            if value.len() > max {
                return Err(EventError::TooLong {
                    field,
                    len: value.len(),
                    max,
                });
            }
            if value.chars().any(char::is_control) {
                return Err(EventError::InvalidChars(field));
            }
        }
        if !self.container_id.is_empty() && !is_container_id(&self.container_id) {
            return Err(EventError::InvalidChars("container_id"));
        }
        if self.ips.len() > MAX_IPS {
            return Err(EventError::TooManyIps(self.ips.len()));
        }
        Ok(())
    }
}

/// The CNI spec's container ID alphabet (1.1.0, `CNI_CONTAINERID`):
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn is_container_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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
        assert_eq!(PluginEvent::decode(&buf), Ok(e));
    }

    #[test]
    fn decode_rejects_garbage_unknown_verbs_and_oversize() {
        assert!(matches!(
            PluginEvent::decode(b"not json"),
            Err(EventError::Json(_))
        ));
        assert!(PluginEvent::decode(b"{}").is_err());
        let bad = ev("REBOOT").encode().unwrap_or_default();
        assert_eq!(PluginEvent::decode(&bad), Err(EventError::UnknownVerb));
        let mut big = ev("ADD");
        big.container_id = "x".repeat(MAX_EVENT_BYTES);
        assert_eq!(big.encode(), None);
        assert_eq!(
            PluginEvent::decode(&vec![b' '; MAX_EVENT_BYTES + 1]),
            Err(EventError::TooLarge(MAX_EVENT_BYTES + 1))
        );
    }

    #[test]
    fn decode_bounds_every_field() {
        let decode =
            |e: &PluginEvent| PluginEvent::decode(&serde_json::to_vec(e).unwrap_or_default());
        let mut max = ev("ADD");
        max.container_id = "a".repeat(MAX_CONTAINER_ID_BYTES);
        max.ifname = "i".repeat(MAX_IFNAME_BYTES);
        max.pod_namespace = Some("n".repeat(MAX_POD_NAMESPACE_BYTES));
        max.pod_name = Some("p".repeat(MAX_POD_NAME_BYTES));
        max.ips = vec![IpAddr::from([10, 0, 0, 1]); MAX_IPS];
        assert_eq!(
            decode(&max),
            Ok(max.clone()),
            "the limits themselves are fine"
        );
        type Grow = fn(&mut PluginEvent);
        let over: [(&str, Grow); 5] = [
            ("container_id", |e| e.container_id.push('a')),
            ("ifname", |e| e.ifname.push('i')),
            ("pod_namespace", |e| {
                e.pod_namespace = Some("n".repeat(MAX_POD_NAMESPACE_BYTES + 1))
            }),
            ("pod_name", |e| {
                e.pod_name = Some("p".repeat(MAX_POD_NAME_BYTES + 1))
            }),
            ("ips", |e| e.ips.push(IpAddr::from([10, 0, 0, 2]))),
        ];
        for (field, grow) in over {
            let mut e = max.clone();
            grow(&mut e);
            assert!(decode(&e).is_err(), "{field} over its limit is refused");
        }
        for cid in ["-lead", "a/b", "a b", "é"] {
            let mut e = ev("DEL");
            e.container_id = cid.into();
            assert_eq!(
                decode(&e),
                Err(EventError::InvalidChars("container_id")),
                "{cid:?}"
            );
        }
        let mut e = ev("ADD");
        e.pod_name = Some("web\u{1b}[2J".into());
        assert_eq!(decode(&e), Err(EventError::InvalidChars("pod_name")));
        let mut e = ev("STATUS");
        e.container_id.clear();
        e.ifname.clear();
        assert!(decode(&e).is_ok(), "verbs without an attachment");
    }

    #[test]
    fn decode_clamps_the_duration() {
        let mut e = ev("ADD");
        e.duration_us = u64::MAX;
        let got = PluginEvent::decode(&serde_json::to_vec(&e).unwrap_or_default());
        assert_eq!(got.map(|e| e.duration_us), Ok(MAX_DURATION_US));
    }

    #[test]
    fn decode_ignores_unknown_fields() {
        let mut v = serde_json::to_value(ev("DEL")).unwrap_or_default();
        v["future_field"] = serde_json::json!(42);
        let buf = serde_json::to_vec(&v).unwrap_or_default();
        assert_eq!(PluginEvent::decode(&buf).map(|e| e.verb), Ok("DEL".into()));
    }
}
