//! # headcni-ipam
//!
//! HeadCNI's IPAM: the [`pool`] index of a range set, the three allocation
//! [`strategy`](mod@strategy) implementations (sequential like host-local, uniform random,
//! dense-pack), the host-local-compatible on-disk [`store`] with an O(1) attachment index, and
//! the IPAM [`plugin`] verbs used in-process and by the standalone `headcni-ipam` binary.
//!
//! The seams: [`Store::open_with_strategy`] takes any
//! [`AllocationStrategy`](headcni_core::ipam::AllocationStrategy) (see
//! `examples/custom_strategy.rs`), and [`IpamPlugin`] / [`InProcessIpam`] run over any
//! [`IpamStore`](headcni_core::ipam::IpamStore) ([`IpamPlugin::with_store`]; the on-disk
//! [`Store`] is the default type parameter).
#![warn(missing_docs)]

pub mod pool;
pub mod strategy;

pub use pool::{DensePool, Pool, SparsePool};
pub use strategy::{DensePack, Random, Sequential, strategy};
pub mod store;

pub use store::{Owner, Store};
pub mod plugin;

pub use plugin::IpamPlugin;
pub mod client;

pub use client::InProcessIpam;
