//! Tailscale LocalAPI client (tailscaled's unix socket).
//!
//! Sources: tailscale/tailscale v1.102.3 `ipn/localapi/localapi.go` (routes, Host/Referer
//! checks, PATCH prefs errors, `serveWatchIPNBus`), `client/local/local.go` (the Go client),
//! `ipn/prefs.go`, `ipn/backend.go` (the IPN bus's `Notify` and `NotifyWatchOpt`).

mod client;
mod ipnbus;
mod types;

pub use client::{DEFAULT_SOCKET, LOCALAPI_HOST, LocalApiClient, LocalApiError};
pub use ipnbus::{
    DEFAULT_MAX_LINE, IpnBusError, IpnBusStream, IpnNetMap, IpnNotify, NotifyWatchOpt, TailcfgNode,
    backend_state_name,
};
pub use types::{
    MaskedPrefs, NetfilterMode, OptBool, PeerStatus, Prefs, StartOptions, Status, TailnetStatus,
};
