//! Namespace helpers and namespace-bound handles (run as root).

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::TestNs;
use headcni_core::link::{LinkError, LinkManager};
use headcni_netlink::{NetlinkHandle, NetnsError, netns};

fn read_sysctl(ns: &TestNs, path: &'static str) -> String {
    netns::run_in_netns(&ns.path, move || std::fs::read_to_string(path))
        .expect("enter netns")
        .expect("read sysctl")
        .trim()
        .to_owned()
}

#[test]
fn paths_that_are_not_network_namespaces() {
    assert!(!netns::exists("/nonexistent/hcnl"));
    // A regular file and a mount namespace are not network namespaces.
    assert!(!netns::exists("/proc/self/status"));
    assert!(!netns::exists("/proc/self/ns/mnt"));
    assert!(netns::exists("/proc/self/ns/net"));
    let ns = TestNs::new("named");
    assert!(netns::exists(&ns.path));
    assert!(matches!(
        netns::run_in_netns("/proc/self/ns/mnt", || ()),
        Err(NetnsError::Invalid { .. })
    ));
}

#[test]
fn is_current_distinguishes_namespaces() {
    let ns = TestNs::new("cur");
    assert!(netns::is_current("/proc/self/ns/net").expect("self"));
    assert!(netns::is_current(format!("/proc/{}/ns/net", std::process::id())).expect("pid"));
    assert!(!netns::is_current(&ns.path).expect("test ns"));
    // Inside the test namespace the thread's own netns is the test one, not the process's.
    let inside = netns::run_in_netns(&ns.path, || {
        netns::is_current("/proc/thread-self/ns/net").expect("thread-self")
    })
    .expect("run");
    assert!(!inside);
    assert!(matches!(
        netns::is_current("/nonexistent/hcnl"),
        Err(NetnsError::Invalid { .. })
    ));
    assert!(matches!(
        netns::is_current("/proc/self/status"),
        Err(NetnsError::Invalid { .. })
    ));
}

#[test]
fn run_in_netns_leaves_caller_thread_alone() {
    let ns = TestNs::new("run");
    let before = std::fs::read_link("/proc/thread-self/ns/net").expect("readlink");
    let inside = netns::run_in_netns(&ns.path, || {
        std::fs::read_link("/proc/thread-self/ns/net").expect("readlink")
    })
    .expect("run");
    let after = std::fs::read_link("/proc/thread-self/ns/net").expect("readlink");
    assert_eq!(before, after);
    assert_ne!(before, inside);
    // /proc/self/net follows the process (thread-group leader); /proc/thread-self/net
    // follows the thread that entered the namespace.
    let lo = netns::run_in_netns(&ns.path, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev")
    })
    .expect("run");
    assert!(lo.contains("lo:"));
    assert_eq!(lo.lines().count(), 3, "fresh netns has only lo: {lo}");
}

#[tokio::test(flavor = "current_thread")]
async fn for_netns_on_deleted_or_bogus_path_is_netns_error() {
    let ns = TestNs::new("gone");
    let path = ns.path.clone();
    drop(ns);
    match NetlinkHandle::for_netns(&path).await {
        Err(LinkError::Netns { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Netns error, got {other:?}"),
    }
    assert!(matches!(
        NetlinkHandle::for_netns(Path::new("/proc/self/status")).await,
        Err(LinkError::Netns { .. })
    ));
    assert!(matches!(
        NetlinkHandle::for_netns(Path::new("/proc/self/ns/uts")).await,
        Err(LinkError::Netns { .. })
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn handle_is_bound_to_its_namespace() {
    let ns = TestNs::new("bound");
    let h = NetlinkHandle::for_netns(&ns.path).await.expect("handle");
    assert_eq!(h.netns_path(), Some(ns.path.as_path()));
    let lo = h.link("lo").await.expect("link").expect("lo exists");
    assert_eq!(lo.index, 1);
    assert!(!lo.up, "lo of a fresh netns is down");
    assert!(h.link("eth0").await.expect("link").is_none());
    // The calling thread is still in the process's namespace.
    assert!(netns::is_current("/proc/thread-self/ns/net").expect("thread-self"));
}

#[tokio::test(flavor = "current_thread")]
async fn enable_forwarding_in_test_netns_only() {
    let host_v4 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    let ns = TestNs::new("fwd");
    // A new namespace inherits the host's IPv4 forwarding setting (which a container runtime
    // on this machine may have switched on): start from off.
    netns::run_in_netns(&ns.path, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0")
    })
    .expect("enter netns")
    .expect("write sysctl");
    assert_eq!(read_sysctl(&ns, "/proc/sys/net/ipv4/ip_forward"), "0");
    let h = NetlinkHandle::for_netns(&ns.path).await.expect("handle");
    h.enable_forwarding(true, true).await.expect("enable");
    assert_eq!(read_sysctl(&ns, "/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(
        read_sysctl(&ns, "/proc/sys/net/ipv6/conf/all/forwarding"),
        "1"
    );
    // Idempotent.
    h.enable_forwarding(true, true).await.expect("enable again");
    // The host's value is untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read"),
        host_v4
    );
}

/// Issue 8 item 6: a FIFO as the namespace path must be refused at once, not block in
/// `open(2)` waiting for a writer. A watchdog turns a hang on old code into a failure.
#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("hcnl-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir");
    let fifo = dir.join("netns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let current = netns::is_current(&path).map_err(|e| e.to_string());
        let exists = netns::exists(&path);
        let run = netns::run_in_netns(&path, || ()).is_err();
        let handle = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(NetlinkHandle::for_netns(&path))
            .err()
            .map(|e| matches!(e, LinkError::Netns { .. }));
        let _ = tx.send((current, exists, run, handle));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(10));
    if got.is_err() {
        // unblock the stuck opener so the process can exit, then fail
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (current, exists, run, handle) = got.expect("opening a FIFO as a netns hung");
    assert!(current.is_err_and(|e| e.contains("not a namespace file")));
    assert!(!exists);
    assert!(run, "run_in_netns accepted a FIFO");
    assert_eq!(
        handle,
        Some(true),
        "for_netns must refuse a FIFO with LinkError::Netns"
    );
}
