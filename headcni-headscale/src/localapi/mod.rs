//! Tailscale LocalAPI client (tailscaled's unix socket).
//!
//! Sources: tailscale/tailscale v1.102.3 `ipn/localapi/localapi.go` (routes, Host/Referer
//! checks, PATCH prefs errors), `client/local/local.go` (the Go client), `ipn/prefs.go`.

mod client;
mod types;

pub use client::{DEFAULT_SOCKET, LOCALAPI_HOST, LocalApiClient, LocalApiError};
pub use types::{
    MaskedPrefs, NetfilterMode, OptBool, PeerStatus, Prefs, StartOptions, Status, TailnetStatus,
};
