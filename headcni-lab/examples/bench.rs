//! Lab benchmarks that need the lab library (run by `bench/lab.sh`, which brings the lab up
//! and down): route convergence when a node joins, and the node daemon's memory.
//!
//! ```sh
//! headcni lab up --name bench
//! cargo run --release -p headcni-lab --example bench -- converge --name bench --reps 5
//! cargo run --release -p headcni-lab --example bench -- rss --name bench --node 1 --burst 50
//! headcni lab down --name bench
//! ```
//!
//! Human progress goes to stderr; every measurement is also printed on stdout as one line
//! `RESULT <key> <value>` (times in milliseconds, memory in KiB) for the script to collect.
//!
//! Method (see `docs/performance.md`, "Multi-node lab"):
//! - `converge`: for each repetition a fresh node N (N = `--first-node`, +1, ...) is added with
//!   [`Lab::add_node`] (namespaces, tailscaled stand-in, then the daemon is spawned: t0 is when
//!   that returns), then [`Lab::wait_ready`], one pod via [`Lab::add_pod`], and ICMP from one
//!   pod on every other node until each has had an answer. A watcher thread polls, every
//!   `--poll-ms`, the Headscale stand-in's `GET /api/v1/node` (route approved) and every other
//!   node's `ip route show table 52` (route installed). The node is then removed with
//!   [`Lab::remove_node`] and the route's withdrawal from every peer's table 52 is timed.
//! - `rss`: `VmRSS`/`VmHWM` of node N's `headcni-daemon` process (`/proc/<pid>/status`), idle
//!   for `--idle-secs`, then during a burst of `--burst` CNI ADDs through the daemon's
//!   conflist, a hold over at least two reconcile intervals, and the matching DELs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use headcni_lab::cluster::{Api, Lab, Pod};
use ipnetwork::Ipv4Network;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "HeadCNI lab benchmarks (convergence, daemon RSS)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Route convergence when a new node joins (daemon start → its pod reachable).
    Converge {
        /// Lab name (must be up).
        #[arg(long, default_value = "bench")]
        name: String,
        /// Repetitions (one fresh node each).
        #[arg(long, default_value_t = 5)]
        reps: u32,
        /// Index of the first added node (the next ones count up).
        #[arg(long, default_value_t = 3)]
        first_node: u32,
        /// Poll interval of the approval / table 52 watcher, ms.
        #[arg(long, default_value_t = 10)]
        poll_ms: u64,
        /// Give up on one step after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// The daemon's memory, idle and during a burst of pod ADD/DEL.
    Rss {
        /// Lab name (must be up).
        #[arg(long, default_value = "bench")]
        name: String,
        /// The node whose daemon is measured.
        #[arg(long, default_value_t = 1)]
        node: u32,
        /// Seconds of idle sampling.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
        /// Pods added (then deleted) in the burst.
        #[arg(long, default_value_t = 50)]
        burst: u32,
        /// Seconds to hold the burst's pods (covers reconcile passes).
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
}

fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and maximum of a non-empty sample.
fn median_max(v: &[f64]) -> Option<(f64, f64)> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let max = *s.last()?;
    let mid = s.len() / 2;
    let med = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    Some((med, max))
}

/// When the watcher first saw each event, relative to its own start.
#[derive(Debug, Default)]
struct Seen {
    approved: Option<Instant>,
    table52: BTreeMap<u32, Instant>,
}

/// True when Headscale shows `cidr` approved for `node_name` (either API generation).
fn approved(lab: &Lab, node_name: &str, cidr: &str) -> Result<bool> {
    match lab.spec().api {
        Api::V0_29 => {
            let (code, v) = lab.headscale_api("GET", "/api/v1/node", None)?;
            if code != 200 {
                bail!("GET /api/v1/node: {code}");
            }
            Ok(v["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n["name"] == node_name
                        && n["approvedRoutes"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|r| r == cidr))
                })
            }))
        }
        Api::V0_25 => {
            let (code, v) = lab.headscale_api("GET", "/api/v1/routes", None)?;
            if code != 200 {
                bail!("GET /api/v1/routes: {code}");
            }
            Ok(v["routes"].as_array().is_some_and(|routes| {
                routes.iter().any(|r| {
                    r["prefix"] == cidr && r["enabled"] == true && r["node"]["name"] == node_name
                })
            }))
        }
    }
}

/// Node N's table 52 (`ip route show table 52` inside the node).
fn table52(lab: &Lab, n: u32) -> Result<String> {
    let (mut cmd, fds) = lab.command(&format!("node-{n}"), "ip")?;
    let out = cmd.args(["-4", "route", "show", "table", "52"]).output()?;
    drop(fds);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_route(table: &str, cidr: &str) -> bool {
    table
        .lines()
        .any(|l| l.split_whitespace().next() == Some(cidr))
}

/// Polls approval of `cidr` for `node_name` and its presence in every peer's table 52 until
/// all are seen or `stop` is set.
fn watch(
    lab: Lab,
    node_name: String,
    cidr: String,
    peers: Vec<u32>,
    poll: Duration,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        if seen.approved.is_none() && approved(&lab, &node_name, &cidr).unwrap_or(false) {
            seen.approved = Some(Instant::now());
        }
        for p in &peers {
            if !seen.table52.contains_key(p)
                && table52(&lab, *p).is_ok_and(|t| has_route(&t, &cidr))
            {
                seen.table52.insert(*p, Instant::now());
            }
        }
        if seen.approved.is_some() && seen.table52.len() == peers.len() {
            break;
        }
        std::thread::sleep(poll);
    }
    seen
}

/// Pings `dst` from `from` until it answers; the instant of the first answer.
fn first_answer(lab: &Lab, from: &Pod, dst: IpAddr, deadline: Instant) -> Result<Instant> {
    loop {
        if lab.ping_from(from, dst, Duration::from_millis(100))? {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("{} never reached {dst}", from.name);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Debug, Default)]
struct Series(BTreeMap<&'static str, Vec<f64>>);

impl Series {
    fn push(&mut self, key: &'static str, v: f64) {
        self.0.entry(key).or_default().push(v);
    }
}

fn converge(name: &str, reps: u32, first: u32, poll: Duration, timeout: Duration) -> Result<()> {
    let mut lab = Lab::load(name)?;
    let mut series = Series::default();
    for rep in 0..reps {
        let n = first + rep;
        let peers: Vec<u32> = lab.nodes().keys().copied().collect();
        if peers.contains(&n) {
            bail!("node-{n} already exists in lab {name}");
        }
        // One pod on every other node pings the new pod.
        let probes: Vec<Pod> = peers
            .iter()
            .filter_map(|p| lab.pods().iter().find(|x| x.node == *p).cloned())
            .collect();
        if probes.len() != peers.len() {
            bail!("every node needs a pod to probe from (lab up --pods ≥ 1)");
        }
        let cidr = Ipv4Network::new(std::net::Ipv4Addr::new(10, 244, u8::try_from(n)?, 0), 24)?
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (w, node_name, cidr, peers, stop) = (
                Lab::load(name)?,
                format!("node-{n}"),
                cidr.clone(),
                peers.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || watch(w, node_name, cidr, peers, poll, stop))
        };
        let t_add = Instant::now();
        let added = lab.add_node(n);
        let t0 = Instant::now();
        let measured = added.and_then(|()| -> Result<(Instant, Instant, Vec<Instant>)> {
            lab.wait_ready(n, timeout)?;
            let t_ready = Instant::now();
            let pod = lab.add_pod(n)?;
            let t_pod = Instant::now();
            let dst = IpAddr::V4(pod.ip.ok_or_else(|| anyhow!("{} has no IPv4", pod.name))?);
            let deadline = Instant::now() + timeout;
            let answers = probes
                .iter()
                .map(|p| first_answer(&lab, p, dst, deadline))
                .collect::<Result<Vec<_>>>()?;
            Ok((t_ready, t_pod, answers))
        });
        // The watcher has had the whole reachability wait to see approval and table 52; give
        // it a last bounded chance, then stop it.
        let wait_until = Instant::now() + Duration::from_secs(5);
        while !watcher.is_finished() && Instant::now() < wait_until {
            std::thread::sleep(poll);
        }
        stop.store(true, Ordering::Relaxed);
        let seen = watcher
            .join()
            .map_err(|_| anyhow!("the watcher thread panicked"))?;
        let (t_ready, t_pod, answers) = match measured {
            Ok(m) => m,
            Err(e) => {
                let _ = lab.remove_node(n);
                return Err(e.context(format!("repetition {} (node-{n})", rep + 1)));
            }
        };
        let reach = answers.iter().max().copied().unwrap_or(t_pod);
        series.push("add_node_ms", ms(t0 - t_add));
        series.push("daemon_to_ready_ms", ms(t_ready - t0));
        series.push("daemon_to_reach_ms", ms(reach - t0));
        series.push("pod_add_to_reach_ms", ms(reach - t_pod));
        let mut line = format!(
            "rep {}: node-{n} daemon start → ready {:.0} ms, → pod reachable from {} nodes {:.0} ms (pod ADD → reachable {:.0} ms)",
            rep + 1,
            ms(t_ready - t0),
            answers.len(),
            ms(reach - t0),
            ms(reach - t_pod),
        );
        match seen.approved {
            Some(a) => {
                series.push("daemon_to_approved_ms", ms(a.saturating_duration_since(t0)));
                let last = seen.table52.values().max().copied();
                if seen.table52.len() == peers.len()
                    && let Some(last) = last
                {
                    let d = ms(last.saturating_duration_since(a));
                    series.push("approved_to_peer_table52_ms", d);
                    series.push(
                        "daemon_to_peer_table52_ms",
                        ms(last.saturating_duration_since(t0)),
                    );
                    line.push_str(&format!(
                        "; approved at {:.0} ms, in every peer's table 52 {d:.0} ms later",
                        ms(a.saturating_duration_since(t0))
                    ));
                } else {
                    line.push_str("; route not seen in every peer's table 52");
                }
            }
            None => line.push_str("; approval not seen"),
        }
        eprintln!("{line}");
        let t_rm = Instant::now();
        lab.remove_node(n)
            .with_context(|| format!("removing node-{n}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut present = false;
            for p in &peers {
                present |= has_route(&table52(&lab, *p)?, &cidr);
            }
            if !present {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{cidr} still in a peer's table 52 {timeout:?} after removing node-{n}");
            }
            std::thread::sleep(poll);
        }
        series.push("remove_to_withdrawn_ms", ms(t_rm.elapsed()));
    }
    for (key, v) in &series.0 {
        if let Some((med, max)) = median_max(v) {
            result(&format!("{key}.median"), format!("{med:.0}"));
            result(&format!("{key}.max"), format!("{max:.0}"));
            result(&format!("{key}.n"), v.len());
            eprintln!(
                "{key}: median {med:.0} ms, max {max:.0} ms over {}",
                v.len()
            );
        }
    }
    Ok(())
}

/// `VmRSS`, `VmHWM` (KiB) and `Threads` of a process.
fn mem(pid: i32) -> Result<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |k: &str| -> Result<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/status has no {k}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?, field("Threads:")?))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    Ok(get(11)? + get(12)?)
}

/// Samples `VmRSS` every 20 ms until `stop`; returns the samples (KiB).
fn sampler(pid: i32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((rss, _, _)) = mem(pid) {
                v.push(rss);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    })
}

fn rss(name: &str, node: u32, idle: Duration, burst: u32, hold: Duration) -> Result<()> {
    let mut lab = Lab::load(name)?;
    let pid = lab
        .nodes()
        .get(&node)
        .and_then(|n| n.daemon_pid)
        .ok_or_else(|| anyhow!("node-{node} has no daemon pid"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    if comm.trim() != "headcni-daemon" {
        bail!("pid {pid} is {:?}, not headcni-daemon", comm.trim());
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100);

    let stop = Arc::new(AtomicBool::new(false));
    let s = sampler(pid, stop.clone());
    let c0 = cpu_ticks(pid)?;
    std::thread::sleep(idle);
    let c1 = cpu_ticks(pid)?;
    stop.store(true, Ordering::Relaxed);
    let idle_samples = s.join().map_err(|_| anyhow!("sampler panicked"))?;
    let (rss_now, hwm, threads) = mem(pid)?;
    let idle_max = idle_samples.iter().max().copied().unwrap_or(rss_now);
    let idle_cpu = (c1 - c0) as f64 / hz as f64 / idle.as_secs_f64() * 100.0;
    eprintln!(
        "idle: node-{node} headcni-daemon pid {pid}: VmRSS {rss_now} KiB (max {idle_max} over {} s), VmHWM {hwm} KiB, {threads} threads, CPU {idle_cpu:.2} %",
        idle.as_secs()
    );
    result("idle.vmrss_kib", rss_now);
    result("idle.vmrss_max_kib", idle_max);
    result("idle.vmhwm_kib", hwm);
    result("idle.threads", threads);
    result("idle.cpu_pct", format!("{idle_cpu:.2}"));

    let stop = Arc::new(AtomicBool::new(false));
    let s = sampler(pid, stop.clone());
    let c0 = cpu_ticks(pid)?;
    let t = Instant::now();
    let mut added = Vec::new();
    let mut add_ms = Vec::new();
    let mut outcome = Ok(());
    for _ in 0..burst {
        let t1 = Instant::now();
        match lab.add_pod(node) {
            Ok(p) => {
                add_ms.push(ms(t1.elapsed()));
                added.push(p.name);
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let (_, hwm_added, threads_busy) = mem(pid)?;
    if outcome.is_ok() {
        std::thread::sleep(hold);
    }
    let mut del_ms = Vec::new();
    for p in &added {
        let t1 = Instant::now();
        match lab.del_pod(p) {
            Ok(()) => del_ms.push(ms(t1.elapsed())),
            Err(e) if outcome.is_ok() => outcome = Err(e),
            Err(_) => {}
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let busy_secs = t.elapsed().as_secs_f64();
    let c1 = cpu_ticks(pid)?;
    stop.store(true, Ordering::Relaxed);
    let busy_samples = s.join().map_err(|_| anyhow!("sampler panicked"))?;
    outcome?;
    let (rss_after, hwm_after, _) = mem(pid)?;
    let busy_max = busy_samples.iter().max().copied().unwrap_or(rss_after);
    let busy_cpu = (c1 - c0) as f64 / hz as f64 / busy_secs * 100.0;
    eprintln!(
        "busy: {burst} ADD + {}s hold + {burst} DEL: VmRSS max {busy_max} KiB, VmHWM {hwm_after} KiB (after ADDs {hwm_added}), {threads_busy} threads, after: VmRSS {rss_after} KiB; daemon CPU {busy_cpu:.1} % over {busy_secs:.1} s",
        hold.as_secs()
    );
    result("busy.vmrss_max_kib", busy_max);
    result("busy.vmhwm_kib", hwm_after);
    result("busy.threads", threads_busy);
    result("busy.after_vmrss_kib", rss_after);
    result("busy.cpu_pct", format!("{busy_cpu:.1}"));
    result("busy.pods", burst);
    if let (Some((am, ax)), Some((dm, dx))) = (median_max(&add_ms), median_max(&del_ms)) {
        eprintln!(
            "CNI chain through the conflist: ADD median {am:.1} ms (max {ax:.1}), DEL median {dm:.1} ms (max {dx:.1})"
        );
        result("busy.add_median_ms", format!("{am:.1}"));
        result("busy.del_median_ms", format!("{dm:.1}"));
    }
    Ok(())
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab benchmarks need root");
    }
    match Cli::parse().cmd {
        Cmd::Converge {
            name,
            reps,
            first_node,
            poll_ms,
            timeout_secs,
        } => converge(
            &name,
            reps,
            first_node,
            Duration::from_millis(poll_ms),
            Duration::from_secs(timeout_secs),
        ),
        Cmd::Rss {
            name,
            node,
            idle_secs,
            burst,
            hold_secs,
        } => rss(
            &name,
            node,
            Duration::from_secs(idle_secs),
            burst,
            Duration::from_secs(hold_secs),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_max_odd_even() {
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), Some((2.0, 3.0)));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 4.0)));
        assert_eq!(median_max(&[]), None);
    }

    #[test]
    fn has_route_matches_the_destination_only() {
        let t = "10.244.2.0/24 dev tailscale0 \n10.244.30.0/24 dev tailscale0 \n";
        assert!(has_route(t, "10.244.2.0/24"));
        assert!(!has_route(t, "10.244.3.0/24"));
        assert!(!has_route(
            "default dev tailscale0 via 10.244.3.0/24",
            "10.244.3.0/24"
        ));
    }
}
