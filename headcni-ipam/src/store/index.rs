//! The `.headcni/` index codec: att file names and contents, and the `index` file (per
//! range set a bitmap or run list of allocated positions, a configuration fingerprint, the
//! directory stamps, a FNV-1a checksum). Pure functions; the store reads and writes them
//! under its lock ([`super::txn`]).

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use headcni_core::ipam::{IpRange, IpamError, PoolView, RangeSet};

use super::io_err;
use crate::pool::{DensePool, Pool, SparsePool};

/// Name of HeadCNI's index directory inside the network directory.
pub const INDEX_DIR: &str = ".headcni";
pub(super) const ATT_DIR: &str = "att";
pub(super) const INDEX_FILE: &str = "index";
const INDEX_MAGIC: &[u8] = b"\0HEADCNI-IPAM-INDEX-1\n";
const ATT_MAGIC: &str = "\0headcni-att 1";
pub(super) const MAX_ATT_BYTES: u64 = 1024 * 1024;
pub(super) const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

fn fnv1a(data: &[u8]) -> u64 {
    headcni_core::hash::fnv1a64(data.iter().copied())
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

pub(super) fn att_name(key: &(String, String)) -> String {
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

pub(super) fn att_content(key: &(String, String), ips: &[IpAddr]) -> String {
    let mut s = format!("{ATT_MAGIC}\n{}\n{}\n", enc(&key.0), enc(&key.1));
    for ip in ips {
        s.push_str(&ip.to_string());
        s.push('\n');
    }
    s
}

pub(super) fn parse_att(content: &[u8]) -> Option<((String, String), Vec<IpAddr>)> {
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
pub(super) struct Stamp {
    pub(super) ino: u64,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// The stamp of the open directory `dir` (`fstat`); `path` names it in errors.
    pub(super) fn of(dir: &File, path: &Path) -> Result<Stamp, IpamError> {
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

/// A little-endian cursor over index bytes.
pub(super) struct Reader<'a>(&'a [u8]);

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

/// Encodes the `index` file: magic, the stamps of the network directory and of `.headcni/att`
/// (all zero when `None`: an index that is never current, so the next operation rebuilds),
/// the number of sets, per set its fingerprint, length and pool (`0` + bitmap words or `1` +
/// runs, little-endian), then the FNV-1a checksum of everything before it.
pub(super) fn encode_index(
    sets: &[RangeSet],
    pools: &[Pool],
    stamps: Option<(Stamp, Stamp)>,
) -> Vec<u8> {
    let mut o = INDEX_MAGIC.to_vec();
    let (a, b) = stamps.unwrap_or_default();
    a.put(&mut o);
    b.put(&mut o);
    o.extend_from_slice(&(sets.len() as u64).to_le_bytes());
    for (set, pool) in sets.iter().zip(pools) {
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

/// The first half of decoding an `index` file: checks its checksum and magic and reads the
/// two stamps (network directory, `.headcni/att`). The caller compares them with the
/// directories before [`decode_pools`] reads the rest. `None` when the file is damaged.
pub(super) fn decode_stamps(data: &[u8]) -> Option<(Stamp, Stamp, Reader<'_>)> {
    let body_len = data.len().checked_sub(8)?;
    let (body, sum) = data.split_at(body_len);
    let ok_sum = sum.try_into().ok().map(u64::from_le_bytes) == Some(fnv1a(body));
    if !ok_sum || !body.starts_with(INDEX_MAGIC) {
        return None;
    }
    let mut r = Reader(&body[INDEX_MAGIC.len()..]);
    let (Some(sd), Some(sa)) = (Stamp::get(&mut r), Stamp::get(&mut r)) else {
        return None;
    };
    Some((sd, sa, r))
}

/// The second half: the pools of `sets` from the rest of the file. `None` when the set
/// count, a fingerprint or a length does not match `sets`, or the data is damaged or has
/// trailing bytes.
pub(super) fn decode_pools(mut r: Reader<'_>, sets: &[RangeSet]) -> Option<Vec<Pool>> {
    if r.u64() != Some(sets.len() as u64) {
        return None;
    }
    let mut pools = Vec::with_capacity(sets.len());
    for set in sets {
        let (Some(fp), Some(len), Some(kind), Some(n)) = (r.u64(), r.u128(), r.u8(), r.u64())
        else {
            return None;
        };
        if fp != set_fingerprint(set) || len != set.len() {
            return None;
        }
        let pool = match kind {
            0 => {
                let mut w = Vec::new();
                for _ in 0..n {
                    w.push(r.u64()?);
                }
                Pool::Dense(
                    u64::try_from(len)
                        .ok()
                        .and_then(|l| DensePool::from_words(l, w))?,
                )
            }
            1 => {
                let mut runs = Vec::new();
                for _ in 0..n {
                    let (Some(a), Some(b)) = (r.u128(), r.u128()) else {
                        return None;
                    };
                    runs.push((a, b));
                }
                Pool::Sparse(SparsePool::from_runs(len, &runs)?)
            }
            _ => return None,
        };
        pools.push(pool);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
}
