//! `headcni status`'s library half: fetching the local daemon's `GET /status` ([`fetch`],
//! [`fetch_all`], every page) and rendering it for people ([`render`]). The binary prints.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use ipnetwork::IpNetwork;
use tokio::net::TcpStream;

use crate::state::{DaemonState, MAX_STATUS_PODS, StatusDoc};

/// The whole exchange with the daemon must finish within this time.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The largest `/status` page accepted, in bytes (a page holds at most
/// [`MAX_STATUS_PODS`] pods: well below 1 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The most `/status` pages fetched: enough for the daemon's whole pod table
/// ([`MAX_PODS`](crate::events::MAX_PODS)) with room for pods added while paging.
const MAX_PAGES: usize = crate::events::MAX_PODS / MAX_STATUS_PODS + 8;

/// Why `headcni status` could not get the daemon's status. Messages name the daemon's
/// address; causes are [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing listens on the address (connection refused).
    #[error(
        "the headcni daemon is not running: nothing listens on {0} \
         (start it with `headcni daemon`, or pass --listen with its [daemon] listen address)"
    )]
    NotRunning(SocketAddr),
    /// Connecting failed for another reason.
    #[error("connecting to the headcni daemon at {listen}")]
    Connect {
        /// The daemon's address.
        listen: SocketAddr,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP step failed (`what`: `HTTP handshake with …`, `GET http://…`).
    #[error("{what}")]
    Http {
        /// The step.
        what: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built.
    #[error("building the /status request")]
    Request(#[source] http::Error),
    /// The body could not be read, or is larger than 4 MiB.
    #[error("reading the {path} body from {listen}: {message}")]
    Body {
        /// The request path.
        path: String,
        /// The daemon's address.
        listen: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// An answer other than `200 OK` (`body`: its trimmed text).
    #[error("GET http://{listen}{path} answered {status}: {body}")]
    Status {
        /// The daemon's address.
        listen: SocketAddr,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: StatusCode,
        /// The answer's body, trimmed.
        body: String,
    },
    /// The answer is not a status document.
    #[error("{listen} did not answer a headcni status")]
    NotAStatus {
        /// The daemon's address.
        listen: SocketAddr,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// More pages than the daemon's pod table can fill.
    #[error("the daemon at {listen} lists more than {pages} pages of pods")]
    TooManyPages {
        /// The daemon's address.
        listen: SocketAddr,
        /// The page limit.
        pages: usize,
    },
    /// The whole exchange took longer than its budget (5 s).
    #[error("the headcni daemon at {listen} did not answer within {secs}s")]
    Timeout {
        /// The daemon's address.
        listen: SocketAddr,
        /// The budget in seconds.
        secs: u64,
    },
}

/// Fetches `GET /status` (its first page of pods) from the daemon at `listen`: the raw JSON
/// body.
///
/// # Errors
/// [`StatusError`]; the whole exchange is bounded by 5 s and the body by 4 MiB.
pub async fn fetch(listen: SocketAddr) -> Result<Bytes, StatusError> {
    within_timeout(listen, async {
        let mut client = Client::connect(listen).await?;
        client.get("/status").await
    })
    .await
}

/// Fetches the daemon's whole status: `GET /status` page after page (`pods_offset`), over one
/// connection, until the pod table is complete, and merges the pages (a pod added or removed
/// while paging may be missed or listed twice, as in any listing of a changing table; the
/// pods are keyed, so twice is once). Works with a daemon that sends every pod in one answer.
///
/// # Errors
/// [`StatusError`]; the whole exchange is bounded by 5 s, each page by 4 MiB, the number of
/// pages by the daemon's pod table size.
pub async fn fetch_all(listen: SocketAddr) -> Result<StatusDoc, StatusError> {
    within_timeout(listen, async {
        let mut client = Client::connect(listen).await?;
        let mut doc = parse(listen, &client.get("/status").await?)?;
        let mut next = doc.pods_offset + doc.state.pods.len();
        let mut pages = 1;
        while doc.pods_truncated {
            if pages >= MAX_PAGES {
                return Err(StatusError::TooManyPages {
                    listen,
                    pages: MAX_PAGES,
                });
            }
            let path = format!("/status?pods_offset={next}&pods_limit={MAX_STATUS_PODS}");
            let page = parse(listen, &client.get(&path).await?)?;
            pages += 1;
            let got = page.state.pods.len();
            next += got;
            doc.state.pods.extend(page.state.pods);
            doc.pods_total = page.pods_total;
            doc.pods_truncated = page.pods_truncated && got > 0;
        }
        // The merged document describes the whole table.
        doc.pods_offset = 0;
        Ok(doc)
    })
    .await
}

fn parse(listen: SocketAddr, body: &[u8]) -> Result<StatusDoc, StatusError> {
    serde_json::from_slice(body).map_err(|source| StatusError::NotAStatus { listen, source })
}

async fn within_timeout<T>(
    listen: SocketAddr,
    f: impl std::future::Future<Output = Result<T, StatusError>>,
) -> Result<T, StatusError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| StatusError::Timeout {
            listen,
            secs: TIMEOUT.as_secs(),
        })?
}

fn http_step(what: String) -> impl FnOnce(hyper::Error) -> StatusError {
    move |source| StatusError::Http { what, source }
}

/// One HTTP/1.1 keep-alive connection to the daemon.
struct Client {
    listen: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Client {
    async fn connect(listen: SocketAddr) -> Result<Client, StatusError> {
        let stream = match TcpStream::connect(listen).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(StatusError::NotRunning(listen));
            }
            Err(source) => return Err(StatusError::Connect { listen, source }),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_step(format!("HTTP handshake with {listen}")))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client {
            listen,
            sender,
            driver,
        })
    }

    /// `GET path`: the body of a `200` answer (at most [`MAX_BODY`] bytes), else an error.
    async fn get(&mut self, path: &str) -> Result<Bytes, StatusError> {
        let listen = self.listen;
        self.sender
            .ready()
            .await
            .map_err(http_step(format!("GET http://{listen}{path}")))?;
        let req = Request::get(path)
            .header(header::HOST, listen.to_string())
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(StatusError::Request)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(http_step(format!("GET http://{listen}{path}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| StatusError::Body {
                path: path.to_owned(),
                listen,
                message: e.to_string(),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(StatusError::Status {
                listen,
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(body)
    }
}

/// Replaces control characters so that names received from the network cannot drive the
/// terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn join_nets(nets: &[IpNetwork]) -> String {
    if nets.is_empty() {
        return "-".to_owned();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows as aligned columns, indented by two spaces, without trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, " {cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human summary printed by `headcni status`: node, mode, the IPN bus, PodCIDR(s) and
/// their source,
/// node preparation, this node's routes (advertised / approved / primary), peers' pod CIDRs
/// seen through the tailnet, pods on this node, and `READY` or `NOT READY: <reasons>`.
pub fn render(state: &DaemonState) -> String {
    use crate::ipnbus::BusState;
    let mut o = String::new();
    // Writing into a String cannot fail: the results of writeln! are ignored below.
    let _ = writeln!(o, "Node:        {}", clean(&state.node_name));
    let _ = writeln!(o, "Mode:        {}", clean(&state.mode));
    let bus = match state.ipn_bus {
        BusState::Connected => "connected (passes follow tailscaled's changes)",
        BusState::Connecting => "connecting (polling meanwhile)",
        BusState::Absent => "absent: tailscaled < 1.34 (polling)",
        BusState::Failing => "failing (polling until it reconnects)",
    };
    let _ = writeln!(o, "IPN bus:     {bus}");
    let source = state
        .pod_cidr_source
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    if state.pod_cidrs.is_empty() {
        let _ = writeln!(o, "PodCIDR:     not known yet");
    } else {
        let _ = writeln!(
            o,
            "PodCIDR:     {} (source: {source})",
            join_nets(&state.pod_cidrs)
        );
    }
    let conflist = match (&state.conflist, state.conflist_written) {
        (Some(p), true) => format!("{} (written)", clean(p)),
        (Some(p), false) => format!("{} (not written)", clean(p)),
        (None, _) => "not written".to_owned(),
    };
    let _ = writeln!(o, "Conflist:    {conflist}");
    let _ = writeln!(
        o,
        "Masquerade:  {}",
        match (state.firewall_driver.as_str(), state.masquerade_ready) {
            ("none", _) => "not managed (firewall_driver = none)",
            (_, true) => "in place",
            (_, false) => "not in place",
        }
    );
    for w in &state.firewall_warnings {
        let _ = writeln!(o, "Firewall:    {}", clean(w));
    }
    if !state.cni_versions.is_empty() {
        let _ = writeln!(o, "CNI versions: {}", clean(&state.cni_versions.join(", ")));
    }
    for w in &state.chain_problems {
        let _ = writeln!(o, "CNI chain:   {}", clean(w));
    }
    for w in &state.add_blocked {
        let _ = writeln!(o, "CNI ADD:     blocked: {}", clean(w));
    }
    match &state.control {
        None => {
            let _ = writeln!(o, "Control:     not reconciled yet");
        }
        Some(c) => {
            let mut who = clean(&c.backend);
            if let Some(id) = &c.node_id {
                let _ = write!(who, ", node id {}", clean(id));
            }
            if let Some(n) = &c.node_name {
                let _ = write!(who, ", tailnet name {}", clean(n));
            }
            let _ = writeln!(o, "Control:     {who}");
            let r = &c.routes;
            let all: BTreeSet<IpNetwork> = c
                .wanted
                .iter()
                .chain(&r.advertised)
                .chain(&r.approved)
                .chain(&r.primary)
                .copied()
                .collect();
            if all.is_empty() {
                let _ = writeln!(o, "Routes:      none");
            } else {
                let _ = writeln!(o, "Routes:");
                let mut rows = vec![
                    ["ROUTE", "HEADCNI", "ADVERTISED", "APPROVED", "PRIMARY"]
                        .map(str::to_owned)
                        .to_vec(),
                ];
                for net in &all {
                    rows.push(vec![
                        net.to_string(),
                        yes_no(c.wanted.contains(net)).to_owned(),
                        yes_no(r.advertised.contains(net)).to_owned(),
                        yes_no(r.approved.contains(net)).to_owned(),
                        yes_no(r.primary.contains(net)).to_owned(),
                    ]);
                }
                o.push_str(&table(&rows));
            }
            if c.peers.is_empty() {
                let _ = writeln!(o, "Peers:       none seen through the tailnet");
            } else {
                let _ = writeln!(o, "Peers (pod CIDRs through the tailnet):");
                let mut rows = vec![["PEER", "STATE", "POD CIDRS"].map(str::to_owned).to_vec()];
                for p in &c.peers {
                    rows.push(vec![
                        clean(&p.name),
                        if p.online { "online" } else { "offline" }.to_owned(),
                        join_nets(&p.routes),
                    ]);
                }
                o.push_str(&table(&rows));
            }
            if !c.missing_peer_routes.is_empty() {
                let _ = writeln!(
                    o,
                    "Missing peer routes (served by these nodes, absent from this node's netmap: \
                     pod traffic to them is broken; check the Headscale policy's ACL, `headcni policy`):"
                );
                let mut rows = vec![["PEER", "ID", "POD CIDRS"].map(str::to_owned).to_vec()];
                for p in &c.missing_peer_routes {
                    rows.push(vec![
                        clean(&p.name),
                        clean(p.id.as_deref().unwrap_or("-")),
                        join_nets(&p.routes),
                    ]);
                }
                o.push_str(&table(&rows));
            }
            for n in &c.notes {
                let _ = writeln!(o, "Note:        {}", clean(n));
            }
        }
    }
    if state.pods.is_empty() {
        let _ = writeln!(o, "Pods:        none reported by the plugin");
    } else {
        let _ = writeln!(o, "Pods ({}):", state.pods.len());
        let mut rows = vec![
            ["POD", "IFNAME", "ADDRESSES", "CONTAINER"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for p in state.pods.values() {
            let name = match (&p.namespace, &p.name) {
                (Some(ns), Some(n)) => format!("{}/{}", clean(ns), clean(n)),
                (None, Some(n)) => clean(n),
                _ => "-".to_owned(),
            };
            let ips = p
                .ips
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(vec![
                name,
                clean(&p.ifname),
                if ips.is_empty() { "-".to_owned() } else { ips },
                clean(&p.container_id).chars().take(12).collect(),
            ]);
        }
        o.push_str(&table(&rows));
    }
    let reasons = state.not_ready_reasons();
    if reasons.is_empty() {
        let _ = writeln!(o, "READY");
    } else {
        let _ = writeln!(
            o,
            "NOT READY: {}",
            reasons
                .iter()
                .map(|r| clean(r))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{PodCidrSource, PodEntry};
    use headcni_core::control::{ControlPlaneStatus, PeerRoutes, Readiness, RouteState};
    use std::time::SystemTime;

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn render_not_ready_initial() {
        let s = DaemonState::new("node-1", "host");
        let out = render(&s);
        assert!(out.contains("Node:        node-1\n"), "{out}");
        assert!(
            out.contains("IPN bus:     connecting (polling meanwhile)\n"),
            "{out}"
        );
        assert!(out.contains("PodCIDR:     not known yet"), "{out}");
        assert!(out.contains("Control:     not reconciled yet"), "{out}");
        assert!(
            out.contains("NOT READY: PodCIDR not known yet; CNI conflist not written;"),
            "{out}"
        );
    }

    #[test]
    fn render_ready_node() {
        let mut s = DaemonState::new("node-1", "host");
        s.pod_cidrs = vec![net("10.244.1.0/24")];
        s.pod_cidr_source = Some(PodCidrSource::KubernetesNode);
        s.conflist = Some("/etc/cni/net.d/10-headcni.conflist".into());
        s.conflist_written = true;
        s.masquerade_ready = true;
        let mut c = ControlPlaneStatus::initial("headscale/api");
        c.node_id = Some("7".into());
        c.wanted = vec![net("10.244.1.0/24")];
        c.routes = RouteState {
            advertised: vec![net("10.244.1.0/24"), net("192.168.0.0/24")],
            approved: vec![net("10.244.1.0/24")],
            primary: vec![net("10.244.1.0/24")],
        };
        c.peers = vec![PeerRoutes {
            name: "node-2\x1b[2J".into(),
            id: Some("8".into()),
            online: true,
            routes: vec![net("10.244.2.0/24")],
        }];
        c.readiness = Readiness::Ready;
        c.missing_peer_routes = vec![PeerRoutes {
            name: "node-3".into(),
            id: Some("9".into()),
            online: true,
            routes: vec![net("10.244.3.0/24")],
        }];
        c.notes = vec!["tailscaled 1.64.2 has no NoStatefulFiltering pref".into()];
        s.control = Some(c);
        s.pods.insert(
            "abc/eth0".into(),
            PodEntry {
                container_id: "abcdef0123456789".into(),
                ifname: "eth0".into(),
                namespace: Some("default".into()),
                name: Some("web-1".into()),
                ips: vec!["10.244.1.2".parse().expect("ip")],
                added_at: SystemTime::now(),
            },
        );
        let out = render(&s);
        println!("{out}");
        let missing = out
            .lines()
            .skip_while(|l| !l.starts_with("Missing peer routes"))
            .nth(2)
            .unwrap_or_default();
        assert_eq!(
            missing.split_whitespace().collect::<Vec<_>>(),
            ["node-3", "9", "10.244.3.0/24"],
            "{out}"
        );
        assert!(
            out.contains("Note:        tailscaled 1.64.2 has no NoStatefulFiltering pref"),
            "{out}"
        );
        assert!(
            out.contains("PodCIDR:     10.244.1.0/24 (source: kubernetes-node)"),
            "{out}"
        );
        assert!(
            out.contains("Control:     headscale/api, node id 7"),
            "{out}"
        );
        let route_line = out
            .lines()
            .find(|l| l.trim_start().starts_with("10.244.1.0/24"))
            .unwrap_or_default();
        assert_eq!(
            route_line.split_whitespace().collect::<Vec<_>>(),
            ["10.244.1.0/24", "yes", "yes", "yes", "yes"]
        );
        let other = out
            .lines()
            .find(|l| l.trim_start().starts_with("192.168.0.0/24"))
            .unwrap_or_default();
        assert_eq!(
            other.split_whitespace().collect::<Vec<_>>(),
            ["192.168.0.0/24", "no", "yes", "no", "no"]
        );
        assert!(
            out.contains("node-2?[2J"),
            "control characters are replaced: {out}"
        );
        assert!(!out.contains('\x1b'));
        assert!(out.contains("10.244.2.0/24"), "{out}");
        assert!(out.contains("default/web-1"), "{out}");
        assert!(out.contains("10.244.1.2"), "{out}");
        assert!(out.contains("abcdef012345"), "{out}");
        assert!(
            !out.contains("abcdef0123456"),
            "container id is shortened: {out}"
        );
        assert!(
            out.ends_with("READY\n") && !out.contains("NOT READY"),
            "{out}"
        );
    }
}
