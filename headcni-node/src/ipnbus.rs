//! Following tailscaled's IPN bus (LocalAPI `GET /localapi/v0/watch-ipn-bus`, tailscale
//! `ipn/localapi/localapi.go` `serveWatchIPNBus`): a task that keeps one bus stream open,
//! folds each `ipn.Notify` into a `headcni_core::control::bus::BusView` and wakes the
//! reconcile loop when prefs, the backend state or the netmap's routes changed. The decisions
//! (what is a change, when to reconnect or fall back to polling) are
//! `headcni_core::control::bus`'s; this is the I/O.

use std::sync::Arc;
use std::time::Duration;

use headcni_core::control::bus::{BusRetry, BusView, bus_retry};
use headcni_headscale::localapi::{IpnBusError, LocalApiClient, NotifyWatchOpt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Where the bus stands (`/status` `ipn_bus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusState {
    /// Not connected yet (the daemon polls meanwhile).
    #[default]
    Connecting,
    /// The stream is open: passes follow its changes.
    Connected,
    /// tailscaled has no IPN bus (404/405, older than v1.34): the daemon polls at `[daemon]
    /// reconcile_interval_secs` and tries the bus again later.
    Absent,
    /// The stream failed repeatedly: the daemon polls and tries again later.
    Failing,
}

impl BusState {
    /// The stream is open.
    pub fn is_connected(self) -> bool {
        self == BusState::Connected
    }
}

/// Timing of [`follow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusOptions {
    /// After a 404/405 or repeated failures: poll, and open the bus again after this long.
    pub retry_absent: Duration,
    /// A stream silent for this long is reopened (a hung tailscaled; reopening re-reads the
    /// initial state, which triggers one pass).
    pub idle: Duration,
}

/// Keeps the IPN bus of the tailscaled behind `client` open until `cancel`: publishes the
/// [`BusState`] on `state`, and `signal.notify_one()` on every change HeadCNI acts on
/// (including the first message of each session and each disconnect, so the loop re-checks
/// and switches between following and polling).
pub async fn follow(
    client: LocalApiClient,
    signal: Arc<Notify>,
    state: watch::Sender<BusState>,
    opts: BusOptions,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            e = session(&client, &signal, &state, opts) => e,
        };
        let (absent, had_messages) = match &ended {
            Ended::Error(e) => (e.is_absent(), false),
            Ended::AfterMessages(_) => (false, true),
        };
        failures = if had_messages { 1 } else { failures + 1 };
        let retry = bus_retry(absent, failures, opts.retry_absent);
        let (new_state, wait) = match retry {
            BusRetry::Reconnect(w) => (BusState::Connecting, w),
            BusRetry::Fallback(w) if absent => (BusState::Absent, w),
            BusRetry::Fallback(w) => (BusState::Failing, w),
        };
        match &ended {
            Ended::Error(e) | Ended::AfterMessages(e) => {
                if absent {
                    tracing::info!("IPN bus: {e}; polling, retrying the bus in {wait:?}");
                } else {
                    tracing::warn!(failures, "IPN bus: {e}; retrying in {wait:?}");
                }
            }
        }
        let was = state.send_replace(new_state);
        if was != new_state {
            // The loop switches between following and polling (and reports the new state).
            signal.notify_one();
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if matches!(retry, BusRetry::Fallback(_)) {
            failures = 0;
        }
    }
}

enum Ended {
    /// Failed before any message (connect, head, first line).
    Error(IpnBusError),
    /// Ended after at least one message.
    AfterMessages(IpnBusError),
}

async fn session(
    client: &LocalApiClient,
    signal: &Notify,
    state: &watch::Sender<BusState>,
    opts: BusOptions,
) -> Ended {
    let mut stream = match client.watch_ipn_bus(NotifyWatchOpt::HEADCNI).await {
        Ok(s) => s.with_idle_timeout(Some(opts.idle)),
        Err(e) => return Ended::Error(e),
    };
    let mut view = BusView::new();
    let mut messages = 0u64;
    loop {
        let notify = match stream.next().await {
            Ok(n) => n,
            Err(e) if messages == 0 => return Ended::Error(e),
            Err(e) => return Ended::AfterMessages(e),
        };
        messages += 1;
        if messages == 1 {
            tracing::info!(version = %notify.version, "IPN bus connected");
            state.send_replace(BusState::Connected);
        }
        if let Some(e) = &notify.err_message {
            tracing::warn!("tailscaled: {e}");
        }
        let changes = view.apply(&notify.to_bus_event());
        if !changes.is_empty() {
            tracing::debug!(?changes, "IPN bus: reconcile");
            signal.notify_one();
        }
    }
}
