//! # headcni-headscale
//!
//! HeadCNI's control-plane backend for a Tailscale tailnet coordinated by Headscale:
//!
//! - [`headscale`]: the Headscale REST client ([`headscale::HeadscaleClient`]), both route
//!   models (≤ 0.25 route rows, ≥ 0.26 `approve_routes`), typed errors.
//! - [`localapi`]: the Tailscale LocalAPI client ([`localapi::LocalApiClient`]) over the
//!   tailscaled unix socket.
//! - [`backend`]: [`backend::TailnetBackend`], the
//!   [`headcni_core::control::ControlPlaneBackend`] for host mode with API approval or
//!   autoApprovers.
//! - [`daemon`]: the pure pieces of daemon mode (bootstrap pre-auth key, the `start` request).
//! - [`policy`]: the Headscale policy a cluster needs per version (`headcni policy`) and
//!   its checker.
//! - [`retry`]: capped exponential backoff with jitter.
//! - [`secret`]: [`secret::Secret`], never printed.
//! - [`tailscale_api`]: the Tailscale API v2 client ([`tailscale_api::TailscaleApi`]), OAuth
//!   client credentials, approval of exactly this node's routes.
//!
//! The test doubles of Headscale and tailscaled live in the dev-only crate `headcni-testkit`.
#![warn(missing_docs)]

pub mod backend;
pub mod daemon;
pub mod headscale;
mod http;
pub mod localapi;
pub mod observe;
pub mod policy;
pub mod retry;
pub mod secret;
mod serde_util;
pub mod tailscale_api;
pub mod time;
pub mod tls;

pub use backend::{ApprovalMode, BackendOptions, TailnetBackend};
pub use headscale::{HeadscaleClient, HeadscaleConfig, HeadscaleError};
pub use localapi::{LocalApiClient, LocalApiError};
pub use observe::RequestObserver;
pub use secret::Secret;
