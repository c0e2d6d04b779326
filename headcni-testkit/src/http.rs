//! The one HTTP/1.1 probe of the tests and the lab: a blocking request on hyper's client,
//! made from the **calling thread's network namespace** (call it inside
//! [`crate::Ns::run`] to probe a namespace's `127.0.0.1`), bounded in time (2 s to connect,
//! 10 s in all), on a fresh connection closed afterwards (`Connection: close`). Plus
//! [`parse_response`] (httparse) for tests that must drive a raw socket themselves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Time to establish the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the whole exchange (connect, request, the full response body).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of [`request`] and [`parse_response`].
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The method, path or a header is not valid HTTP.
    #[error("invalid request: {0}")]
    Request(String),
    /// Connecting, sending or receiving failed.
    #[error("{addr}: {reason}")]
    Exchange {
        /// The server address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// No complete answer within [`EXCHANGE_TIMEOUT`].
    #[error("no answer from {0} within {EXCHANGE_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// A raw response that is not HTTP/1.x.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names lower-cased; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body (lossy UTF-8; a chunked body is already decoded).
    pub body: String,
}

impl Response {
    /// The headers as `name: value` lines (for messages and line-oriented checks).
    pub fn head(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect()
    }
}

fn add_header(headers: &mut BTreeMap<String, String>, name: &str, value: &str) {
    headers
        .entry(name.to_ascii_lowercase())
        .and_modify(|v| {
            v.push_str(", ");
            v.push_str(value);
        })
        .or_insert_with(|| value.to_owned());
}

/// `GET path` on `addr` (see [`request`]).
pub fn get(addr: SocketAddr, path: &str) -> Result<Response, HttpError> {
    request(addr, "GET", path, &[], None)
}

/// One request `method path` to `addr` with extra `headers` and an optional `body`, from the
/// calling thread's network namespace. Blocking; usable inside a tokio runtime too (the
/// exchange then runs on a scoped thread, which shares the caller's namespace).
///
/// Errors: [`HttpError::Request`], [`HttpError::Exchange`], [`HttpError::Timeout`].
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Response, HttpError> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .map_err(|e| HttpError::Request(e.to_string()))?;
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HttpError::Exchange {
                addr,
                reason: format!("runtime: {e}"),
            })?;
        rt.block_on(exchange(addr, req))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run).join().unwrap_or_else(|_| {
                Err(HttpError::Exchange {
                    addr,
                    reason: "probe thread panicked".to_owned(),
                })
            })
        })
    } else {
        run()
    }
}

async fn exchange(
    addr: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> Result<Response, HttpError> {
    let failed = |reason: String| HttpError::Exchange { addr, reason };
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let run = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| failed(format!("{e:?}")))?;
        let status = resp.status().as_u16();
        let mut headers = BTreeMap::new();
        for (k, v) in resp.headers() {
            add_header(
                &mut headers,
                k.as_str(),
                &String::from_utf8_lossy(v.as_bytes()),
            );
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(format!("body: {e}")))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, run)
        .await
        .map_err(|_| HttpError::Timeout(addr))?
}

/// Parses a complete raw HTTP/1.x response (status line, headers, then the body as it is:
/// for tests that read a socket to its end themselves, without `Transfer-Encoding`).
///
/// Errors: [`HttpError::Malformed`] when the head is incomplete or invalid.
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut parsed);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Malformed("incomplete head".to_owned()));
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| HttpError::Malformed("no status".to_owned()))?;
    let mut headers = BTreeMap::new();
    for h in resp.headers.iter() {
        add_header(&mut headers, h.name, &String::from_utf8_lossy(h.value));
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[head_len..]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_responses_parse() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVary: a\r\nvary: b\r\n\r\nok\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "text/plain");
        assert_eq!(r.headers["vary"], "a, b");
        assert_eq!(r.body, "ok\n");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn get_decodes_chunked_bodies_and_refuses_nothing_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            )
            .unwrap();
            req
        });
        let r = get(addr, "/metrics").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /metrics HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("connection: close"),
            "{req}"
        );
        // Nothing listens there any more.
        assert!(matches!(get(addr, "/"), Err(HttpError::Exchange { .. })));
    }
}
