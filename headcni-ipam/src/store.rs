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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use headcni_core::ipam::{
    AllocationStrategy, Attachment, IpRange, IpamError, IpamStore, PoolUsage, PoolView, RangeSet,
    Reservation, Strategy,
};
use ipnetwork::IpNetwork;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::pool::{DensePool, Pool, SparsePool};

/// Name of HeadCNI's index directory inside the network directory.
pub const INDEX_DIR: &str = ".headcni";
const ATT_DIR: &str = "att";
const INDEX_FILE: &str = "index";
const LOCK_FILE: &str = "lock";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";
const INDEX_MAGIC: &[u8] = b"\0HEADCNI-IPAM-INDEX-1\n";
const ATT_MAGIC: &str = "\0headcni-att 1";

/// Largest reservation file read, in bytes: above Linux's limit of one environment string
/// (`MAX_ARG_STRLEN`, 128 KiB), so every `CNI_CONTAINERID` fits; a larger file is unparseable.
pub const MAX_RESERVATION_BYTES: u64 = 256 * 1024;
const MAX_ATT_BYTES: u64 = 1024 * 1024;
const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;
/// `last_reserved_ip.<i>` holds one address (at most 45 characters plus whitespace).
const MAX_LAST_IP_BYTES: u64 = 128;

/// Added to every open below the network directory: never follow the last component, never
/// block on a FIFO, never acquire a terminal, never leak into a child.
const AT_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);
/// Mode of every file and directory the store creates (before the umask).
const FILE_MODE: Mode = Mode::S_IRUSR.union(Mode::S_IWUSR);
const DIR_MODE: Mode = Mode::S_IRWXU;

fn io_err(path: &Path, source: std::io::Error) -> IpamError {
    IpamError::Store {
        path: path.to_path_buf(),
        source,
    }
}

fn not_regular() -> std::io::Error {
    std::io::Error::new(
        ErrorKind::InvalidData,
        "not a regular file (symlinks, FIFOs, devices and directories are refused)",
    )
}

/// Opens the directory `name` in `parent` without following a symlink.
fn open_dir_at(parent: &File, name: &str) -> nix::Result<File> {
    openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | AT_FLAGS,
        Mode::empty(),
    )
    .map(File::from)
}

/// Opens the index directory `name` in `parent`, creating it (mode 0700) when missing and
/// removing whatever non-directory entry (a symlink, never its target; a file; a FIFO) is in
/// its place first.
fn ensure_dir_at(parent: &File, name: &str) -> nix::Result<File> {
    let mut last = Errno::ENOENT;
    for _ in 0..4 {
        match open_dir_at(parent, name) {
            Ok(d) => return Ok(d),
            Err(Errno::ENOENT) => match mkdirat(parent, name, DIR_MODE) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            },
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                tracing::warn!(
                    name,
                    "ipam store: replacing a non-directory entry by the index directory"
                );
                match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Reads the regular file `name` in `dir` without following a symlink or blocking on a FIFO.
/// `Ok(None)` when it does not exist; [`ErrorKind::InvalidData`] when it is not a regular file
/// or longer than `max` bytes.
fn read_at(dir: &File, name: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = match openat(dir, name, OFlag::O_RDONLY | AT_FLAGS, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(not_regular()),
        Err(e) => return Err(e.into()),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(not_regular());
    }
    // Sized from fstat (one read for the content, one for EOF), still bounded by `max` if
    // the file grows meanwhile.
    let mut buf = Vec::with_capacity(usize::try_from(m.len().min(max) + 1).unwrap_or(0));
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(Some(buf))
}

/// Creates a temporary file in `dir` with an unpredictable name (`.tmp.<pid>.<64 random
/// bits>`), `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600: a planted entry is never opened.
fn create_tmp_at(dir: &File) -> std::io::Result<(String, File)> {
    for _ in 0..4 {
        let name = format!(".tmp.{}.{:016x}", std::process::id(), rand::random::<u64>());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | AT_FLAGS;
        match openat(dir, name.as_str(), flags, FILE_MODE) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ErrorKind::AlreadyExists.into())
}

/// `unlinkat(dir, name)` of a non-directory; a missing entry is fine.
fn unlink_at(dir: &File, name: &str) -> std::io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The entries of the directory `dir` (without `.` and `..`) and their types when the file
/// system reports them; names that are not UTF-8 are skipped (no store file has one).
fn list_at(dir: &File) -> std::io::Result<Vec<(String, Option<Type>)>> {
    let mut d = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let Ok(name) = ent.file_name().to_str() else {
            continue;
        };
        if name != "." && name != ".." {
            out.push((name.to_owned(), ent.file_type()));
        }
    }
    Ok(out)
}

fn fnv1a(data: &[u8]) -> u64 {
    headcni_core::hash::fnv1a64(data.iter().copied())
}

/// Who holds a reservation file, from its content (host-local `backend/disk`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// `<containerID>\r\n<ifname>`.
    Full {
        /// Container ID (trimmed).
        cid: String,
        /// Interface name.
        ifname: String,
    },
    /// Legacy content: just `<containerID>`.
    Legacy(String),
}

impl Owner {
    /// Parses a reservation file's content like host-local compares it (`TrimSpace` of the
    /// whole content). `None` when it is not UTF-8, empty, or not one of the two shapes.
    pub fn parse(content: &[u8]) -> Option<Owner> {
        let s = std::str::from_utf8(content).ok()?.trim();
        if s.is_empty() {
            return None;
        }
        let bad = |x: &str| x.is_empty() || x.chars().any(|c| c.is_whitespace() || c.is_control());
        match s.split_once("\r\n") {
            Some((c, i)) if !bad(c) && !bad(i) => Some(Owner::Full {
                cid: c.to_owned(),
                ifname: i.to_owned(),
            }),
            Some(_) => None,
            None if !bad(s) => Some(Owner::Legacy(s.to_owned())),
            None => None,
        }
    }

    /// The file content host-local writes for `att`: `TrimSpace(cid) + "\r\n" + ifname`.
    pub fn content(att: &Attachment) -> String {
        format!("{}\r\n{}", att.container_id.trim(), att.ifname)
    }

    fn key(&self) -> (String, String) {
        match self {
            Owner::Full { cid, ifname } => (cid.clone(), ifname.clone()),
            Owner::Legacy(cid) => (cid.clone(), String::new()),
        }
    }
}

/// Escapes a string for a file name and a line of an att file: `[A-Za-z0-9.-]` kept, every
/// other byte as `_xx`.
fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("_{b:02x}"));
        }
    }
    o
}

fn dec(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn att_name(key: &(String, String)) -> String {
    let n = format!("a-{}+{}", enc(&key.0), enc(&key.1));
    if n.len() <= 200 {
        n
    } else {
        let mut buf = key.0.as_bytes().to_vec();
        buf.push(0);
        buf.extend_from_slice(key.1.as_bytes());
        format!(
            "h-{:016x}-{:016x}",
            fnv1a(&buf),
            fnv1a(key.1.as_bytes()) ^ buf.len() as u64
        )
    }
}

fn att_content(key: &(String, String), ips: &[IpAddr]) -> String {
    let mut s = format!("{ATT_MAGIC}\n{}\n{}\n", enc(&key.0), enc(&key.1));
    for ip in ips {
        s.push_str(&ip.to_string());
        s.push('\n');
    }
    s
}

fn parse_att(content: &[u8]) -> Option<((String, String), Vec<IpAddr>)> {
    let s = std::str::from_utf8(content).ok()?;
    let mut lines = s.split('\n');
    if lines.next()? != ATT_MAGIC {
        return None;
    }
    let cid = dec(lines.next()?)?;
    let ifname = dec(lines.next()?)?;
    let mut ips = Vec::new();
    let mut ended = false;
    for l in lines {
        if l.is_empty() {
            ended = true;
            continue;
        }
        if ended {
            return None;
        }
        ips.push(l.parse().ok()?);
    }
    if !ended || cid.is_empty() {
        return None;
    }
    Some(((cid, ifname), ips))
}

/// Identity and change times of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp {
    ino: u64,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// The stamp of the open directory `dir` (`fstat`); `path` names it in errors.
    fn of(dir: &File, path: &Path) -> Result<Stamp, IpamError> {
        let m = dir.metadata().map_err(|e| io_err(path, e))?;
        Ok(Stamp {
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_ns: m.ctime_nsec(),
        })
    }
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&self.ino.to_le_bytes());
        for v in [self.mtime, self.mtime_ns, self.ctime, self.ctime_ns] {
            o.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn get(r: &mut Reader<'_>) -> Option<Stamp> {
        Some(Stamp {
            ino: r.u64()?,
            mtime: r.i64()?,
            mtime_ns: r.i64()?,
            ctime: r.i64()?,
            ctime_ns: r.i64()?,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take(16)
            .and_then(|b| b.try_into().ok())
            .map(u128::from_le_bytes)
    }
}

fn set_fingerprint(set: &RangeSet) -> u64 {
    let s: String = set
        .ranges
        .iter()
        .map(|r: &IpRange| format!("{}|{}|{}|{:?};", r.subnet, r.start, r.end, r.gateway))
        .collect();
    fnv1a(s.as_bytes())
}

/// The in-memory state of one operation: a pool per range set.
struct State {
    pools: Vec<Pool>,
    /// Something unexpected was seen (an `O_EXCL` create failed on an address the index had as
    /// free): commit an invalid stamp so that the next operation rebuilds.
    suspect: bool,
}

/// Result of a directory scan: every reservation file and its owner (`None`: unparseable).
type Scan = BTreeMap<IpAddr, Option<Owner>>;
/// Attachment key `(cid, ifname)` (`ifname` empty for legacy files) → addresses, sorted.
type AttMap = BTreeMap<(String, String), Vec<IpAddr>>;

/// The store under its lock: the flocked `lock` file and the index directories, opened for
/// this one operation (they may be replaced between operations).
struct Locked {
    _lock: File,
    idx: File,
    att: File,
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

enum Lookup {
    Found(Option<Owner>, Vec<IpAddr>),
    NeedRebuild,
}

impl Store {
    /// Opens (creating with mode 0700 if needed) the store `<data_dir>/<network>` for the
    /// validated `sets` (from [`headcni_core::ipam::IpamConf::range_sets`]), allocating with
    /// `strategy`. Random draws come from the OS entropy source ([`Store::with_seed`] for tests).
    ///
    /// `data_dir` may contain symlinked components; the network directory must be a real
    /// directory (it is opened with `O_NOFOLLOW` and everything below it relative to it).
    ///
    /// Errors: [`IpamError::Config`] for a network name that is not a single path component
    /// (empty, `.`, `..`, containing `/` or NUL) or no range set; [`IpamError::Store`] when the
    /// directories cannot be created or opened, or the network directory is a symlink or not a
    /// directory.
    pub fn open(
        data_dir: &Path,
        network: &str,
        sets: Vec<RangeSet>,
        strategy: Strategy,
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
            strategy: crate::strategy::strategy(strategy),
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

    /// Takes the store's lock (`flock(LOCK_EX)` on `lock`, host-local's protocol) and opens
    /// the index directories for one operation.
    ///
    /// Errors: [`IpamError::Store`], also when `lock` is a symlink or not a regular file.
    fn lock(&self) -> Result<Locked, IpamError> {
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

    /// Writes `data` to `name` in `dir` atomically (temporary file in `dir` + `renameat`,
    /// which replaces a planted entry instead of following it); `path` names `dir` in errors.
    fn write_atomic(dir: &File, path: &Path, name: &str, data: &[u8]) -> Result<(), IpamError> {
        let (tmp, mut f) = create_tmp_at(dir).map_err(|e| io_err(path, e))?;
        let res = f
            .write_all(data)
            .and_then(|()| renameat(dir, tmp.as_str(), dir, name).map_err(Into::into));
        if let Err(e) = res {
            let _ = unlink_at(dir, &tmp);
            return Err(io_err(&path.join(name), e));
        }
        Ok(())
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

    // ----- index --------------------------------------------------------------------------

    fn encode_index(&self, st: &State, stamps: Option<(Stamp, Stamp)>) -> Vec<u8> {
        let mut o = INDEX_MAGIC.to_vec();
        let (a, b) = stamps.unwrap_or_default();
        a.put(&mut o);
        b.put(&mut o);
        o.extend_from_slice(&(self.sets.len() as u64).to_le_bytes());
        for (set, pool) in self.sets.iter().zip(&st.pools) {
            o.extend_from_slice(&set_fingerprint(set).to_le_bytes());
            o.extend_from_slice(&pool.len().to_le_bytes());
            match pool {
                Pool::Dense(d) => {
                    let w = d.to_words();
                    o.push(0);
                    o.extend_from_slice(&(w.len() as u64).to_le_bytes());
                    for x in w {
                        o.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Pool::Sparse(s) => {
                    let runs = s.runs();
                    o.push(1);
                    o.extend_from_slice(&(runs.len() as u64).to_le_bytes());
                    for (a, b) in runs {
                        o.extend_from_slice(&a.to_le_bytes());
                        o.extend_from_slice(&b.to_le_bytes());
                    }
                }
            }
        }
        let sum = fnv1a(&o);
        o.extend_from_slice(&sum.to_le_bytes());
        o
    }

    /// The index if it is intact, matches the configuration and the directories are unchanged.
    fn load_index(&self, l: &Locked) -> Result<Option<State>, IpamError> {
        let p = self.idx_dir.join(INDEX_FILE);
        let data = match read_at(&l.idx, INDEX_FILE, MAX_INDEX_BYTES) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            // Not a regular file or too large: rebuilt (the commit renames over it).
            Err(e) if e.kind() == ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(io_err(&p, e)),
        };
        let Some(body_len) = data.len().checked_sub(8) else {
            return Ok(None);
        };
        let (body, sum) = data.split_at(body_len);
        let ok_sum = sum.try_into().ok().map(u64::from_le_bytes) == Some(fnv1a(body));
        if !ok_sum || !body.starts_with(INDEX_MAGIC) {
            return Ok(None);
        }
        let mut r = Reader(&body[INDEX_MAGIC.len()..]);
        let (Some(sd), Some(sa)) = (Stamp::get(&mut r), Stamp::get(&mut r)) else {
            return Ok(None);
        };
        if sd.ino == 0
            || sd != Stamp::of(&self.fd, &self.dir)?
            || sa != Stamp::of(&l.att, &self.att_dir)?
        {
            return Ok(None);
        }
        if r.u64() != Some(self.sets.len() as u64) {
            return Ok(None);
        }
        let mut pools = Vec::with_capacity(self.sets.len());
        for set in &self.sets {
            let (Some(fp), Some(len), Some(kind), Some(n)) = (r.u64(), r.u128(), r.u8(), r.u64())
            else {
                return Ok(None);
            };
            if fp != set_fingerprint(set) || len != set.len() {
                return Ok(None);
            }
            let pool = match kind {
                0 => {
                    let mut w = Vec::new();
                    for _ in 0..n {
                        let Some(x) = r.u64() else { return Ok(None) };
                        w.push(x);
                    }
                    match u64::try_from(len)
                        .ok()
                        .and_then(|l| DensePool::from_words(l, w))
                    {
                        Some(d) => Pool::Dense(d),
                        None => return Ok(None),
                    }
                }
                1 => {
                    let mut runs = Vec::new();
                    for _ in 0..n {
                        let (Some(a), Some(b)) = (r.u128(), r.u128()) else {
                            return Ok(None);
                        };
                        runs.push((a, b));
                    }
                    match SparsePool::from_runs(len, &runs) {
                        Some(s) => Pool::Sparse(s),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            };
            pools.push(pool);
        }
        if !r.0.is_empty() {
            return Ok(None);
        }
        Ok(Some(State {
            pools,
            suspect: false,
        }))
    }

    /// Writes the index with the directories' current stamps (or an invalid stamp when the
    /// state is suspect, forcing the next operation to rebuild).
    fn commit(&self, l: &Locked, st: &State) -> Result<(), IpamError> {
        let stamps = if st.suspect {
            None
        } else {
            Some((
                Stamp::of(&self.fd, &self.dir)?,
                Stamp::of(&l.att, &self.att_dir)?,
            ))
        };
        let data = self.encode_index(st, stamps);
        Self::write_atomic(&l.idx, &self.idx_dir, INDEX_FILE, &data)
    }

    // ----- scanning and rebuilding --------------------------------------------------------

    /// Every reservation-named entry of the network directory and its owner. An entry that
    /// is not a regular file (a symlink, FIFO, directory) occupies its address (an `O_EXCL`
    /// reservation of it would fail) but is never opened: its owner is `None`.
    fn scan(&self) -> Result<Scan, IpamError> {
        let mut out = Scan::new();
        let entries = list_at(&self.fd).map_err(|e| io_err(&self.dir, e))?;
        for (name, kind) in entries {
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            if ip.to_string() != name {
                continue;
            }
            let owner = match kind {
                Some(Type::File) | None => read_at(&self.fd, &name, MAX_RESERVATION_BYTES)
                    .ok()
                    .flatten()
                    .and_then(|c| Owner::parse(&c)),
                Some(_) => None,
            };
            out.insert(ip, owner);
        }
        Ok(out)
    }

    fn att_map(scan: &Scan) -> AttMap {
        let mut m = AttMap::new();
        for (ip, owner) in scan {
            if let Some(o) = owner {
                m.entry(o.key()).or_default().push(*ip);
            }
        }
        m
    }

    fn rebuild_locked(&self, l: &Locked) -> Result<(State, AttMap), IpamError> {
        let scan = self.scan()?;
        self.rebuild_from(l, &scan)
    }

    /// Rebuilds the pools from `scan`, brings the att files in line (rewriting only those that
    /// differ) and commits the index.
    fn rebuild_from(&self, l: &Locked, scan: &Scan) -> Result<(State, AttMap), IpamError> {
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
    fn state(&self, l: &Locked) -> Result<State, IpamError> {
        match self.load_index(l)? {
            Some(st) => Ok(st),
            None => Ok(self.rebuild_locked(l)?.0),
        }
    }

    // ----- att files ----------------------------------------------------------------------

    fn write_att(
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
        Self::write_atomic(&l.att, &self.att_dir, &name, data.as_bytes())
    }

    /// The addresses of `key` from its att file, each verified against its reservation file.
    fn lookup_key(
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
    fn lookup(&self, l: &Locked, att: &Attachment) -> Lookup {
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
    fn held(
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

    // ----- reservation files --------------------------------------------------------------

    /// The `O_CREAT|O_EXCL` reservation. `Ok(false)` when the file exists.
    /// Reserves `ip` by making `<dir>/<ip>` appear *with its content*: the content is written
    /// to a temp file in the index directory, which is then hard-linked to the final name.
    /// `link(2)` fails with EEXIST when the name exists, so this keeps `O_EXCL` semantics
    /// against every writer (host-local included), and a crash can never leave an empty
    /// reservation file that no DEL or GC would match (at worst a stray temp file, removed by
    /// the next rebuild). `Ok(false)` when the address is taken.
    fn reserve_file(&self, l: &Locked, ip: IpAddr, content: &str) -> Result<bool, IpamError> {
        let name = ip.to_string();
        let (tmp, mut f) = create_tmp_at(&l.idx).map_err(|e| io_err(&self.idx_dir, e))?;
        if let Err(e) = f.write_all(content.as_bytes()) {
            let _ = unlink_at(&l.idx, &tmp);
            return Err(io_err(&self.idx_dir.join(&tmp), e));
        }
        drop(f);
        // No AT_SYMLINK_FOLLOW: the temp entry itself is linked, and `linkat` never follows or
        // replaces an existing target name.
        let linked = linkat(
            &l.idx,
            tmp.as_str(),
            &self.fd,
            name.as_str(),
            AtFlags::empty(),
        );
        let _ = unlink_at(&l.idx, &tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(io_err(&self.dir.join(name), e.into())),
        }
    }

    /// `true` for a zero-length reservation file: what a writer killed between `O_EXCL`
    /// create and content write leaves (host-local does that too). Only meaningful under the
    /// lock, where no live writer can be between those two steps. Never follows a symlink.
    fn is_empty_reservation(&self, ip: IpAddr) -> bool {
        matches!(read_at(&self.fd, &ip.to_string(), 0), Ok(Some(c)) if c.is_empty())
    }

    fn unlink(&self, ip: IpAddr) -> Result<(), IpamError> {
        let name = ip.to_string();
        unlink_at(&self.fd, &name).map_err(|e| io_err(&self.dir.join(name), e))
    }

    /// Records `ip` in `last_reserved_ip.<set>` in place, as host-local does, but never
    /// through a symlink and never blocking on a FIFO: an entry that is not a regular file is
    /// removed and a regular file created in its place.
    fn write_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        let name = format!("{LAST_IP_PREFIX}{set}");
        let path = self.dir.join(&name);
        let open = || {
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | AT_FLAGS;
            let f = File::from(openat(&self.fd, name.as_str(), flags, FILE_MODE)?);
            Ok::<_, std::io::Error>(f.metadata()?.is_file().then_some(f))
        };
        let replace = |e: &std::io::Error| {
            // ELOOP: a symlink; ENXIO: a FIFO without a reader (or a socket).
            matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO))
        };
        let f = match open() {
            Ok(Some(f)) => f,
            Err(e) if !replace(&e) => return Err(io_err(&path, e)),
            Ok(None) | Err(_) => {
                tracing::warn!(path = %path.display(), "ipam store: replacing a non-regular last_reserved_ip file");
                unlink_at(&self.fd, &name).map_err(|e| io_err(&path, e))?;
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | AT_FLAGS;
                openat(&self.fd, name.as_str(), flags, FILE_MODE)
                    .map(File::from)
                    .map_err(|e| io_err(&path, e.into()))?
            }
        };
        f.set_len(0)
            .and_then(|()| (&f).write_all(ip.to_string().as_bytes()))
            .map_err(|e| io_err(&path, e))
    }

    /// The resume position from `last_reserved_ip.<set>`; `None` when it is missing, not a
    /// regular file, or not an address of the set (it is only a hint).
    fn last_reserved(&self, set: usize) -> Option<u128> {
        let name = format!("{LAST_IP_PREFIX}{set}");
        let c = read_at(&self.fd, &name, MAX_LAST_IP_BYTES).ok().flatten()?;
        let ip: IpAddr = std::str::from_utf8(&c).ok()?.trim().parse().ok()?;
        self.sets[set].resume_position(ip)
    }

    fn reserve_in_set(
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

    fn allocate_locked(
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

    /// [`IpamStore::allocate`], also telling whether `att` held no reservation in any range set
    /// before this call (`true`: everything returned was reserved now, so a caller whose ADD
    /// fails later releases it; `false`: a repeated ADD, whose reservations must be kept).
    /// One lock and one index load, like `allocate`.
    pub fn allocate_fresh(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Reservation>, bool), IpamError> {
        let l = self.lock()?;
        self.allocate_locked(&l, att, requested)
    }
}

impl IpamStore for Store {
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

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::ipam::IpamConf;

    fn sets(ranges: serde_json::Value) -> Vec<RangeSet> {
        IpamConf::parse(&serde_json::json!({"type": "headcni-ipam", "ranges": ranges}))
            .unwrap()
            .range_sets(&[])
            .unwrap()
    }
    fn att(c: &str, i: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: i.into(),
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn open(d: &Path, s: Strategy) -> Store {
        Store::open(
            d,
            "net",
            sets(serde_json::json!([[{"subnet": "10.0.0.0/29"}], [{"subnet": "fd00::/125"}]])),
            s,
        )
        .unwrap()
        .with_seed(1)
    }

    #[test]
    fn owner_parsing() {
        assert_eq!(
            Owner::parse(b"abc\r\neth0"),
            Some(Owner::Full {
                cid: "abc".into(),
                ifname: "eth0".into()
            })
        );
        assert_eq!(Owner::parse(b" abc \n"), Some(Owner::Legacy("abc".into())));
        for bad in [
            &b""[..],
            b"  ",
            b"a b",
            b"a\r\nb\r\nc",
            b"\xff",
            b"\0headcni",
        ] {
            assert_eq!(Owner::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Owner::content(&att(" c1 ", "eth0")), "c1\r\neth0");
        // host-local compares TrimSpace(content): a leading CRLF leaves a legacy id.
        assert_eq!(
            Owner::parse(b"\r\neth0"),
            Some(Owner::Legacy("eth0".into()))
        );
    }

    #[test]
    fn att_encoding_roundtrip() {
        let key = ("a_b:c".to_string(), "eth+0".to_string());
        let ips = vec![ip("10.0.0.2"), ip("fd00::3")];
        let c = att_content(&key, &ips);
        assert!(c.starts_with('\0'));
        assert_eq!(parse_att(c.as_bytes()), Some((key.clone(), ips)));
        assert!(!att_name(&key).contains(['/', '_']) || att_name(&key).starts_with("a-"));
        assert_ne!(
            att_name(&("a".into(), "b_c".into())),
            att_name(&("a_b".into(), "c".into()))
        );
        assert!(att_name(&("x".repeat(300), "eth0".into())).starts_with("h-"));
        assert!(parse_att(b"\0headcni-att 1\nabc\neth0\n10.0.0.2").is_none()); // truncated
    }

    #[test]
    fn layout_is_host_local_compatible() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::Sequential);
        let r = s.allocate(&att("c1", "eth0"), &[]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(r[0].gateway, Some(ip("10.0.0.1")));
        assert_eq!(r[1].address.to_string(), "fd00::2/125");
        let dir = d.path().join("net");
        assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(fs::read(dir.join("fd00::2")).unwrap(), b"c1\r\neth0");
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
            "fd00::2"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.join("10.0.0.2")), 0o600);
        assert_eq!(mode(&dir.join("lock")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(INDEX_DIR)), 0o700);
        // Every index file starts with NUL, so host-local's release-by-content never matches it.
        let mut stack = vec![dir.join(INDEX_DIR)];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    assert_eq!(
                        fs::read(e.path()).unwrap().first(),
                        Some(&0u8),
                        "{:?}",
                        e.path()
                    );
                }
            }
        }
    }

    #[test]
    fn idempotent_release_and_sequential_order() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::Sequential);
        let a = s.allocate(&att("c1", "eth0"), &[]).unwrap();
        assert_eq!(s.allocate(&att("c1", "eth0"), &[]).unwrap(), a);
        assert_eq!(s.find(&att("c1", "eth0")).unwrap(), a);
        let b = s.allocate(&att("c1", "eth1"), &[]).unwrap();
        assert_eq!(b[0].address.ip(), ip("10.0.0.3"));
        assert_eq!(
            s.release(&att("c1", "eth0")).unwrap(),
            vec![ip("10.0.0.2"), ip("fd00::2")]
        );
        assert_eq!(s.release(&att("c1", "eth0")).unwrap(), Vec::<IpAddr>::new());
        assert!(s.find(&att("c1", "eth0")).unwrap().is_empty());
        // Released .2 is not reused before wrapping: next is .4.
        let c = s.allocate(&att("c2", "eth0"), &[]).unwrap();
        assert_eq!(c[0].address.ip(), ip("10.0.0.4"));
    }

    #[test]
    fn requested_addresses() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::Sequential);
        let r = s.allocate(&att("c1", "eth0"), &[ip("10.0.0.5")]).unwrap();
        assert_eq!(r[0].address.ip(), ip("10.0.0.5"));
        assert_eq!(
            fs::read_to_string(s.dir().join("last_reserved_ip.0")).unwrap(),
            "10.0.0.5"
        );
        // Taken, gateway, outside, two in one set: AddressUnavailable and nothing left reserved.
        for req in [
            vec![ip("10.0.0.5")],
            vec![ip("10.0.0.1")],
            vec![ip("10.9.0.1")],
            vec![ip("10.0.0.3"), ip("10.0.0.4")],
        ] {
            let e = s.allocate(&att("c2", "eth0"), &req).unwrap_err();
            assert!(
                matches!(e, IpamError::AddressUnavailable { .. }),
                "{req:?}: {e}"
            );
            assert!(s.find(&att("c2", "eth0")).unwrap().is_empty());
        }
        // Requested v6 taken after v4 succeeded: the v4 one is rolled back.
        s.allocate(&att("c3", "eth0"), &[ip("fd00::6")]).unwrap();
        let e = s
            .allocate(&att("c4", "eth0"), &[ip("10.0.0.2"), ip("fd00::6")])
            .unwrap_err();
        assert!(matches!(e, IpamError::AddressUnavailable { .. }));
        assert!(!s.dir().join("10.0.0.2").exists());
        let u = s.usage().unwrap();
        assert_eq!((u[0].allocated, u[1].allocated), (2, 2));
    }

    #[test]
    fn exhaustion_and_rollback() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(
            d.path(),
            "n",
            sets(serde_json::json!([[{"subnet": "10.0.0.0/30"}], [{"subnet": "10.1.0.0/29"}]])),
            Strategy::DensePack,
        )
        .unwrap();
        s.allocate(&att("a", "eth0"), &[]).unwrap();
        let e = s.allocate(&att("b", "eth0"), &[]).unwrap_err();
        assert!(
            matches!(e, IpamError::PoolExhausted { range_set: 0, .. }),
            "{e}"
        );
        let e = s
            .allocate(&att("b", "eth0"), &[ip("10.1.0.5")])
            .unwrap_err();
        assert!(matches!(e, IpamError::PoolExhausted { .. }));
        assert!(!s.dir().join("10.1.0.5").exists(), "rolled back");
        assert_eq!(s.usage().unwrap()[1].allocated, 1);
    }

    #[test]
    fn allocate_fresh_tells_a_first_add_from_a_repeated_one() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::Sequential);
        let (first, fresh) = s.allocate_fresh(&att("a", "eth0"), &[]).unwrap();
        assert!(fresh);
        let (again, fresh) = s.allocate_fresh(&att("a", "eth0"), &[]).unwrap();
        assert!(!fresh, "a repeated ADD must not be reported fresh");
        assert_eq!(first, again);
        s.release(&att("a", "eth0")).unwrap();
        assert!(s.allocate_fresh(&att("a", "eth0"), &[]).unwrap().1);
    }

    #[test]
    fn legacy_files_and_gc() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::DensePack);
        let dir = s.dir().to_path_buf();
        fs::write(dir.join("10.0.0.3"), "old").unwrap(); // legacy, foreign writer
        fs::write(dir.join("10.0.0.4"), "").unwrap(); // a crashed writer's empty file
        s.allocate(&att("x", "eth0"), &[]).unwrap();
        assert_eq!(
            s.find(&att("old", "eth9")).unwrap()[0].address.ip(),
            ip("10.0.0.3")
        );
        assert_eq!(
            s.release(&att("old", "eth9")).unwrap(),
            vec![ip("10.0.0.3")]
        );
        fs::write(dir.join("10.0.0.5"), "y").unwrap();
        s.allocate(&att("z", "eth0"), &[]).unwrap();
        let mut g = s.gc(&[att("x", "eth0"), att("y", "eth3")]).unwrap();
        g.sort();
        // z's addresses, and the empty file nobody can ever release otherwise
        let z = Some(att("z", "eth0"));
        assert_eq!(
            g,
            vec![
                (ip("10.0.0.3"), z.clone()),
                (ip("10.0.0.4"), None),
                (ip("fd00::3"), z)
            ]
        );
        assert!(!dir.join("10.0.0.4").exists());
        assert!(dir.join("10.0.0.5").exists() && dir.join("10.0.0.2").exists());
        assert!(s.find(&att("z", "eth0")).unwrap().is_empty());
        assert_eq!(s.usage().unwrap()[0].allocated, 2);
    }

    #[test]
    fn foreign_changes_and_damaged_index_are_repaired() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::DensePack);
        let dir = s.dir().to_path_buf();
        s.allocate(&att("a", "eth0"), &[]).unwrap(); // .2
        // A foreign writer reserves .3 and releases a's .2 behind our back.
        fs::write(dir.join("10.0.0.3"), "f\r\neth0").unwrap();
        fs::remove_file(dir.join("10.0.0.2")).unwrap();
        assert!(
            s.find(&att("a", "eth0"))
                .unwrap()
                .iter()
                .all(|r| r.range_set == 1)
        );
        assert_eq!(
            s.find(&att("f", "eth0")).unwrap()[0].address.ip(),
            ip("10.0.0.3")
        );
        let b = s.allocate(&att("b", "eth0"), &[]).unwrap();
        assert_eq!(b[0].address.ip(), ip("10.0.0.2"));
        // Deleting the whole index, or corrupting it, is repaired.
        fs::remove_dir_all(dir.join(INDEX_DIR)).unwrap();
        assert_eq!(s.find(&att("b", "eth0")).unwrap(), b);
        fs::write(dir.join(INDEX_DIR).join(INDEX_FILE), b"garbage").unwrap();
        assert_eq!(s.usage().unwrap()[0].allocated, 2);
        let name = att_name(&("b".into(), "eth0".into()));
        fs::write(
            dir.join(INDEX_DIR).join(ATT_DIR).join(name),
            b"\0headcni-att 1\nb\neth0\n10.0.0.6\n",
        )
        .unwrap();
        assert_eq!(s.find(&att("b", "eth0")).unwrap(), b);
        // A stale index (fresh stamps, old content) that thinks a taken address is free only
        // costs a retry: the O_EXCL create fails, the address is marked, the next one is used,
        // and the index is flagged so that the next operation rebuilds.
        s.release(&att("b", "eth0")).unwrap();
        {
            let l = s.lock().unwrap();
            let stale = s.state(&l).unwrap();
            fs::write(dir.join("10.0.0.2"), "g\r\neth0").unwrap();
            s.commit(&l, &stale).unwrap();
            assert!(s.load_index(&l).unwrap().is_some());
        }
        let c = s.allocate(&att("c", "eth0"), &[]).unwrap();
        assert_eq!(c[0].address.ip(), ip("10.0.0.4"));
        assert!(
            s.load_index(&s.lock().unwrap()).unwrap().is_none(),
            "suspect state forces a rebuild"
        );
        assert_eq!(
            s.find(&att("g", "eth0")).unwrap()[0].address.ip(),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn huge_ipv6_set_uses_sparse_index() {
        let d = tempfile::tempdir().unwrap();
        for strat in [Strategy::Sequential, Strategy::Random, Strategy::DensePack] {
            let sets = sets(serde_json::json!([[{"subnet": "fd00:1::/64"}]]));
            let s = Store::open(d.path(), &format!("{strat:?}"), sets, strat)
                .unwrap()
                .with_seed(3);
            let mut seen = BTreeSet::new();
            for i in 0..20 {
                let r = s.allocate(&att(&format!("c{i}"), "eth0"), &[]).unwrap();
                assert!(seen.insert(r[0].address.ip()));
                assert_eq!(r[0].address.prefix(), 64);
            }
            s.release(&att("c3", "eth0")).unwrap();
            let st = s
                .load_index(&s.lock().unwrap())
                .unwrap()
                .expect("index is current");
            assert!(matches!(st.pools[0], Pool::Sparse(_)));
            assert_eq!(st.pools[0].allocated(), 19);
            assert_eq!(s.usage().unwrap()[0].size, (1u128 << 64) - 2);
            if strat == Strategy::Sequential {
                assert!(seen.contains(&ip("fd00:1::2")) && seen.contains(&ip("fd00:1::15")));
            }
            if strat == Strategy::DensePack {
                assert_eq!(
                    s.allocate(&att("n", "eth0"), &[]).unwrap()[0].address.ip(),
                    ip("fd00:1::5")
                );
            }
        }
    }

    #[test]
    fn at_helpers_never_follow_block_or_overread() {
        let d = tempfile::tempdir().unwrap();
        let dir = File::open(d.path()).unwrap();
        fs::write(d.path().join("target"), "precious").unwrap();
        std::os::unix::fs::symlink(d.path().join("target"), d.path().join("link")).unwrap();
        nix::unistd::mkfifo(&d.path().join("fifo"), FILE_MODE).unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("big"), [b'x'; 11]).unwrap();
        assert_eq!(
            read_at(&dir, "target", 8).unwrap().as_deref(),
            Some(&b"precious"[..])
        );
        assert_eq!(read_at(&dir, "missing", 8).unwrap(), None);
        for bad in ["link", "fifo", "sub", "big"] {
            let e = read_at(&dir, bad, 10).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{bad}: {e}");
        }
        // A non-directory in place of an index directory is removed (a link, not its
        // target) and replaced; a real directory is kept.
        for name in ["link", "fifo", "big"] {
            ensure_dir_at(&dir, name).unwrap();
            assert!(fs::symlink_metadata(d.path().join(name)).unwrap().is_dir());
        }
        fs::write(d.path().join("sub").join("f"), "x").unwrap();
        ensure_dir_at(&dir, "sub").unwrap();
        assert!(d.path().join("sub").join("f").exists());
        assert_eq!(fs::read(d.path().join("target")).unwrap(), b"precious");
        // Temp names are unpredictable and never reused.
        let (a, _) = create_tmp_at(&dir).unwrap();
        let (b, _) = create_tmp_at(&dir).unwrap();
        assert!(a.starts_with(".tmp.") && a != b);
    }

    #[test]
    fn non_regular_reservation_entries_count_as_taken() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), Strategy::Sequential);
        let victim = d.path().join("victim");
        fs::write(&victim, "x\r\neth0").unwrap();
        std::os::unix::fs::symlink(&victim, s.dir().join("10.0.0.2")).unwrap();
        nix::unistd::mkfifo(&s.dir().join("10.0.0.3"), FILE_MODE).unwrap();
        s.rebuild().unwrap();
        assert_eq!(s.usage().unwrap()[0].allocated, 2);
        // Never read for their owner: the link's target does not make "x" an owner.
        assert!(s.find(&att("x", "eth0")).unwrap().is_empty());
        let r = s.allocate(&att("c", "eth0"), &[]).unwrap();
        assert_eq!(r[0].address.ip(), ip("10.0.0.4"));
        // GC leaves entries it cannot attribute.
        assert!(s.gc(&[]).unwrap().iter().all(|(i, _)| *i != ip("10.0.0.2")));
        assert!(fs::symlink_metadata(s.dir().join("10.0.0.2")).is_ok());
        assert_eq!(fs::read(&victim).unwrap(), b"x\r\neth0");
    }

    #[test]
    fn bad_network_names() {
        let d = tempfile::tempdir().unwrap();
        for n in ["", ".", "..", "a/b"] {
            assert!(matches!(
                Store::open(
                    d.path(),
                    n,
                    sets(serde_json::json!([[{"subnet": "10.0.0.0/29"}]])),
                    Strategy::Sequential
                ),
                Err(IpamError::Config(_))
            ));
        }
    }
}
