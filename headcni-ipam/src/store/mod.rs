//! The on-disk address store: host-local's layout (`backend/disk`) plus an O(1) index.
//!
//! # Layout of `<dataDir>/<network>/`
//!
//! Shared with host-local, byte for byte:
//! - `<ip>`: one file per reserved address, named by the canonical address (IPv6 lower-case
//!   compressed), content `<containerID>\r\n<ifname>` without a trailing newline (legacy
//!   content: just `<containerID>`), mode 0600. Its `O_CREAT|O_EXCL` creation *is* the
//!   reservation, so HeadCNI and host-local can never hand out one address twice.
//! - `last_reserved_ip.<i>`: the last address reserved in range set `i` (also requested ones).
//! - `lock`: empty; `flock(LOCK_EX)` on it guards every mutation (host-local takes it too).
//!
//! HeadCNI's own index, in `.headcni/` (host-local walks it recursively on DEL, so every index
//! file starts with a NUL byte: a container ID comes from an environment variable and can never
//! contain NUL, so no index file can ever match host-local's release-by-content):
//! - `.headcni/att/<name>`: per attachment, the addresses it holds (`name` encodes
//!   `(containerID, ifname)`; legacy cid-only reservations use an empty ifname). This makes the
//!   duplicate check of ADD and the lookup of DEL O(1) instead of a directory walk.
//! - `.headcni/index`: per range set a summary of the allocated positions (a bitmap for sets
//!   up to 2^20 addresses, a run list above), a fingerprint of the set's configuration, the
//!   *stamps* (inode, mtime, ctime in ns) of the network directory and of `.headcni/att` taken
//!   after HeadCNI's last mutation, and a FNV-1a checksum.
//!
//! # Consistency
//!
//! Under the lock, an operation loads the index and compares the stamps with the directories.
//! Any change HeadCNI did not record (host-local reserving or releasing, a HeadCNI process
//! killed between creating a file and committing the index, a deleted or edited att file, a
//! corrupted index, another range configuration) shows up as a stamp, checksum or fingerprint
//! mismatch and triggers a *rebuild*: one scan of the directory (the reservation files are the
//! truth) that rewrites the summary and only the att files that differ. Kernel ≥ 6.13
//! multigrain timestamps (ext4, xfs, btrfs, tmpfs) guarantee that a change after our `stat`
//! gets a different mtime. Independently, every reservation is still an `O_EXCL` create, so a
//! stale index can at worst propose a taken address (the create fails, the address is marked and
//! the next one is tried, and the next operation rebuilds) or hide a free one until the next
//! rebuild: it can never cause a double allocation. Att entries are verified against the
//! reservation files they list before they are trusted.
//!
//! Cost: with a current index, ADD and DEL read and write a constant number of small files
//! (the summary is `len / 8` bytes for a dense set: 8 KiB for a /16), independent of the
//! number of reservations. Only a rebuild and GC are O(reservations).
//!
//! # No path is followed below the network directory
//!
//! `<dataDir>` itself may contain symlinked components (`/var/run` → `/run`), but the network
//! directory is opened once with `O_DIRECTORY|O_NOFOLLOW` and everything below it is reached
//! relative to that descriptor (`openat`, `linkat`, `renameat`, `unlinkat`, `mkdirat`,
//! `readdir` on the descriptor), every last component with `O_NOFOLLOW|O_NONBLOCK`, and only
//! regular files are read or written. So a symlink, FIFO or device planted in the store never
//! redirects a write, a delete or a read and never blocks an operation under the lock:
//! - `.headcni` or `.headcni/att` not being a directory: the entry (never its target) is
//!   removed and the directory recreated (it is only an index; the next operation rebuilds).
//! - temporary files: random names, created `O_CREAT|O_EXCL|O_NOFOLLOW`.
//! - `last_reserved_ip.<i>` not a regular file: the hint is treated as absent and the entry
//!   replaced by a regular file when the next address is recorded (host-local would block on a
//!   FIFO or write through a symlink).
//! - `lock` not a regular file, or the network directory a symlink: the operation fails with
//!   [`IpamError::Store`] (replacing the lock could let two writers hold different locks).
//! - reservation-named entries that are not regular files count as taken and are never opened
//!   for their content.
//!
//! Reads are bounded: a reservation file is read up to [`MAX_RESERVATION_BYTES`], an att
//! file up to 1 MiB, the index up to 64 MiB; a larger file is treated as unparseable.
//!
//! # Files of this module
//!
//! - `format`: the on-disk format shared with host-local (reservation files, [`Owner`],
//!   `last_reserved_ip.<i>`, `lock`) and the operations on those files.
//! - `index`: the `.headcni/` index codec (att files, the `index` file, directory stamps).
//! - `dirfd`: the fd-relative file operations (`openat` & co., no symlink is followed, no
//!   FIFO blocks, bounded reads).
//! - `txn`: the locked transactions (lock, load or rebuild the index, reserve, release,
//!   commit) and the [`IpamStore`](headcni_core::ipam::IpamStore) implementation.

mod dirfd;
mod format;
mod index;
mod txn;

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use headcni_core::ipam::{
    AllocationStrategy, Attachment, IpamError, RangeSet, Reservation, Strategy,
};
use ipnetwork::IpNetwork;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, mkdirat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use dirfd::{DIR_MODE, ensure_dir_at, open_dir_at};
pub use format::{MAX_RESERVATION_BYTES, Owner};
use index::ATT_DIR;
pub use index::INDEX_DIR;

/// The I/O error `source` on `path` as the store error of the IPAM trait.
fn io_err(path: &Path, source: std::io::Error) -> IpamError {
    IpamError::Store {
        path: path.to_path_buf(),
        source,
    }
}

/// HeadCNI's host-local-compatible store for one network (see the module documentation).
pub struct Store {
    dir: PathBuf,
    /// The network directory, opened `O_DIRECTORY|O_NOFOLLOW`; everything below is reached
    /// relative to it.
    fd: File,
    idx_dir: PathBuf,
    att_dir: PathBuf,
    sets: Vec<RangeSet>,
    strategy: Box<dyn AllocationStrategy>,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("sets", &self.sets)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating with mode 0700 if needed) the store `<data_dir>/<network>` for the
    /// validated `sets` (from [`headcni_core::ipam::IpamConf::range_sets`]), allocating with
    /// the built-in implementation of `strategy`
    /// ([`strategy()`](fn@crate::strategy::strategy)). Same as [`Store::open_with_strategy`]
    /// otherwise, errors included.
    pub fn open(
        data_dir: &Path,
        network: &str,
        sets: Vec<RangeSet>,
        strategy: Strategy,
    ) -> Result<Store, IpamError> {
        Self::open_boxed(data_dir, network, sets, crate::strategy::strategy(strategy))
    }

    /// Opens (creating with mode 0700 if needed) the store `<data_dir>/<network>` for the
    /// validated `sets` (from [`headcni_core::ipam::IpamConf::range_sets`]), allocating with
    /// any [`AllocationStrategy`]: the built-in ones of [`strategy`](mod@crate::strategy) or
    /// your own. The strategy only proposes a free position; the store still reserves it with an exclusive
    /// create, so a wrong proposal can never hand out an address twice. Random draws passed
    /// to the strategy come from the OS entropy source ([`Store::with_seed`] for tests). A
    /// strategy that proposes a position that is not free (or not below the pool's length)
    /// fails that allocation with [`IpamError::Config`], and nothing stays reserved.
    ///
    /// `data_dir` may contain symlinked components; the network directory must be a real
    /// directory (it is opened with `O_NOFOLLOW` and everything below it relative to it).
    ///
    /// Errors: [`IpamError::Config`] for a network name that is not a single path component
    /// (empty, `.`, `..`, containing `/` or NUL) or no range set; [`IpamError::Store`] when the
    /// directories cannot be created or opened, or the network directory is a symlink or not a
    /// directory.
    pub fn open_with_strategy(
        data_dir: &Path,
        network: &str,
        sets: Vec<RangeSet>,
        strategy: impl AllocationStrategy + 'static,
    ) -> Result<Store, IpamError> {
        Self::open_boxed(data_dir, network, sets, Box::new(strategy))
    }

    fn open_boxed(
        data_dir: &Path,
        network: &str,
        sets: Vec<RangeSet>,
        strategy: Box<dyn AllocationStrategy>,
    ) -> Result<Store, IpamError> {
        if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0'])
        {
            return Err(IpamError::Config(format!(
                "network name {network:?} cannot be a store directory"
            )));
        }
        if sets.is_empty() {
            return Err(IpamError::Config("no IP ranges specified".into()));
        }
        let dir = data_dir.join(network);
        let idx_dir = dir.join(INDEX_DIR);
        let att_dir = idx_dir.join(ATT_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| io_err(data_dir, e))?;
        let data = nix::fcntl::open(
            data_dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| io_err(data_dir, e.into()))?;
        match mkdirat(&data, network, DIR_MODE) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err(&dir, e.into())),
        }
        let fd = open_dir_at(&data, network).map_err(|e| {
            let e = match e {
                Errno::ELOOP | Errno::ENOTDIR => std::io::Error::new(
                    ErrorKind::InvalidData,
                    "the network directory is a symlink or not a directory",
                ),
                e => e.into(),
            };
            io_err(&dir, e)
        })?;
        let idx = ensure_dir_at(&fd, INDEX_DIR).map_err(|e| io_err(&idx_dir, e.into()))?;
        ensure_dir_at(&idx, ATT_DIR).map_err(|e| io_err(&att_dir, e.into()))?;
        Ok(Store {
            dir,
            fd,
            idx_dir,
            att_dir,
            sets,
            strategy,
            rng: Mutex::new(StdRng::from_os_rng()),
        })
    }

    /// Replaces the random source by a seeded one (reproducible tests and benchmarks).
    pub fn with_seed(self, seed: u64) -> Store {
        Store {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            ..self
        }
    }

    /// The network directory `<dataDir>/<network>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated range sets.
    pub fn range_sets(&self) -> &[RangeSet] {
        &self.sets
    }

    /// Rescans the directory and rewrites the index now (normally done automatically when the
    /// index is stale). O(reservations).
    pub fn rebuild(&self) -> Result<(), IpamError> {
        let l = self.lock()?;
        self.rebuild_locked(&l).map(|_| ())
    }

    fn random(&self) -> u128 {
        let mut g = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        g.random::<u128>()
    }

    fn set_of(&self, ip: IpAddr) -> Option<(usize, u128)> {
        self.sets
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.position(ip).map(|p| (i, p)))
    }

    fn reservation(&self, ip: IpAddr) -> Option<Reservation> {
        let (i, _) = self.set_of(ip)?;
        let r = self.sets[i].range_for(ip)?;
        Some(Reservation {
            range_set: i,
            address: IpNetwork::new(ip, r.subnet.prefix()).ok()?,
            gateway: r.gateway,
        })
    }

    /// [`IpamStore::allocate`](headcni_core::ipam::IpamStore::allocate), also telling whether
    /// `att` held no reservation in any range set before this call (`true`: everything
    /// returned was reserved now, so a caller whose ADD fails later releases it; `false`: a
    /// repeated ADD, whose reservations must be kept). One lock and one index load, like
    /// `allocate`.
    pub fn allocate_fresh(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Reservation>, bool), IpamError> {
        let l = self.lock()?;
        self.allocate_locked(&l, att, requested)
    }
}

#[cfg(test)]
mod tests;
