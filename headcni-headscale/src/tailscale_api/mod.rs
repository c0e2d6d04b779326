//! Tailscale API v2 client: approval of this node's PodCIDR through Tailscale's own API
//! (Tailscale SaaS, and Headscale main, which serves the same `/api/v2` shape).
//!
//! - [`OAuthCredentials`] (`oauth`): the OAuth client file, the token request, the token cache.
//! - [`TailscaleApi`] (`client`): devices, routes, and the approver ([`TailscaleApi::approve`],
//!   [`TailscaleApi::withdraw`]) with replace semantics handled as a union.
//! - [`plan`]: the pure route decisions.
//! - [`TailscaleApiError`] (`error`): typed errors with [`crate::retry::Retryable`].
//!
//! Sources: tailscale/tailscale-client-go-v2 `client.go` (base URL, `/api/v2` paths, error
//! body), `devices.go` (device list, `SubnetRoutes`, `SetSubnetRoutes`), `oauth.go`
//! (client-credentials grant at `/api/v2/oauth/token`); juanfont/headscale main
//! `hscontrol/api/v2/{devices,oauth,errors,api}.go` and `hscontrol/scope/scope.go`.

mod client;
mod error;
mod oauth;
pub mod plan;
mod types;

pub use client::{DEFAULT_BASE_URL, DEFAULT_TAILNET, TailscaleApi, TailscaleApiConfig};
pub use error::TailscaleApiError;
pub use oauth::{ASSUMED_TOKEN_LIFETIME, DEFAULT_SCOPES, OAuthCredentials};
pub use types::{Device, DeviceRoutes, NodeRef};
