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
    #[serde(
        default,
        rename = "rangeStart",
        skip_serializing_if = "Option::is_none"
    )]
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
    #[serde(
        default,
        rename = "rangeStart",
        skip_serializing_if = "Option::is_none"
    )]
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
    #[serde(
        default,
        rename = "resolvConf",
        skip_serializing_if = "Option::is_none"
    )]
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

impl From<&crate::cni::GcAttachment> for Attachment {
    /// An entry of GC's `cni.dev/valid-attachments` as an IPAM attachment.
    fn from(a: &crate::cni::GcAttachment) -> Attachment {
        Attachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        }
    }
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

/// A boxed strategy is a strategy (e.g. `Box<dyn AllocationStrategy>` from a configuration).
impl<T: AllocationStrategy + ?Sized> AllocationStrategy for Box<T> {
    fn pick(&self, pool: &dyn PoolView, last_reserved: Option<u128>, random: u128) -> Option<u128> {
        (**self).pick(pool, last_reserved, random)
    }
}

/// A shared strategy is a strategy.
impl<T: AllocationStrategy + ?Sized> AllocationStrategy for std::sync::Arc<T> {
    fn pick(&self, pool: &dyn PoolView, last_reserved: Option<u128>, random: u128) -> Option<u128> {
        (**self).pick(pool, last_reserved, random)
    }
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

/// A persistent address store for one network: the seam between the IPAM verbs
/// (`headcni_ipam::IpamPlugin`, generic over this trait) and where reservations live
/// (`headcni_ipam::Store` on disk, host-local compatible; or any other implementation).
///
/// Every method is safe to call from concurrent processes (the implementation locks).
pub trait IpamStore {
    /// The validated range sets this store allocates from, in configuration order (index `i`
    /// is [`Reservation::range_set`] `i`). CHECK keeps the `prevResult` addresses inside them;
    /// STATUS names an exhausted one.
    fn range_sets(&self) -> &[RangeSet];
    /// Reserves one address per range set for `att`. Idempotent: if `att` already holds
    /// reservations they are returned unchanged. `requested` addresses (at most one per set)
    /// are reserved instead of chosen ones. On error nothing stays reserved.
    fn allocate(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<Vec<Reservation>, IpamError>;
    /// The reservations held by `att` (empty if none).
    fn find(&self, att: &Attachment) -> Result<Vec<Reservation>, IpamError>;
    /// Releases every reservation of `att`; returns the released addresses (empty if none).
    fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError>;
    /// Releases every reservation whose attachment is not in `valid`; returns each released
    /// address with the attachment that held it (`None` when its owner has no ifname, as a
    /// legacy cid-only reservation, or is unknown), so GC can clean up after exactly those.
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<(IpAddr, Option<Attachment>)>, IpamError>;
    /// Per range set usage.
    fn usage(&self) -> Result<Vec<PoolUsage>, IpamError>;
    /// [`IpamStore::allocate`], also telling whether `att` held no reservation before this
    /// call (`true`: everything returned was reserved now, so a caller whose ADD fails later
    /// releases it; `false`: a repeated ADD, whose reservations must be kept).
    ///
    /// The default is [`IpamStore::find`] then [`IpamStore::allocate`], two separately locked
    /// steps; a store that can answer both under one lock overrides it.
    fn allocate_fresh(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Reservation>, bool), IpamError> {
        let fresh = self.find(att)?.is_empty();
        Ok((self.allocate(att, requested)?, fresh))
    }
}

/// A boxed store is a store (e.g. `Box<dyn IpamStore + Send + Sync>` chosen at run time).
impl<T: IpamStore + ?Sized> IpamStore for Box<T> {
    fn range_sets(&self) -> &[RangeSet] {
        (**self).range_sets()
    }
    fn allocate(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<Vec<Reservation>, IpamError> {
        (**self).allocate(att, requested)
    }
    fn find(&self, att: &Attachment) -> Result<Vec<Reservation>, IpamError> {
        (**self).find(att)
    }
    fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        (**self).release(att)
    }
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<(IpAddr, Option<Attachment>)>, IpamError> {
        (**self).gc(valid)
    }
    fn usage(&self) -> Result<Vec<PoolUsage>, IpamError> {
        (**self).usage()
    }
    fn allocate_fresh(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Reservation>, bool), IpamError> {
        (**self).allocate_fresh(att, requested)
    }
}

// ---------------------------------------------------------------------------------------------
// Address arithmetic and configuration validation (host-local `allocator/range.go`,
// `allocator/range_set.go`, `allocator/config.go`).
// ---------------------------------------------------------------------------------------------

/// The address as a 128-bit unsigned integer (IPv4 in the low 32 bits).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`ip_to_u128`]: an IPv4 address when `v4` (the value is truncated to its
/// low 32 bits), otherwise an IPv6 address.
pub fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(std::net::Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(v))
    }
}

fn cfg_err(msg: impl Into<String>) -> IpamError {
    IpamError::Config(msg.into())
}

/// First and last address of `net` as integers.
fn net_bounds(net: &IpNetwork) -> (u128, u128) {
    let bits: u32 = if net.is_ipv4() { 32 } else { 128 };
    let host_bits = bits - u32::from(net.prefix());
    let base = ip_to_u128(net.ip());
    let host_mask: u128 = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let first = base & !host_mask;
    (first, first | host_mask)
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

impl RangeConf {
    /// Validates one range and fills in host-local's defaults: `rangeStart` = network + 1,
    /// `rangeEnd` = last address (IPv4: minus the broadcast address), `gateway` = network + 1.
    ///
    /// Errors ([`IpamError::Config`]): a subnet with fewer than 4 addresses (/31, /32, /127,
    /// /128), host bits set, `rangeStart`/`rangeEnd`/`gateway` outside the subnet (or of the
    /// other family), `rangeStart` > `rangeEnd`.
    pub fn validate(&self) -> Result<IpRange, IpamError> {
        let subnet = self.subnet;
        let v4 = subnet.is_ipv4();
        let max_prefix = if v4 { 30 } else { 126 };
        if subnet.prefix() > max_prefix {
            return Err(cfg_err(format!(
                "network {subnet} too small to allocate from"
            )));
        }
        let (first, last) = net_bounds(&subnet);
        if ip_to_u128(subnet.ip()) != first {
            return Err(cfg_err(format!("network {subnet} has host bits set")));
        }
        let inside =
            |ip: IpAddr| same_family(ip, subnet.ip()) && (first..=last).contains(&ip_to_u128(ip));
        let start = match self.range_start {
            Some(s) if !inside(s) => {
                return Err(cfg_err(format!("rangeStart {s} not in network {subnet}")));
            }
            Some(s) => s,
            None => u128_to_ip(first + 1, v4),
        };
        let end = match self.range_end {
            Some(e) if !inside(e) => {
                return Err(cfg_err(format!("rangeEnd {e} not in network {subnet}")));
            }
            Some(e) => e,
            None => u128_to_ip(if v4 { last - 1 } else { last }, v4),
        };
        if ip_to_u128(start) > ip_to_u128(end) {
            return Err(cfg_err(format!(
                "rangeStart {start} is after rangeEnd {end} in {subnet}"
            )));
        }
        let gateway = match self.gateway {
            Some(g) if !inside(g) => {
                return Err(cfg_err(format!("gateway {g} not in network {subnet}")));
            }
            Some(g) => g,
            None => crate::defaults::gateway(&subnet)
                .ok_or_else(|| cfg_err(format!("network {subnet} too small to allocate from")))?,
        };
        Ok(IpRange {
            subnet,
            start,
            end,
            gateway: Some(gateway),
        })
    }
}

impl IpamConf {
    /// Parses the raw `ipam` object of a network configuration.
    ///
    /// Errors: [`IpamError::Config`] when the value does not have the shape of an
    /// [`IpamConf`] (a missing `type`, a bad subnet, a key of the wrong type).
    pub fn parse(value: &serde_json::Value) -> Result<IpamConf, IpamError> {
        serde_json::from_value(value.clone()).map_err(|e| cfg_err(e.to_string()))
    }

    /// The validated range sets, in host-local's order: the legacy single range
    /// (`subnet`/`rangeStart`/`rangeEnd`/`gateway`) as set 0 when `subnet` is given, then
    /// `runtime_ip_ranges` (`runtimeConfig.ipRanges`, prepended to the configured sets), then
    /// `ranges`. Source: host-local `allocator/config.go` `LoadIPAMConfig`.
    ///
    /// Errors ([`IpamError::Config`]): no range set at all, an empty set, an invalid range
    /// ([`RangeConf::validate`]), mixed address families inside one set, ranges that overlap
    /// (within a set or across sets).
    pub fn range_sets(
        &self,
        runtime_ip_ranges: &[Vec<RangeConf>],
    ) -> Result<Vec<RangeSet>, IpamError> {
        let mut confs: Vec<Vec<RangeConf>> = Vec::new();
        if let Some(subnet) = self.subnet {
            confs.push(vec![RangeConf {
                subnet,
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            }]);
        }
        confs.extend(runtime_ip_ranges.iter().cloned());
        confs.extend(self.ranges.iter().cloned());
        if confs.is_empty() {
            return Err(cfg_err("no IP ranges specified"));
        }
        let mut sets = Vec::with_capacity(confs.len());
        for (i, set) in confs.iter().enumerate() {
            if set.is_empty() {
                return Err(cfg_err(format!("range set {i} is empty")));
            }
            let ranges = set
                .iter()
                .map(RangeConf::validate)
                .collect::<Result<Vec<_>, _>>()?;
            let v4 = ranges[0].subnet.is_ipv4();
            if ranges.iter().any(|r| r.subnet.is_ipv4() != v4) {
                return Err(cfg_err(format!("range set {i} mixes address families")));
            }
            sets.push(RangeSet { ranges });
        }
        let all: Vec<(usize, &IpRange)> = sets
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.ranges.iter().map(move |r| (i, r)))
            .collect();
        for (a, (ia, ra)) in all.iter().enumerate() {
            for (ib, rb) in &all[a + 1..] {
                if ra.overlaps(rb) {
                    let where_ = if ia == ib {
                        format!("in range set {ia}")
                    } else {
                        format!("in range sets {ia} and {ib}")
                    };
                    return Err(cfg_err(format!(
                        "ranges {}-{} and {}-{} overlap {where_}",
                        ra.start, ra.end, rb.start, rb.end
                    )));
                }
            }
        }
        Ok(sets)
    }
}

impl IpRange {
    /// `true` for an IPv4 range.
    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// `true` if `ip` lies in `start..=end` (gateway, network and broadcast included: this is
    /// host-local's `Range.Contains`, used to route requested addresses to a set).
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.start)
            && (ip_to_u128(self.start)..=ip_to_u128(self.end)).contains(&ip_to_u128(ip))
    }

    /// `true` if the `start..=end` intervals of two ranges of the same family intersect.
    pub fn overlaps(&self, other: &IpRange) -> bool {
        same_family(self.start, other.start)
            && ip_to_u128(self.start) <= ip_to_u128(other.end)
            && ip_to_u128(other.start) <= ip_to_u128(self.end)
    }

    /// The addresses of `start..=end` that are never allocated, as sorted integers: the network
    /// address, the IPv4 broadcast address and the gateway (each only if inside the range).
    pub fn excluded(&self) -> Vec<u128> {
        let (first, last) = net_bounds(&self.subnet);
        let (s, e) = (ip_to_u128(self.start), ip_to_u128(self.end));
        let mut x = vec![first];
        if self.is_ipv4() {
            x.push(last);
        }
        if let Some(g) = self.gateway {
            x.push(ip_to_u128(g));
        }
        x.retain(|v| (s..=e).contains(v));
        x.sort_unstable();
        x.dedup();
        x
    }

    /// Number of allocatable addresses: `end - start + 1` minus [`IpRange::excluded`].
    pub fn len(&self) -> u128 {
        let span = ip_to_u128(self.end) - ip_to_u128(self.start); // size - 1, cannot overflow
        let ex = self.excluded().len() as u128;
        // span + 1 - ex, computed without overflowing when span == u128::MAX (then ex >= 1).
        (span - ex.saturating_sub(1)).saturating_add(u128::from(ex == 0))
    }

    /// `true` when the range has no allocatable address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 0-based position of `ip` among the range's allocatable addresses, or `None` when
    /// `ip` is outside `start..=end` or excluded.
    pub fn position(&self, ip: IpAddr) -> Option<u128> {
        if !self.contains(ip) {
            return None;
        }
        let v = ip_to_u128(ip);
        let ex = self.excluded();
        if ex.contains(&v) {
            return None;
        }
        let below = ex.iter().filter(|&&e| e < v).count() as u128;
        Some(v - ip_to_u128(self.start) - below)
    }

    /// The allocatable address at `pos` (< [`IpRange::len`]).
    pub fn address(&self, pos: u128) -> Option<IpAddr> {
        if pos >= self.len() {
            return None;
        }
        let mut a = ip_to_u128(self.start) + pos;
        for e in self.excluded() {
            if e <= a {
                a += 1;
            }
        }
        Some(u128_to_ip(a, self.is_ipv4()))
    }
}

impl RangeSet {
    /// `true` for an IPv4 set.
    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(IpRange::is_ipv4)
    }

    /// Number of allocatable addresses over all ranges; saturates at `u128::MAX`.
    pub fn len(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.len()))
    }

    /// `true` when the set has no allocatable address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range whose `start..=end` contains `ip` (host-local `RangeSet.RangeFor`).
    pub fn range_for(&self, ip: IpAddr) -> Option<&IpRange> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// `true` if some range's `start..=end` contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// The set-wide position of `ip` (ranges in configuration order), or `None` when `ip` is
    /// not allocatable in this set.
    pub fn position(&self, ip: IpAddr) -> Option<u128> {
        let mut base = 0u128;
        for r in &self.ranges {
            if let Some(p) = r.position(ip) {
                return base.checked_add(p);
            }
            base = base.saturating_add(r.len());
        }
        None
    }

    /// The allocatable address at set-wide position `pos` and its range.
    pub fn address(&self, pos: u128) -> Option<(IpAddr, &IpRange)> {
        let mut p = pos;
        for r in &self.ranges {
            let l = r.len();
            if p < l {
                return r.address(p).map(|a| (a, r));
            }
            p -= l;
        }
        None
    }

    /// The position host-local's round-robin iterator resumes after when
    /// `last_reserved_ip.<i>` holds `ip`: the position of `ip` itself, or for an excluded
    /// address inside a range (e.g. the gateway) the position just before the next allocatable
    /// address (wrapping). `None` when `ip` is not in the set (iteration then starts at
    /// position 0 = `rangeStart` of the first range).
    pub fn resume_position(&self, ip: IpAddr) -> Option<u128> {
        if let Some(p) = self.position(ip) {
            return Some(p);
        }
        let len = self.len();
        if len == 0 {
            return None;
        }
        let mut base = 0u128;
        for r in &self.ranges {
            if r.contains(ip) {
                let v = ip_to_u128(ip);
                let ex = r.excluded();
                let below = ex.iter().filter(|&&e| e < v).count() as u128;
                // allocatable addresses of r strictly below ip
                let next = base + (v - ip_to_u128(r.start) - below);
                return Some(if next == 0 { len - 1 } else { (next - 1) % len });
            }
            base = base.saturating_add(r.len());
        }
        None
    }

    /// host-local's description of the set for error messages: `start-end,start-end`.
    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> IpamConf {
        IpamConf::parse(&v).unwrap()
    }
    fn sets(v: serde_json::Value) -> Result<Vec<RangeSet>, IpamError> {
        conf(v).range_sets(&[])
    }
    fn err(v: serde_json::Value) -> String {
        match sets(v) {
            Err(IpamError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_v4_and_v6() {
        let s = sets(json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]]})).unwrap();
        let r = &s[0].ranges[0];
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.0.1"), ip("10.1.0.254"), Some(ip("10.1.0.1")))
        );
        assert_eq!(s[0].len(), 253);
        assert_eq!(s[0].address(0).unwrap().0, ip("10.1.0.2"));
        let r6 = &s[1].ranges[0];
        assert_eq!((r6.start, r6.end), (ip("fd00::1"), ip("fd00::ff")));
        assert_eq!(s[1].len(), 254);
    }

    #[test]
    fn legacy_then_runtime_then_ranges() {
        let c = conf(
            json!({"type": "host-local", "subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10",
            "ranges": [[{"subnet": "10.2.0.0/24"}]]}),
        );
        let rt = vec![vec![RangeConf {
            subnet: "10.3.0.0/24".parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }]];
        let s = c.range_sets(&rt).unwrap();
        let subnets: Vec<String> = s.iter().map(|x| x.ranges[0].subnet.to_string()).collect();
        assert_eq!(subnets, ["10.9.0.0/24", "10.3.0.0/24", "10.2.0.0/24"]);
        assert_eq!(s[0].ranges[0].start, ip("10.9.0.10"));
    }

    #[test]
    fn too_small_subnets() {
        for n in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            assert!(
                err(json!({"type": "x", "ranges": [[{"subnet": n}]]})).contains("too small"),
                "{n}"
            );
        }
        assert!(sets(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/30"}]]})).is_ok());
        assert!(sets(json!({"type": "x", "ranges": [[{"subnet": "fd00::/126"}]]})).is_ok());
    }

    #[test]
    fn host_bits() {
        assert!(
            err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.5/24"}]]}))
                .contains("host bits")
        );
    }

    #[test]
    fn start_end_outside_or_reversed() {
        assert!(err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]})).contains("rangeStart"));
        assert!(err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.1"}]]})).contains("rangeEnd"));
        assert!(
            err(
                json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}]]})
            )
            .contains("rangeEnd")
        );
        assert!(err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8"}]]})).contains("after"));
    }

    #[test]
    fn gateway_outside() {
        assert!(
            err(
                json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]})
            )
            .contains("gateway")
        );
    }

    #[test]
    fn overlaps_within_and_across() {
        assert!(err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]})).contains("in range set 0"));
        assert!(err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]})).contains("range sets 0 and 1"));
        // Same subnet, disjoint ranges: fine.
        assert!(
            sets(
                json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.101"}]]})
            )
            .is_ok()
        );
    }

    #[test]
    fn mixed_families_and_empty() {
        assert!(err(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]})).contains("families"));
        assert!(err(json!({"type": "x"})).contains("no IP ranges"));
        assert!(err(json!({"type": "x", "ranges": [[]]})).contains("empty"));
        assert!(matches!(
            IpamConf::parse(&json!({"ranges": 3})),
            Err(IpamError::Config(_))
        ));
    }

    #[test]
    fn never_network_broadcast_gateway() {
        // The range explicitly covers the whole /29, gateway .3.
        let s = sets(
            json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.0",
            "rangeEnd": "10.0.0.7", "gateway": "10.0.0.3"}]]}),
        )
        .unwrap();
        let all: Vec<IpAddr> = (0..s[0].len())
            .map(|p| s[0].address(p).unwrap().0)
            .collect();
        let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
            .iter()
            .map(|x| ip(x))
            .collect();
        assert_eq!(all, want);
        for (p, a) in all.iter().enumerate() {
            assert_eq!(s[0].position(*a), Some(p as u128));
        }
        for x in ["10.0.0.0", "10.0.0.3", "10.0.0.7", "10.0.0.8"] {
            assert_eq!(s[0].position(ip(x)), None, "{x}");
        }
        // Resuming after the gateway continues with .4; after the broadcast wraps to .1.
        assert_eq!(s[0].resume_position(ip("10.0.0.3")), Some(1));
        assert_eq!(s[0].resume_position(ip("10.0.0.7")), Some(4));
        assert_eq!(s[0].resume_position(ip("10.0.0.0")), Some(4));
        assert_eq!(s[0].resume_position(ip("10.9.0.0")), None);
    }

    #[test]
    fn multi_range_positions_and_describe() {
        let s = sets(json!({"type": "x", "ranges": [[{"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/30"}]]})).unwrap();
        assert_eq!(s[0].len(), 2);
        assert_eq!(s[0].address(1).unwrap().0, ip("10.0.1.2"));
        assert_eq!(s[0].position(ip("10.0.1.2")), Some(1));
        assert_eq!(s[0].describe(), "10.0.0.1-10.0.0.2,10.0.1.1-10.0.1.2");
    }

    #[test]
    fn huge_v6() {
        let s = sets(json!({"type": "x", "ranges": [[{"subnet": "::/0"}]]})).unwrap();
        assert_eq!(s[0].len(), u128::MAX - 1);
        // Resuming after an excluded address of a ~2^128 range must not overflow.
        assert_eq!(s[0].resume_position(ip("::")), None); // before rangeStart
        assert_eq!(s[0].resume_position(ip("::1")), Some(u128::MAX - 2)); // gateway → wrap
        let top = sets(json!({"type": "x", "ranges": [[{"subnet": "::/0", "gateway": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}]]})).unwrap();
        let len = top[0].len();
        assert_eq!(
            top[0].resume_position(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(len - 1)
        );
        let s = sets(json!({"type": "x", "ranges": [[{"subnet": "fd00::/64"}]]})).unwrap();
        assert_eq!(s[0].len(), (1u128 << 64) - 2);
        let last = s[0].address((1u128 << 64) - 3).unwrap().0;
        assert_eq!(last, ip("fd00::ffff:ffff:ffff:ffff"));
    }
}
