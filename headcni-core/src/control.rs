//! The control-plane backend trait: what the node daemon needs from a tailnet control plane
//! (Headscale + tailscaled today; other backends can implement it). No I/O here.

use async_trait::async_trait;
use ipnetwork::IpNetwork;

/// Route state of this node as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteState {
    /// Routes this node advertises (Tailscale prefs `AdvertiseRoutes`).
    pub advertised: Vec<IpNetwork>,
    /// Routes the control plane approved for this node (Headscale `approvedRoutes`).
    pub approved: Vec<IpNetwork>,
    /// Routes this node serves as primary (LocalAPI `Self.PrimaryRoutes`).
    pub primary: Vec<IpNetwork>,
}

/// Another node's routes seen through the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoutes {
    /// The peer's host name.
    pub name: String,
    /// Its primary routes (its pod CIDRs).
    pub routes: Vec<IpNetwork>,
}

/// Errors of a control-plane backend.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The backend could not be reached (retry with backoff).
    #[error("{endpoint} unreachable: {reason}")]
    Unreachable {
        /// Which endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The backend refused the request (auth, validation).
    #[error("{endpoint} refused: {reason}")]
    Refused {
        /// Which endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// A tailnet control plane that carries this node's pod CIDRs.
#[async_trait]
pub trait ControlPlaneBackend: Send + Sync {
    /// Makes sure exactly `routes` (this node's pod CIDRs) are advertised and approved for
    /// this node, keeping every route that is not HeadCNI's; returns the resulting state.
    async fn ensure_routes(&self, routes: &[IpNetwork]) -> Result<RouteState, ControlPlaneError>;
    /// Withdraws `routes` (uninstall); other routes are kept.
    async fn withdraw_routes(&self, routes: &[IpNetwork]) -> Result<(), ControlPlaneError>;
    /// Peers' routes seen through the tailnet.
    async fn peer_routes(&self) -> Result<Vec<PeerRoutes>, ControlPlaneError>;
}
