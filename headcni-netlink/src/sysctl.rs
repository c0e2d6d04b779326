//! Minimal `/proc/sys` reader and writer. `/proc/sys/net/...` resolves against the network namespace
//! of the thread that opens the file, so callers run this on a thread inside the target
//! namespace (see [`crate::NetlinkHandle`]).

use std::io;
use std::path::Path;

use headcni_core::link::LinkError;
use headcni_core::sysctl::ForwardingState;

use headcni_core::defaults::{
    IPV4_FORWARDING_SYSCTL as IPV4_FORWARD, IPV6_FORWARDING_SYSCTL as IPV6_FORWARD,
};

/// Writes `value` to the sysctl file `path` unless it already holds it. Returns whether it
/// wrote.
pub(crate) fn write_if_different(path: &Path, value: &str) -> io::Result<bool> {
    let current = std::fs::read_to_string(path)?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(path, value)?;
    Ok(true)
}

/// Enables IPv4 and/or IPv6 forwarding in the calling thread's network namespace. A missing
/// IPv6 sysctl (IPv6 disabled) is tolerated.
pub(crate) fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<(), LinkError> {
    if ipv4 {
        write_if_different(Path::new(IPV4_FORWARD), "1").map_err(|source| LinkError::Io {
            what: format!("write {IPV4_FORWARD}"),
            source,
        })?;
    }
    if ipv6 {
        match write_if_different(Path::new(IPV6_FORWARD), "1") {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!("IPv6 disabled, {IPV6_FORWARD} missing: not enabling forwarding");
            }
            Err(source) => {
                return Err(LinkError::Io {
                    what: format!("write {IPV6_FORWARD}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Reads a sysctl file; `None` when it does not exist (IPv6 disabled).
fn read_optional(path: &'static str) -> Result<Option<String>, LinkError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LinkError::Io {
            what: format!("read {path}"),
            source,
        }),
    }
}

/// The forwarding sysctls of the calling thread's network namespace.
pub(crate) fn forwarding() -> Result<ForwardingState, LinkError> {
    let v4 = read_optional(IPV4_FORWARD)?;
    let v6 = read_optional(IPV6_FORWARD)?;
    Ok(ForwardingState::from_values(v4.as_deref(), v6.as_deref()))
}
