//! The on-disk file format shared with host-local (`backend/disk`): reservation files named
//! by the address with `<containerID>\r\n<ifname>` content ([`Owner`]), `last_reserved_ip.<i>`
//! and `lock`; and the store's operations on them, relative to the network directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;

use headcni_core::ipam::{Attachment, IpamError};
use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::unistd::linkat;

use super::dirfd::{AT_FLAGS, FILE_MODE, create_tmp_at, list_at, read_at, unlink_at};
use super::txn::Locked;
use super::{Store, io_err};

pub(super) const LOCK_FILE: &str = "lock";
pub(super) const LAST_IP_PREFIX: &str = "last_reserved_ip.";

/// Largest reservation file read, in bytes: above Linux's limit of one environment string
/// (`MAX_ARG_STRLEN`, 128 KiB), so every `CNI_CONTAINERID` fits; a larger file is unparseable.
pub const MAX_RESERVATION_BYTES: u64 = 256 * 1024;
/// `last_reserved_ip.<i>` holds one address (at most 45 characters plus whitespace).
pub(super) const MAX_LAST_IP_BYTES: u64 = 128;

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

    pub(super) fn key(&self) -> (String, String) {
        match self {
            Owner::Full { cid, ifname } => (cid.clone(), ifname.clone()),
            Owner::Legacy(cid) => (cid.clone(), String::new()),
        }
    }
}

/// Result of a directory scan: every reservation file and its owner (`None`: unparseable).
pub(super) type Scan = BTreeMap<IpAddr, Option<Owner>>;

/// Reservation files.
impl Store {
    /// Every reservation-named entry of the network directory and its owner. An entry that
    /// is not a regular file (a symlink, FIFO, directory) occupies its address (an `O_EXCL`
    /// reservation of it would fail) but is never opened: its owner is `None`.
    pub(super) fn scan(&self) -> Result<Scan, IpamError> {
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

    /// The `O_CREAT|O_EXCL` reservation. `Ok(false)` when the file exists.
    /// Reserves `ip` by making `<dir>/<ip>` appear *with its content*: the content is written
    /// to a temp file in the index directory, which is then hard-linked to the final name.
    /// `link(2)` fails with EEXIST when the name exists, so this keeps `O_EXCL` semantics
    /// against every writer (host-local included), and a crash can never leave an empty
    /// reservation file that no DEL or GC would match (at worst a stray temp file, removed by
    /// the next rebuild). `Ok(false)` when the address is taken.
    pub(super) fn reserve_file(
        &self,
        l: &Locked,
        ip: IpAddr,
        content: &str,
    ) -> Result<bool, IpamError> {
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
    pub(super) fn is_empty_reservation(&self, ip: IpAddr) -> bool {
        matches!(read_at(&self.fd, &ip.to_string(), 0), Ok(Some(c)) if c.is_empty())
    }

    pub(super) fn unlink(&self, ip: IpAddr) -> Result<(), IpamError> {
        let name = ip.to_string();
        unlink_at(&self.fd, &name).map_err(|e| io_err(&self.dir.join(name), e))
    }

    /// Records `ip` in `last_reserved_ip.<set>` in place, as host-local does, but never
    /// through a symlink and never blocking on a FIFO: an entry that is not a regular file is
    /// removed and a regular file created in its place.
    pub(super) fn write_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
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
    pub(super) fn last_reserved(&self, set: usize) -> Option<u128> {
        let name = format!("{LAST_IP_PREFIX}{set}");
        let c = read_at(&self.fd, &name, MAX_LAST_IP_BYTES).ok().flatten()?;
        let ip: IpAddr = std::str::from_utf8(&c).ok()?.trim().parse().ok()?;
        self.sets[set].resume_position(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str, i: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: i.into(),
        }
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
}
