//! `headcni lab trace FROM TO`: the hops one probe packet takes through the lab, as the
//! kernels of the lab's namespaces see them.
//!
//! How: every watched namespace (the source, the destination when it is a lab target, every
//! node and the "internet") gets a temporary nft table `inet headcni_lab_trace` whose
//! prerouting and output chains (priority -199: just after conntrack, -200, so a rule can
//! tell the reply direction; before mangle, NAT and filter — only `raw` tables come
//! earlier and are not shown) set `meta nftrace` on packets carrying the probe's DSCP mark
//! ([`TRACE_DSCP`]). One probe
//! is sent from the source with that mark (an ICMP echo — Linux copies the request's TOS into
//! the reply, `net/ipv4/icmp.c` `icmp_reply`, so both directions are traced — or a TCP
//! connect: the client's segments carry the mark, and so does a kernel-made RST, which
//! copies the SYN's TOS; a listener's SYN-ACK does not). `nft monitor trace` in each namespace then reports every
//! base chain the packet entered with its interfaces and addresses (so NAT shows as a
//! changed address), every rule that matched with its verdict — HeadCNI's `inet headcni`
//! table, iptables-nft's tables (kube-proxy's `KUBE-*`, `HEADCNI-FWD`, the tailscaled
//! stand-in's `ts-*`) and any other nftables table — and, for each hop, the routing decision
//! (`ip route get … iif …`: device and table, e.g. tailscaled's table 52). The tables are
//! removed afterwards, even on error. Rules of iptables-legacy are invisible to nftrace.
//!
//! The WireGuard hop itself (tailscale0 → wireguard-go → UDP on eth0 → the peer) carries
//! the inner packet encrypted; the trace shows the inner packet leaving one node's
//! `tailscale0` and entering the next node's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cluster::dual_stack::INET_ADDR_V6;
use crate::cluster::ns::Ctx;
use crate::cluster::{INET_ADDR, Lab};

/// The DSCP value the probe carries (45: unassigned by RFC 4594 and the IANA DSCP
/// registry, so no other lab traffic has it). The TOS byte is `TRACE_DSCP << 2`.
pub const TRACE_DSCP: u8 = 45;
/// The temporary nft table's name.
const TABLE: &str = "headcni_lab_trace";
/// The trace table's chains: (name, hook). Marking happens where packets enter
/// (prerouting) or are made (output); the other hooks repeat the rules so each trace piece
/// says its direction.
const HOOKS: [(&str, &str); 5] = [
    ("t_prerouting", "prerouting"),
    ("t_input", "input"),
    ("t_forward", "forward"),
    ("t_output", "output"),
    ("t_postrouting", "postrouting"),
];
/// How long `nft monitor` gets to subscribe before the probe is sent.
const MONITOR_SETTLE: Duration = Duration::from_millis(300);
/// How long after the probe trailing events are collected.
const DRAIN: Duration = Duration::from_millis(400);
/// At most this many trace lines are kept per namespace (bounded output).
const MAX_LINES: usize = 2_000;

/// The probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// One ICMP echo request (both directions traced).
    Icmp,
    /// A TCP connect to this port (the SYN and what answers the connect traced forward).
    Tcp(u16),
}

/// One line of `nft monitor trace` (nftables 1.0.x text format), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    /// The kernel's trace id: one per packet per namespace hook sequence.
    pub id: String,
    /// `<family> <table> <chain>`, e.g. `ip nat KUBE-SERVICES`.
    pub chain: String,
    /// What happened.
    pub event: TraceEvent,
}

/// The kinds of `nft monitor trace` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// `packet: iif "…" oif "…" … ip saddr … ip daddr …`: the packet entered a base chain.
    Packet {
        /// Input interface, when the hook has one.
        iif: Option<String>,
        /// Output interface, when the hook has one.
        oif: Option<String>,
        /// Source address.
        saddr: Option<IpAddr>,
        /// Destination address.
        daddr: Option<IpAddr>,
        /// IPv4 TTL / IPv6 hop limit (decremented by each forwarding hop).
        ttl: Option<u8>,
        /// An ICMP/ICMPv6 echo reply (the return direction of an ICMP probe).
        reply: bool,
    },
    /// `rule <rule text> (verdict <verdict>)`.
    Rule {
        /// The rule as nft prints it (counters included).
        rule: String,
        /// `continue`, `accept`, `drop`, `jump CHAIN`, `return`, …
        verdict: String,
    },
    /// `policy accept|drop`: the chain's policy applied.
    Policy(String),
    /// `verdict …` (end of a non-base chain) and lines not understood.
    Other(String),
}

/// Parses one `nft monitor trace` line (`trace id <hex> <family> <table> <chain> <rest>`).
/// `None` for anything else.
pub fn parse_trace_line(line: &str) -> Option<TraceLine> {
    let rest = line.trim().strip_prefix("trace id ")?;
    let mut words = rest.splitn(5, ' ');
    let id = words.next()?.to_string();
    let family = words.next()?;
    let table = words.next()?;
    let chain = words.next()?;
    let body = words.next().unwrap_or("").trim();
    let event = if let Some(p) = body.strip_prefix("packet:") {
        let words: Vec<&str> = p.split_whitespace().collect();
        // The value after `<a> <b>` (e.g. `ip saddr`), quotes removed.
        let after = |a: &str, b: &str| {
            words
                .windows(3)
                .find(|w| w[0] == a && w[1] == b)
                .map(|w| w[2].trim_matches('"').to_string())
        };
        let after1 = |key: &str| {
            words
                .windows(2)
                .find(|w| w[0] == key)
                .map(|w| w[1].trim_matches('"').to_string())
        };
        let addr = |key: &str| {
            after("ip", key)
                .or_else(|| after("ip6", key))
                .and_then(|s| s.parse::<IpAddr>().ok())
        };
        TraceEvent::Packet {
            iif: after1("iif"),
            oif: after1("oif"),
            saddr: addr("saddr"),
            daddr: addr("daddr"),
            ttl: after("ip", "ttl")
                .or_else(|| after("ip6", "hoplimit"))
                .and_then(|s| s.parse().ok()),
            reply: after("icmp", "type")
                .or_else(|| after("icmpv6", "type"))
                .is_some_and(|t| t == "echo-reply"),
        }
    } else if let Some(r) = body.strip_prefix("rule ") {
        match r.rsplit_once(" (verdict ") {
            Some((rule, v)) => TraceEvent::Rule {
                rule: without_counter_values(rule),
                verdict: v.trim_end_matches(')').trim().to_string(),
            },
            None => TraceEvent::Other(body.to_string()),
        }
    } else if let Some(p) = body.strip_prefix("policy ") {
        TraceEvent::Policy(p.trim().to_string())
    } else {
        TraceEvent::Other(body.to_string())
    };
    Some(TraceLine {
        id,
        chain: format!("{family} {table} {chain}"),
        event,
    })
}

/// A rule's text with `counter packets N bytes M` shortened to `counter` and runs of spaces
/// collapsed, so the same rule matched by two packets reads the same.
fn without_counter_values(rule: &str) -> String {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
        {
            out.push("counter");
            i += 5;
        } else {
            out.push(words[i]);
            i += 1;
        }
    }
    out.join(" ")
}

/// One packet's passage through one namespace: what `nft monitor trace` reported under one
/// trace id, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The namespace's lab name (`node-1`, `pod-2-1`, `inet`).
    pub at: String,
    /// The interface it came in on (`None`: sent by this namespace).
    pub iif: Option<String>,
    /// The interface it left on (`None`: delivered to this namespace).
    pub oif: Option<String>,
    /// (source, destination) when it entered.
    pub first: (Option<IpAddr>, Option<IpAddr>),
    /// (source, destination) when last seen (differs after NAT).
    pub last: (Option<IpAddr>, Option<IpAddr>),
    /// `(chain, rule, verdict)` of every matched rule, in order, the trace table's own left out.
    pub rules: Vec<(String, String, String)>,
    /// `(chain, policy)` of base chains that ended in their policy other than accept.
    pub policies: Vec<(String, String)>,
    /// The TTL / hop limit at the first hook that reported the packet.
    pub ttl: Option<u8>,
    /// Whether that first hook already had an output interface (output, forward or
    /// postrouting: after the routing decision and a forward's TTL decrement), rather than
    /// only an input one (prerouting).
    pub routed_first: bool,
    /// The return direction of an ICMP probe (an echo reply).
    pub reply: bool,
}

/// Groups one namespace's trace lines by trace id into [`Hop`]s, in the order the ids first
/// appeared. Lines of the trace table itself are used for addresses but not listed as rules.
pub fn hops(at: &str, lines: &[TraceLine]) -> Vec<Hop> {
    let own = format!(" {TABLE} ");
    let mut order: Vec<String> = Vec::new();
    let mut by_id: BTreeMap<String, Hop> = BTreeMap::new();
    for l in lines {
        let hop = by_id.entry(l.id.clone()).or_insert_with(|| {
            order.push(l.id.clone());
            Hop {
                at: at.to_string(),
                iif: None,
                oif: None,
                first: (None, None),
                last: (None, None),
                rules: Vec::new(),
                policies: Vec::new(),
                ttl: None,
                routed_first: false,
                reply: false,
            }
        });
        let mine = format!(" {} ", l.chain).contains(&own);
        match &l.event {
            TraceEvent::Packet {
                iif,
                oif,
                saddr,
                daddr,
                ttl,
                reply,
            } => {
                if hop.ttl.is_none() && ttl.is_some() {
                    hop.ttl = *ttl;
                    hop.routed_first = oif.is_some();
                }
                hop.reply |= *reply;
                if hop.first == (None, None) {
                    hop.first = (*saddr, *daddr);
                }
                if saddr.is_some() || daddr.is_some() {
                    hop.last = (*saddr, *daddr);
                }
                if hop.iif.is_none() {
                    hop.iif.clone_from(iif);
                }
                if oif.is_some() {
                    hop.oif.clone_from(oif);
                }
            }
            TraceEvent::Rule { rule, .. } if mine => {
                hop.reply |= rule.contains("ct direction reply");
            }
            TraceEvent::Rule { rule, verdict } => {
                hop.rules
                    .push((l.chain.clone(), rule.clone(), verdict.clone()));
            }
            TraceEvent::Policy(p) if !mine && !p.starts_with("accept") => {
                hop.policies.push((l.chain.clone(), p.clone()));
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

/// Puts the hops of every namespace in the order the packet took them and joins the pieces
/// of one passage. The kernel gives a packet a new trace id at some hooks (after NAT, on
/// the bridge), and the monitors of different namespaces report concurrently, so arrival
/// order alone is not the path. The order is: the probe's direction first, then its return
/// (ICMP echo replies); within a direction, highest TTL first (every forwarding hop
/// decrements it between prerouting and forward: a sender's output hook and the next
/// namespace's prerouting see the same TTL); at equal TTL, a piece that starts after a
/// routing decision (it has an output interface) before one that starts at prerouting;
/// remaining ties by arrival time. Adjacent hops in the same namespace are
/// then one passage when they entered the same way: the first one's entry, the last one's
/// exit, every rule once. Bridged frames (same-node and hairpin traffic through `headcni0`
/// with `br_netfilter`) are not routed, so their TTL does not change and their order within
/// a namespace is the arrival order.
pub fn path(mut timed: Vec<(Instant, Hop)>) -> Vec<Hop> {
    timed.sort_by_key(|(at, h)| (h.reply, std::cmp::Reverse(h.ttl), !h.routed_first, *at));
    let mut out: Vec<Hop> = Vec::new();
    for (_, h) in timed {
        match out.last_mut() {
            // One passage: same namespace and direction, entered the same way (both sent
            // here, or both in on the same interface); a packet sent and then delivered back
            // to the same namespace (hairpin) is two passages.
            Some(prev) if prev.at == h.at && prev.reply == h.reply && prev.iif == h.iif => {
                if prev.iif.is_none() {
                    prev.iif = h.iif;
                }
                if h.oif.is_some() {
                    prev.oif = h.oif;
                }
                if prev.first == (None, None) {
                    prev.first = h.first;
                }
                if h.last != (None, None) {
                    prev.last = h.last;
                }
                // Later segments of the same connection match the same rules: list each once.
                for r in h.rules {
                    if !prev.rules.contains(&r) {
                        prev.rules.push(r);
                    }
                }
                for p in h.policies {
                    if !prev.policies.contains(&p) {
                        prev.policies.push(p);
                    }
                }
            }
            _ => out.push(h),
        }
    }
    out
}

/// The nft script that adds the trace table (`add`), idempotent with a leading `add table`.
pub fn trace_table_script() -> String {
    let mut rules = String::new();
    let mut chains = String::new();
    for (chain, hook) in HOOKS {
        chains.push_str(&format!(
            "add chain inet {TABLE} {chain} {{ type filter hook {hook} priority -199; }}\n"
        ));
        for family in ["ip", "ip6"] {
            // The first rule says the direction (it appears in the trace of every hook, as
            // the kernel may give the packet a new trace id at any of them); the second
            // marks packets conntrack does not track.
            rules.push_str(&format!(
                "add rule inet {TABLE} {chain} {family} dscp {TRACE_DSCP} ct direction reply meta nftrace set 1\n\
                 add rule inet {TABLE} {chain} {family} dscp {TRACE_DSCP} meta nftrace set 1\n"
            ));
        }
    }
    format!(
        "add table inet {TABLE}\n\
         flush table inet {TABLE}\n{chains}{rules}"
    )
}

/// The result of `trace`.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The source target and its address.
    pub from: (String, Option<IpAddr>),
    /// The destination as given and its address.
    pub to: (String, IpAddr),
    /// The probe sent.
    pub probe: Probe,
    /// Whether it was answered (ICMP echo reply; TCP connection established), and how fast.
    pub answered: Option<Duration>,
    /// What answered instead, e.g. `connection refused`.
    pub failure: Option<String>,
    /// The hops in the order their first trace line arrived.
    pub hops: Vec<Hop>,
    /// `ip route get` for each forwarding or sending hop: (namespace, lookup, answer).
    pub routes: Vec<(String, String, String)>,
}

/// Removes the trace table from every namespace it was added to (also on panic).
struct TableGuard<'a> {
    ctxs: Vec<&'a (String, Ctx)>,
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        for (_, ctx) in &self.ctxs {
            let _ = nft(ctx, &["delete", "table", "inet", TABLE]);
        }
    }
}

/// Kills the `nft monitor` children (also on panic).
struct Monitors(Vec<Child>);

impl Drop for Monitors {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn nft(ctx: &Ctx, args: &[&str]) -> Result<String> {
    let (mut cmd, _fds) = ctx.command("nft", false)?;
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("nft")?;
    if !out.status.success() {
        bail!(
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_script(ctx: &Ctx, script: &str) -> Result<()> {
    let (mut cmd, fds) = ctx.command("nft", false)?;
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("nft -f -")?;
    drop(fds);
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn route_get(ctx: &Ctx, args: &[String]) -> String {
    let run = || -> Result<String> {
        let (mut cmd, _fds) = ctx.command("ip", false)?;
        let out = cmd
            .args(["-d", "route", "get"])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        let text = if out.status.success() {
            out.stdout
        } else {
            out.stderr
        };
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "))
    };
    run().unwrap_or_else(|e| format!("({e})"))
}

/// Resolves a trace endpoint: a lab target (`pod-N-M`, `node-N`: its underlay address,
/// `inet`: [`INET_ADDR`]) or an IP address. With `ipv6`, a target's IPv6 address (a
/// dual-stack lab's, `lab up --dual-stack`).
fn resolve(lab: &Lab, what: &str, ipv6: bool) -> Result<(Option<Ctx>, Option<IpAddr>)> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok((None, Some(ip)));
    }
    let pick = |v4: Option<IpAddr>, v6: Option<IpAddr>| if ipv6 { v6 } else { v4 };
    if what == "inet" {
        return Ok((
            Some(lab.inet_ctx()),
            pick(Some(IpAddr::V4(INET_ADDR)), Some(IpAddr::V6(INET_ADDR_V6))),
        ));
    }
    if let Some(p) = lab.pod(what) {
        return Ok((
            Some(lab.pod_ctx(p)),
            pick(p.ip.map(IpAddr::V4), p.ip6.map(IpAddr::V6)),
        ));
    }
    if let Some(n) = what
        .strip_prefix("node-")
        .and_then(|s| s.parse::<u32>().ok())
        && let Some(node) = lab.nodes().get(&n)
    {
        return Ok((
            Some(lab.node_ctx(n)),
            pick(
                Some(IpAddr::V4(node.underlay)),
                node.underlay_v6.map(IpAddr::V6),
            ),
        ));
    }
    bail!("no trace endpoint {what:?} (pod-N-M, node-N, inet or an IP address)")
}

/// Sends the probe from the calling thread's namespace.
fn send_probe(dst: IpAddr, probe: Probe, timeout: Duration) -> (Option<Duration>, Option<String>) {
    let start = Instant::now();
    let tos = TRACE_DSCP << 2;
    match probe {
        Probe::Icmp => match headcni_testkit::icmp::ping_with_tos(dst, timeout, tos) {
            Ok(true) => (Some(start.elapsed()), None),
            Ok(false) => (None, Some("no echo reply".into())),
            Err(e) => (None, Some(format!("ping: {e}"))),
        },
        Probe::Tcp(port) => {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            let addr = SocketAddr::new(dst, port);
            let r = (|| -> std::io::Result<()> {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                match dst {
                    IpAddr::V4(_) => s.set_tos_v4(u32::from(tos))?,
                    IpAddr::V6(_) => s.set_tclass_v6(u32::from(tos))?,
                }
                s.connect_timeout(&SockAddr::from(addr), timeout)
            })();
            match r {
                Ok(()) => (Some(start.elapsed()), None),
                Err(e) => (None, Some(format!("tcp connect: {e}"))),
            }
        }
    }
}

/// Traces one probe from `from` to `to` (see the module docs). Needs root, `nft` and `ip`.
///
/// Errors: an unknown endpoint, a source without a lab namespace, `nft` failing to add the
/// trace table or to start its monitor.
pub fn trace(lab: &Lab, from: &str, to: &str, probe: Probe) -> Result<Trace> {
    let to_v6 = to.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
    trace_family(lab, from, to, probe, to_v6)
}

/// [`trace`] between lab targets' IPv6 addresses when `ipv6` (`lab trace --ipv6`).
///
/// Errors: as [`trace`]; a target without an IPv6 address (not a dual-stack lab).
pub fn trace_family(lab: &Lab, from: &str, to: &str, probe: Probe, ipv6: bool) -> Result<Trace> {
    let (from_ctx, from_ip) = resolve(lab, from, ipv6)?;
    let from_ctx =
        from_ctx.ok_or_else(|| anyhow!("the source must be a lab target, not an address"))?;
    let (to_ctx, to_ip) = resolve(lab, to, ipv6)?;
    let to_ip = to_ip.ok_or_else(|| anyhow!("{to} has no address"))?;

    let mut watched: Vec<(String, Ctx)> = vec![(from.to_string(), from_ctx.clone())];
    if let Some(c) = to_ctx
        && to != from
    {
        watched.push((to.to_string(), c));
    }
    for n in lab.nodes().keys() {
        let name = format!("node-{n}");
        if !watched.iter().any(|(w, _)| *w == name) {
            watched.push((name, lab.node_ctx(*n)));
        }
    }
    if !watched.iter().any(|(w, _)| w == "inet") {
        watched.push(("inet".into(), lab.inet_ctx()));
    }

    let mut guard = TableGuard { ctxs: Vec::new() };
    for w in &watched {
        nft_script(&w.1, &trace_table_script())
            .with_context(|| format!("{}: adding the trace table", w.0))?;
        guard.ctxs.push(w);
    }

    let (tx, rx) = mpsc::channel::<(Instant, usize, String)>();
    let mut monitors = Monitors(Vec::new());
    for (i, (name, ctx)) in watched.iter().enumerate() {
        // Line-buffered (coreutils' stdbuf), so each line's arrival time means something.
        let (mut cmd, fds) = ctx.command("stdbuf", false)?;
        let mut child = cmd
            .args(["-oL", "nft", "monitor", "trace"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{name}: nft monitor trace"))?;
        drop(fds);
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("nft monitor stdout"))?;
        monitors.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .take(MAX_LINES)
            {
                if tx.send((Instant::now(), i, line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    std::thread::sleep(MONITOR_SETTLE);

    let (answered, failure) = from_ctx
        .run(move || send_probe(to_ip, probe, Duration::from_secs(2)))
        .context("entering the source's namespaces")?;
    std::thread::sleep(DRAIN);
    drop(monitors);

    let mut per_ns: Vec<Vec<TraceLine>> = vec![Vec::new(); watched.len()];
    let mut first_seen: BTreeMap<(usize, String), Instant> = BTreeMap::new();
    for (at, i, line) in rx.try_iter() {
        if let Some(l) = parse_trace_line(&line) {
            first_seen.entry((i, l.id.clone())).or_insert(at);
            per_ns[i].push(l);
        }
    }
    let mut all: Vec<(Instant, Hop)> = Vec::new();
    for (i, lines) in per_ns.iter().enumerate() {
        let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
        for ((j, id), at) in &first_seen {
            if *j == i {
                seen.insert(id.clone(), *at);
            }
        }
        // hops() keeps id order; pair each with its first-seen time.
        let mut ids: Vec<&String> = Vec::new();
        for l in lines {
            if !ids.contains(&&l.id) {
                ids.push(&l.id);
            }
        }
        for (hop, id) in hops(&watched[i].0, lines).into_iter().zip(ids) {
            all.push((seen.get(id).copied().unwrap_or_else(Instant::now), hop));
        }
    }
    let hops = path(all);

    let mut routes = Vec::new();
    for h in &hops {
        let (Some(src), Some(dst)) = h.last else {
            continue;
        };
        let Some((_, ctx)) = watched.iter().find(|(w, _)| *w == h.at) else {
            continue;
        };
        let mut args = vec![dst.to_string(), "from".into(), src.to_string()];
        match (&h.iif, &h.oif) {
            (Some(i), Some(_)) => args.extend(["iif".into(), i.clone()]),
            (None, Some(_)) => {}
            _ => continue,
        }
        let lookup = args.join(" ");
        let answer = route_get(ctx, &args);
        if !routes
            .iter()
            .any(|(a, l, _): &(String, String, String)| *a == h.at && *l == lookup)
        {
            routes.push((h.at.clone(), lookup, answer));
        }
    }
    drop(guard);
    Ok(Trace {
        from: (from.to_string(), from_ip),
        to: (to.to_string(), to_ip),
        probe,
        answered,
        failure,
        hops,
        routes,
    })
}

fn addr(a: Option<IpAddr>) -> String {
    a.map_or_else(|| "?".into(), |a| a.to_string())
}

/// The human report of a [`Trace`]: a header, then one block per hop (interfaces,
/// addresses — both when NAT changed them —, the route lookup, the matched rules).
pub fn render(t: &Trace) -> String {
    let mut s = String::new();
    let probe = match t.probe {
        Probe::Icmp => "ICMP echo".to_string(),
        Probe::Tcp(p) => format!("TCP connect to port {p}"),
    };
    let outcome = match (&t.answered, &t.failure) {
        (Some(d), _) => format!("answered in {:.1} ms", d.as_secs_f64() * 1e3),
        (None, Some(f)) => format!("not answered: {f}"),
        (None, None) => "not answered".into(),
    };
    s.push_str(&format!(
        "trace {} ({}) → {} ({}), {probe} marked DSCP {TRACE_DSCP}: {outcome}\n",
        t.from.0,
        addr(t.from.1),
        t.to.0,
        t.to.1
    ));
    for (i, h) in t.hops.iter().enumerate() {
        if h.reply && (i == 0 || !t.hops[i - 1].reply) {
            s.push_str("    ← the reply\n");
        }
        let path = match (&h.iif, &h.oif) {
            (Some(i), Some(o)) => format!("in {i} → out {o} (forwarded)"),
            (None, Some(o)) => format!("sent, out {o}"),
            (Some(i), None) => format!("in {i} → delivered here"),
            (None, None) => "seen".into(),
        };
        let addrs = if h.first == h.last {
            format!("{} → {}", addr(h.first.0), addr(h.first.1))
        } else {
            format!(
                "{} → {} becomes {} → {} (NAT)",
                addr(h.first.0),
                addr(h.first.1),
                addr(h.last.0),
                addr(h.last.1)
            )
        };
        s.push_str(&format!("{:>2}. {:<9} {path}; {addrs}\n", i + 1, h.at));
        for (at, lookup, answer) in &t.routes {
            if *at == h.at && lookup.starts_with(&addr(h.last.1)) {
                s.push_str(&format!("      route get {lookup}: {answer}\n"));
            }
        }
        for (chain, rule, verdict) in &h.rules {
            s.push_str(&format!("      {chain}: {rule} → {verdict}\n"));
        }
        for (chain, policy) in &h.policies {
            s.push_str(&format!("      {chain}: policy {policy}\n"));
        }
    }
    if t.hops.is_empty() {
        s.push_str("    (no namespace reported the probe)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as nftables 1.0.6 (Debian bookworm) prints them.
    const OUT: &str = r#"trace id 56a9cf1f inet headcni_lab_trace out packet: oif "eth0" ip saddr 10.244.1.2 ip daddr 10.244.2.2 ip dscp 0x2d ip ecn not-ect ip ttl 64 ip id 8220 ip protocol icmp ip length 84 icmp type echo-request
trace id 56a9cf1f inet headcni_lab_trace out rule ip dscp 0x2d meta nftrace set 1 (verdict continue)
trace id 56a9cf1f inet headcni_lab_trace out policy accept "#;
    const FWD: &str = r#"trace id cfb81f22 inet headcni_lab_trace pre packet: iif "headcni0" @ll,0,112 0x800 ip saddr 10.244.1.2 ip daddr 10.96.0.10 ip dscp 0x2d ip protocol tcp
trace id cfb81f22 inet headcni_lab_trace pre rule ip dscp 0x2d meta nftrace set 1 (verdict continue)
trace id cfb81f22 ip nat PREROUTING rule counter packets 0 bytes 0 jump KUBE-SERVICES (verdict jump KUBE-SERVICES)
trace id cfb81f22 ip nat KUBE-SEP-ABC rule meta l4proto tcp counter packets 0 bytes 0 dnat to 10.244.2.2:8080 (verdict accept)
trace id cfb81f22 ip filter FORWARD packet: iif "headcni0" oif "tailscale0" ip saddr 10.244.1.2 ip daddr 10.244.2.2 ip dscp 0x2d
trace id cfb81f22 ip filter FORWARD policy drop "#;

    fn parse(text: &str) -> Vec<TraceLine> {
        text.lines().filter_map(parse_trace_line).collect()
    }

    #[test]
    fn packet_rule_and_policy_lines_parse() {
        let l = parse(OUT);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].id, "56a9cf1f");
        assert_eq!(l[0].chain, "inet headcni_lab_trace out");
        assert_eq!(
            l[0].event,
            TraceEvent::Packet {
                iif: None,
                oif: Some("eth0".into()),
                saddr: Some("10.244.1.2".parse().unwrap()),
                daddr: Some("10.244.2.2".parse().unwrap()),
                ttl: Some(64),
                reply: false,
            }
        );
        assert_eq!(
            l[1].event,
            TraceEvent::Rule {
                rule: "ip dscp 0x2d meta nftrace set 1".into(),
                verdict: "continue".into()
            }
        );
        assert_eq!(l[2].event, TraceEvent::Policy("accept".into()));
        assert_eq!(parse_trace_line("table inet x added"), None);
        assert_eq!(parse_trace_line("trace id"), None);
    }

    #[test]
    fn a_forwarded_packet_shows_nat_rules_and_a_dropping_policy() {
        let h = hops("node-1", &parse(FWD));
        assert_eq!(h.len(), 1);
        let h = &h[0];
        assert_eq!(h.iif.as_deref(), Some("headcni0"));
        assert_eq!(h.oif.as_deref(), Some("tailscale0"));
        assert_eq!(
            h.first,
            (
                Some("10.244.1.2".parse().unwrap()),
                Some("10.96.0.10".parse().unwrap())
            )
        );
        assert_eq!(
            h.last,
            (
                Some("10.244.1.2".parse().unwrap()),
                Some("10.244.2.2".parse().unwrap())
            )
        );
        // The trace table's own rule is not listed; the KUBE-* ones are, in order.
        assert_eq!(h.rules.len(), 2);
        assert_eq!(h.rules[0].0, "ip nat PREROUTING");
        assert_eq!(h.rules[0].2, "jump KUBE-SERVICES");
        assert!(h.rules[1].1.contains("dnat to 10.244.2.2:8080"));
        assert_eq!(
            h.rules[0].1, "counter jump KUBE-SERVICES",
            "counter values are left out"
        );
        assert_eq!(
            h.policies,
            vec![("ip filter FORWARD".into(), "drop".into())]
        );
    }

    #[test]
    fn each_trace_id_is_its_own_hop_in_arrival_order() {
        let text = format!("{OUT}\n{FWD}");
        let h = hops("node-1", &parse(&text));
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].oif.as_deref(), Some("eth0"));
        assert_eq!(h[0].iif, None);
        assert_eq!(h[1].iif.as_deref(), Some("headcni0"));
    }

    fn hop(at: &str, iif: Option<&str>, oif: Option<&str>, ttl: u8, routed: bool) -> Hop {
        Hop {
            at: at.into(),
            iif: iif.map(Into::into),
            oif: oif.map(Into::into),
            first: (None, None),
            last: (None, None),
            rules: vec![(at.into(), format!("rule at ttl {ttl}"), "accept".into())],
            policies: Vec::new(),
            ttl: Some(ttl),
            routed_first: routed,
            reply: false,
        }
    }

    #[test]
    fn the_path_follows_ttl_not_arrival_and_joins_one_passage() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Reported out of order, node-1's passage split in two trace ids, and the reply
        // reported first of all.
        let mut reply = hop("pod-2-1", None, Some("eth0"), 64, true);
        reply.reply = true;
        let timed = vec![
            (
                at(1),
                hop("node-2", Some("tailscale0"), Some("headcni0"), 63, false),
            ),
            (at(2), hop("pod-2-1", Some("eth0"), None, 62, false)),
            (at(3), hop("node-1", Some("headcni0"), None, 64, false)),
            (
                at(4),
                hop("node-1", Some("headcni0"), Some("tailscale0"), 63, true),
            ),
            (at(6), hop("pod-1-1", None, Some("eth0"), 64, true)),
            (at(0), reply),
        ];
        let p = path(timed);
        let names: Vec<&str> = p.iter().map(|h| h.at.as_str()).collect();
        assert_eq!(names, ["pod-1-1", "node-1", "node-2", "pod-2-1", "pod-2-1"]);
        assert_eq!(p[1].iif.as_deref(), Some("headcni0"));
        assert_eq!(p[1].oif.as_deref(), Some("tailscale0"));
        assert_eq!(p[1].rules.len(), 2, "both pieces' rules, in order");
        assert!(p[4].reply);
    }

    #[test]
    fn a_packet_sent_and_delivered_back_to_the_same_namespace_is_two_passages() {
        let t0 = Instant::now();
        let sent = hop("pod-2-1", None, Some("eth0"), 64, true);
        let back = hop("pod-2-1", Some("eth0"), None, 64, false);
        let p = path(vec![(t0, sent), (t0 + Duration::from_millis(1), back)]);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn later_segments_of_a_connection_add_no_duplicate_rules() {
        let t0 = Instant::now();
        let syn = hop("node-1", Some("headcni0"), Some("tailscale0"), 63, true);
        let ack = hop("node-1", Some("headcni0"), Some("tailscale0"), 63, true);
        let p = path(vec![(t0, syn), (t0 + Duration::from_millis(1), ack)]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rules.len(), 1);
    }

    #[test]
    fn a_reply_is_told_by_the_trace_table_s_own_conntrack_rule() {
        let text = "trace id 1 inet headcni_lab_trace pre packet: iif \"tailscale0\" ip saddr 10.244.2.2 ip daddr 10.244.1.2 ip ttl 63 ip protocol tcp\n\
                    trace id 1 inet headcni_lab_trace pre rule ip dscp 0x2d ct direction reply meta nftrace set 1 (verdict continue)\n\
                    trace id 2 inet headcni_lab_trace pre packet: iif \"headcni0\" ip saddr 10.244.1.2 ip daddr 10.244.2.2 ip ttl 64 ip protocol tcp\n\
                    trace id 2 inet headcni_lab_trace pre rule ip dscp 0x2d meta nftrace set 1 (verdict continue)";
        let h = hops("node-1", &parse(text));
        assert_eq!(h.len(), 2);
        assert!(h[0].reply);
        assert!(!h[1].reply);
        assert!(
            h[0].rules.is_empty(),
            "the trace table's rules are not listed"
        );
    }

    #[test]
    fn the_trace_table_marks_both_families_after_conntrack() {
        let s = trace_table_script();
        assert!(s.contains("hook prerouting priority -199"));
        assert!(s.contains("hook output priority -199"));
        assert!(s.contains(&format!(
            "ip dscp {TRACE_DSCP} ct direction reply meta nftrace set 1"
        )));
        assert!(s.contains(&format!("ip dscp {TRACE_DSCP} meta nftrace set 1")));
        assert!(s.contains(&format!("ip6 dscp {TRACE_DSCP} meta nftrace set 1")));
        // nft accepts it (a dry run in a namespace of this test's own).
        let ns = headcni_testkit::netns::Ns::new("trace", "nft");
        let (mut cmd, fds) = ns.command("nft");
        let mut child = cmd
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        drop(fds);
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("nft -c");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn render_names_nat_and_the_outcome() {
        let t = Trace {
            from: ("pod-1-1".into(), Some("10.244.1.2".parse().unwrap())),
            to: ("10.96.0.10".into(), "10.96.0.10".parse().unwrap()),
            probe: Probe::Tcp(80),
            answered: None,
            failure: Some("tcp connect: timed out".into()),
            hops: hops("node-1", &parse(FWD)),
            routes: vec![(
                "node-1".into(),
                "10.244.2.2 from 10.244.1.2 iif headcni0".into(),
                "10.244.2.2 dev tailscale0 table 52".into(),
            )],
        };
        let r = render(&t);
        assert!(r.contains("not answered: tcp connect: timed out"), "{r}");
        assert!(r.contains("becomes 10.244.1.2 → 10.244.2.2 (NAT)"), "{r}");
        assert!(
            r.contains("in headcni0 → out tailscale0 (forwarded)"),
            "{r}"
        );
        assert!(r.contains("dev tailscale0 table 52"), "{r}");
        assert!(r.contains("ip filter FORWARD: policy drop"), "{r}");
    }
}
