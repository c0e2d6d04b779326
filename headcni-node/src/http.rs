//! The daemon's HTTP endpoints (hyper 1, HTTP/1.1), on `127.0.0.1:8081` by default:
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | OpenMetrics text ([`OPENMETRICS_CONTENT_TYPE`]) |
//! | `GET /healthz` | `200 ok`: the process is alive and serving. Depends on nothing external (liveness must not restart the daemon because Headscale is down) |
//! | `GET /readyz` | `200 ready`, or `503` with one reason per line ([`DaemonState::not_ready_reasons`]); then one `warning: CNI chain: …` line per [`DaemonState::chain_problems`] entry |
//! | `GET /status` | the [`DaemonState`] as JSON with one page of the pod table ([`StatusDoc`]; query `pods_offset`, `pods_limit` ≤ [`MAX_STATUS_PODS`]; what `headcni status` renders) |
//!
//! Any other path is `404`; another method on a known path is `405`; a `/status` query
//! parameter that is not a number is `400`.
//!
//! # Resource bounds (any local user can connect)
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; when a new one arrives at the
//! cap, the **oldest** open connection is closed to make room, so idle or slow connections can
//! never starve a new one (a kubelet probe, a scraper, `headcni status` are served within
//! milliseconds of their accept; a connection that is old has been idle, slow or stuck). Each
//! connection must deliver its request line and headers within [`HEADER_READ_TIMEOUT`] (hyper
//! applies the same timer to the wait for the next request of an idle keep-alive
//! connection), lives at most [`MAX_CONNECTION_LIFETIME`], and buffers at most
//! [`MAX_BUF_BYTES`] of input. Answers are bounded: `/status` lists at most
//! [`MAX_STATUS_PODS`] pods.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{self, AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::{DaemonState, MAX_STATUS_PODS, SharedState, StatusDoc};

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long in-flight requests get after cancellation before their connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(900);

/// A client must send its request line and headers within this time, and an idle keep-alive
/// connection is closed after it (slow-loris guard; local clients send theirs at once).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection is closed this long after its accept, whatever it does (bounds a keep-alive
/// client that never stops and a reader that never reads its answer).
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Connections served at once; at the cap the oldest one is closed for each new one (the
/// endpoints are for the local kubelet probes, a scraper and `headcni status`).
pub const MAX_CONNECTIONS: usize = 256;

/// The most input buffered per connection, in bytes (hyper's minimum is 8 KiB): a request
/// whose headers do not fit is refused (`431`).
pub const MAX_BUF_BYTES: usize = 16 * 1024;

/// The errors of `accept(2)` that mean this process is out of file descriptors.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The HTTP listener could not be bound (address in use, no permission, ...).
#[derive(Debug, thiserror::Error)]
#[error("binding the HTTP endpoint {listen} (/metrics, /healthz, /readyz)")]
pub struct BindError {
    /// The address.
    pub listen: SocketAddr,
    /// The `bind(2)` error.
    #[source]
    pub source: std::io::Error,
}

/// Binds the HTTP listener, so the daemon fails fast (before starting anything else) when the
/// address is taken.
///
/// # Errors
/// [`BindError`] with the `bind(2)` error.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| BindError { listen, source })
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Runs `f` on the state under its read lock (nothing is cloned but what `f` takes).
fn with_state<R>(state: &SharedState, f: impl FnOnce(&DaemonState) -> R) -> R {
    f(&state.read().unwrap_or_else(|e| e.into_inner()))
}

/// The `pods_offset` and `pods_limit` parameters of a `/status` query (defaults 0 and
/// [`MAX_STATUS_PODS`]; other parameters are ignored); `None` if one is not a number.
fn status_query(query: Option<&str>) -> Option<(usize, usize)> {
    let (mut offset, mut limit) = (0, MAX_STATUS_PODS);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("pods_offset", v)) => offset = v.parse().ok()?,
            Some(("pods_limit", v)) => limit = v.parse().ok()?,
            _ => {}
        }
    }
    Some((offset, limit))
}

/// Answers one request (no I/O besides reading the shared state); `query` is the request
/// URI's query string, used by `/status` only.
pub fn respond(
    method: &Method,
    path: &str,
    query: Option<&str>,
    state: &SharedState,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status");
    if !known {
        return text(StatusCode::NOT_FOUND, TEXT_PLAIN, "not found\n");
    }
    if method != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT_PLAIN,
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/healthz" => text(StatusCode::OK, TEXT_PLAIN, "ok\n"),
        "/readyz" => {
            let (reasons, warnings) = with_state(state, |st| {
                (st.not_ready_reasons(), st.chain_problems.clone())
            });
            let warnings: String = warnings
                .iter()
                .map(|w| format!("warning: CNI chain: {w}\n"))
                .collect();
            if reasons.is_empty() {
                text(StatusCode::OK, TEXT_PLAIN, format!("ready\n{warnings}"))
            } else {
                let mut body = reasons.join("\n");
                body.push('\n');
                body.push_str(&warnings);
                text(StatusCode::SERVICE_UNAVAILABLE, TEXT_PLAIN, body)
            }
        }
        "/metrics" => {
            // headcni_ready and headcni_pods are derived from the state at scrape time, so
            // they can never disagree with /readyz and /status.
            let (ready, pods) = with_state(state, |st| {
                (st.not_ready_reasons().is_empty(), st.pods.len())
            });
            metrics.set_ready(ready);
            metrics.set_pods(pods as u64);
            text(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.encode())
        }
        _ => {
            let Some((offset, limit)) = status_query(query) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    TEXT_PLAIN,
                    "pods_offset and pods_limit must be non-negative integers\n",
                );
            };
            let doc = with_state(state, |st| st.status_page(offset, limit));
            status_json(&doc)
        }
    }
}

fn status_json(doc: &StatusDoc) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(doc) {
        Ok(mut json) => {
            json.push(b'\n');
            text(StatusCode::OK, "application/json", json)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT_PLAIN,
            format!("encoding the status: {e}\n"),
        ),
    }
}

/// The open connections' tasks, in accept order, so that the oldest can be closed when a new
/// one arrives at [`MAX_CONNECTIONS`].
#[derive(Default)]
struct Connections {
    tasks: JoinSet<()>,
    /// Accept sequence number → the task serving that connection (oldest first).
    by_age: BTreeMap<u64, AbortHandle>,
    /// Task id → accept sequence number, to forget a connection when its task ends.
    seq_of: HashMap<task::Id, u64>,
    next_seq: u64,
}

impl Connections {
    /// Connections being served (not yet ended nor closed by [`close_oldest`](Self::close_oldest)).
    fn open(&self) -> usize {
        self.by_age.len()
    }

    fn spawn(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(fut);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(handle.id(), seq);
        self.by_age.insert(seq, handle);
    }

    /// Forgets the connection whose task `id` ended.
    fn ended(&mut self, id: task::Id) {
        if let Some(seq) = self.seq_of.remove(&id) {
            self.by_age.remove(&seq);
        }
    }

    /// Closes the oldest open connection (its task is aborted, which drops the socket);
    /// `false` if none is open.
    fn close_oldest(&mut self) -> bool {
        match self.by_age.pop_first() {
            Some((_, handle)) => {
                self.seq_of.remove(&handle.id());
                handle.abort();
                true
            }
            None => false,
        }
    }
}

/// Serves one connection until it ends, [`MAX_CONNECTION_LIFETIME`] passes, or `cancel`
/// (then the current request is finished and the connection closed).
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: SharedState,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = respond(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            &state,
            &metrics,
        );
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = tokio::time::sleep(MAX_CONNECTION_LIFETIME) => {
            tracing::debug!("HTTP connection from {peer} closed after {MAX_CONNECTION_LIFETIME:?}");
            return;
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!("HTTP connection from {peer}: {e}");
    }
}

/// Serves the endpoints on `listener` until `cancel`, within the bounds of the module
/// documentation (at most [`MAX_CONNECTIONS`], the oldest closed for a new one). On cancel it
/// stops accepting, lets in-flight requests finish (keep-alive connections are closed after
/// their current request), and returns within about a second ([`SHUTDOWN_GRACE`]), dropping
/// connections that are still busy then.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), Infallible> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("HTTP endpoints on http://{addr} (/metrics, /healthz, /readyz, /status)");
    }
    let mut conns = Connections::default();
    let mut evicted: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = conns.tasks.join_next_with_id(), if !conns.tasks.is_empty() => {
                conns.ended(match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                });
                continue;
            }
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection errors (ECONNABORTED, EMFILE, ...) must not end the server.
                // Out of descriptors: make room by closing the oldest connection (as at the
                // cap). Back off briefly so that the aborted tasks release their sockets and
                // a persistent error does not spin.
                tracing::warn!("HTTP accept: {e}");
                if out_of_fds(&e) {
                    conns.close_oldest();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.open() >= MAX_CONNECTIONS && conns.close_oldest() {
            evicted += 1;
            // Rate-limited log: a flood evicts thousands.
            if evicted.is_power_of_two() {
                tracing::warn!(
                    "HTTP: {MAX_CONNECTIONS} connections open, closed the oldest for one from \
                     {peer} ({evicted} so far)"
                );
            }
        }
        conns.spawn(serve_connection(
            stream,
            peer,
            state.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
    }
    drop(listener);
    let mut tasks = conns.tasks;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "HTTP: {} connection(s) still busy at shutdown, dropped",
            tasks.len()
        );
        tasks.abort_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::RwLock;

    #[test]
    fn routing() {
        let st: SharedState = Arc::new(RwLock::new(DaemonState::new("n", "host")));
        let m = Metrics::new();
        assert_eq!(
            respond(&Method::GET, "/nope", None, &st, &m).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/nope", None, &st, &m).status(),
            StatusCode::NOT_FOUND
        );
        let r = respond(&Method::POST, "/healthz", None, &st, &m);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            r.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET"[..])
        );
        assert_eq!(
            respond(&Method::GET, "/healthz", None, &st, &m).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/readyz", None, &st, &m).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        for bad in ["pods_offset=-1", "pods_limit=x", "pods_offset="] {
            assert_eq!(
                respond(&Method::GET, "/status", Some(bad), &st, &m).status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(
            respond(&Method::GET, "/status", Some("pods_limit=5&x=y"), &st, &m).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn status_query_defaults() {
        assert_eq!(status_query(None), Some((0, MAX_STATUS_PODS)));
        assert_eq!(
            status_query(Some("pods_offset=10&pods_limit=3")),
            Some((10, 3))
        );
    }
}
