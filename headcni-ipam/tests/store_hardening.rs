//! Issue 8 items 4 and 6b: nothing planted in the store directory (a symlink, a FIFO) is
//! followed, overwritten through, deleted through, or blocks an operation under the lock.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use headcni_core::ipam::{Attachment, IpamConf, IpamError, IpamStore, Strategy};
use headcni_ipam::Store;
use headcni_ipam::store::INDEX_DIR;
use nix::sys::stat::Mode;

const NET: &str = "net";

fn att(c: &str) -> Attachment {
    Attachment {
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

fn open(data: &Path) -> Store {
    let sets = IpamConf::parse(&serde_json::json!({
        "type": "headcni-ipam",
        "ranges": [[{"subnet": "10.0.0.0/28"}]]
    }))
    .and_then(|c| c.range_sets(&[]))
    .expect("config");
    Store::open(data, NET, sets, Strategy::Sequential)
        .expect("open store")
        .with_seed(1)
}

fn ip_of(s: &Store, a: &Attachment) -> Vec<IpAddr> {
    s.find(a)
        .expect("find")
        .iter()
        .map(|r| r.address.ip())
        .collect()
}

/// A directory of files that must survive: `name → content`.
struct Victim {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<(PathBuf, &'static [u8])>,
}

impl Victim {
    fn new(names: &[&str]) -> Victim {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("victim");
        let mut files = Vec::new();
        for n in names {
            let p = dir.join(n);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, b"precious").expect("write victim");
            files.push((p, &b"precious"[..]));
        }
        Victim {
            _tmp: tmp,
            dir,
            files,
        }
    }

    fn assert_intact(&self) {
        for (p, content) in &self.files {
            let got = fs::read(p).unwrap_or_else(|e| panic!("{} is gone: {e}", p.display()));
            assert!(
                &got == content,
                "{} was overwritten with {:?}",
                p.display(),
                String::from_utf8_lossy(&got)
            );
        }
    }
}

/// Runs `f` on another thread; panics when it has not returned within `limit` (a hung
/// operation; the thread is left behind and dies with the test process).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}: it blocked"))
}

#[test]
fn symlinked_index_dir_is_replaced_and_its_target_untouched() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    s.allocate(&att("a"), &[]).expect("allocate a");
    // The target has what a rebuild through the link would write, delete or clean up.
    let victim = Victim::new(&["index", "att/precious", ".tmp.precious", "other"]);
    let idx = s.dir().join(INDEX_DIR);
    fs::remove_dir_all(&idx).expect("rm .headcni");
    symlink(&victim.dir, &idx).expect("plant .headcni symlink");

    s.rebuild().expect("rebuild");
    let b = s.allocate(&att("b"), &[]).expect("allocate b");
    s.release(&att("a")).expect("release a");

    victim.assert_intact();
    assert!(
        fs::symlink_metadata(&idx).expect("stat").is_dir(),
        ".headcni is a real directory again"
    );
    assert!(!victim.dir.join("att").join("a-b+eth0").exists());
    assert_eq!(ip_of(&s, &att("b")), vec![b[0].address.ip()]);
    assert!(ip_of(&s, &att("a")).is_empty());
}

#[test]
fn symlinked_att_dir_is_replaced_and_its_target_untouched() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    let a = s.allocate(&att("a"), &[]).expect("allocate a");
    let victim = Victim::new(&["one", "two", "a-a+eth0"]);
    let att_dir = s.dir().join(INDEX_DIR).join("att");
    fs::remove_dir_all(&att_dir).expect("rm att");
    symlink(&victim.dir, &att_dir).expect("plant att symlink");

    s.rebuild().expect("rebuild");
    assert_eq!(ip_of(&s, &att("a")), vec![a[0].address.ip()]);
    s.allocate(&att("b"), &[]).expect("allocate b");

    victim.assert_intact();
    assert!(fs::symlink_metadata(&att_dir).expect("stat").is_dir());
}

#[test]
fn planted_temp_name_symlinks_are_never_written_through() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    s.allocate(&att("a"), &[]).expect("allocate a");
    let victim = Victim::new(&["target"]);
    let target = &victim.files[0].0;
    // Every temp name a writer of this process could pick next in `.headcni/` (the old
    // scheme was `.tmp.<pid>.<counter>`); `.headcni/`'s own stamp is not part of the index,
    // so the index stays current and no rebuild cleans them up first.
    let idx = s.dir().join(INDEX_DIR);
    for n in 0..4096 {
        symlink(target, idx.join(format!(".tmp.{}.{n}", std::process::id()))).expect("plant");
    }

    s.release(&att("a")).expect("release a (commits the index)");
    victim.assert_intact();
    let b = s
        .allocate(&att("b"), &[])
        .expect("allocate b (temp file per reservation)");
    victim.assert_intact();
    assert_eq!(ip_of(&s, &att("b")), vec![b[0].address.ip()]);
    // Temp files are created with unpredictable names and O_EXCL, so the planted links are
    // simply left for the next rebuild, which removes the links (not their target).
    s.rebuild().expect("rebuild");
    victim.assert_intact();
    assert!(
        fs::read_dir(&idx)
            .expect("readdir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp."))
    );
}

#[test]
fn lock_symlink_is_refused_not_followed() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    s.allocate(&att("a"), &[]).expect("allocate a");
    let victim = Victim::new(&["existing"]);
    let lock = s.dir().join("lock");
    for target in [
        victim.dir.join("created-through-link"),
        victim.files[0].0.clone(),
    ] {
        fs::remove_file(&lock).expect("rm lock");
        symlink(&target, &lock).expect("plant lock symlink");
        let e = s
            .allocate(&att("b"), &[])
            .expect_err("a symlinked lock is refused");
        assert!(matches!(e, IpamError::Store { .. }), "{e}");
        assert!(
            !victim.dir.join("created-through-link").exists(),
            "the lock was created through the symlink"
        );
        victim.assert_intact();
    }
    // The operator removes the link: the store works again.
    fs::remove_file(&lock).expect("rm lock");
    s.allocate(&att("b"), &[]).expect("allocate b");
    assert!(fs::symlink_metadata(&lock).expect("stat").is_file());
}

#[test]
fn last_reserved_ip_symlink_is_replaced_not_written_through() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    s.allocate(&att("a"), &[]).expect("allocate a");
    let victim = Victim::new(&["target"]);
    let hint = s.dir().join("last_reserved_ip.0");
    fs::remove_file(&hint).expect("rm hint");
    symlink(&victim.files[0].0, &hint).expect("plant hint symlink");

    let b = s.allocate(&att("b"), &[]).expect("allocate b");

    victim.assert_intact();
    assert!(fs::symlink_metadata(&hint).expect("stat").is_file());
    assert_eq!(
        fs::read_to_string(&hint).expect("read hint"),
        b[0].address.ip().to_string()
    );
}

#[test]
fn fifo_as_last_reserved_ip_does_not_hang_add() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    s.allocate(&att("a"), &[]).expect("allocate a");
    let hint = s.dir().join("last_reserved_ip.0");
    fs::remove_file(&hint).expect("rm hint");
    nix::unistd::mkfifo(&hint, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");

    let r = within(Duration::from_secs(5), "ADD with a FIFO hint", move || {
        let r = s.allocate(&att("b"), &[]);
        (s, r)
    });
    let (s, b) = (r.0, r.1.expect("allocate b: the hint is only a hint"));
    // The hint was treated as absent (sequential from the start: .3 after a's .2) and
    // replaced by a regular file.
    assert_eq!(b[0].address.ip().to_string(), "10.0.0.3");
    assert!(fs::symlink_metadata(&hint).expect("stat").is_file());
    assert_eq!(ip_of(&s, &att("b")), vec![b[0].address.ip()]);
}

#[test]
fn fifos_in_the_index_do_not_hang_operations() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = open(data.path());
    let a = s.allocate(&att("a"), &[]).expect("allocate a");
    let idx = s.dir().join(INDEX_DIR);
    let att_file = fs::read_dir(idx.join("att"))
        .expect("readdir att")
        .flatten()
        .next()
        .expect("a's att file")
        .path();
    for p in [idx.join("index"), att_file] {
        fs::remove_file(&p).expect("rm");
        nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
    }

    let (s, found) = within(
        Duration::from_secs(5),
        "find with FIFOs in .headcni",
        move || {
            let r = s.find(&att("a"));
            (s, r)
        },
    );
    assert_eq!(found.expect("find a")[0].address, a[0].address);
    s.allocate(&att("b"), &[]).expect("allocate b");
}

#[test]
fn network_dir_symlink_is_refused_but_data_dir_symlinks_are_fine() {
    let data = tempfile::tempdir().expect("tempdir");
    let victim = Victim::new(&["file"]);
    symlink(&victim.dir, data.path().join(NET)).expect("plant network dir symlink");
    let sets = IpamConf::parse(&serde_json::json!({
        "type": "headcni-ipam", "ranges": [[{"subnet": "10.0.0.0/28"}]]
    }))
    .and_then(|c| c.range_sets(&[]))
    .expect("config");
    let e = Store::open(data.path(), NET, sets, Strategy::Sequential)
        .expect_err("the network directory must not be a symlink");
    assert!(matches!(e, IpamError::Store { .. }), "{e}");
    assert!(!victim.dir.join(INDEX_DIR).exists());
    victim.assert_intact();

    // A symlinked component of dataDir itself (/var/run → /run) is followed.
    let real = tempfile::tempdir().expect("tempdir");
    let link = data.path().join("run-link");
    symlink(real.path(), &link).expect("symlink data dir");
    let s = open(&link.join("sub"));
    s.allocate(&att("a"), &[])
        .expect("allocate through a symlinked dataDir");
    assert!(real.path().join("sub").join(NET).join("10.0.0.2").is_file());
}
