//! Shared helpers for the privileged netlink tests: uniquely named namespaces removed on
//! drop (also when a test panics), and `ip netns exec` wrappers.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use headcni_netlink::netns;

/// A named network namespace `/run/netns/hcnl-<tag>-<pid>`, deleted on drop.
pub struct TestNs {
    /// The `ip netns` name.
    pub name: String,
    /// `/run/netns/<name>`.
    pub path: PathBuf,
}

impl TestNs {
    /// Creates `hcnl-<tag>-<pid>`; `tag` must be unique per test.
    pub fn new(tag: &str) -> TestNs {
        let name = format!("hcnl-{tag}-{}", std::process::id());
        // A leftover from a crashed run that had the same pid.
        let _ = netns::delete_named(&name);
        let path = netns::create_named(&name).expect("create test netns");
        TestNs { name, path }
    }

    /// Runs `ip netns exec <name> <args...>` and returns whether it succeeded.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        if !out.status.success() {
            eprintln!(
                "ip netns exec {} {:?} failed: {}{}",
                self.name,
                args,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// Output of `ip netns exec <name> <args...>` (stdout).
    pub fn exec_out(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if let Err(e) = netns::delete_named(&self.name) {
            eprintln!("cleanup of netns {} failed: {e}", self.name);
        }
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

/// One in-process ICMP / ICMPv6 echo ([`headcni_netlink::icmp::ping`]) on a thread inside
/// `ns`; waits up to 1 s for the reply.
pub fn raw_ping(ns: &TestNs, dst: &str) -> bool {
    let Ok(ip) = dst.parse::<std::net::IpAddr>() else {
        return false;
    };
    netns::run_in_netns(&ns.path, move || {
        headcni_netlink::icmp::ping(ip, std::time::Duration::from_secs(1)).unwrap_or(false)
    })
    .unwrap_or(false)
}
