//! MagicDNS of the tailscaled stand-in: the resolver tailscaled serves at the Tailscale
//! service IP `100.100.100.100` ("quad-100") port 53, for the tailnet's node names.
//!
//! # What is modelled (tailscale v1.10x sources)
//!
//! - **Names** (`ipn/ipnlocal/node_backend.go` `dnsConfigForNetmap`, `net/dns/resolver/
//!   tsdns.go` `resolveLocal`): every node of the netmap, the node itself and its peers, is
//!   `<hostname>.<base domain>.` → its tailnet addresses. With MagicDNS on (Headscale
//!   `dns.magic_dns`, the netmap's `DNS.Proxied`) the base domain is a local domain:
//!   tailscaled is authoritative there and answers **NXDOMAIN** for unknown names, with the
//!   zone's SOA (negative TTL 10 s) in the authority section. Positive answers have TTL 5 s
//!   (`defaultTTL`). `A` gives the first IPv4 address, `AAAA` the first IPv6 one; a known name
//!   without an address of the asked family, or any other record type, is NOERROR with no
//!   answer (plus the SOA for A/AAAA/ANY); `NS`/`SOA`/`AXFR`/`HINFO` of a known name are
//!   NOTIMP. `.onion` names are NXDOMAIN (RFC 7686). Every answer has AA set and RA set when
//!   RD was set (`marshalResponse`). Names are matched case-insensitively.
//! - **Other names** (`resolveLocal` returns REFUSED → `errNotOurName` → the forwarder,
//!   `net/dns/resolver/forwarder.go` `forwardWithDestChan`): with no upstream resolver
//!   configured, tailscaled answers **SERVFAIL** ("no upstream resolvers set, returning
//!   SERVFAIL"). The stand-in has no upstream resolvers, so that is what it answers. Reverse
//!   (`PTR`) queries are not modelled and take the same path (SERVFAIL), stricter than
//!   tailscaled, which answers `PTR` for known tailnet addresses.
//! - **Malformed queries** (`respond`): FORMERR, with the query's id when it has a header;
//!   shorter than a header → no answer.
//! - **Transport**: UDP, one answer per datagram (`wgengine/netstack/netstack.go`
//!   `handleMagicDNSUDP`), and TCP with the two-byte length prefix (`HandleTCPConn`). Sizes
//!   are bounded: a UDP answer larger than the query's UDP size (512 without EDNS) is cut to
//!   its header and question with TC set (`checkResponseSizeAndSetTC`); TCP messages are at
//!   most 4095 bytes (`maxResponseBytes`), connections idle out after 45 s, the stand-in
//!   serves at most 64 at a time.
//!
//! # How packets get here (and how that differs from tailscaled)
//!
//! tailscaled puts `100.100.100.100/32` into table 52 whenever the node has an IPv4 tailnet
//! address (`ipn/ipnlocal/local.go` `routerConfig`, applied by `wgengine/router/
//! router_linux.go`), so the host's packets to quad-100, its own and the ones it forwards
//! for others (pods), are routed **into the tun**; tailscaled reads them there and
//! `netstack.handleLocalPackets` absorbs everything addressed to quad-100 **whatever its
//! source address** (the intercept matches the destination only, and `acceptUDP` /
//! `handleMagicDNSUDP` hand the client's address to the resolver without checking it). The
//! answer is written back into the tun towards the client; for a pod the kernel forwards it
//! to the pod (`ts-forward` marks and accepts what comes in on the tun).
//!
//! In the lab wireguard-go owns the tun, so the stand-in cannot read packets from it. The
//! stand-in therefore installs the same table-52 route **and** binds `100.100.100.100/32` on
//! the node's loopback device, where its sockets listen. The kernel's `local` table (rule 0)
//! wins over rule 5270, so quad-100 traffic is **delivered locally** (netfilter `input`, not
//! `forward`): a pod's query takes the hops pod → bridge → node input instead of pod → bridge
//! → node forward → tun. The addresses seen are the same (the pod's source is kept: HeadCNI's
//! masquerade exempts the tailnet range `100.64.0.0/10`, which holds quad-100), and neither
//! path needs a masquerade, but a forward-chain filter that drops pod → tun traffic would
//! break the real path and not the lab's.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::coord::Netmap;

/// The Tailscale service IP (`net/tsaddr` `TailscaleServiceIP`): quad-100.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// The DNS port on [`SERVICE_IP`].
pub const DNS_PORT: u16 = 53;
/// TTL of positive answers, seconds (`tsdns.go` `defaultTTL`).
pub const DEFAULT_TTL: u32 = 5;
/// TTL and SOA timers of negative answers, seconds (`tsdns.go` `negativeTTL`).
pub const NEGATIVE_TTL: u32 = 10;
/// Largest answer, bytes (`tsdns.go` `maxResponseBytes`); also the largest TCP query read.
pub const MAX_MESSAGE: usize = 4095;
/// UDP answer size without EDNS (RFC 1035 §4.2.1).
pub const UDP_DEFAULT_SIZE: usize = 512;
/// Idle timeout of a TCP connection (`net/dns/manager.go` `idleTimeoutTCP`).
pub const TCP_IDLE: Duration = Duration::from_secs(45);
/// Most TCP connections served at once.
pub const MAX_TCP_CONNS: usize = 64;

/// The names quad-100 answers for, from one netmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// The local (authoritative) domain: the base domain when MagicDNS is on.
    local_domain: Option<Name>,
    /// Lower-case FQDN → addresses, in netmap order.
    hosts: BTreeMap<Name, Vec<IpAddr>>,
}

impl Zone {
    /// The zone of `nm`: `<hostname>.<base domain>.` for the node and every peer when the
    /// netmap has a base domain; the base domain is local when `nm.dns.magic_dns`. Host
    /// names that do not make a valid DNS name are left out (tailscaled logs and skips them).
    pub fn from_netmap(nm: &Netmap) -> Zone {
        let Some(base) = nm
            .dns
            .base_domain
            .as_deref()
            .filter(|b| !b.is_empty())
            .and_then(|b| fqdn(b).ok())
        else {
            return Zone::default();
        };
        let mut hosts = BTreeMap::new();
        for n in std::iter::once(&nm.self_node).chain(nm.peers.iter()) {
            let Ok(label) = Name::from_ascii(&n.hostname) else {
                continue;
            };
            let Ok(name) = label.append_domain(&base) else {
                continue;
            };
            hosts
                .entry(name.to_lowercase())
                .or_insert_with(|| n.tailnet_ips.clone());
        }
        Zone {
            local_domain: nm.dns.magic_dns.then_some(base),
            hosts,
        }
    }
}

fn fqdn(s: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut n = Name::from_ascii(s)?.to_lowercase();
    n.set_fqdn(true);
    Ok(n)
}

/// What [`answer`] decided, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR with the address.
    Address(IpAddr),
    /// NOERROR without an answer.
    NoData,
    /// NXDOMAIN in the local domain.
    NxDomain,
    /// NOTIMP (NS/SOA/AXFR/HINFO of a known name).
    NotImp,
    /// SERVFAIL: not a tailnet name, no upstream resolver.
    ServFail,
    /// FORMERR: the query did not parse or had no question.
    FormErr,
}

fn resolve(zone: &Zone, name: &Name, ty: RecordType) -> Outcome {
    let lower = name.to_lowercase();
    if let Ok(onion) = Name::from_ascii("onion.")
        && onion.zone_of(&lower)
    {
        return Outcome::NxDomain;
    }
    let Some(addrs) = zone.hosts.get(&lower) else {
        return match &zone.local_domain {
            Some(d) if d.zone_of(&lower) => Outcome::NxDomain,
            _ => Outcome::ServFail,
        };
    };
    let first = |v4: bool| addrs.iter().find(|a| a.is_ipv4() == v4).copied();
    match ty {
        RecordType::PTR => Outcome::ServFail,
        RecordType::A => first(true).map_or(Outcome::NoData, Outcome::Address),
        RecordType::AAAA => first(false).map_or(Outcome::NoData, Outcome::Address),
        RecordType::ANY => addrs
            .first()
            .copied()
            .map_or(Outcome::NoData, Outcome::Address),
        RecordType::NS | RecordType::SOA | RecordType::AXFR | RecordType::HINFO => Outcome::NotImp,
        _ => Outcome::NoData,
    }
}

fn soa(zone: &Name) -> Record {
    let t = NEGATIVE_TTL as i32;
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    Record::from_rdata(
        zone.clone(),
        NEGATIVE_TTL,
        RData::SOA(SOA::new(
            zone.clone(),
            zone.clone(),
            serial,
            t,
            t,
            t,
            NEGATIVE_TTL,
        )),
    )
}

/// The answer to one DNS `query` (wire format) from `zone`, and what was decided. `None`
/// when the query is shorter than a DNS header (nothing to answer to). `max` is the largest
/// answer the transport carries ([`MAX_MESSAGE`] for TCP; for UDP [`udp_limit`]): a larger
/// answer is cut to header and question with TC set.
pub fn answer(zone: &Zone, query: &[u8], max: usize) -> Option<(Vec<u8>, Outcome)> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let q = match Message::from_vec(query) {
        Ok(m) if m.metadata.message_type == MessageType::Query && !m.queries.is_empty() => m,
        _ => {
            let resp = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return resp.to_vec().ok().map(|b| (b, Outcome::FormErr));
        }
    };
    let question = q.queries[0].clone();
    let outcome = resolve(zone, question.name(), question.query_type());
    let mut resp = Message::response(id, q.metadata.op_code);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = q.metadata.recursion_desired;
    resp.metadata.recursion_available = q.metadata.recursion_desired;
    resp.add_query(question.clone());
    if q.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(MAX_MESSAGE as u16);
        resp.set_edns(e);
    }
    let name = question.name().clone();
    let zone_soa = || {
        zone.local_domain
            .as_ref()
            .filter(|d| d.zone_of(&name.to_lowercase()))
            .map(soa)
    };
    match outcome {
        Outcome::Address(IpAddr::V4(a)) => {
            resp.add_answer(Record::from_rdata(name, DEFAULT_TTL, RData::A(A(a))));
        }
        Outcome::Address(IpAddr::V6(a)) => {
            resp.add_answer(Record::from_rdata(name, DEFAULT_TTL, RData::AAAA(AAAA(a))));
        }
        Outcome::NoData => {
            if matches!(
                question.query_type(),
                RecordType::A | RecordType::AAAA | RecordType::ANY
            ) && let Some(s) = zone_soa()
            {
                resp.add_authority(s);
            }
        }
        Outcome::NxDomain => {
            resp.metadata.response_code = ResponseCode::NXDomain;
            if let Some(s) = zone_soa() {
                resp.add_authority(s);
            }
        }
        Outcome::NotImp => resp.metadata.response_code = ResponseCode::NotImp,
        Outcome::ServFail => resp.metadata.response_code = ResponseCode::ServFail,
        Outcome::FormErr => resp.metadata.response_code = ResponseCode::FormErr,
    }
    let mut bytes = resp.to_vec().ok()?;
    if bytes.len() > max {
        resp.answers.clear();
        resp.authorities.clear();
        resp.metadata.truncation = true;
        bytes = resp.to_vec().ok()?;
    }
    Some((bytes, outcome))
}

/// The largest UDP answer for `query`: its EDNS UDP size (at least 512, at most
/// [`MAX_MESSAGE`]), else 512.
pub fn udp_limit(query: &[u8]) -> usize {
    Message::from_vec(query)
        .ok()
        .and_then(|m| m.edns.map(|e| e.max_payload() as usize))
        .map_or(UDP_DEFAULT_SIZE, |s| s.clamp(UDP_DEFAULT_SIZE, MAX_MESSAGE))
}

/// The zone the servers answer from; replaced whenever the netmap changes.
pub type SharedZone = Arc<RwLock<Zone>>;

fn current(zone: &SharedZone) -> Zone {
    zone.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Serves DNS on UDP `sock` from `zone` until the task is aborted; one answer per datagram.
pub async fn serve_udp(sock: tokio::net::UdpSocket, zone: SharedZone) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tailscaled-standin: dns udp: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let q = &buf[..n];
        if let Some((resp, _)) = answer(&current(&zone), q, udp_limit(q)) {
            let _ = sock.send_to(&resp, from).await;
        }
    }
}

async fn serve_tcp_conn(mut c: tokio::net::TcpStream, zone: SharedZone) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, c.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let len = u16::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Ok(());
        }
        let mut q = vec![0u8; len];
        if tokio::time::timeout(TCP_IDLE, c.read_exact(&mut q))
            .await
            .is_err()
        {
            return Ok(());
        }
        let Some((resp, _)) = answer(&current(&zone), &q, MAX_MESSAGE) else {
            return Ok(());
        };
        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&resp);
        c.write_all(&out).await?;
    }
}

/// Serves DNS over TCP on `listener` from `zone` until the task is aborted (at most
/// [`MAX_TCP_CONNS`] connections at a time; more wait in the accept queue).
pub async fn serve_tcp(listener: tokio::net::TcpListener, zone: SharedZone) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (c, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tailscaled-standin: dns tcp: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let zone = zone.clone();
        tokio::spawn(async move {
            let _ = serve_tcp_conn(c, zone).await;
            drop(permit);
        });
    }
}

/// Binds UDP and TCP port 53 on [`SERVICE_IP`] (which must be a local address by then) and
/// spawns both servers. Returns their tasks (abort them to stop).
///
/// Errors: the bind errors (address not local, port in use).
pub async fn start(zone: SharedZone) -> std::io::Result<[tokio::task::JoinHandle<()>; 2]> {
    let addr = SocketAddr::from((SERVICE_IP, DNS_PORT));
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    Ok([
        tokio::spawn(serve_udp(udp, zone.clone())),
        tokio::spawn(serve_tcp(tcp, zone)),
    ])
}

/// The stand-in's quad-100: the zone, the address on the loopback device and the servers.
/// [`MagicDns::apply`] is called with each applied netmap, [`MagicDns::cleanup`] at exit.
#[derive(Debug, Default)]
pub struct MagicDns {
    zone: SharedZone,
    tasks: tokio::sync::Mutex<Option<[tokio::task::JoinHandle<()>; 2]>>,
}

/// The loopback device quad-100 is bound on.
const LOOPBACK: &str = "lo";

fn service_net() -> ipnetwork::IpNetwork {
    ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::from(SERVICE_IP))
}

impl MagicDns {
    /// The route tailscaled adds to table 52 for `netmap` (`routerConfig`): quad-100/32 when
    /// the node has an IPv4 tailnet address.
    pub fn route(netmap: Option<&Netmap>) -> Option<ipnetwork::IpNetwork> {
        netmap
            .filter(|nm| nm.self_node.tailnet_ips.iter().any(IpAddr::is_ipv4))
            .map(|_| service_net())
    }

    /// Serves `netmap`'s zone: with a netmap (the node is running), `100.100.100.100/32` on
    /// `lo` and the UDP/TCP servers started (once); without one, an empty zone (every query
    /// SERVFAIL, as tailscaled with an empty DNS config).
    ///
    /// Errors: adding the address, binding port 53.
    pub async fn apply(
        &self,
        nl: &headcni_netlink::NetlinkHandle,
        netmap: Option<&Netmap>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        use headcni_core::link::LinkManager;
        let zone = netmap.map(Zone::from_netmap).unwrap_or_default();
        *self.zone.write().unwrap_or_else(|p| p.into_inner()) = zone;
        if Self::route(netmap).is_none() {
            return Ok(());
        }
        let have = nl.addresses(LOOPBACK).await.unwrap_or_default();
        if !have.iter().any(|a| a.ip() == IpAddr::V4(SERVICE_IP)) {
            nl.add_address(LOOPBACK, service_net())
                .await
                .with_context(|| format!("add {SERVICE_IP}/32 to {LOOPBACK}"))?;
        }
        let mut tasks = self.tasks.lock().await;
        if tasks.is_none() {
            *tasks = Some(
                start(self.zone.clone())
                    .await
                    .with_context(|| format!("bind {SERVICE_IP}:{DNS_PORT}"))?,
            );
            eprintln!("tailscaled-standin: MagicDNS on {SERVICE_IP}:{DNS_PORT} (udp, tcp)");
        }
        Ok(())
    }

    /// Stops the servers and removes `100.100.100.100/32` from `lo` (also a leftover of an
    /// earlier run). Best effort.
    pub async fn cleanup(&self) {
        if let Some(tasks) = self.tasks.lock().await.take() {
            for t in tasks {
                t.abort();
            }
        }
        let del = tokio::process::Command::new("ip")
            .args([
                "-4",
                "addr",
                "del",
                &format!("{SERVICE_IP}/32"),
                "dev",
                LOOPBACK,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(5), del).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::{NetmapDns, NetmapNode};
    use hickory_proto::op::Query;

    fn node(id: u64, host: &str, ips: &[&str]) -> NetmapNode {
        NetmapNode {
            id,
            hostname: host.into(),
            node_key: format!("nodekey:{id:064x}"),
            endpoints: vec![],
            tailnet_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            primary_routes: vec![],
            online: true,
        }
    }

    fn zone(magic: bool) -> Zone {
        Zone::from_netmap(&Netmap {
            generation: 1,
            self_node: node(1, "node-1", &["100.64.0.1", "fd7a:115c:a1e0::1"]),
            peers: vec![node(2, "node-2", &["100.64.0.2"])],
            dns: NetmapDns {
                base_domain: Some("tailnet.lab".into()),
                magic_dns: magic,
            },
        })
    }

    fn ask(z: &Zone, name: &str, ty: RecordType, rd: bool) -> (Message, Outcome) {
        let mut q = Message::query();
        q.metadata.id = 0x1234;
        q.metadata.recursion_desired = rd;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        let (b, o) = answer(z, &q.to_vec().unwrap(), MAX_MESSAGE).expect("answer");
        (Message::from_vec(&b).expect("valid answer"), o)
    }

    #[test]
    fn node_names_resolve_case_insensitively_with_tailscaled_ttl_and_flags() {
        let z = zone(true);
        let (m, o) = ask(&z, "Node-2.Tailnet.Lab.", RecordType::A, true);
        assert_eq!(o, Outcome::Address("100.64.0.2".parse().unwrap()));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, DEFAULT_TTL);
        assert_eq!(m.answers[0].data, RData::A(A::new(100, 64, 0, 2)));
        let (m, _) = ask(&z, "node-1.tailnet.lab.", RecordType::AAAA, false);
        assert!(!m.metadata.recursion_available);
        assert_eq!(
            m.answers[0].data,
            RData::AAAA(AAAA("fd7a:115c:a1e0::1".parse().unwrap()))
        );
    }

    #[test]
    fn known_name_without_that_family_is_nodata_with_soa() {
        let (m, o) = ask(&zone(true), "node-2.tailnet.lab.", RecordType::AAAA, true);
        assert_eq!(o, Outcome::NoData);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, NEGATIVE_TTL);
        let (_, o) = ask(&zone(true), "node-2.tailnet.lab.", RecordType::SOA, true);
        assert_eq!(o, Outcome::NotImp);
        let (m, o) = ask(&zone(true), "node-2.tailnet.lab.", RecordType::MX, true);
        assert_eq!(o, Outcome::NoData);
        assert!(m.authorities.is_empty());
    }

    #[test]
    fn unknown_names_in_the_base_domain_are_nxdomain_only_with_magic_dns() {
        let (m, o) = ask(&zone(true), "node-9.tailnet.lab.", RecordType::A, true);
        assert_eq!(o, Outcome::NxDomain);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        // Without MagicDNS the base domain is not local: not ours, no upstream → SERVFAIL.
        let (m, o) = ask(&zone(false), "node-9.tailnet.lab.", RecordType::A, true);
        assert_eq!(o, Outcome::ServFail);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        // Node names still resolve (tailscaled's on-demand node records).
        let (_, o) = ask(&zone(false), "node-2.tailnet.lab.", RecordType::A, true);
        assert_eq!(o, Outcome::Address("100.64.0.2".parse().unwrap()));
    }

    #[test]
    fn other_names_and_reverse_lookups_are_servfail_and_onion_is_nxdomain() {
        let z = zone(true);
        assert_eq!(
            ask(&z, "example.com.", RecordType::A, true).1,
            Outcome::ServFail
        );
        assert_eq!(
            ask(&z, "2.0.64.100.in-addr.arpa.", RecordType::PTR, true).1,
            Outcome::ServFail
        );
        assert_eq!(
            ask(&z, "abc.onion.", RecordType::A, true).1,
            Outcome::NxDomain
        );
        assert_eq!(
            ask(&Zone::default(), "node-2.tailnet.lab.", RecordType::A, true).1,
            Outcome::ServFail
        );
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let z = zone(true);
        assert!(answer(&z, &[0u8; 5], MAX_MESSAGE).is_none());
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0x3f; 40]);
        let (b, o) = answer(&z, &junk, MAX_MESSAGE).expect("formerr");
        assert_eq!(o, Outcome::FormErr);
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // A header without a question.
        let empty = Message::query().to_vec().unwrap();
        assert_eq!(answer(&z, &empty, MAX_MESSAGE).unwrap().1, Outcome::FormErr);
    }

    #[test]
    fn oversized_answers_are_truncated_with_tc() {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("node-1.tailnet.lab.").unwrap(),
            RecordType::A,
        ));
        let bytes = q.to_vec().unwrap();
        let (full, _) = answer(&zone(true), &bytes, MAX_MESSAGE).unwrap();
        let (cut, _) = answer(&zone(true), &bytes, full.len() - 1).unwrap();
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty());
        assert_eq!(udp_limit(&bytes), UDP_DEFAULT_SIZE);
    }
}
