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

/// One in-process ICMP / ICMPv6 echo over a raw socket, on a thread inside `ns`; waits up
/// to 1 s for the reply.
pub fn raw_ping(ns: &TestNs, dst: &str) -> bool {
    let Ok(ip) = dst.parse::<std::net::IpAddr>() else {
        return false;
    };
    netns::run_in_netns(&ns.path, move || {
        raw_echo(ip, std::time::Duration::from_secs(1))
    })
    .unwrap_or(false)
}

/// ICMP / ICMPv6 echo over a raw socket in the calling thread's namespace.
fn raw_echo(dst: std::net::IpAddr, timeout: std::time::Duration) -> bool {
    use std::net::IpAddr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let id: u16 = (std::process::id() & 0xffff) as u16;
    let (domain, proto, echo, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        return false;
    }
    // SAFETY: `raw` is a fresh, valid fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    let mut pkt = vec![echo, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1];
    pkt.extend_from_slice(b"hcnlping");
    if dst.is_ipv4() {
        let mut sum: u32 = pkt
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let csum = !(sum as u16);
        pkt[2..4].copy_from_slice(&csum.to_be_bytes());
    }
    // SAFETY: sockaddr structs are fully initialised and sized correctly for each call;
    // buffers outlive the calls.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let sent = match dst {
            IpAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            IpAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = v6.octets();
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        };
        if sent < 0 {
            return false;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        while std::time::Instant::now() < deadline {
            let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            // IPv4 raw sockets deliver the IP header too.
            let off = if dst.is_ipv4() {
                usize::from(buf[0] & 0x0f) * 4
            } else {
                0
            };
            if n >= off + 8
                && buf[off] == reply
                && buf[off + 4..off + 6] == [(id >> 8) as u8, id as u8]
            {
                return true;
            }
        }
    }
    false
}
