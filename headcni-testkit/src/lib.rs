//! # headcni-testkit
//!
//! HeadCNI's test doubles and fixtures, in one dev-only crate (`publish = false`). The
//! production crates (`headcni-core`, `headcni-netlink`, `headcni-ipam`,
//! `headcni-headscale`, `headcni-cli`) use it only as a `[dev-dependency]`; the lab
//! (`headcni-lab`, not shipped) uses it normally.
//!
//! - [`FakeHeadscale`] ([`headscale`]): Headscale REST on `127.0.0.1:<ephemeral>` (v0.29
//!   semantics by default, 0.26 and the 0.25 route-row API as options), API-key auth,
//!   autoApprovers, fault injection, a record of every exchange (for OpenAPI validation).
//! - [`FakeTailscaled`] ([`tailscaled`]): the LocalAPI on a unix socket, enforcing the
//!   Host/Referer rules and the MaskedPrefs semantics, coordinated with a [`FakeHeadscale`]
//!   through [`HeadscaleControl`].
//! - [`LocalApi`], [`HeadscaleControl::handle`] and [`server`]: the same rules as request
//!   handlers, for the lab's stand-in processes.
//! - [`tailscale_api::FakeTailscaleApi`]: the Tailscale API v2 (OAuth token endpoint, device
//!   list and routes) with strict request validation, for the Tailscale API approver.
//!
//! - [`netns`]: named namespaces (`ip netns add`/`del` semantics), [`netns::enter_on_exec`]
//!   (the one `setns`-before-exec helper) and the per-test fixture [`Ns`].
//! - [`http`]: the HTTP/1.1 probe (hyper's client, bounded) and a raw response parser.
//! - [`metrics`]: the OpenMetrics sample reader, the conversion to Prometheus text 0.0.4,
//!   and `promtool check metrics`.
//! - [`icmp`]: an ICMP/ICMPv6 echo over a raw socket (no `ping` binary).
//!
//! The fakes stop when dropped and need a tokio runtime (they spawn their accept loop).
#![warn(missing_docs)]

pub mod headscale;
pub mod http;
pub mod icmp;
pub mod metrics;
pub mod netns;
pub mod server;
pub mod tailscale_api;
pub mod tailscaled;
mod tailscaled_json;

pub use headscale::{
    Exchange, FakeApiVersion, FakeHeadscale, FakeHeadscaleOptions, Fault, HeadscaleControl,
    NodeView, PersistedState, PolicyRefused, PreAuthKeyView, random_node_key,
};
pub use netns::Ns;
pub use tailscaled::{
    FakeTailscaled, LocalApi, LocalApiInit, LocalApiRequest, LoginOutcome, TailnetControl,
    TailscaledVersion, default_prefs,
};
