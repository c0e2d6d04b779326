//! HeadCNI link and route management on rtnetlink, plus network namespace handling.
//!
//! [`NetlinkHandle`] implements [`headcni_core::link::LinkManager`] and
//! [`headcni_core::link::RouteManager`] for one network namespace: the calling process's
//! ([`NetlinkHandle::current`]) or a container's opened from its path
//! ([`NetlinkHandle::for_netns`]). The [`netns`] module holds the namespace helpers the CLI
//! needs ("is this my own netns", running a closure inside a namespace); creating and deleting
//! named namespaces (`ip netns add`/`del`) is test and lab business (crate `headcni-testkit`).
//!
//! Netlink types (`rtnetlink`, `netlink-packet-route`, `netlink-sys`) never appear in this
//! crate's public API; everything is expressed in `headcni_core::link` types.
//!
//! # The netns rule
//! A socket is bound to the network namespace of the thread that created it. Sockets for a
//! container namespace are therefore created on a dedicated, freshly spawned OS thread that
//! enters the namespace with `setns(2)` and exits afterwards; the socket is then driven from
//! the tokio runtime. No tokio worker or blocking-pool thread ever changes namespace.
//! Everything works on a `current_thread` runtime.

#![warn(missing_docs)]

pub mod bridge_netfilter;
mod convert;
mod error;
pub mod firewall;
pub mod forward;
mod handle;
mod link_ops;
pub mod namespaces;
pub mod netns;
pub mod nft;
mod process;
mod route_ops;
mod sysctl;

pub use convert::configured_address;
pub use firewall::NftFirewall;
pub use handle::NetlinkHandle;
pub use namespaces::NetlinkNamespaces;
pub use netns::NetnsError;
