//! The plugin's side of the plugin → daemon event protocol: [`send`]. The datagram format
//! ([`PluginEvent`], its bounds) is `headcni_core::events`, re-exported here, shared with the
//! node agent (`headcni_node::events`) without either linking the other.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

pub use headcni_core::events::*;

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

    #[test]
    fn send_to_missing_socket_is_false() {
        let dir = std::env::temp_dir().join(format!("headcni-ev-missing-{}", std::process::id()));
        let ev = PluginEvent {
            verb: "ADD".to_owned(),
            container_id: "c1".to_owned(),
            ifname: "eth0".to_owned(),
            pod_namespace: None,
            pod_name: None,
            ips: Vec::new(),
            ok: true,
            code: None,
            duration_us: 1,
        };
        assert!(!send(&dir.join("nope.sock"), &ev));
    }
}
