//! [`FakeTailscaleApi`]: a test double of the Tailscale API v2 (the OAuth token endpoint and
//! the device-route endpoints HeadCNI uses) on `127.0.0.1:<ephemeral>`.
//!
//! Tailscale's server is closed source; the double follows its published client,
//! tailscale/tailscale-client-go-v2 (`client.go`: `/api/v2` paths, the error body
//! `{"message", "data", "status"}`; `devices.go`: `Device`, `DeviceRoutes`,
//! `SetSubnetRoutes`; `oauth.go`: the token URL; `testdata/devices.json`), and the open
//! implementation of the same API in Headscale main (`hscontrol/api/v2/oauth.go`,
//! `devices.go`, `api.go`, `errors.go`, `hscontrol/scope/scope.go`). Every request is
//! validated: form-encoded client credentials at the token endpoint, a valid (unexpired,
//! unrevoked) Bearer token and the operation's scope on every API request, the tailnet name,
//! the device id (`404 device not found`), the `POST …/routes` body (shape, prefixes, and by
//! default that each route is advertised — see
//! [`FakeTailscaleApiOptions::require_advertised`]). Every request is recorded
//! ([`ApiRequest`]).
//!
//! One concern per file: options and views (`options`), the state (`state`), the token
//! endpoint and scope rule (`oauth`), the device operations (`devices`), the HTTP front and
//! authentication (`http`), the test handle ([`FakeTailscaleApiControl`], `control`).

use std::net::SocketAddr;

mod control;
mod devices;
mod http;
mod oauth;
mod options;
mod state;

pub use control::FakeTailscaleApiControl;
pub use options::{ApiRequest, FakeDeviceView, FakeTailscaleApiOptions};

use crate::server::tcp_loop;

/// A fake Tailscale API v2 server. Stops when dropped. Dereferences to its
/// [`FakeTailscaleApiControl`].
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use headcni_testkit::tailscale_api::{FakeTailscaleApi, FakeTailscaleApiOptions};
/// let api = FakeTailscaleApi::start(FakeTailscaleApiOptions::default()).await?;
/// let base = api.url(); // http://127.0.0.1:<port>, requests go to {base}/api/v2/…
/// let dev = api.add_device("node-a", "nodekey:…", &["10.244.1.0/24".parse().unwrap()], &[]);
/// # let _ = (base, dev); Ok(()) }
/// ```
pub struct FakeTailscaleApi {
    control: FakeTailscaleApiControl,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeTailscaleApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTailscaleApi")
            .field("addr", &self.addr)
            .finish()
    }
}

impl std::ops::Deref for FakeTailscaleApi {
    type Target = FakeTailscaleApiControl;
    fn deref(&self) -> &FakeTailscaleApiControl {
        &self.control
    }
}

impl Drop for FakeTailscaleApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTailscaleApi {
    /// Binds [`FakeTailscaleApiOptions::listen`] and serves in a background task of the
    /// current tokio runtime.
    pub async fn start(opts: FakeTailscaleApiOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let control = FakeTailscaleApiControl::new(opts);
        let task = tokio::spawn(tcp_loop(listener, control.handler()));
        Ok(FakeTailscaleApi {
            control,
            addr,
            task,
        })
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A cloneable handle on the state.
    pub fn control(&self) -> FakeTailscaleApiControl {
        self.control.clone()
    }
}
