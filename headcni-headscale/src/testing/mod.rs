//! **Test doubles** (cargo feature `testing`, off by default): in-process stand-ins for
//! Headscale and tailscaled that follow the real APIs, for this crate's tests, the daemon's
//! end-to-end tests and the lab. Never use them in production.
//!
//! - [`FakeHeadscale`]: Headscale REST on `127.0.0.1:<ephemeral>` (v0.29 semantics by
//!   default, 0.26 and the 0.25 route-row API as options), API-key auth, autoApprovers, fault
//!   injection, a record of every exchange (for OpenAPI validation in tests).
//! - [`FakeTailscaled`]: the LocalAPI on a unix socket, enforcing the Host/Referer rules and
//!   the MaskedPrefs semantics, coordinated with a [`FakeHeadscale`] through
//!   [`HeadscaleControl`].
//!
//! - [`LocalApi`], [`HeadscaleControl::handle`] and [`server`]: the same rules as request
//!   handlers, for the lab's stand-in processes (crate headcni-lab).
//!
//! Both stop when dropped. They need a tokio runtime (they spawn their accept loop).

mod fake_headscale;
mod fake_tailscaled;
pub mod server;

pub use fake_headscale::{
    Exchange, FakeApiVersion, FakeHeadscale, FakeHeadscaleOptions, Fault, HeadscaleControl,
    NodeView, PersistedState, PreAuthKeyView, random_node_key,
};
pub use fake_tailscaled::{
    FakeTailscaled, LocalApi, LocalApiInit, LocalApiRequest, LoginOutcome, TailnetControl,
    default_prefs,
};
