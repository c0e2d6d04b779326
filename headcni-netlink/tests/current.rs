//! `NetlinkHandle::current()` exercised on a dedicated thread that has entered a test
//! namespace (so "current" is the test namespace, never the real host's), runtime
//! requirements, and EPERM reporting (run as root).

mod common;

use common::TestNs;
use headcni_core::link::{BridgeSpec, LinkError, LinkManager};
use headcni_netlink::{NetlinkHandle, netns};

fn bridge(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.to_owned(),
        mtu: None,
        addresses: vec!["198.51.100.1/24".parse().expect("net")],
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn current_handle_on_a_thread_inside_a_test_netns() {
    let ns = TestNs::new("current");
    let forward = netns::run_in_netns(&ns.path, || {
        current_thread_runtime().block_on(async {
            let h = NetlinkHandle::current().await.expect("handle");
            assert_eq!(h.netns_path(), None);
            let br = h.ensure_bridge(&bridge("hcbr0")).await.expect("bridge");
            assert!(br.up);
            h.enable_forwarding(true, false).await.expect("forwarding");
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read")
        })
    })
    .expect("run");
    assert_eq!(forward.trim(), "1");
    // The bridge exists in the test namespace, seen through a handle opened by path.
    let rt = current_thread_runtime();
    rt.block_on(async {
        let h = NetlinkHandle::for_netns(&ns.path).await.expect("handle");
        assert!(h.link("hcbr0").await.expect("get").is_some());
    });
}

#[test]
fn no_tokio_runtime_is_an_error_not_a_panic() {
    let r = futures::executor::block_on(NetlinkHandle::current());
    assert!(matches!(r, Err(LinkError::Io { .. })), "{r:?}");
}

/// Drops `CAP_NET_ADMIN` from the calling thread's effective set (raw `capset(2)`, which
/// affects only this thread).
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and a two-element data array as capget/capset(2) v3 require.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &header, data.as_ptr()), 0);
    }
}

#[test]
fn eperm_is_reported_with_the_operation() {
    let ns = TestNs::new("eperm");
    let err = netns::run_in_netns(&ns.path, || {
        drop_net_admin();
        current_thread_runtime().block_on(async {
            let h = NetlinkHandle::current().await.expect("handle");
            h.ensure_bridge(&bridge("hcbr0")).await
        })
    })
    .expect("run");
    match err {
        Err(LinkError::Netlink { op, reason }) => {
            assert!(op.contains("hcbr0"), "{op}");
            assert!(reason.contains("EPERM"), "{reason}");
        }
        other => panic!("expected EPERM, got {other:?}"),
    }
}
