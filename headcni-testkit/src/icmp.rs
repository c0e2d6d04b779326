//! ICMP / ICMPv6 echo over a raw socket (syscalls only, no `ping` binary): the reachability
//! check of `headcni lab` and of the namespace tests. It acts in the calling thread's network
//! namespace, so run it through [`headcni_netlink::netns::run_in_netns`] to ping from a pod.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU16 = AtomicU16::new(1);

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum = sum.wrapping_add(u32::from(word));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn raw_socket(family: libc::c_int, proto: libc::c_int, timeout: Duration) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn echo_request(type_: u8, id: u16, seq: u16, with_checksum: bool) -> Vec<u8> {
    let mut pkt = vec![type_, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"headcni-lab-ping");
    if with_checksum {
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    pkt
}

/// Sends one ICMP (or ICMPv6) echo request to `dst` and waits up to `timeout` for the
/// matching reply. `Ok(false)` on timeout. Must run in the namespace to ping from.
pub fn ping(dst: IpAddr, timeout: Duration) -> io::Result<bool> {
    ping_with_tos(dst, timeout, 0)
}

/// [`ping`] with the request's IPv4 TOS / IPv6 traffic class set to `tos` (a DSCP value
/// shifted left by 2; 0 leaves the socket's default). Linux copies the request's TOS into
/// its echo reply (`net/ipv4/icmp.c` `icmp_reply`), so both directions carry the mark —
/// what `headcni lab trace` matches on.
pub fn ping_with_tos(dst: IpAddr, timeout: Duration, tos: u8) -> io::Result<bool> {
    let id = (std::process::id() & 0xffff) as u16;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let (fd, pkt, reply_type) = match dst {
        IpAddr::V4(_) => (
            raw_socket(libc::AF_INET, libc::IPPROTO_ICMP, timeout)?,
            echo_request(8, id, seq, true),
            0u8,
        ),
        // The kernel computes ICMPv6 checksums on raw IPPROTO_ICMPV6 sockets.
        IpAddr::V6(_) => (
            raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6, timeout)?,
            echo_request(128, id, seq, false),
            129u8,
        ),
    };
    if tos != 0 {
        let (level, name) = match dst {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
        };
        let v = libc::c_int::from(tos);
        // SAFETY: setsockopt with a correctly sized c_int.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    send_to(&fd, &pkt, dst)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: recv into a buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return Ok(false);
            }
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let data = &buf[..n as usize];
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
        let icmp = match dst {
            IpAddr::V4(want) => {
                let ihl = usize::from(data.first().map_or(0, |b| b & 0x0f)) * 4;
                if data.len() < ihl + 8 || data[12..16] != want.octets() {
                    continue;
                }
                &data[ihl..]
            }
            IpAddr::V6(_) => data,
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn send_to(fd: &OwnedFd, pkt: &[u8], dst: IpAddr) -> io::Result<()> {
    let rc = match dst {
        IpAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sendto with a valid sockaddr_in of the right size.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sendto with a valid sockaddr_in6 of the right size.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_packet() {
        // echo request id=1 seq=1 with no payload: checksum 0xf7fd
        let pkt = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&pkt), 0xf7fd);
        let mut full = echo_request(8, 0x1234, 7, true);
        // a packet with its checksum in place sums to zero
        assert_eq!(checksum(&full), 0);
        full[9] ^= 1;
        assert_ne!(checksum(&full), 0);
    }
}
