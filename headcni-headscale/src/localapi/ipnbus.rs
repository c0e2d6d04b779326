//! The LocalAPI's IPN bus: `GET /localapi/v0/watch-ipn-bus?mask=<NotifyWatchOpt>`, a
//! never-ending HTTP response of newline-delimited JSON `ipn.Notify` objects, one per line,
//! flushed per message.
//!
//! Sources (tailscale/tailscale): `ipn/localapi/localapi.go` `serveWatchIPNBus` (the `mask`
//! query as a decimal `NotifyWatchOpt`, 400 `bad mask`, 400 for `NotifyInProcessNoDisconnect`
//! and for `NotifyRateLimit` with the new-style bits, 403 without read access, a
//! `json.Encoder` per message then `Flush`); `ipn/backend.go` (`NotifyWatchOpt`, `Notify`,
//! `State`); `ipn/ipnlocal/local.go` (`WatchNotificationsAs`: the first message with the
//! `NotifyInitial…` parts; then `State` on state changes, `Prefs` after every prefs edit and
//! the netmap as below); `tailcfg/tailcfg.go` (`Node`: `ID`, `StableID`, `Name`,
//! `Addresses`, `AllowedIPs`, `PrimaryRoutes`); `types/netmap/netmap.go` (`NetworkMap`:
//! `SelfNode`, `Peers`).
//!
//! Versions: the route exists since v1.34.0 (older tailscaled answer `404 page not found`,
//! `http.NotFound`). Before v1.100 on Linux every netmap update is a whole `NetMap`; from
//! v1.100 (`ipn/ipnlocal/bus.go` `goosGetsLegacyNetmapNotify` is Windows-only) a netmap update
//! is `SelfChange` plus, for watchers with `NotifyPeerChanges` (v1.98+), `PeersChanged` /
//! `PeersRemoved`; the initial message still carries the whole `NetMap` when
//! `NotifyInitialNetMap` is asked. Unknown mask bits are ignored by older versions
//! (`strconv.ParseUint`, then bit tests).

use std::time::Duration;

use bytes::Bytes;
use headcni_core::control::bus::{BusEvent, NodeRoutes};
use headcni_core::control::plan::PrefsView;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ipnetwork::IpNetwork;
use serde::Deserialize;
use tokio::net::UnixStream;

use super::client::{LOCALAPI_HOST, LocalApiClient, LocalApiError, error_from};
use super::types::{OptBool, Prefs};
use crate::serde_util::de_null_default;

/// Longest line (one `ipn.Notify`) accepted, in bytes: 32 MiB. A whole netmap is a few KiB
/// per peer; a longer line ends the stream with [`IpnBusError::LineTooLong`].
pub const DEFAULT_MAX_LINE: usize = 32 << 20;

const PATH: &str = "/localapi/v0/watch-ipn-bus";

/// `ipn.NotifyWatchOpt` (tailscale `ipn/backend.go`): bits sent as the decimal `mask` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyWatchOpt(pub u64);

impl NotifyWatchOpt {
    /// `NotifyInitialState` (1<<1): the first message has `State` (and `SessionID`).
    pub const INITIAL_STATE: NotifyWatchOpt = NotifyWatchOpt(1 << 1);
    /// `NotifyInitialPrefs` (1<<2): the first message has `Prefs`.
    pub const INITIAL_PREFS: NotifyWatchOpt = NotifyWatchOpt(1 << 2);
    /// `NotifyInitialNetMap` (1<<3): the first message has `NetMap` (and, ≥ v1.100,
    /// `SelfChange`).
    pub const INITIAL_NETMAP: NotifyWatchOpt = NotifyWatchOpt(1 << 3);
    /// `NotifyNoPrivateKeys` (1<<4): private keys redacted (a no-op today, where they always
    /// are; meaningful on old versions).
    pub const NO_PRIVATE_KEYS: NotifyWatchOpt = NotifyWatchOpt(1 << 4);
    /// `NotifyRateLimit` (1<<8): netmap updates at most every few seconds; refused (400)
    /// together with [`NotifyWatchOpt::PEER_CHANGES`].
    pub const RATE_LIMIT: NotifyWatchOpt = NotifyWatchOpt(1 << 8);
    /// `NotifyPeerChanges` (1<<12, v1.98+): `PeersChanged` / `PeersRemoved` (without it a
    /// v1.100+ tailscaled on Linux sends no peer changes at all).
    pub const PEER_CHANGES: NotifyWatchOpt = NotifyWatchOpt(1 << 12);
    /// `NotifyInProcessNoDisconnect` (1<<16): refused over the LocalAPI (400).
    pub const IN_PROCESS_NO_DISCONNECT: NotifyWatchOpt = NotifyWatchOpt(1 << 16);

    /// What HeadCNI's daemon watches: the initial state, prefs and netmap, no private keys,
    /// and peer changes.
    pub const HEADCNI: NotifyWatchOpt = NotifyWatchOpt(
        Self::INITIAL_STATE.0
            | Self::INITIAL_PREFS.0
            | Self::INITIAL_NETMAP.0
            | Self::NO_PRIVATE_KEYS.0
            | Self::PEER_CHANGES.0,
    );

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: NotifyWatchOpt) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for NotifyWatchOpt {
    type Output = NotifyWatchOpt;
    fn bitor(self, rhs: NotifyWatchOpt) -> NotifyWatchOpt {
        NotifyWatchOpt(self.0 | rhs.0)
    }
}

/// `ipn.State` (an integer on the wire) → its name (`ipn/backend.go` `stateStrings`);
/// unknown values give `State(<n>)`.
pub fn backend_state_name(state: i64) -> String {
    const NAMES: [&str; 7] = [
        "NoState",
        "InUseOtherUser",
        "NeedsLogin",
        "NeedsMachineAuth",
        "Stopped",
        "Starting",
        "Running",
    ];
    usize::try_from(state)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map(|s| (*s).to_owned())
        .unwrap_or_else(|| format!("State({state})"))
}

/// `tailcfg.Node`, the fields HeadCNI reads (JSON names as in Go: no tags ⇒ field names;
/// `PrimaryRoutes` omitempty, `AllowedIPs` omitzero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TailcfgNode {
    /// `ID` (`tailcfg.NodeID`, int64; Headscale's node id).
    #[serde(rename = "ID", default)]
    pub id: i64,
    /// `StableID`.
    #[serde(rename = "StableID", default, deserialize_with = "de_null_default")]
    pub stable_id: String,
    /// `Name`: the MagicDNS name (`host.tailnet.`).
    #[serde(rename = "Name", default, deserialize_with = "de_null_default")]
    pub name: String,
    /// `Addresses`: its tailnet addresses (`/32`, `/128`).
    #[serde(rename = "Addresses", default, deserialize_with = "de_null_default")]
    pub addresses: Vec<IpNetwork>,
    /// `AllowedIPs`: addresses plus the routes approved for it.
    #[serde(rename = "AllowedIPs", default, deserialize_with = "de_null_default")]
    pub allowed_ips: Vec<IpNetwork>,
    /// `PrimaryRoutes`: the subnet routes it serves as primary.
    #[serde(
        rename = "PrimaryRoutes",
        default,
        deserialize_with = "de_null_default"
    )]
    pub primary_routes: Vec<IpNetwork>,
}

impl TailcfgNode {
    fn routes(&self) -> NodeRoutes {
        NodeRoutes {
            id: self.id,
            primary_routes: self.primary_routes.clone(),
            allowed_ips: self.allowed_ips.clone(),
        }
    }
}

/// `netmap.NetworkMap`, the fields HeadCNI reads (`SelfNode` is `null` when invalid, `Peers`
/// `null` when none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpnNetMap {
    /// `SelfNode`.
    #[serde(rename = "SelfNode", default)]
    pub self_node: Option<TailcfgNode>,
    /// `Peers`, sorted by `ID`.
    #[serde(rename = "Peers", default, deserialize_with = "de_null_default")]
    pub peers: Vec<TailcfgNode>,
}

/// `ipn.Notify`, the fields HeadCNI reads; a field absent or `null` has not changed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct IpnNotify {
    /// `Version`: tailscaled's version.
    #[serde(rename = "Version", default, deserialize_with = "de_null_default")]
    pub version: String,
    /// `ErrMessage`: a critical error.
    #[serde(rename = "ErrMessage", default)]
    pub err_message: Option<String>,
    /// `State` (`ipn.State`, an integer: 6 is `Running`; [`backend_state_name`]).
    #[serde(rename = "State", default)]
    pub state: Option<i64>,
    /// `Prefs` (private keys redacted).
    #[serde(rename = "Prefs", default)]
    pub prefs: Option<Prefs>,
    /// `NetMap`: the whole netmap.
    #[serde(rename = "NetMap", default)]
    pub net_map: Option<IpnNetMap>,
    /// `SelfChange` (v1.100+): this node after a netmap update.
    #[serde(rename = "SelfChange", default)]
    pub self_change: Option<TailcfgNode>,
    /// `PeersChanged` (v1.98+, with `NotifyPeerChanges`): peers added or replaced.
    #[serde(rename = "PeersChanged", default, deserialize_with = "de_null_default")]
    pub peers_changed: Vec<TailcfgNode>,
    /// `PeersRemoved`: ids of peers gone.
    #[serde(rename = "PeersRemoved", default, deserialize_with = "de_null_default")]
    pub peers_removed: Vec<i64>,
}

impl IpnNotify {
    /// The notification in the terms of `headcni_core::control::bus` (prefs as the plan
    /// sees them; `NoStatefulFiltering` counts when `true`).
    pub fn to_bus_event(&self) -> BusEvent {
        BusEvent {
            state: self.state.map(backend_state_name),
            prefs: self.prefs.as_ref().map(|p| PrefsView {
                advertise_routes: p.advertise_routes.clone(),
                route_all: p.route_all,
                no_snat: p.no_snat,
                no_stateful_filtering: p.no_stateful_filtering == OptBool::True,
                no_stateful_filtering_unsupported: false,
            }),
            full_netmap: self.net_map.as_ref().map(|m| {
                (
                    m.self_node.as_ref().map(TailcfgNode::routes),
                    m.peers.iter().map(TailcfgNode::routes).collect(),
                )
            }),
            self_change: self.self_change.as_ref().map(TailcfgNode::routes),
            peers_changed: self.peers_changed.iter().map(TailcfgNode::routes).collect(),
            peers_removed: self.peers_removed.clone(),
        }
    }
}

/// Errors of [`LocalApiClient::watch_ipn_bus`] and [`IpnBusStream::next`].
#[derive(Debug, thiserror::Error)]
pub enum IpnBusError {
    /// 404 or 405: this tailscaled has no IPN bus (older than v1.34.0) or refuses it; poll.
    #[error("GET {PATH}: no IPN bus on this tailscaled (HTTP {status}: {message})")]
    Absent {
        /// 404 or 405.
        status: u16,
        /// The text body.
        message: String,
    },
    /// Connecting or the response head failed (including 400 `bad mask`, 403 `watch ipn bus
    /// access denied`, timeouts).
    #[error(transparent)]
    Request(#[from] LocalApiError),
    /// A line longer than the limit.
    #[error("GET {PATH}: a notification longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A line that is not an `ipn.Notify`.
    #[error("GET {PATH}: cannot decode a notification: {reason}")]
    Decode {
        /// Why.
        reason: String,
    },
    /// No message within the idle bound.
    #[error("GET {PATH}: no notification for {after:?}")]
    Idle {
        /// The idle bound.
        after: Duration,
    },
    /// tailscaled ended the stream (it restarted or shut down).
    #[error("GET {PATH}: the stream ended")]
    Ended,
    /// Reading the stream failed.
    #[error("GET {PATH}: read failed: {reason}")]
    Read {
        /// Why.
        reason: String,
    },
}

impl IpnBusError {
    /// This tailscaled has no bus (404/405): fall back to polling.
    pub fn is_absent(&self) -> bool {
        matches!(self, IpnBusError::Absent { .. })
    }
}

/// An open IPN bus stream: [`IpnBusStream::next`] yields one notification at a time. Dropping
/// it closes the connection.
#[derive(Debug)]
pub struct IpnBusStream {
    body: Incoming,
    buf: Vec<u8>,
    scanned: usize,
    max_line: usize,
    idle: Option<Duration>,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for IpnBusStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl IpnBusStream {
    /// Bounds each line to `max_line` bytes (default [`DEFAULT_MAX_LINE`]).
    pub fn with_max_line(mut self, max_line: usize) -> Self {
        self.max_line = max_line.max(1);
        self
    }

    /// Ends the stream with [`IpnBusError::Idle`] when no message arrives within `idle`
    /// (`None`, the default: wait forever; a quiet tailnet sends nothing for hours).
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }

    /// The next notification. Blank lines are skipped. Errors end the stream: the caller
    /// drops it and reconnects (or polls).
    ///
    /// # Errors
    /// [`IpnBusError::Ended`], [`IpnBusError::Read`], [`IpnBusError::Idle`],
    /// [`IpnBusError::LineTooLong`], [`IpnBusError::Decode`].
    pub async fn next(&mut self) -> Result<IpnNotify, IpnBusError> {
        loop {
            if let Some(line) = self.take_line()? {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map_err(|e| IpnBusError::Decode {
                    reason: e.to_string(),
                });
            }
            let frame = match self.idle {
                Some(d) => tokio::time::timeout(d, self.body.frame())
                    .await
                    .map_err(|_| IpnBusError::Idle { after: d })?,
                None => self.body.frame().await,
            };
            match frame {
                None => return Err(IpnBusError::Ended),
                Some(Err(e)) => {
                    return Err(IpnBusError::Read {
                        reason: e.to_string(),
                    });
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// A complete line from the buffer (without its `\n`), or `None` when more bytes are
    /// needed; [`IpnBusError::LineTooLong`] once the partial line passes the limit.
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, IpnBusError> {
        match self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                if line.len() > self.max_line {
                    return Err(IpnBusError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_line {
                    return Err(IpnBusError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                Ok(None)
            }
        }
    }
}

impl LocalApiClient {
    /// tailscale ipn/localapi `GET /localapi/v0/watch-ipn-bus?mask=<mask>`: opens the IPN bus.
    /// Connecting and the response head are bounded by the client's timeout; the stream
    /// itself is not (see [`IpnBusStream::with_idle_timeout`]).
    ///
    /// # Errors
    /// [`IpnBusError::Absent`] on 404/405 (no bus: poll instead), [`IpnBusError::Request`]
    /// otherwise (connect, timeout, 400 `bad mask`, 403).
    pub async fn watch_ipn_bus(&self, mask: NotifyWatchOpt) -> Result<IpnBusStream, IpnBusError> {
        let path = format!("{PATH}?mask={}", mask.0);
        let endpoint = format!("GET {path}");
        let res = tokio::time::timeout(self.timeout(), self.open_bus(&path, &endpoint)).await;
        let res = match res {
            Ok(r) => r,
            Err(_) => Err(IpnBusError::Request(LocalApiError::Timeout {
                endpoint,
                after: self.timeout(),
            })),
        };
        if let Some(o) = self.observer() {
            o.observe(
                &crate::observe::endpoint_label("localapi", "GET", PATH),
                res.is_ok(),
            );
        }
        res
    }

    async fn open_bus(&self, path: &str, endpoint: &str) -> Result<IpnBusStream, IpnBusError> {
        let proto = |e: &dyn std::fmt::Display| LocalApiError::Protocol {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        };
        let stream =
            UnixStream::connect(self.socket())
                .await
                .map_err(|source| LocalApiError::Connect {
                    socket: self.socket().to_path_buf(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(&e))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "IPN bus connection ended with error");
            }
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, LOCALAPI_HOST)
            .body(Empty::<Bytes>::new())
            .map_err(|e| proto(&e))?;
        tracing::debug!(%endpoint, "localapi request (IPN bus)");
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                conn.abort();
                return Err(proto(&e).into());
            }
        };
        let status = resp.status();
        if status != StatusCode::OK {
            let body = Limited::new(resp.into_body(), 64 << 10)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            conn.abort();
            if matches!(
                status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) {
                return Err(IpnBusError::Absent {
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&body)
                        .trim()
                        .chars()
                        .take(512)
                        .collect(),
                });
            }
            return Err(error_from(endpoint, status, &body).into());
        }
        Ok(IpnBusStream {
            body: resp.into_body(),
            buf: Vec::new(),
            scanned: 0,
            max_line: DEFAULT_MAX_LINE,
            idle: None,
            conn,
        })
    }
}

#[cfg(test)]
#[path = "ipnbus_tests.rs"]
mod tests;
