//! Named namespaces and the setns-before-exec helper (run as root).

use std::path::Path;
use std::process::Stdio;

use headcni_netlink::netns as nl;
use headcni_testkit::Ns;
use headcni_testkit::netns::{self, NetnsError, Target, enter_on_exec};

#[test]
fn create_exists_delete_named() {
    let name = format!("hctk-named-{}", std::process::id());
    let ns = Ns::named(&name);
    assert!(ns.path.starts_with(netns::NETNS_RUN_DIR));
    assert!(nl::exists(&ns.path));
    // Usable by iproute2 afterwards.
    assert!(ns.succeeds(&["ip", "link", "show", "lo"]));
    assert!(matches!(
        netns::create_named(&name),
        Err(NetnsError::AlreadyExists(_))
    ));
    netns::delete_named(&name).expect("delete");
    assert!(!nl::exists(&ns.path));
    assert!(!ns.path.exists());
    // Deleting again is fine (and so is the fixture's drop).
    netns::delete_named(&name).expect("delete twice");
}

#[test]
fn a_child_enters_the_namespace_before_exec() {
    let ns = Ns::new("tk", "exec");
    let want = std::fs::read_link(&ns.path)
        .ok()
        .or_else(|| ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").ok()))
        .expect("netns identity");
    let (mut cmd, fds) = ns.command("readlink");
    let out = cmd
        .arg("/proc/self/ns/net")
        .stdout(Stdio::piped())
        .output()
        .expect("readlink");
    drop(fds);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.to_string_lossy()
    );
    // The caller did not move.
    assert!(nl::is_current("/proc/thread-self/ns/net").expect("thread-self"));
    // A missing namespace file is an error before the fork.
    let mut cmd = std::process::Command::new("true");
    assert!(enter_on_exec(&mut cmd, &Target::net(Path::new("/run/netns/hctk-none"))).is_err());
}
