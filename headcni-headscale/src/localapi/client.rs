//! Tailscale LocalAPI client: HTTP/1.1 over tailscaled's unix socket (hyper 1 `http1`
//! handshake on a tokio `UnixStream`, one connection per request).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::types::{MaskedPrefs, Prefs, StartOptions, Status};
use crate::retry::Retryable;

/// The `Host` tailscaled accepts on its socket (ipn/localapi `validHost`).
pub const LOCALAPI_HOST: &str = "local-tailscaled.sock";

/// Default Linux socket of the host tailscaled (`paths.DefaultTailscaledSocket()`).
pub const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

const MAX_BODY: usize = 16 << 20;

/// Errors of [`LocalApiClient`].
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// The socket could not be connected (tailscaled not running, wrong path).
    #[error("cannot connect to tailscaled at {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The request did not complete in time.
    #[error("{endpoint}: timed out after {after:?}")]
    Timeout {
        /// `METHOD /localapi/v0/…`.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// HTTP protocol failure on the socket.
    #[error("{endpoint}: protocol error: {reason}")]
    Protocol {
        /// `METHOD /localapi/v0/…`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// HTTP 403 (text body): bad Host, Referer/Origin present, or write access denied (the
    /// caller is not root / the operator).
    #[error("{endpoint}: forbidden (403): {message}")]
    Forbidden {
        /// `METHOD /localapi/v0/…`.
        endpoint: String,
        /// The text body.
        message: String,
    },
    /// HTTP 400: for `PATCH prefs` a JSON `{"Error":"…"}` (e.g. an unmasked prefix), else text.
    #[error("{endpoint}: bad request (400): {message}")]
    BadRequest {
        /// `METHOD /localapi/v0/…`.
        endpoint: String,
        /// The error message.
        message: String,
    },
    /// Any other non-success status.
    #[error("{endpoint}: HTTP {status}: {message}")]
    Status {
        /// `METHOD /localapi/v0/…`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The body (truncated).
        message: String,
    },
    /// A success body that is not the expected JSON.
    #[error("{endpoint}: cannot decode response: {reason}")]
    Decode {
        /// `METHOD /localapi/v0/…`.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

impl Retryable for LocalApiError {
    /// Connect failures, timeouts, protocol errors and 5xx.
    fn is_retryable(&self) -> bool {
        match self {
            LocalApiError::Connect { .. }
            | LocalApiError::Timeout { .. }
            | LocalApiError::Protocol { .. } => true,
            LocalApiError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Tailscale LocalAPI client for one tailscaled socket.
#[derive(Debug, Clone)]
pub struct LocalApiClient {
    socket: PathBuf,
    timeout: Duration,
    observer: Option<crate::observe::RequestObserver>,
}

impl LocalApiClient {
    /// A client for `socket` with a 5 s per-request timeout.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LocalApiClient {
            socket: socket.into(),
            timeout: Duration::from_secs(5),
            observer: None,
        }
    }

    /// The same client with another per-request timeout (connect + request + body).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The request observer, if any.
    pub(super) fn observer(&self) -> Option<&crate::observe::RequestObserver> {
        self.observer.as_ref()
    }

    /// tailscale ipn/localapi `GET /localapi/v0/status` (with peers).
    pub async fn status(&self) -> Result<Status, LocalApiError> {
        self.get_json("/localapi/v0/status").await
    }

    /// tailscale ipn/localapi `GET /localapi/v0/status?peers=false` (no `Peer` map; cheaper).
    pub async fn status_without_peers(&self) -> Result<Status, LocalApiError> {
        self.get_json("/localapi/v0/status?peers=false").await
    }

    /// tailscale ipn/localapi `GET /localapi/v0/prefs` → `ipn.Prefs` (keys stripped).
    pub async fn prefs(&self) -> Result<Prefs, LocalApiError> {
        self.get_json("/localapi/v0/prefs").await
    }

    /// tailscale ipn/localapi `PATCH /localapi/v0/prefs` with an `ipn.MaskedPrefs` → the full
    /// new `ipn.Prefs`. Lists in the patch replace the stored lists.
    ///
    /// Errors: [`LocalApiError::BadRequest`] with the `{"Error":…}` message (e.g. an
    /// `AdvertiseRoutes` prefix that is not masked), [`LocalApiError::Forbidden`].
    pub async fn patch_prefs(&self, patch: &MaskedPrefs) -> Result<Prefs, LocalApiError> {
        let body = serde_json::to_vec(patch).map_err(|e| LocalApiError::Decode {
            endpoint: "PATCH /localapi/v0/prefs".into(),
            reason: e.to_string(),
        })?;
        let (_, bytes) = self
            .request(Method::PATCH, "/localapi/v0/prefs", Some(body))
            .await?;
        decode("PATCH /localapi/v0/prefs", &bytes)
    }

    /// tailscale ipn/localapi `POST /localapi/v0/start` with `ipn.Options` (204). The prefs in
    /// it replace **all** stored prefs except the persisted identity.
    pub async fn start(&self, opts: &StartOptions) -> Result<(), LocalApiError> {
        let body = serde_json::to_vec(opts).map_err(|e| LocalApiError::Decode {
            endpoint: "POST /localapi/v0/start".into(),
            reason: e.to_string(),
        })?;
        self.request(Method::POST, "/localapi/v0/start", Some(body))
            .await
            .map(|_| ())
    }

    /// tailscale ipn/localapi `POST /localapi/v0/login-interactive` (204); with an auth key
    /// given to `start` this logs in without a browser.
    pub async fn login_interactive(&self) -> Result<(), LocalApiError> {
        self.request(Method::POST, "/localapi/v0/login-interactive", None)
            .await
            .map(|_| ())
    }

    /// tailscale ipn/localapi `POST /localapi/v0/logout` (204).
    pub async fn logout(&self) -> Result<(), LocalApiError> {
        self.request(Method::POST, "/localapi/v0/logout", None)
            .await
            .map(|_| ())
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, LocalApiError> {
        let (_, bytes) = self.request(Method::GET, path, None).await?;
        decode(&format!("GET {path}"), &bytes)
    }

    /// One request on a fresh connection, bounded by the timeout. `Host` is
    /// `local-tailscaled.sock`; no `Referer`/`Origin` is ever sent.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), LocalApiError> {
        let endpoint = format!("{method} {path}");
        let label = self
            .observer
            .as_ref()
            .map(|_| crate::observe::endpoint_label("localapi", method.as_str(), path));
        let fut = self.request_inner(method, path, body, &endpoint);
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(LocalApiError::Timeout {
                endpoint,
                after: self.timeout,
            }),
        };
        if let (Some(o), Some(l)) = (&self.observer, label) {
            o.observe(
                &l,
                result.as_ref().is_ok_and(|(status, _)| status.is_success()),
            );
        }
        result
    }

    /// Reports every request to `observer` (e.g. the daemon's metrics by endpoint).
    pub fn with_observer(mut self, observer: crate::observe::RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        endpoint: &str,
    ) -> Result<(StatusCode, Bytes), LocalApiError> {
        let proto = |e: &dyn std::fmt::Display| LocalApiError::Protocol {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| LocalApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(&e))?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "localapi connection ended with error");
            }
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, LOCALAPI_HOST);
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| proto(&e))?;
        tracing::debug!(%endpoint, "localapi request");
        let result = async {
            let resp = sender.send_request(req).await.map_err(|e| proto(&e))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| proto(&*e))?
                .to_bytes();
            Ok::<_, LocalApiError>((status, bytes))
        }
        .await;
        conn_task.abort();
        let (status, bytes) = result?;
        if status.is_success() {
            return Ok((status, bytes));
        }
        Err(error_from(endpoint, status, &bytes))
    }
}

fn decode<T: DeserializeOwned>(endpoint: &str, bytes: &[u8]) -> Result<T, LocalApiError> {
    serde_json::from_slice(bytes).map_err(|e| LocalApiError::Decode {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    })
}

pub(super) fn error_from(endpoint: &str, status: StatusCode, body: &[u8]) -> LocalApiError {
    #[derive(serde::Deserialize)]
    struct ErrBody {
        #[serde(rename = "Error")]
        error: String,
    }
    let text = String::from_utf8_lossy(body);
    let message = match serde_json::from_slice::<ErrBody>(body) {
        Ok(e) => e.error,
        Err(_) => text.trim().chars().take(512).collect(),
    };
    let endpoint = endpoint.to_string();
    match status {
        StatusCode::FORBIDDEN => LocalApiError::Forbidden { endpoint, message },
        StatusCode::BAD_REQUEST => LocalApiError::BadRequest { endpoint, message },
        s => LocalApiError::Status {
            endpoint,
            status: s.as_u16(),
            message,
        },
    }
}
