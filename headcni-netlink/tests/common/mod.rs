//! Shared helpers for the privileged netlink tests: uniquely named namespaces removed on
//! drop (also when a test panics; the fixture is headcni-testkit's [`Ns`]), and `ip netns
//! exec` wrappers.

#![allow(dead_code)]

use std::ops::Deref;
use std::process::Command;

use headcni_netlink::netns;
use headcni_testkit::Ns;

/// A named network namespace `/run/netns/hcnl-<tag>-<pid>`, deleted on drop.
pub struct TestNs(Ns);

impl TestNs {
    /// Creates `hcnl-<tag>-<pid>`; `tag` must be unique per test.
    pub fn new(tag: &str) -> TestNs {
        TestNs(Ns::named(&format!("hcnl-{tag}-{}", std::process::id())))
    }

    /// Runs `ip netns exec <name> <args...>` and returns whether it succeeded.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        self.0.succeeds(args)
    }

    /// Output of `ip netns exec <name> <args...>` (stdout).
    pub fn exec_out(&self, args: &[&str]) -> String {
        self.0.stdout(args)
    }
}

impl Deref for TestNs {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.0
    }
}

/// Whether `ping` (iputils) is installed.
pub fn have_ping_binary() -> bool {
    Command::new("ping")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One ICMP echo from inside `ns` to `dst`: `ip netns exec <ns> ping -c1 -W1 <dst>` when
/// iputils is installed, otherwise an in-process raw-socket echo on a thread inside `ns`.
pub fn ping_once(ns: &TestNs, dst: &str) -> bool {
    if have_ping_binary() {
        return ns.exec_ok(&["ping", "-c1", "-W1", dst]);
    }
    raw_ping(ns, dst)
}

/// One in-process ICMP / ICMPv6 echo ([`headcni_testkit::icmp::ping`]) on a thread inside
/// `ns`; waits up to 1 s for the reply.
pub fn raw_ping(ns: &TestNs, dst: &str) -> bool {
    let Ok(ip) = dst.parse::<std::net::IpAddr>() else {
        return false;
    };
    netns::run_in_netns(&ns.path, move || {
        headcni_testkit::icmp::ping(ip, std::time::Duration::from_secs(1)).unwrap_or(false)
    })
    .unwrap_or(false)
}
