//! [`FakeTailscaleApiControl`]: the test's handle on the fake's state (devices, tokens, the
//! request record).

use std::sync::{Arc, Mutex, MutexGuard};

use ipnetwork::IpNetwork;

use super::options::{ApiRequest, FakeDeviceView, FakeTailscaleApiOptions};
use super::state::State;
use crate::server::{BoxFut, Handler, Req};

/// Cloneable handle on a [`FakeTailscaleApi`](super::FakeTailscaleApi)'s state.
#[derive(Clone)]
pub struct FakeTailscaleApiControl {
    pub(super) state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeTailscaleApiControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeTailscaleApiControl")
    }
}

impl FakeTailscaleApiControl {
    pub(super) fn new(opts: FakeTailscaleApiOptions) -> Self {
        FakeTailscaleApiControl {
            state: Arc::new(Mutex::new(State::new(opts))),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request handler (for [`crate::server::tcp_loop`]).
    pub fn handler(&self) -> Handler {
        let me = self.clone();
        Arc::new(move |req: Req| -> BoxFut {
            let me = me.clone();
            Box::pin(async move { me.respond(req) })
        })
    }

    /// The OAuth client id.
    pub fn client_id(&self) -> String {
        self.lock().opts.client_id.clone()
    }

    /// The OAuth client secret (a test value).
    pub fn client_secret(&self) -> String {
        self.lock().opts.client_secret.clone()
    }

    /// Adds a device (a tailscaled logged in to this tailnet) with a fresh numeric id and
    /// stable id.
    pub fn add_device(
        &self,
        hostname: &str,
        node_key: &str,
        advertised: &[IpNetwork],
        enabled: &[IpNetwork],
    ) -> FakeDeviceView {
        self.lock()
            .add_device(
                None,
                hostname,
                node_key,
                advertised.to_vec(),
                enabled.to_vec(),
            )
            .expect("a fresh stable id is unique")
    }

    /// Adds a device whose `nodeId` is `node_id`, as Headscale main's `/api/v2` reports it:
    /// the decimal node id, which is also tailscaled's `Self.ID` there
    /// (`hscontrol/api/v2/devices.go`). `None` when a device already has that `nodeId` or
    /// numeric `id`.
    pub fn add_device_with_node_id(
        &self,
        node_id: &str,
        hostname: &str,
        node_key: &str,
        advertised: &[IpNetwork],
        enabled: &[IpNetwork],
    ) -> Option<FakeDeviceView> {
        self.lock().add_device(
            Some(node_id),
            hostname,
            node_key,
            advertised.to_vec(),
            enabled.to_vec(),
        )
    }

    /// The device with this `nodeId` or numeric `id`.
    pub fn device(&self, id: &str) -> Option<FakeDeviceView> {
        self.lock().device_mut(id).map(|d| d.view.clone())
    }

    /// Replaces a device's advertised routes (tailscaled changed `AdvertiseRoutes`).
    /// Returns false for an unknown device.
    pub fn set_advertised(&self, id: &str, routes: &[IpNetwork]) -> bool {
        match self.lock().device_mut(id) {
            Some(d) => {
                d.view.advertised = routes.to_vec();
                true
            }
            None => false,
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.lock().requests.clone()
    }

    /// The requests with this method and path.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<ApiRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    /// How many access tokens were minted.
    pub fn tokens_minted(&self) -> usize {
        self.lock().tokens.len()
    }

    /// The minted access tokens, in minting order (test values; for leak checks).
    pub fn token_values(&self) -> Vec<String> {
        self.lock().tokens.iter().map(|t| t.value.clone()).collect()
    }

    /// Revokes every minted token (as if they had expired): the next API request with one of
    /// them is answered 401.
    pub fn revoke_tokens(&self) {
        for t in &mut self.lock().tokens {
            t.revoked = true;
        }
    }
}
