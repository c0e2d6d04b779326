//! The node daemon's decisions on tailscaled's IPN bus (LocalAPI `GET
//! /localapi/v0/watch-ipn-bus`, a stream of `ipn.Notify`), sans I/O: which notifications call
//! for a reconcile pass now ([`BusView::apply`]), and what a pass does on the control plane
//! ([`control_pass`]: skip it, trust `Self.PrimaryRoutes`, or verify with the control server).
//!
//! Sources (tailscale/tailscale): `ipn/backend.go` (`Notify`, `NotifyWatchOpt`, `State`),
//! `ipn/ipnlocal/local.go` (what is sent when: `State` on a state change, `Prefs` after every
//! prefs edit, the netmap — `NetMap` on every netmap update before v1.100 on Linux; from
//! v1.100 `SelfChange` plus, with `NotifyPeerChanges`, `PeersChanged` / `PeersRemoved`),
//! `tailcfg/tailcfg.go` (`Node.PrimaryRoutes`, `Node.AllowedIPs`).

use std::collections::BTreeMap;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::ApprovalCheck;
use super::plan::PrefsView;

/// Most peers a [`BusView`] tracks; beyond, every peer update counts as a change (bounded
/// memory, conservative decision).
pub const MAX_TRACKED_PEERS: usize = 100_000;

/// One node of the netmap (`tailcfg.Node`), the fields whose change matters to routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRoutes {
    /// `ID` (`tailcfg.NodeID`, an integer on the wire).
    pub id: i64,
    /// `PrimaryRoutes`: the subnet routes this node serves as primary.
    pub primary_routes: Vec<IpNetwork>,
    /// `AllowedIPs`: its addresses and the routes approved for it.
    pub allowed_ips: Vec<IpNetwork>,
}

/// The route facts of one node that a change is judged on: primary routes and the allowed
/// IPs that are not single hosts (its own `/32`, `/128` addresses never change routing),
/// both sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RouteFacts {
    primary: Vec<IpNetwork>,
    allowed: Vec<IpNetwork>,
}

impl RouteFacts {
    fn of(n: &NodeRoutes) -> RouteFacts {
        let mut primary = n.primary_routes.clone();
        primary.sort();
        primary.dedup();
        let mut allowed: Vec<IpNetwork> = n
            .allowed_ips
            .iter()
            .filter(|p| !is_host(p))
            .copied()
            .collect();
        allowed.sort();
        allowed.dedup();
        RouteFacts { primary, allowed }
    }

    fn is_empty(&self) -> bool {
        self.primary.is_empty() && self.allowed.is_empty()
    }
}

fn is_host(p: &IpNetwork) -> bool {
    match p {
        IpNetwork::V4(n) => n.prefix() == 32,
        IpNetwork::V6(n) => n.prefix() == 128,
    }
}

/// One `ipn.Notify` in the terms decided on (the adapter parses the JSON and fills what the
/// message carries; absent fields mean "unchanged", as in the Go type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusEvent {
    /// `State` as its name (`NoState`, `NeedsLogin`, …, `Running`).
    pub state: Option<String>,
    /// `Prefs`, the fields HeadCNI manages.
    pub prefs: Option<PrefsView>,
    /// `NetMap` (the whole netmap: the initial message, and every netmap update on Linux
    /// before v1.100): `SelfNode` and every peer. `Some((None, _))`: no self node.
    pub full_netmap: Option<(Option<NodeRoutes>, Vec<NodeRoutes>)>,
    /// `SelfChange` (≥ v1.100): this node's new `tailcfg.Node`.
    pub self_change: Option<NodeRoutes>,
    /// `PeersChanged` (≥ v1.98 with `NotifyPeerChanges`): peers added or replaced.
    pub peers_changed: Vec<NodeRoutes>,
    /// `PeersRemoved`: ids of peers gone from the netmap.
    pub peers_removed: Vec<i64>,
}

/// What changed, as far as HeadCNI cares; one entry per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BusChange {
    /// The backend state (e.g. `Running` → `Stopped`, or a first state).
    State,
    /// `AdvertiseRoutes`, `RouteAll`, `NoSNAT` or `NoStatefulFiltering` (prefs drift).
    Prefs,
    /// This node's primary routes or approved routes (its route approved or revoked).
    SelfRoutes,
    /// A peer's primary or approved routes (a peer's pod route appeared, moved or left).
    PeerRoutes,
}

/// What the bus told so far: the baseline against which each notification is judged. A new
/// view (after a reconnect) judges everything as changed once.
#[derive(Debug, Clone, Default)]
pub struct BusView {
    state: Option<String>,
    prefs: Option<PrefsView>,
    self_facts: Option<RouteFacts>,
    peers: BTreeMap<i64, RouteFacts>,
    overflow: bool,
}

impl BusView {
    /// An empty view (a fresh bus connection).
    pub fn new() -> BusView {
        BusView::default()
    }

    /// How many peers with routes are tracked.
    pub fn tracked_peers(&self) -> usize {
        self.peers.len()
    }

    /// Folds `ev` into the view and returns what changed (sorted, each kind once; empty:
    /// nothing HeadCNI acts on, e.g. an `Engine` or `Health` update, a peer's endpoint or
    /// online flag, a prefs edit of a field HeadCNI does not manage).
    ///
    /// A full netmap replaces the peer set (peers absent from it are gone); `PeersChanged`
    /// upserts; `PeersRemoved` removes. Peers without routes are not tracked, so their
    /// arrival and departure change nothing.
    pub fn apply(&mut self, ev: &BusEvent) -> Vec<BusChange> {
        let mut out = Vec::new();
        if let Some(s) = &ev.state
            && self.state.as_ref() != Some(s)
        {
            self.state = Some(s.clone());
            out.push(BusChange::State);
        }
        if let Some(p) = &ev.prefs
            && self.prefs.as_ref() != Some(p)
        {
            self.prefs = Some(p.clone());
            out.push(BusChange::Prefs);
        }
        let mut self_changed = false;
        let mut peers_changed = false;
        if let Some((me, peers)) = &ev.full_netmap {
            if let Some(me) = me {
                self_changed |= self.set_self(me);
            }
            let mut next: BTreeMap<i64, RouteFacts> = BTreeMap::new();
            let mut overflow = false;
            for p in peers {
                let f = RouteFacts::of(p);
                if f.is_empty() {
                    continue;
                }
                if next.len() >= MAX_TRACKED_PEERS {
                    overflow = true;
                    break;
                }
                next.insert(p.id, f);
            }
            if next != self.peers || overflow || self.overflow {
                peers_changed = true;
            }
            self.peers = next;
            self.overflow = overflow;
        }
        if let Some(me) = &ev.self_change {
            self_changed |= self.set_self(me);
        }
        for p in &ev.peers_changed {
            peers_changed |= self.upsert_peer(p);
        }
        for id in &ev.peers_removed {
            peers_changed |= self.peers.remove(id).is_some();
        }
        if self_changed {
            out.push(BusChange::SelfRoutes);
        }
        if peers_changed {
            out.push(BusChange::PeerRoutes);
        }
        out
    }

    fn set_self(&mut self, me: &NodeRoutes) -> bool {
        let f = RouteFacts::of(me);
        let changed = self.self_facts.as_ref() != Some(&f);
        self.self_facts = Some(f);
        changed
    }

    fn upsert_peer(&mut self, p: &NodeRoutes) -> bool {
        let f = RouteFacts::of(p);
        if f.is_empty() {
            return self.peers.remove(&p.id).is_some();
        }
        if self.peers.get(&p.id) == Some(&f) {
            return false;
        }
        if !self.peers.contains_key(&p.id) && self.peers.len() >= MAX_TRACKED_PEERS {
            self.overflow = true;
            return true;
        }
        self.peers.insert(p.id, f);
        true
    }
}

/// What the daemon knows before a pass, for [`control_pass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassInputs {
    /// No control-plane pass has completed yet (start, or the backend was rebuilt).
    pub first: bool,
    /// The IPN bus stream is connected (else the daemon polls).
    pub bus_connected: bool,
    /// The bus reported a change HeadCNI acts on since the last pass ([`BusView::apply`]).
    pub bus_signalled: bool,
    /// The last control-plane pass ended ready.
    pub last_ready: bool,
    /// The slow resync is due (`[headscale] resync_secs`, jittered: [`jittered`]).
    pub resync_due: bool,
}

/// What a pass does on the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPass {
    /// Nothing: the bus is connected and silent, the last pass was ready, no resync due
    /// (the data plane and the conflist are still reconciled).
    Skip,
    /// Run the control-plane reconcile with `check` ([`ApprovalCheck`]).
    Run(ApprovalCheck),
}

/// The control-plane part of a pass:
/// - first pass or resync due → `Run(Verify)` (ask the control server);
/// - bus not connected (polling), a bus change, or the last pass not ready →
///   `Run(TrustPrimary)` (the LocalAPI alone; the control server only if the routes are not
///   primary, i.e. approval is needed);
/// - otherwise → `Skip`.
pub fn control_pass(i: PassInputs) -> ControlPass {
    if i.first || i.resync_due {
        ControlPass::Run(ApprovalCheck::Verify)
    } else if !i.bus_connected || i.bus_signalled || !i.last_ready {
        ControlPass::Run(ApprovalCheck::TrustPrimary)
    } else {
        ControlPass::Skip
    }
}

/// `base` stretched by `unit` ∈ [0, 1] (clamped) times a fifth: from `base` to `1.2 × base`,
/// so nodes started together spread their resyncs and none resyncs sooner than `base`.
pub fn jittered(base: Duration, unit: f64) -> Duration {
    let u = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base + base.mul_f64(0.2 * u)
}

/// What the daemon does after the bus stream ended: reconnect after a backoff, or (a
/// tailscaled without the bus) poll and try the bus again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusRetry {
    /// Reconnect after this wait.
    Reconnect(Duration),
    /// The bus is absent (404/405) or failed `failures` times in a row: poll at the
    /// reconcile interval and try the bus again after this wait.
    Fallback(Duration),
}

/// Consecutive bus failures after which the daemon falls back to polling.
pub const BUS_FAILURES_BEFORE_FALLBACK: u32 = 5;

/// After the stream ended: `absent` (404/405: a tailscaled older than v1.34, or one that
/// refuses the bus) → `Fallback(retry_absent)`; the `failures`-th failure in a row (1-based)
/// → `Reconnect` after 1 s doubling up to 30 s, and from
/// [`BUS_FAILURES_BEFORE_FALLBACK`] on → `Fallback(retry_absent)`.
pub fn bus_retry(absent: bool, failures: u32, retry_absent: Duration) -> BusRetry {
    if absent || failures >= BUS_FAILURES_BEFORE_FALLBACK {
        return BusRetry::Fallback(retry_absent);
    }
    let exp = failures.saturating_sub(1).min(5);
    BusRetry::Reconnect(Duration::from_secs(1u64 << exp).min(Duration::from_secs(30)))
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
