//! Minimal hyper 1 server plumbing shared by the fakes and the lab's stand-in processes: a
//! request with its whole body ([`Req`]), response helpers, and accept loops on TCP and unix
//! sockets that serve HTTP/1.1 with a [`Handler`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

/// A request as the fakes see it: head plus the whole body.
pub struct Req {
    /// Method.
    pub method: Method,
    /// Request target (path and query; absolute-form keeps the authority).
    pub uri: Uri,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body (empty when none).
    pub body: Bytes,
}

/// A response with its whole body.
pub type Resp = Response<Full<Bytes>>;
/// The future a [`Handler`] returns.
pub type BoxFut = Pin<Box<dyn Future<Output = Resp> + Send>>;
/// A request handler (cloned into every connection).
pub type Handler = Arc<dyn Fn(Req) -> BoxFut + Send + Sync>;

/// A response with `status`, `Content-Type: content_type` and `body`.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

/// A plain-text response (`text` plus a newline, as Go's `http.Error`).
pub fn text(status: StatusCode, t: &str) -> Resp {
    respond(status, "text/plain; charset=utf-8", format!("{t}\n"))
}

/// HTTP 204 without a body.
pub fn no_content() -> Resp {
    respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new())
}

/// A response extension that turns a [`Resp`] into a streamed one: [`serve_conn`] sends the
/// response head, then each chunk received here as it comes (HTTP/1.1 chunked), and ends the
/// body when every sender is gone (as tailscaled's `watch-ipn-bus`, flushed per message).
#[derive(Clone)]
pub struct Streamed(pub Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Bytes>>>>);

impl Streamed {
    /// `resp` streamed from `rx` (its own body is ignored).
    pub fn attach(mut resp: Resp, rx: tokio::sync::mpsc::Receiver<Bytes>) -> Resp {
        resp.extensions_mut()
            .insert(Streamed(Arc::new(std::sync::Mutex::new(Some(rx)))));
        resp
    }
}

/// The body of a [`Streamed`] response.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

type AnyBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

fn into_any(resp: Resp) -> Response<AnyBody> {
    let rx = resp
        .extensions()
        .get::<Streamed>()
        .and_then(|s| s.0.lock().ok().and_then(|mut g| g.take()));
    let (parts, body) = resp.into_parts();
    match rx {
        Some(rx) => Response::from_parts(parts, http_body_util::Either::Right(ChannelBody(rx))),
        None => Response::from_parts(parts, http_body_util::Either::Left(body)),
    }
}

/// Serves HTTP/1.1 on `io` with `handler`.
pub async fn serve_conn<I>(io: I, handler: Handler)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            let r = Req {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
            };
            // Like a real server, finish the request even if the client gave up (a timed-out
            // approve_routes may still have been applied): run it in its own task.
            let resp = match tokio::spawn(handler(r)).await {
                Ok(resp) => resp,
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "handler failed"),
            };
            Ok::<_, Infallible>(into_any(resp))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

macro_rules! accept_loop {
    ($listener:expr, $handler:expr) => {{
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                res = $listener.accept() => match res {
                    Ok((io, _)) => {
                        conns.spawn(serve_conn(io, $handler.clone()));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "fake server accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }};
}

/// Accept loop on TCP; connections live in a `JoinSet`, so aborting the loop task ends them.
pub async fn tcp_loop(listener: tokio::net::TcpListener, handler: Handler) {
    accept_loop!(listener, handler)
}

/// Accept loop on a unix socket; same life cycle as [`tcp_loop`].
pub async fn unix_loop(listener: tokio::net::UnixListener, handler: Handler) {
    accept_loop!(listener, handler)
}
