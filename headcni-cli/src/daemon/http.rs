//! The daemon's HTTP endpoints (hyper 1, HTTP/1.1), on `127.0.0.1:8081` by default:
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | OpenMetrics text ([`OPENMETRICS_CONTENT_TYPE`]) |
//! | `GET /healthz` | `200 ok`: the process is alive and serving. Depends on nothing external (liveness must not restart the daemon because Headscale is down) |
//! | `GET /readyz` | `200 ready`, or `503` with one reason per line ([`DaemonState::not_ready_reasons`]) |
//! | `GET /status` | the [`DaemonState`] as JSON (what `headcni status` renders) |
//!
//! Any other path is `404`; another method on a known path is `405`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::state::{DaemonState, SharedState};

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long in-flight requests get after cancellation before their connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(900);

/// A client must send its request headers within this time (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more are closed at accept (the endpoints are for the local
/// kubelet probes, a scraper and `headcni status`).
const MAX_CONNECTIONS: usize = 64;

/// Binds the HTTP listener, so the daemon fails fast (before starting anything else) when the
/// address is taken.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| {
        format!("binding the HTTP endpoint {listen} (/metrics, /healthz, /readyz)")
    })
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

fn snapshot(state: &SharedState) -> DaemonState {
    state.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Answers one request (no I/O besides reading the shared state).
pub fn respond(
    method: &Method,
    path: &str,
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
            let reasons = snapshot(state).not_ready_reasons();
            if reasons.is_empty() {
                text(StatusCode::OK, TEXT_PLAIN, "ready\n")
            } else {
                let mut body = reasons.join("\n");
                body.push('\n');
                text(StatusCode::SERVICE_UNAVAILABLE, TEXT_PLAIN, body)
            }
        }
        "/metrics" => {
            // headcni_ready and headcni_pods are derived from the state at scrape time, so
            // they can never disagree with /readyz and /status.
            let st = snapshot(state);
            metrics.set_ready(st.not_ready_reasons().is_empty());
            metrics.set_pods(st.pods.len() as u64);
            text(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.encode())
        }
        _ => match serde_json::to_vec_pretty(&snapshot(state)) {
            Ok(mut json) => {
                json.push(b'\n');
                text(StatusCode::OK, "application/json", json)
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT_PLAIN,
                format!("encoding the status: {e}\n"),
            ),
        },
    }
}

/// Serves the endpoints on `listener` until `cancel`. On cancel it stops accepting, lets
/// in-flight requests finish (keep-alive connections are closed after their current request),
/// and returns within about a second ([`SHUTDOWN_GRACE`]), dropping connections that are still
/// busy then.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("HTTP endpoints on http://{addr} (/metrics, /healthz, /readyz, /status)");
    }
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection errors (ECONNABORTED, EMFILE, ...) must not end the server;
                // back off briefly so that EMFILE does not spin.
                tracing::warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("HTTP: {MAX_CONNECTIONS} connections open, closing one from {peer}");
            drop(stream);
            continue;
        }
        let state = state.clone();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.method(), req.uri().path(), &state, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!("HTTP connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "HTTP: {} connection(s) still busy at shutdown, dropped",
            conns.len()
        );
        conns.abort_all();
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
            respond(&Method::GET, "/nope", &st, &m).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/nope", &st, &m).status(),
            StatusCode::NOT_FOUND
        );
        let r = respond(&Method::POST, "/healthz", &st, &m);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            r.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET"[..])
        );
        assert_eq!(
            respond(&Method::GET, "/healthz", &st, &m).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/readyz", &st, &m).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
