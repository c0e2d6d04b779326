//! The pod MTU choice of the node agent (no I/O): the MTU of the bridge, the pods' veths and
//! the conflist's `mtu`.

use crate::defaults::TAILNET_MTU;

/// What the node agent knows about the tailnet's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailnetMtu {
    /// Daemon mode: the MTU the agent gives its own tailscaled (`TS_DEBUG_MTU`,
    /// [`own_tailscaled_mtu`]). The TUN interface is never read in this mode: it is visible
    /// before its owner has set the MTU (wireguard-go creates it at 1420), and a pod attached
    /// in that window would keep the wrong MTU for its lifetime.
    Own(u32),
    /// Host mode: the MTU of the tailnet interface (e.g. `tailscale0`) as read, `None` when
    /// it does not exist or could not be read.
    Link(Option<u32>),
}

/// The MTU the agent gives its own tailscaled in daemon mode (`TS_DEBUG_MTU`, tailscale
/// `net/tstun/mtu.go`): `[cni] mtu` when set, else [`TAILNET_MTU`].
pub fn own_tailscaled_mtu(configured: Option<u32>) -> u32 {
    configured.unwrap_or(TAILNET_MTU)
}

/// The pod MTU in bytes: `[cni] mtu` (`configured`) when set; else daemon mode's own
/// tailscaled MTU; else the tailnet interface's MTU when it is at least [`TAILNET_MTU`]
/// (1280, also IPv6's minimum link MTU, RFC 8200 §5); else [`TAILNET_MTU`].
pub fn pod_mtu(configured: Option<u32>, tailnet: TailnetMtu) -> u32 {
    if let Some(m) = configured {
        return m;
    }
    match tailnet {
        TailnetMtu::Own(m) => m,
        TailnetMtu::Link(Some(m)) if m >= TAILNET_MTU => m,
        TailnetMtu::Link(_) => TAILNET_MTU,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wins_over_everything() {
        assert_eq!(pod_mtu(Some(1400), TailnetMtu::Own(1280)), 1400);
        assert_eq!(pod_mtu(Some(1300), TailnetMtu::Link(Some(9000))), 1300);
    }

    #[test]
    fn daemon_mode_uses_its_own_tailscaled_mtu_never_the_link() {
        assert_eq!(own_tailscaled_mtu(None), 1280);
        assert_eq!(own_tailscaled_mtu(Some(1350)), 1350);
        assert_eq!(
            pod_mtu(None, TailnetMtu::Own(own_tailscaled_mtu(None))),
            1280
        );
    }

    #[test]
    fn host_mode_uses_the_link_mtu_when_usable() {
        assert_eq!(pod_mtu(None, TailnetMtu::Link(Some(1420))), 1420);
        assert_eq!(pod_mtu(None, TailnetMtu::Link(Some(1280))), 1280);
        assert_eq!(
            pod_mtu(None, TailnetMtu::Link(Some(1279))),
            1280,
            "below IPv6's minimum"
        );
        assert_eq!(
            pod_mtu(None, TailnetMtu::Link(None)),
            1280,
            "no tailnet link"
        );
    }
}
