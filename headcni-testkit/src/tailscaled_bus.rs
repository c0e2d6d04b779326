//! The IPN bus of [`super::LocalApi`]: `GET /localapi/v0/watch-ipn-bus?mask=N`, a stream of
//! newline-delimited JSON `ipn.Notify`, one line per message, as tailscaled serves it.
//!
//! Sources (tailscale/tailscale): `ipn/localapi/localapi.go` `serveWatchIPNBus` (no method
//! check; `mask` parsed with `strconv.ParseUint` → 400 `bad mask`; 400 for
//! `NotifyInProcessNoDisconnect` (1<<16) and for `NotifyRateLimit` (1<<8) with any of
//! `NotifyPeerChanges | NotifyNoNetMap | NotifyInitialStatus | NotifyPeerPatches`
//! (`ipn/backend.go` `ValidateNotifyWatchOpt`); a JSON encoder then `Flush` per message);
//! `ipn/ipnlocal/local.go` (`WatchNotificationsAs`: the first message, only when an initial
//! bit is set, carries `Version`, with `NotifyInitialState` `SessionID` and `State`, with
//! `NotifyInitialPrefs` `Prefs`, with `NotifyInitialNetMap` `NetMap` (and ≥ v1.100
//! `SelfChange`); later `{State}` on a state change, `{Prefs}` after a prefs edit, and a netmap
//! update as a whole `NetMap` before v1.100 (here [`TailscaledVersion::V1_64`]), or from
//! v1.100 as `SelfChange` plus, for a watcher with `NotifyPeerChanges` (1<<12),
//! `PeersChanged` with every peer (`SetControlClientStatus`' full-netmap path) and
//! `PeersRemoved` for peers gone (the delta path)); `tailcfg/tailcfg.go` (`Node` JSON).
//! `ipn.State` is an integer on the wire. A tailscaled older than v1.34.0 has no such route:
//! [`LocalApi::set_ipn_bus`]`(false)` answers `404 page not found` as its `http.NotFound`.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{LocalApi, TailscaledVersion, TsState};
use crate::headscale::NodeView;
use crate::server::{Resp, Streamed, respond};

const INITIAL_STATE: u64 = 1 << 1;
const INITIAL_PREFS: u64 = 1 << 2;
const INITIAL_NETMAP: u64 = 1 << 3;
const RATE_LIMIT: u64 = 1 << 8;
const PEER_CHANGES: u64 = 1 << 12;
const NO_NETMAP: u64 = 1 << 13;
const INITIAL_STATUS: u64 = 1 << 14;
const PEER_PATCHES: u64 = 1 << 15;
const IN_PROCESS_NO_DISCONNECT: u64 = 1 << 16;
/// Messages queued for a slow reader before the session is dropped (tailscaled disconnects a
/// watcher that falls behind).
const QUEUE: usize = 64;

/// `ipn.State` names in their integer order (`ipn/backend.go`).
const STATES: [&str; 7] = [
    "NoState",
    "InUseOtherUser",
    "NeedsLogin",
    "NeedsMachineAuth",
    "Stopped",
    "Starting",
    "Running",
];

fn state_number(name: &str) -> i64 {
    STATES
        .iter()
        .position(|s| *s == name)
        .and_then(|i| i64::try_from(i).ok())
        .unwrap_or(0)
}

/// What one moment of the LocalAPI looks like on the bus.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    state: i64,
    prefs: Value,
    self_node: Option<Value>,
    peers: BTreeMap<u64, Value>,
}

/// `tailcfg.Node` as tailscaled marshals it (the fields a watcher may read).
fn node_json(n: &NodeView, online: bool) -> Value {
    let addrs: Vec<String> = n
        .ips
        .iter()
        .map(|i| match i {
            std::net::IpAddr::V4(a) => format!("{a}/32"),
            std::net::IpAddr::V6(a) => format!("{a}/128"),
        })
        .collect();
    let mut allowed = addrs.clone();
    allowed.extend(n.primary.iter().map(|p| p.to_string()));
    let mut v = json!({
        "ID": n.id, "StableID": format!("n{}", n.id),
        "Name": format!("{}.tailnet.example.", n.name), "Key": n.node_key,
        "Addresses": addrs, "AllowedIPs": allowed, "Online": online && n.online,
        "Hostinfo": {"Hostname": n.name, "OS": "linux"}
    });
    if !n.primary.is_empty()
        && let Some(o) = v.as_object_mut()
    {
        // omitempty
        o.insert(
            "PrimaryRoutes".into(),
            json!(n.primary.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
        );
    }
    v
}

impl TsState {
    fn bus_snapshot(&self) -> Snapshot {
        let me = match (&self.headscale, self.node_id) {
            (Some(hs), Some(id)) => hs.node(id),
            _ => None,
        };
        let peers = match (&self.headscale, self.node_id) {
            (Some(hs), Some(id)) if me.is_some() => hs
                .peers_of(id)
                .iter()
                .map(|p| (p.id, node_json(p, p.online)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let state = if self.backend_state == "Running" && me.is_none() && self.headscale.is_some() {
            "Starting"
        } else {
            self.backend_state.as_str()
        };
        Snapshot {
            state: state_number(state),
            prefs: self.prefs_json(),
            self_node: me.map(|n| node_json(&n, self.prefs.want_running)),
            peers,
        }
    }
}

/// Checks the request as `serveWatchIPNBus` does: `Ok(mask)`, or the error answer's status
/// and text.
pub(super) fn check(s: &TsState, query: Option<&str>) -> Result<u64, (StatusCode, &'static str)> {
    if !s.ipn_bus {
        return Err((StatusCode::NOT_FOUND, "404 page not found"));
    }
    let raw = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("mask="))
        .unwrap_or_default();
    let mask = if raw.is_empty() {
        0
    } else {
        raw.parse::<u64>()
            .map_err(|_| (StatusCode::BAD_REQUEST, "bad mask"))?
    };
    if mask & IN_PROCESS_NO_DISCONNECT != 0 {
        return Err((
            StatusCode::BAD_REQUEST,
            "NotifyInProcessNoDisconnect is only valid for in-process IPN bus subscribers",
        ));
    }
    if mask & RATE_LIMIT != 0
        && mask & (PEER_CHANGES | NO_NETMAP | INITIAL_STATUS | PEER_PATCHES) != 0
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "NotifyRateLimit is incompatible with new-style IPN bus subscription bits",
        ));
    }
    Ok(mask)
}

fn line(v: &Value) -> Bytes {
    let mut b = v.to_string().into_bytes();
    b.push(b'\n');
    Bytes::from(b)
}

fn netmap_json(snap: &Snapshot) -> Value {
    json!({
        "SelfNode": snap.self_node.clone().unwrap_or(Value::Null),
        "NodeKey": snap.self_node.as_ref().and_then(|n| n.get("Key")).cloned().unwrap_or(Value::Null),
        "Peers": if snap.peers.is_empty() { Value::Null } else { Value::Array(snap.peers.values().cloned().collect()) },
        "DNS": {}, "UserProfiles": {}
    })
}

/// The first message for `mask`, or `None` when no initial bit is set.
fn initial(snap: &Snapshot, mask: u64, version: TailscaledVersion, session: &str) -> Option<Value> {
    if mask & (INITIAL_STATE | INITIAL_PREFS | INITIAL_NETMAP) == 0 {
        return None;
    }
    let mut m = serde_json::Map::new();
    m.insert("Version".into(), json!(version.status_version()));
    if mask & INITIAL_STATE != 0 {
        m.insert("SessionID".into(), json!(session));
        m.insert("State".into(), json!(snap.state));
    }
    if mask & INITIAL_PREFS != 0 {
        m.insert("Prefs".into(), snap.prefs.clone());
    }
    if mask & INITIAL_NETMAP != 0 {
        if version == TailscaledVersion::V1_102
            && let Some(me) = &snap.self_node
        {
            m.insert("SelfChange".into(), me.clone());
        }
        m.insert("NetMap".into(), netmap_json(snap));
    }
    Some(Value::Object(m))
}

/// The messages that take a watcher from `old` to `new`.
fn updates(old: &Snapshot, new: &Snapshot, mask: u64, version: TailscaledVersion) -> Vec<Value> {
    let ver = json!(version.status_version());
    let mut out = Vec::new();
    if new.prefs != old.prefs {
        out.push(json!({"Version": ver, "Prefs": new.prefs}));
    }
    if new.self_node != old.self_node || new.peers != old.peers {
        match version {
            TailscaledVersion::V1_64 => {
                out.push(json!({"Version": ver, "NetMap": netmap_json(new)}));
            }
            TailscaledVersion::V1_102 => {
                let removed: Vec<u64> = old
                    .peers
                    .keys()
                    .filter(|id| !new.peers.contains_key(id))
                    .copied()
                    .collect();
                if !removed.is_empty() && mask & PEER_CHANGES != 0 {
                    out.push(json!({"Version": ver, "PeersRemoved": removed}));
                }
                let mut m = serde_json::Map::new();
                m.insert("Version".into(), ver.clone());
                if let Some(me) = &new.self_node {
                    m.insert("SelfChange".into(), me.clone());
                }
                if mask & PEER_CHANGES != 0 && !new.peers.is_empty() {
                    m.insert(
                        "PeersChanged".into(),
                        Value::Array(new.peers.values().cloned().collect()),
                    );
                }
                if m.len() > 1 {
                    out.push(Value::Object(m));
                }
            }
        }
    }
    if new.state != old.state {
        out.push(json!({"Version": ver, "State": new.state}));
    }
    out
}

impl LocalApi {
    /// Serves one `watch-ipn-bus` session with `mask` (already checked): a 200 streamed
    /// response fed by a task that follows this LocalAPI's changes and the coordination
    /// server's netmap changes until the watcher goes away.
    pub(super) fn watch(&self, mask: u64) -> Resp {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let api = self.clone();
        let mut local = self.subscribe();
        let netmap = self
            .lock()
            .headscale
            .as_ref()
            .and_then(|c| c.netmap_changes());
        tokio::spawn(async move {
            let session = format!("{:016x}", rand::random::<u64>());
            let (mut snap, version) = {
                let s = api.lock();
                (s.bus_snapshot(), s.version)
            };
            if let Some(first) = initial(&snap, mask, version, &session)
                && tx.try_send(line(&first)).is_err()
            {
                return;
            }
            let mut netmap = netmap;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = local.changed() => if r.is_err() { return },
                    r = async {
                        match netmap.as_mut() {
                            Some(rx) => rx.changed().await,
                            None => std::future::pending().await,
                        }
                    } => if r.is_err() { netmap = None },
                }
                let (next, version) = {
                    let s = api.lock();
                    (s.bus_snapshot(), s.version)
                };
                for m in updates(&snap, &next, mask, version) {
                    // A watcher that falls behind is dropped, as tailscaled does.
                    if tx.try_send(line(&m)).is_err() {
                        return;
                    }
                }
                snap = next;
            }
        });
        Streamed::attach(
            respond(StatusCode::OK, "application/json", Bytes::new()),
            rx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: &str, peers: &[(u64, &str)]) -> Snapshot {
        Snapshot {
            state: state_number(state),
            prefs: json!({"AdvertiseRoutes": []}),
            self_node: Some(json!({"ID": 1})),
            peers: peers
                .iter()
                .map(|(id, r)| (*id, json!({"ID": id, "PrimaryRoutes": [r]})))
                .collect(),
        }
    }

    #[test]
    fn v1_102_sends_self_change_and_peer_changes_only_when_asked() {
        let old = snap("Running", &[(2, "10.0.2.0/24")]);
        let new = snap("Running", &[(2, "10.0.2.0/24"), (3, "10.0.3.0/24")]);
        let with = updates(&old, &new, PEER_CHANGES, TailscaledVersion::V1_102);
        assert_eq!(with.len(), 1);
        assert_eq!(with[0]["PeersChanged"].as_array().map(Vec::len), Some(2));
        assert!(
            with[0].get("NetMap").is_none(),
            "no runtime NetMap on Linux ≥ 1.100"
        );
        let without = updates(&old, &new, 0, TailscaledVersion::V1_102);
        assert_eq!(without.len(), 1);
        assert!(without[0].get("PeersChanged").is_none());
        assert!(without[0].get("SelfChange").is_some());
        let gone = updates(&new, &old, PEER_CHANGES, TailscaledVersion::V1_102);
        assert_eq!(gone[0]["PeersRemoved"], json!([3]));
    }

    #[test]
    fn v1_64_sends_the_whole_netmap_and_state_as_a_number() {
        let old = snap("Running", &[]);
        let new = snap("Stopped", &[(2, "10.0.2.0/24")]);
        let m = updates(&old, &new, PEER_CHANGES, TailscaledVersion::V1_64);
        assert_eq!(m.len(), 2);
        assert!(m[0]["NetMap"]["Peers"].is_array());
        assert_eq!(m[1]["State"], json!(4));
    }

    #[test]
    fn no_initial_bits_no_first_message() {
        let s = snap("Running", &[]);
        assert!(initial(&s, PEER_CHANGES, TailscaledVersion::V1_102, "x").is_none());
        let first = initial(
            &s,
            INITIAL_STATE | INITIAL_PREFS | INITIAL_NETMAP,
            TailscaledVersion::V1_102,
            "x",
        )
        .unwrap_or_default();
        assert_eq!(first["State"], json!(6));
        assert!(first["NetMap"].is_object() && first["SelfChange"].is_object());
    }
}
