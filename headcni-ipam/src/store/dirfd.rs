//! fd-relative file operations below the network directory: `openat` & co. with
//! `O_NOFOLLOW|O_NONBLOCK`, regular files only, bounded reads (see "No path is followed below
//! the network directory" in the [store](super) documentation).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use headcni_core::ipam::IpamError;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::io_err;

/// Added to every open below the network directory: never follow the last component, never
/// block on a FIFO, never acquire a terminal, never leak into a child.
pub(super) const AT_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);
/// Mode of every file and directory the store creates (before the umask).
pub(super) const FILE_MODE: Mode = Mode::S_IRUSR.union(Mode::S_IWUSR);
pub(super) const DIR_MODE: Mode = Mode::S_IRWXU;

pub(super) fn not_regular() -> std::io::Error {
    std::io::Error::new(
        ErrorKind::InvalidData,
        "not a regular file (symlinks, FIFOs, devices and directories are refused)",
    )
}

/// Opens the directory `name` in `parent` without following a symlink.
pub(super) fn open_dir_at(parent: &File, name: &str) -> nix::Result<File> {
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
pub(super) fn ensure_dir_at(parent: &File, name: &str) -> nix::Result<File> {
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
pub(super) fn read_at(dir: &File, name: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
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
pub(super) fn create_tmp_at(dir: &File) -> std::io::Result<(String, File)> {
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
pub(super) fn unlink_at(dir: &File, name: &str) -> std::io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The entries of the directory `dir` (without `.` and `..`) and their types when the file
/// system reports them; names that are not UTF-8 are skipped (no store file has one).
pub(super) fn list_at(dir: &File) -> std::io::Result<Vec<(String, Option<Type>)>> {
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

/// Writes `data` to `name` in `dir` atomically (temporary file in `dir` + `renameat`,
/// which replaces a planted entry instead of following it); `path` names `dir` in errors.
pub(super) fn write_atomic(
    dir: &File,
    path: &Path,
    name: &str,
    data: &[u8],
) -> Result<(), IpamError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
}
