//! # headcni-ipam
//!
//! HeadCNI's IPAM: the [`pool`] index of a range set, the three allocation [`strategy`]
//! implementations (sequential like host-local, uniform random, dense-pack), the
//! host-local-compatible on-disk [`store`] with an O(1) attachment index, and the IPAM
//! [`plugin`] verbs used in-process and by the standalone `headcni-ipam` binary.
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
