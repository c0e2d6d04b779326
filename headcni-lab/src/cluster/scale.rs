//! What a lab of many nodes needs: joining and removing nodes on a running lab (`headcni lab
//! add-node` / `remove-node`), a full-mesh wait whose cost follows the pairs still failing
//! (not every pair on every round), and the memory each node's processes use.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use super::{Lab, Mode, ns, progress};

/// Resident memory of one node's processes (`VmRSS` from `/proc/<pid>/status`), KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMemory {
    /// The `headcni daemon`.
    pub daemon_kib: u64,
    /// The tailscaled stand-in (host mode's, or the one the daemon supervises).
    pub tailscaled_kib: u64,
    /// `wireguard-go`.
    pub wireguard_kib: u64,
    /// Anything else in the node's namespaces (e.g. a `lab exec` shell).
    pub other_kib: u64,
}

impl NodeMemory {
    /// The sum, KiB.
    pub fn total_kib(&self) -> u64 {
        self.daemon_kib + self.tailscaled_kib + self.wireguard_kib + self.other_kib
    }
}

/// `VmRSS` of `pid` in KiB (`None` once it is gone).
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Lab {
    /// The processes in node N's namespaces (network or mount).
    pub fn node_pids(&self, n: u32) -> Vec<i32> {
        let (net, mnt) = self.node_ns_inodes(n);
        ns::processes_in(&net, &mnt)
    }

    /// Node N's processes' resident memory, by role (from `/proc`: the daemon and tailscaled
    /// by the pids the lab started, `wireguard-go` and the daemon mode's tailscaled by name).
    pub fn node_memory(&self, n: u32) -> NodeMemory {
        let node = self.state.nodes.get(&n);
        let daemon = node.and_then(|x| x.daemon_pid);
        let tailscaled = node.and_then(|x| x.tailscaled_pid);
        let mut m = NodeMemory::default();
        for pid in self.node_pids(n) {
            let Some(kib) = rss_kib(pid) else { continue };
            let name = comm(pid);
            if Some(pid) == daemon {
                m.daemon_kib += kib;
            } else if Some(pid) == tailscaled || name.starts_with("tailscaled") {
                m.tailscaled_kib += kib;
            } else if name == "wireguard-go" {
                m.wireguard_kib += kib;
            } else {
                m.other_kib += kib;
            }
        }
        m
    }

    /// Joins one more node to a running lab (the next free index) with `pods` pods: its
    /// namespaces, tailnet and daemon ([`Lab::add_node`]), waits until the daemon is ready,
    /// then CNI ADD of the pods. Returns the new node's index.
    ///
    /// Errors: the lab is full (indices 1-200), or any step of [`Lab::add_node`],
    /// [`Lab::wait_ready`] or [`Lab::add_pod`] (the half-built node is then removed again).
    pub fn join_node(&mut self, pods: u32) -> Result<u32> {
        let n = (1..=200u32)
            .find(|i| !self.state.nodes.contains_key(i))
            .ok_or_else(|| anyhow!("the lab has 200 nodes: no index left"))?;
        let built = self.add_node(n).and_then(|()| {
            self.wait_ready(n, Duration::from_secs(30))?;
            for _ in 0..pods {
                let pod = self.add_pod(n)?;
                progress(format!(
                    "{}: CNI ADD on node-{n} → {}",
                    pod.name,
                    pod.ip.map(|i| i.to_string()).unwrap_or_default()
                ));
            }
            Ok(())
        });
        if let Err(e) = built {
            progress(format!("node-{n} failed: {e:#}; removing it"));
            if self.state.nodes.contains_key(&n)
                && let Err(e2) = self.discard_node(n)
            {
                progress(format!("node-{n}: clean-up failed too: {e2:#}"));
            }
            return Err(e);
        }
        Ok(n)
    }

    /// Removes a half-built node without `headcni uninstall` (its daemon may never have
    /// started): processes, Headscale node, namespaces.
    fn discard_node(&mut self, n: u32) -> Result<()> {
        let node_id = self.tailnet_node_id(n).ok();
        let (net, mnt) = self.node_ns_inodes(n);
        ns::terminate(&ns::processes_in(&net, &mnt), Duration::from_secs(5));
        if let Some(id) = node_id {
            let _ = self.headscale_api("DELETE", &format!("/api/v1/node/{id}"), None);
        }
        let ctx = self.node_ctx(n);
        ns::unpin(&ctx.mnt.clone().unwrap_or_default())?;
        self.delete_hub_link(n)?;
        let _ = headcni_testkit::netns::delete_named(&self.ns_name(&format!("node-{n}")));
        self.state.pods.retain(|p| p.node != n);
        self.state.nodes.remove(&n);
        self.save()
    }

    /// Deletes node N's underlay veth (`n<N>` in the hub) now. Deleting the node's netns
    /// alone leaves the kernel to destroy the pair later (namespace clean-up runs
    /// asynchronously), so an `add_node(N)` right after `remove_node(N)` could find `n<N>`
    /// still there ("link n<N> already exists"), as `bench/scale.sh` did at 8 nodes.
    ///
    /// Errors: netlink errors other than the link being absent.
    pub(super) fn delete_hub_link(&self, n: u32) -> Result<()> {
        let hub = self.netns_path("hub");
        let name = format!("n{n}");
        super::block_on(async move {
            use headcni_core::link::LinkManager;
            let h = headcni_netlink::NetlinkHandle::for_netns(&hub).await?;
            h.delete_link(&name).await?;
            anyhow::Ok(())
        })
    }

    /// Like [`Lab::remove_node`], for the command line: refuses an unknown node and daemon
    /// mode's last node.
    pub fn leave_node(&mut self, n: u32) -> Result<()> {
        if !self.state.nodes.contains_key(&n) {
            bail!(
                "no node-{n} in lab {:?} (nodes: {})",
                self.state.spec.name,
                self.state
                    .nodes
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if self.state.spec.mode == Mode::Daemon && self.state.nodes.len() == 1 {
            bail!("node-{n} is the lab's last node: `headcni lab down` instead");
        }
        self.remove_node(n)
    }

    /// Waits until every pod answers every other pod's ping (both families in a dual-stack
    /// lab). Each round pings only the pairs
    /// that have not answered yet (a pair that answered once is not asked again), so a round
    /// costs what is still missing, not (pods × pods) pings of up to 500 ms.
    ///
    /// Errors: `timeout` passed; the message names up to 5 pairs still failing.
    pub fn wait_pairs(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: BTreeSet<(usize, usize)> = (0..self.state.pods.len())
            .flat_map(|a| (0..self.state.pods.len()).map(move |b| (a, b)))
            .filter(|(a, b)| a != b)
            .collect();
        // 500 ms on the first round; a pair asked again gets 1 s (a loaded 2-core machine
        // running 32 wireguard-go delays some echoes past 500 ms without losing them).
        let mut wait = Duration::from_millis(500);
        loop {
            let mut still = BTreeSet::new();
            for &(a, b) in &pending {
                let (pa, pb) = (&self.state.pods[a], &self.state.pods[b]);
                let mut ok = match pb.ip {
                    Some(ip) => self.ping_from(pa, IpAddr::V4(ip), wait).unwrap_or(false),
                    None => false,
                };
                // A dual-stack lab: IPv6 too.
                if ok && self.state.spec.dual_stack {
                    ok = match pb.ip6 {
                        Some(ip) => self.ping_from(pa, IpAddr::V6(ip), wait).unwrap_or(false),
                        None => false,
                    };
                }
                if !ok {
                    still.insert((a, b));
                }
            }
            pending = still;
            wait = Duration::from_secs(1);
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = pending
                    .iter()
                    .take(5)
                    .map(|&(a, b)| {
                        format!("{} → {}", self.state.pods[a].name, self.state.pods[b].name)
                    })
                    .collect();
                bail!(
                    "timed out after {timeout:?} waiting for every pod to reach every other pod: \
                     {} pairs still fail ({}{})",
                    pending.len(),
                    names.join(", "),
                    if pending.len() > 5 { ", ..." } else { "" }
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
