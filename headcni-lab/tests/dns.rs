//! End-to-end DNS scenarios on the multi-node lab (style of `tests/e2e.rs`): a pod resolves
//! a tailnet node name through tailscaled's MagicDNS at 100.100.100.100 (the tailscaled
//! stand-in, `headcni_lab::tailscaled_standin::dns`) and reaches the address; and, with
//! MagicDNS off in HeadCNI's config (no `dns` in the conflist), a pod resolves a normal name
//! through the node's resolver, a small DNS server this test runs in the lab's "internet"
//! namespace. Needs root and the workspace's binaries (`cargo build --workspace --bins`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use headcni_lab::cluster::{BASE_DOMAIN, INET_ADDR, Lab, LabSpec, block_on, wait_for};
use headcni_lab::tailscaled_standin::dns::SERVICE_IP;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Tears the lab down when dropped.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(lab) = Lab::load(&self.0)
        {
            eprint!("{}", lab.log_tails(40));
        }
        if let Err(e) = Lab::down(&self.0) {
            eprintln!("lab down {}: {e:#}", self.0);
        }
    }
}

fn up(test: &str) -> (Lab, Guard) {
    let name = format!("{test}{}", std::process::id());
    let mut s = LabSpec::new(&name).expect("lab spec");
    s.nodes = 2;
    s.pods = 1;
    let _ = Lab::down(&s.name);
    let guard = Guard(s.name.clone());
    let lab = Lab::up(s).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    (lab, guard)
}

fn query(name: &str, ty: RecordType) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).expect("name"), ty));
    q.to_vec().expect("encode")
}

/// One UDP DNS exchange from inside `target`; `None` when no answer came within 2 s.
fn ask_udp(lab: &Lab, target: &str, server: SocketAddr, q: Vec<u8>) -> Option<Message> {
    lab.target_ctx(target)
        .expect("target")
        .run(move || -> std::io::Result<Vec<u8>> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send_to(&q, server)?;
            let mut buf = vec![0u8; 4096];
            let n = s.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })
        .expect("enter namespace")
        .ok()
        .map(|b| Message::from_vec(&b).expect("a DNS answer"))
}

/// One TCP DNS exchange (two-byte length prefix) from inside `target`.
fn ask_tcp(lab: &Lab, target: &str, server: SocketAddr, q: Vec<u8>) -> Message {
    let b = lab
        .target_ctx(target)
        .expect("target")
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut out = (q.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&q);
            c.write_all(&out)?;
            let mut len = [0u8; 2];
            c.read_exact(&mut len)?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut buf)?;
            Ok(buf)
        })
        .expect("enter namespace")
        .expect("TCP DNS exchange");
    Message::from_vec(&b).expect("a DNS answer")
}

fn a_record(m: &Message) -> Option<Ipv4Addr> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// node N's tailnet IPv4 address, from its LocalAPI.
fn tailnet_ip(lab: &Lab, node: u32) -> Ipv4Addr {
    let st = lab
        .node_ctx(node)
        .run(|| {
            block_on(async {
                headcni_headscale::localapi::LocalApiClient::new("/run/tailscale/tailscaled.sock")
                    .status_without_peers()
                    .await
                    .map_err(anyhow::Error::from)
            })
        })
        .expect("enter node")
        .expect("status");
    st.tailscale_ips
        .iter()
        .find_map(|i| match i {
            IpAddr::V4(v4) => Some(*v4),
            _ => None,
        })
        .expect("a tailnet IPv4 address")
}

#[test]
fn pod_resolves_a_tailnet_name_at_quad_100_and_reaches_it() {
    let (lab, _g) = up("dnsmagic");
    let quad100 = SocketAddr::from((SERVICE_IP, 53));
    let node2 = tailnet_ip(&lab, 2);
    let name = format!("node-2.{BASE_DOMAIN}.");
    let mut answer = None;
    // The netmap (and so the zone) reaches the stand-in asynchronously after `lab up`.
    wait_for(Duration::from_secs(20), "quad-100 to answer", || {
        answer = ask_udp(&lab, "pod-1-1", quad100, query(&name, RecordType::A))
            .filter(|m| m.metadata.response_code == ResponseCode::NoError);
        Ok(answer.is_some())
    })
    .expect("an answer from 100.100.100.100");
    let m = answer.expect("answer");
    assert!(m.metadata.authoritative);
    // The route tailscaled installs: quad-100 into the tun through table 52.
    let (mut cmd, fds) = lab.command("node-1", "ip").expect("command");
    let out = cmd
        .args(["-4", "route", "show", "table", "52"])
        .output()
        .expect("ip route");
    drop(fds);
    let t52 = String::from_utf8_lossy(&out.stdout);
    assert!(
        t52.lines()
            .any(|l| l.starts_with("100.100.100.100 dev tailscale0")),
        "{t52}"
    );
    assert_eq!(a_record(&m), Some(node2), "{m:?}");
    // Unknown names in the base domain: NXDOMAIN; other names: SERVFAIL (no upstream).
    let m = ask_udp(
        &lab,
        "pod-1-1",
        quad100,
        query(&format!("node-9.{BASE_DOMAIN}."), RecordType::A),
    )
    .expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask_udp(
        &lab,
        "pod-1-1",
        quad100,
        query("example.com.", RecordType::A),
    )
    .expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // TCP too.
    let m = ask_tcp(&lab, "pod-1-1", quad100, query(&name, RecordType::A));
    assert_eq!(a_record(&m), Some(node2));
    // The pod reaches the resolved address: a TCP listener on node-2's tailnet IP.
    let l = lab
        .target_ctx("node-2")
        .expect("node-2")
        .run(move || TcpListener::bind((node2, 0)))
        .expect("enter node-2")
        .expect("bind");
    let to = SocketAddr::new(IpAddr::V4(node2), l.local_addr().expect("addr").port());
    let mut c = lab
        .target_ctx("pod-1-1")
        .expect("pod")
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .expect("enter pod")
        .expect("connect from the pod to node-2's tailnet address");
    let (mut s, _) = l.accept().expect("accept");
    c.write_all(b"dns!").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"dns!");
}

/// A DNS server in the "internet" namespace on `INET_ADDR:53`: `www.example.test` A →
/// 198.51.100.7, everything else NXDOMAIN. Records the source addresses it saw.
struct Upstream {
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<IpAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(lab: &Lab) -> Upstream {
        let sock = lab
            .target_ctx("inet")
            .expect("inet")
            .run(|| UdpSocket::bind((INET_ADDR, 53)))
            .expect("enter inet")
            .expect("bind the upstream DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, sn) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                sn.lock().unwrap().push(from.ip());
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.metadata.recursion_available = true;
                for qq in &q.queries {
                    r.add_query(qq.clone());
                    if qq
                        .name()
                        .to_ascii()
                        .eq_ignore_ascii_case("www.example.test.")
                        && qq.query_type() == RecordType::A
                    {
                        r.add_answer(Record::from_rdata(
                            qq.name().clone(),
                            60,
                            RData::A(A::new(198, 51, 100, 7)),
                        ));
                    } else {
                        r.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                if let Ok(b) = r.to_vec() {
                    let _ = sock.send_to(&b, from);
                }
            }
        });
        Upstream {
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn without_magic_dns_a_pod_resolves_through_the_nodes_resolver() {
    let (lab, _g) = up("dnsplain");
    // MagicDNS is off in the lab's daemon config: the conflist carries no `dns`.
    let out = {
        let (mut cmd, fds) = lab.command("node-1", "cat").expect("command");
        let o = cmd
            .arg("/run/cni/net.d/10-headcni.conflist")
            .output()
            .expect("cat");
        drop(fds);
        o
    };
    assert!(out.status.success(), "{out:?}");
    let conflist: serde_json::Value = serde_json::from_slice(&out.stdout).expect("conflist");
    assert!(conflist["plugins"][0].get("dns").is_none(), "{conflist:#}");
    let upstream = Upstream::start(&lab);
    let server = SocketAddr::from((INET_ADDR, 53));
    let m = ask_udp(
        &lab,
        "pod-1-1",
        server,
        query("www.example.test.", RecordType::A),
    )
    .expect("an answer from the node's resolver");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_record(&m), Some(Ipv4Addr::new(198, 51, 100, 7)));
    let m = ask_udp(
        &lab,
        "pod-1-1",
        server,
        query("nope.example.test.", RecordType::A),
    )
    .expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // The query left the node masqueraded (HeadCNI's masquerade of pod → internet).
    let pod_ip = lab.pod("pod-1-1").and_then(|p| p.ip).expect("pod ip");
    let seen = upstream.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|s| *s != IpAddr::V4(pod_ip)),
        "upstream saw the pod's own address: {seen:?}"
    );
}
