//! Reading the node's forwarding sysctls (no I/O here): the [`ForwardingSysctl`] trait and
//! the [`ForwardingState`] it reports. Enabling forwarding is
//! [`LinkManager::enable_forwarding`](crate::link::LinkManager::enable_forwarding); this
//! trait only observes, so that the node reconcile can decide before it acts.
//!
//! `headcni-netlink` implements it on `/proc/sys` ([`crate::defaults::IPV4_FORWARDING_SYSCTL`],
//! [`crate::defaults::IPV6_FORWARDING_SYSCTL`]) for the namespace of its handle; tests use an
//! in-memory value.

use async_trait::async_trait;

use crate::link::LinkError;

/// The forwarding sysctls of one network namespace as read: `Some(true)` when the file holds
/// `1`, `Some(false)` for any other value, `None` when the file does not exist (IPv6
/// disabled; or no `/proc/sys` at all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardingState {
    /// `net.ipv4.ip_forward` (Linux `Documentation/networking/ip-sysctl.rst`).
    pub ipv4: Option<bool>,
    /// `net.ipv6.conf.all.forwarding`; `None` when IPv6 is disabled.
    pub ipv6: Option<bool>,
}

impl ForwardingState {
    /// The state from the sysctl files' text (`None`: the file does not exist). Surrounding
    /// white space is ignored; only `1` means on, as the kernel writes it.
    pub fn from_values(ipv4: Option<&str>, ipv6: Option<&str>) -> ForwardingState {
        let on = |v: &str| v.trim() == "1";
        ForwardingState {
            ipv4: ipv4.map(on),
            ipv6: ipv6.map(on),
        }
    }
}

/// Reads the forwarding sysctls of one network namespace (the one the implementing value is
/// bound to, as [`crate::link::LinkManager`]).
#[async_trait]
pub trait ForwardingSysctl: Send + Sync {
    /// The current forwarding state. A missing file is `None` in the state, not an error.
    ///
    /// Errors: [`LinkError::Io`] when a file exists but cannot be read.
    async fn forwarding(&self) -> Result<ForwardingState, LinkError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_means_on() {
        let s = ForwardingState::from_values(Some("1\n"), Some("0\n"));
        assert_eq!(s.ipv4, Some(true));
        assert_eq!(s.ipv6, Some(false));
        let s = ForwardingState::from_values(Some("2"), None);
        assert_eq!((s.ipv4, s.ipv6), (Some(false), None));
    }
}
