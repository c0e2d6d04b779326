//! The locked transactions: every operation takes `flock(LOCK_EX)` on `lock`, loads the index
//! (or rebuilds it from a scan of the reservation files), reserves or releases files, and
//! commits the index with the directories' new stamps (see "Consistency" in the
//! [store](super) documentation).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::ErrorKind;
use std::net::IpAddr;

use headcni_core::ipam::{
    Attachment, IpamError, IpamStore, PoolUsage, PoolView, RangeSet, Reservation,
};
use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};

use super::dirfd::{
    AT_FLAGS, FILE_MODE, ensure_dir_at, list_at, not_regular, read_at, unlink_at, write_atomic,
};
use super::format::{LOCK_FILE, MAX_RESERVATION_BYTES, Owner, Scan};
use super::index::{
    ATT_DIR, INDEX_DIR, INDEX_FILE, MAX_ATT_BYTES, MAX_INDEX_BYTES, Stamp, att_content, att_name,
    decode_pools, decode_stamps, encode_index, parse_att,
};
use super::{Store, io_err};
use crate::pool::Pool;

/// The in-memory state of one operation: a pool per range set.
pub(super) struct State {
    pub(super) pools: Vec<Pool>,
    /// Something unexpected was seen (an `O_EXCL` create failed on an address the index had as
    /// free): commit an invalid stamp so that the next operation rebuilds.
    pub(super) suspect: bool,
}

/// Attachment key `(cid, ifname)` (`ifname` empty for legacy files) → addresses, sorted.
pub(super) type AttMap = BTreeMap<(String, String), Vec<IpAddr>>;

/// The store under its lock: the flocked `lock` file and the index directories, opened for
/// this one operation (they may be replaced between operations).
pub(super) struct Locked {
    _lock: File,
    pub(super) idx: File,
    pub(super) att: File,
}

/// What the att file of an attachment says.
pub(super) enum Lookup {
    /// The owner shape found and its addresses (verified against the reservation files).
    Found(Option<Owner>, Vec<IpAddr>),
    /// The att file is damaged or disagrees with the reservation files.
    NeedRebuild,
}

impl Store {
    /// Takes the store's lock (`flock(LOCK_EX)` on `lock`, host-local's protocol) and opens
    /// the index directories for one operation.
    ///
    /// Errors: [`IpamError::Store`], also when `lock` is a symlink or not a regular file.
    pub(super) fn lock(&self) -> Result<Locked, IpamError> {
        let p = self.dir.join(LOCK_FILE);
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | AT_FLAGS;
        let f = match openat(&self.fd, LOCK_FILE, flags, FILE_MODE) {
            Ok(fd) => File::from(fd),
            Err(Errno::ELOOP) => return Err(io_err(&p, not_regular())),
            Err(e) => return Err(io_err(&p, e.into())),
        };
        if !f.metadata().map_err(|e| io_err(&p, e))?.is_file() {
            return Err(io_err(&p, not_regular()));
        }
        f.lock().map_err(|e| io_err(&p, e))?;
        let idx =
            ensure_dir_at(&self.fd, INDEX_DIR).map_err(|e| io_err(&self.idx_dir, e.into()))?;
        let att = ensure_dir_at(&idx, ATT_DIR).map_err(|e| io_err(&self.att_dir, e.into()))?;
        Ok(Locked { _lock: f, idx, att })
    }

    /// The index if it is intact, matches the configuration and the directories are unchanged.
    pub(super) fn load_index(&self, l: &Locked) -> Result<Option<State>, IpamError> {
        let p = self.idx_dir.join(INDEX_FILE);
        let data = match read_at(&l.idx, INDEX_FILE, MAX_INDEX_BYTES) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            // Not a regular file or too large: rebuilt (the commit renames over it).
            Err(e) if e.kind() == ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(io_err(&p, e)),
        };
        let Some((sd, sa, rest)) = decode_stamps(&data) else {
            return Ok(None);
        };
        if sd.ino == 0
            || sd != Stamp::of(&self.fd, &self.dir)?
            || sa != Stamp::of(&l.att, &self.att_dir)?
        {
            return Ok(None);
        }
        Ok(decode_pools(rest, &self.sets).map(|pools| State {
            pools,
            suspect: false,
        }))
    }

    /// Writes the index with the directories' current stamps (or an invalid stamp when the
    /// state is suspect, forcing the next operation to rebuild).
    pub(super) fn commit(&self, l: &Locked, st: &State) -> Result<(), IpamError> {
        let stamps = if st.suspect {
            None
        } else {
            Some((
                Stamp::of(&self.fd, &self.dir)?,
                Stamp::of(&l.att, &self.att_dir)?,
            ))
        };
        let data = encode_index(&self.sets, &st.pools, stamps);
        write_atomic(&l.idx, &self.idx_dir, INDEX_FILE, &data)
    }

    // ----- scanning and rebuilding --------------------------------------------------------

    pub(super) fn att_map(scan: &Scan) -> AttMap {
        let mut m = AttMap::new();
        for (ip, owner) in scan {
            if let Some(o) = owner {
                m.entry(o.key()).or_default().push(*ip);
            }
        }
        m
    }

    pub(super) fn rebuild_locked(&self, l: &Locked) -> Result<(State, AttMap), IpamError> {
        let scan = self.scan()?;
        self.rebuild_from(l, &scan)
    }

    /// Rebuilds the pools from `scan`, brings the att files in line (rewriting only those that
    /// differ) and commits the index.
    pub(super) fn rebuild_from(
        &self,
        l: &Locked,
        scan: &Scan,
    ) -> Result<(State, AttMap), IpamError> {
        tracing::debug!(dir = %self.dir.display(), reservations = scan.len(), "rebuilding ipam index");
        let mut pools: Vec<Pool> = self.sets.iter().map(|s| Pool::new(s.len())).collect();
        for ip in scan.keys() {
            if let Some((i, p)) = self.set_of(*ip) {
                pools[i].insert(p);
            }
        }
        let map = Self::att_map(scan);
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let entries = list_at(&l.att).map_err(|e| io_err(&self.att_dir, e))?;
        for (name, kind) in entries {
            if kind == Some(Type::Directory) {
                continue; // not ours; never written through, never descended into
            }
            let keep = read_at(&l.att, &name, MAX_ATT_BYTES)
                .ok()
                .flatten()
                .and_then(|c| parse_att(&c))
                .filter(|(key, ips)| name == att_name(key) && map.get(key) == Some(ips));
            match keep {
                Some((key, _)) => {
                    seen.insert(key);
                }
                None => match unlink_at(&l.att, &name) {
                    // A directory the file system did not type in readdir: not ours, left.
                    Err(e) if e.raw_os_error() != Some(libc::EISDIR) => {
                        return Err(io_err(&self.att_dir.join(&name), e));
                    }
                    _ => {}
                },
            }
        }
        for (key, ips) in &map {
            if !seen.contains(key) {
                self.write_att(l, key, ips)?;
            }
        }
        // Stray temporary files of crashed writers in .headcni/.
        for (name, _) in list_at(&l.idx).unwrap_or_default() {
            if name.starts_with(".tmp.") {
                let _ = unlink_at(&l.idx, &name);
            }
        }
        let st = State {
            pools,
            suspect: false,
        };
        self.commit(l, &st)?;
        Ok((st, map))
    }

    /// The current state: the index, or a rebuild when it is stale.
    pub(super) fn state(&self, l: &Locked) -> Result<State, IpamError> {
        match self.load_index(l)? {
            Some(st) => Ok(st),
            None => Ok(self.rebuild_locked(l)?.0),
        }
    }

    // ----- att files ----------------------------------------------------------------------

    pub(super) fn write_att(
        &self,
        l: &Locked,
        key: &(String, String),
        ips: &[IpAddr],
    ) -> Result<(), IpamError> {
        let name = att_name(key);
        if ips.is_empty() {
            return unlink_at(&l.att, &name).map_err(|e| io_err(&self.att_dir.join(&name), e));
        }
        let data = att_content(key, ips);
        write_atomic(&l.att, &self.att_dir, &name, data.as_bytes())
    }

    /// The addresses of `key` from its att file, each verified against its reservation file.
    pub(super) fn lookup_key(
        &self,
        l: &Locked,
        key: &(String, String),
        owner: &Owner,
    ) -> Result<Option<Vec<IpAddr>>, ()> {
        let data = match read_at(&l.att, &att_name(key), MAX_ATT_BYTES) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(_) => return Err(()),
        };
        let Some((k, ips)) = parse_att(&data) else {
            return Err(());
        };
        if &k != key || ips.is_empty() {
            return Err(());
        }
        for ip in &ips {
            let c = read_at(&self.fd, &ip.to_string(), MAX_RESERVATION_BYTES)
                .ok()
                .flatten()
                .ok_or(())?;
            if Owner::parse(&c).as_ref() != Some(owner) {
                return Err(());
            }
        }
        Ok(Some(ips))
    }

    /// The reservations of `att`: those written as `cid\r\nifname`, else the legacy cid-only
    /// ones (host-local `FindByID` / `ReleaseByID` order).
    pub(super) fn lookup(&self, l: &Locked, att: &Attachment) -> Lookup {
        let cid = att.container_id.trim().to_owned();
        let full = Owner::Full {
            cid: cid.clone(),
            ifname: att.ifname.clone(),
        };
        let legacy = Owner::Legacy(cid);
        for owner in [full, legacy] {
            match self.lookup_key(l, &owner.key(), &owner) {
                Ok(Some(ips)) => return Lookup::Found(Some(owner), ips),
                Ok(None) => {}
                Err(()) => return Lookup::NeedRebuild,
            }
        }
        Lookup::Found(None, Vec::new())
    }

    /// [`Store::lookup`], rebuilding once when the att file is missing its files or corrupt.
    pub(super) fn held(
        &self,
        l: &Locked,
        att: &Attachment,
        st: &mut State,
    ) -> Result<(Option<Owner>, Vec<IpAddr>), IpamError> {
        match self.lookup(l, att) {
            Lookup::Found(o, ips) => Ok((o, ips)),
            Lookup::NeedRebuild => {
                let (new_st, map) = self.rebuild_locked(l)?;
                *st = new_st;
                let cid = att.container_id.trim().to_owned();
                if let Some(ips) = map.get(&(cid.clone(), att.ifname.clone())) {
                    return Ok((
                        Some(Owner::Full {
                            cid,
                            ifname: att.ifname.clone(),
                        }),
                        ips.clone(),
                    ));
                }
                if let Some(ips) = map.get(&(cid.clone(), String::new())) {
                    return Ok((Some(Owner::Legacy(cid)), ips.clone()));
                }
                Ok((None, Vec::new()))
            }
        }
    }

    pub(super) fn reserve_in_set(
        &self,
        l: &Locked,
        st: &mut State,
        set: usize,
        requested: Option<IpAddr>,
        content: &str,
    ) -> Result<IpAddr, IpamError> {
        if let Some(ip) = requested {
            let Some(pos) = self.sets[set].position(ip) else {
                return Err(IpamError::AddressUnavailable {
                    address: ip,
                    reason: format!(
                        "it is the gateway, network or broadcast address of range set {set}"
                    ),
                });
            };
            if !self.reserve_file(l, ip, content)? {
                if st.pools[set].insert(pos) {
                    st.suspect = true;
                }
                return Err(IpamError::AddressUnavailable {
                    address: ip,
                    reason: "it is already reserved".into(),
                });
            }
            st.pools[set].insert(pos);
            return Ok(ip);
        }
        let last = self.last_reserved(set);
        loop {
            let random = self.random();
            let Some(pos) = self.strategy.pick(&st.pools[set], last, random) else {
                return Err(IpamError::PoolExhausted {
                    range_set: set,
                    ranges: self.sets[set].describe(),
                });
            };
            // The built-in strategies only propose free positions; a custom one that proposes
            // a taken or out-of-range one would make this loop spin for ever under the lock.
            if pos >= st.pools[set].len() || !st.pools[set].is_free(pos) {
                return Err(IpamError::Config(format!(
                    "the allocation strategy proposed position {pos} of range set {set}, \
                     which is not a free position"
                )));
            }
            let Some((ip, _)) = self.sets[set].address(pos) else {
                // Cannot happen for a position below len(); mark it so the loop terminates.
                st.pools[set].insert(pos);
                continue;
            };
            st.pools[set].insert(pos);
            if self.reserve_file(l, ip, content)? {
                return Ok(ip);
            }
            tracing::debug!(%ip, "address reserved by another writer; index was stale");
            st.suspect = true;
        }
    }

    pub(super) fn allocate_locked(
        &self,
        l: &Locked,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Reservation>, bool), IpamError> {
        let mut st = self.state(l)?;
        let (owner, held) = self.held(l, att, &mut st)?;
        let mut per_set: Vec<Option<IpAddr>> = vec![None; self.sets.len()];
        for ip in &held {
            if let Some((i, _)) = self.set_of(*ip) {
                per_set[i].get_or_insert(*ip);
            }
        }
        let fresh = per_set.iter().all(Option::is_none);
        if !held.is_empty() && per_set.iter().all(Option::is_some) {
            let existing = per_set
                .into_iter()
                .flatten()
                .filter_map(|ip| self.reservation(ip))
                .collect();
            return Ok((existing, fresh));
        }
        // Route requested addresses to their sets (host-local: the first one found per set).
        let mut req: Vec<Option<IpAddr>> = vec![None; self.sets.len()];
        let mut uniq: Vec<IpAddr> = Vec::new();
        for ip in requested {
            if !uniq.contains(ip) {
                uniq.push(*ip);
            }
        }
        for ip in uniq {
            let Some(i) = self.sets.iter().position(|s| s.contains(ip)) else {
                return Err(IpamError::AddressUnavailable {
                    address: ip,
                    reason: "it is not in any range set".into(),
                });
            };
            if let Some(other) = req[i] {
                return Err(IpamError::AddressUnavailable {
                    address: ip,
                    reason: format!(
                        "{other} is also requested from range set {i}; one address per set"
                    ),
                });
            }
            req[i] = Some(ip);
        }
        let content = Owner::content(att);
        let mut new: Vec<(usize, IpAddr)> = Vec::new();
        let mut failure = None;
        for set in 0..self.sets.len() {
            if per_set[set].is_some() {
                continue;
            }
            match self.reserve_in_set(l, &mut st, set, req[set], &content) {
                Ok(ip) => {
                    new.push((set, ip));
                    if let Err(e) = self.write_last_reserved(set, ip) {
                        failure = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (set, ip) in &new {
                self.unlink(*ip)?;
                if let Some(p) = self.sets[*set].position(*ip) {
                    st.pools[*set].remove(p);
                }
            }
            self.commit(l, &st)?;
            return Err(e);
        }
        let key = (att.container_id.trim().to_owned(), att.ifname.clone());
        let mut ips: Vec<IpAddr> = if matches!(owner, Some(Owner::Full { .. })) {
            held
        } else {
            Vec::new()
        };
        ips.extend(new.iter().map(|(_, ip)| *ip));
        ips.sort();
        self.write_att(l, &key, &ips)?;
        self.commit(l, &st)?;
        for (set, ip) in new {
            per_set[set] = Some(ip);
        }
        let reserved = per_set
            .into_iter()
            .flatten()
            .filter_map(|ip| self.reservation(ip))
            .collect();
        Ok((reserved, fresh))
    }
}

impl IpamStore for Store {
    /// The validated range sets the store was opened with.
    fn range_sets(&self) -> &[RangeSet] {
        Store::range_sets(self)
    }

    /// One lock and one index load ([`Store::allocate_fresh`]).
    fn allocate_fresh(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Reservation>, bool), IpamError> {
        Store::allocate_fresh(self, att, requested)
    }

    /// Reserves one address per range set for `att` (see the trait). Under the lock: load the
    /// index, O(1) duplicate check through the att file, pick with the strategy, `O_EXCL`
    /// create (an existing file is marked taken and the next candidate tried), write
    /// `last_reserved_ip.<i>`, the att file and the index. Errors: [`IpamError::PoolExhausted`],
    /// [`IpamError::AddressUnavailable`] (requested address outside every set, excluded, taken,
    /// or two requested in one set), [`IpamError::Store`]; on error the addresses reserved by
    /// this call are released again.
    fn allocate(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<Vec<Reservation>, IpamError> {
        self.allocate_fresh(att, requested)
            .map(|(reserved, _)| reserved)
    }

    /// The reservations of `att` inside the configured range sets (ifname-specific ones, else
    /// legacy cid-only ones).
    fn find(&self, att: &Attachment) -> Result<Vec<Reservation>, IpamError> {
        let l = self.lock()?;
        let mut st = self.state(&l)?;
        let (_, ips) = self.held(&l, att, &mut st)?;
        let mut out: Vec<Reservation> = ips
            .into_iter()
            .filter_map(|ip| self.reservation(ip))
            .collect();
        out.sort_by_key(|r| r.range_set);
        Ok(out)
    }

    /// Releases the files written for `(cid, ifname)`, or when there are none the legacy
    /// cid-only files of `cid` (host-local `ReleaseByID`), whatever range set they are in.
    fn release(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let l = self.lock()?;
        let mut st = self.state(&l)?;
        let (owner, ips) = self.held(&l, att, &mut st)?;
        let Some(owner) = owner else {
            return Ok(Vec::new());
        };
        for ip in &ips {
            self.unlink(*ip)?;
            if let Some((i, p)) = self.set_of(*ip) {
                st.pools[i].remove(p);
            }
        }
        self.write_att(&l, &owner.key(), &[])?;
        self.commit(&l, &st)?;
        Ok(ips)
    }

    /// Scans the directory and releases every reservation whose attachment is not in `valid`
    /// (a legacy cid-only file is kept when some valid attachment has its cid; a file whose
    /// content is not an attachment is left alone), then rebuilds the index. O(reservations).
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<(IpAddr, Option<Attachment>)>, IpamError> {
        let l = self.lock()?;
        let mut scan = self.scan()?;
        let keep_full: BTreeSet<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.trim().to_owned(), a.ifname.clone()))
            .collect();
        let keep_cid: BTreeSet<&str> = valid.iter().map(|a| a.container_id.trim()).collect();
        let mut released = Vec::new();
        for (ip, owner) in &scan {
            let drop = match owner {
                Some(Owner::Full { cid, ifname }) => {
                    !keep_full.contains(&(cid.clone(), ifname.clone()))
                }
                Some(Owner::Legacy(cid)) => !keep_cid.contains(cid.as_str()),
                // GC runs under the lock, exclusively: an empty file is a crashed writer's
                // leftover and belongs to no attachment. Other unparseable content is left.
                None => self.is_empty_reservation(*ip),
            };
            if drop {
                self.unlink(*ip)?;
                let att = match owner {
                    Some(Owner::Full { cid, ifname }) => Some(Attachment {
                        container_id: cid.clone(),
                        ifname: ifname.clone(),
                    }),
                    _ => None,
                };
                released.push((*ip, att));
            }
        }
        for (ip, _) in &released {
            scan.remove(ip);
        }
        self.rebuild_from(&l, &scan)?;
        Ok(released)
    }

    /// Size and allocated count per range set, from the index.
    fn usage(&self) -> Result<Vec<PoolUsage>, IpamError> {
        let l = self.lock()?;
        let st = self.state(&l)?;
        Ok(st
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| PoolUsage {
                range_set: i,
                size: p.len(),
                allocated: p.allocated(),
            })
            .collect())
    }
}
