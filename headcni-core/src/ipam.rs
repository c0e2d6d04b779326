//! IPAM domain types and traits (no I/O): the host-local compatible `ipam` configuration,
//! validated range sets, reservations, the allocation strategy trait and the store trait.
//!
//! Implementations live in the `headcni-ipam` crate.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::cni::{CniError, ErrorCode, Route};

/// How a free address is chosen in a range set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Strategy {
    /// The next free address after the last reserved one, wrapping (host-local's behaviour):
    /// a released address is not reused until the iterator wraps.
    #[default]
    Sequential,
    /// An address drawn uniformly from the free addresses of the range set.
    Random,
    /// The lowest free address.
    DensePack,
}

/// One range of a range set as written in the configuration (host-local's `ranges[][]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeConf {
    /// The subnet, e.g. `10.244.1.0/24`; host bits must be zero.
    pub subnet: IpNetwork,
    /// First allocatable address; default: network + 1.
    #[serde(default, rename = "rangeStart", skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address; default: the last address (minus broadcast for IPv4).
    #[serde(default, rename = "rangeEnd", skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// Gateway; default: network + 1. Never allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// The `ipam` section for `headcni-ipam` (a superset of host-local's, so a host-local
/// configuration works unchanged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpamConf {
    /// `headcni-ipam` (or `host-local` when parsed for comparison).
    #[serde(rename = "type")]
    pub ipam_type: String,
    /// Range sets; one address is allocated per set (e.g. one IPv4 and one IPv6 set).
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Legacy single-range form: prepended as set 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNetwork>,
    /// Legacy form's `rangeStart`.
    #[serde(default, rename = "rangeStart", skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Legacy form's `rangeEnd`.
    #[serde(default, rename = "rangeEnd", skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// Legacy form's `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Routes copied into the result.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Store root; default `/var/lib/cni/networks`. The store is `<dataDir>/<network name>`.
    #[serde(default, rename = "dataDir", skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// A resolv.conf whose settings go into the result's `dns`.
    #[serde(default, rename = "resolvConf", skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
    /// HeadCNI extension: the allocation strategy; default `sequential`.
    #[serde(default)]
    pub strategy: Strategy,
}

/// The default store root of host-local and HeadCNI.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A validated range: `start..=end` inside `subnet`, gateway inside `subnet`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpRange {
    /// The subnet with host bits zero.
    pub subnet: IpNetwork,
    /// First allocatable address.
    pub start: IpAddr,
    /// Last allocatable address.
    pub end: IpAddr,
    /// Gateway (never allocated), if any.
    pub gateway: Option<IpAddr>,
}

/// A validated range set: ranges of one address family that do not overlap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeSet {
    /// The ranges, in configuration order.
    pub ranges: Vec<IpRange>,
}

/// One attachment: what the CNI spec identifies by (`CNI_CONTAINERID`, `CNI_IFNAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// Container ID.
    pub container_id: String,
    /// Interface name inside the container.
    pub ifname: String,
}

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// Index of the range set (as in `last_reserved_ip.<i>`).
    pub range_set: usize,
    /// The address with its subnet's prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNetwork,
    /// The gateway of the range the address came from.
    pub gateway: Option<IpAddr>,
}

/// Usage of one range set, for STATUS and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// Index of the range set.
    pub range_set: usize,
    /// Number of allocatable addresses (gateway excluded); saturates at `u128::MAX`.
    pub size: u128,
    /// Number of reserved addresses.
    pub allocated: u128,
}

/// An ordered view of the allocatable addresses of one range set, as positions
/// `0..len()` (range by range, each range from start to end, the gateway and network /
/// broadcast addresses excluded). Implementations keep an index so that every query is
/// O(log n) or better in the number of reservations.
pub trait PoolView {
    /// Number of allocatable positions.
    fn len(&self) -> u128;
    /// `true` when there are no allocatable positions.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of reserved positions.
    fn allocated(&self) -> u128;
    /// `true` if `pos` (< `len()`) is not reserved.
    fn is_free(&self, pos: u128) -> bool;
    /// The first free position at or after `from`, wrapping to 0; `None` when full.
    fn next_free(&self, from: u128) -> Option<u128>;
    /// The `n`-th free position in ascending order (0-based); `None` if `n` ≥ free count.
    fn nth_free(&self, n: u128) -> Option<u128>;
}

/// Chooses a free position of a [`PoolView`]. Pure and deterministic given its inputs.
pub trait AllocationStrategy: Send + Sync {
    /// Picks a free position. `last_reserved` is the position of `last_reserved_ip.<i>`
    /// when it lies in this set; `random` is a uniformly random 128-bit number that only the
    /// random strategy uses. `None` when the pool is full.
    fn pick(&self, pool: &dyn PoolView, last_reserved: Option<u128>, random: u128) -> Option<u128>;
}

/// Errors of IPAM configuration, allocation and store access.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The `ipam` configuration is invalid (CNI code 7).
    #[error("invalid ipam configuration: {0}")]
    Config(String),
    /// No free address in a range set (CNI code 100).
    #[error("no IP addresses available in range set {range_set}: {ranges}")]
    PoolExhausted {
        /// Index of the range set.
        range_set: usize,
        /// The set's ranges as `start-end,...`.
        ranges: String,
    },
    /// A requested address is outside every range set or already reserved (CNI code 101).
    #[error("requested address {address} is not available: {reason}")]
    AddressUnavailable {
        /// The address.
        address: IpAddr,
        /// Why.
        reason: String,
    },
    /// The store could not be read or written (CNI code 104).
    #[error("ipam store {path}: {source}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = match &e {
            IpamError::Config(_) => ErrorCode::InvalidConfig,
            IpamError::PoolExhausted { .. } => ErrorCode::PoolExhausted,
            IpamError::AddressUnavailable { .. } => ErrorCode::AddressUnavailable,
            IpamError::Store { .. } => ErrorCode::IpamStore,
        };
        CniError::new(code, e.to_string())
    }
}

/// A persistent address store for one network.
///
/// Every method is safe to call from concurrent processes (the implementation locks).
pub trait IpamStore {
    /// Reserves one address per range set for `att`. Idempotent: if `att` already holds
    /// reservations they are returned unchanged. `requested` addresses (at most one per set)
    /// are reserved instead of chosen ones. On error nothing stays reserved.
    fn allocate(&self, att: &Attachment, requested: &[IpAddr]) -> Result<Vec<Reservation>, IpamError>;
    /// The reservations held by `att` (empty if none).
    fn find(&self, att: &Attachment) -> Result<Vec<Reservation>, IpamError>;
    /// Releases every reservation of `att`; returns the released addresses (empty if none).
    fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError>;
    /// Releases every reservation whose attachment is not in `valid`; returns them.
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<IpAddr>, IpamError>;
    /// Per range set usage.
    fn usage(&self) -> Result<Vec<PoolUsage>, IpamError>;
}
