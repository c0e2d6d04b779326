//! [`FakeHeadscale`]: a test double of Headscale's REST API on `127.0.0.1:<ephemeral>`.
//!
//! Follows the behaviour documented in control-plane-apis.md §1 (Headscale v0.29.2 and
//! v0.25.1): Bearer API-key auth (401 plain text `Unauthorized`), protojson bodies (camelCase,
//! uint64 as strings, every field present, `null` for unset messages), grpc-gateway error bodies
//! `{code,message,details}`, `approve_routes` replace semantics, `subnetRoutes` only in
//! list-nodes and approve_routes, the ≤ 0.25 route rows (enable refused unless advertised,
//! un-announcing disables), pre-auth keys with the zero-time expiration pitfall, an optional
//! policy evaluated as strictly as the server (HuJSON validated per Headscale generation,
//! autoApprovers alias resolution, ACL filtering of peers and of each peer's routes), fault
//! injection, and a coordination hook ([`HeadscaleControl`]) for
//! [`crate::FakeTailscaled`].
//!
//! One concern per file: [`options`](FakeHeadscaleOptions) and views, the state model
//! (`state`), the route model (`policy`: approvals, auto-approval, the peer view, primaries), the
//! policy document (`acl`) and its evaluation (`acl_eval`), protojson
//! shapes (`json`), the REST operations (`rest`, and `routes_api` for the two route APIs),
//! the HTTP front (`http`), fault injection and the exchange record (`faults`), and the
//! coordination hook ([`HeadscaleControl`], `control`).

use std::net::SocketAddr;

mod acl;
mod acl_eval;
mod control;
mod faults;
mod http;
mod json;
mod options;
mod policy;
mod rest;
mod routes_api;
mod state;

pub use acl::PolicyRefused;
pub use control::HeadscaleControl;
pub use faults::{Exchange, Fault};
pub use options::{FakeApiVersion, FakeHeadscaleOptions, NodeView, PreAuthKeyView};
pub use state::{PersistedState, random_node_key};

use crate::server::tcp_loop;

/// A fake Headscale REST server (test double). Stops when dropped.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use headcni_testkit::{FakeHeadscale, FakeHeadscaleOptions};
/// let hs = FakeHeadscale::start(FakeHeadscaleOptions::default()).await?;
/// let url = hs.url().to_string(); // http://127.0.0.1:<port>
/// let key = hs.api_key().to_string(); // a valid Bearer key
/// # let _ = (url, key); Ok(()) }
/// ```
pub struct FakeHeadscale {
    control: HeadscaleControl,
    addr: SocketAddr,
    api_key: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeHeadscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHeadscale")
            .field("addr", &self.addr)
            .finish()
    }
}

impl std::ops::Deref for FakeHeadscale {
    type Target = HeadscaleControl;
    fn deref(&self) -> &HeadscaleControl {
        &self.control
    }
}

impl Drop for FakeHeadscale {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHeadscale {
    /// Binds [`FakeHeadscaleOptions::listen`] (default `127.0.0.1:0`) and serves in a
    /// background task of the current tokio runtime. Unless given, a valid API key is
    /// generated (see [`FakeHeadscale::api_key`]).
    pub async fn start(opts: FakeHeadscaleOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let (control, api_key) = HeadscaleControl::new(&opts, None, format!("http://{addr}"));
        if let Some(text) = &opts.policy {
            control
                .set_policy(text)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let task = tokio::spawn(tcp_loop(listener, control.handler()));
        Ok(FakeHeadscale {
            control,
            addr,
            api_key,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A valid API key (a test value, not a [`headcni_headscale::Secret`]).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// A cloneable handle on the state (for a [`crate::FakeTailscaled`]).
    pub fn control(&self) -> HeadscaleControl {
        self.control.clone()
    }
}
