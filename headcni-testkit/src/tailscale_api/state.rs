//! The fake's state: devices, the OAuth client, minted tokens, the request record.

use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::IpNetwork;
use tokio::time::Instant;

use super::options::{ApiRequest, FakeDeviceView, FakeTailscaleApiOptions};

pub(super) fn rand_alnum(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

pub(super) struct Token {
    pub(super) value: String,
    pub(super) expires_at: Instant,
    pub(super) revoked: bool,
    pub(super) scopes: Vec<String>,
}

impl Token {
    pub(super) fn valid(&self, now: Instant) -> bool {
        !self.revoked && now < self.expires_at
    }
}

pub(super) struct Device {
    pub(super) view: FakeDeviceView,
    pub(super) seq: u64,
}

pub(super) struct State {
    pub(super) opts: FakeTailscaleApiOptions,
    pub(super) devices: Vec<Device>,
    pub(super) tokens: Vec<Token>,
    pub(super) requests: Vec<ApiRequest>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(50_001);

impl State {
    pub(super) fn new(opts: FakeTailscaleApiOptions) -> Self {
        State {
            opts,
            devices: Vec::new(),
            tokens: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// Adds a device; `node_id` `None` picks a Tailscale-style stable id. `None` when
    /// `node_id` is already the `nodeId` or `id` of a device.
    pub(super) fn add_device(
        &mut self,
        node_id: Option<&str>,
        hostname: &str,
        node_key: &str,
        advertised: Vec<IpNetwork>,
        enabled: Vec<IpNetwork>,
    ) -> Option<FakeDeviceView> {
        if node_id.is_some_and(|n| self.device_mut(n).is_some()) {
            return None;
        }
        let seq = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let view = FakeDeviceView {
            id: seq.to_string(),
            // Tailscale's stable node ids look like `nTESTJ31CNTRL` (client-go-v2 tests).
            node_id: node_id
                .map(str::to_string)
                .unwrap_or_else(|| format!("n{}CNTRL", rand_alnum(10))),
            node_key: node_key.to_string(),
            hostname: hostname.to_string(),
            advertised,
            enabled,
        };
        self.devices.push(Device {
            view: view.clone(),
            seq,
        });
        Some(view)
    }

    /// A device by `nodeId` (preferred) or numeric `id` (client-go-v2 `devices.go`: "Using
    /// the device `NodeID` is preferred, but its numeric `ID` value can also be used").
    pub(super) fn device_mut(&mut self, id: &str) -> Option<&mut Device> {
        self.devices
            .iter_mut()
            .find(|d| d.view.node_id == id || d.view.id == id)
    }

    /// The index of the minted token `value`, if any.
    pub(super) fn token_index(&self, value: &str) -> Option<usize> {
        self.tokens.iter().position(|t| t.value == value)
    }
}
