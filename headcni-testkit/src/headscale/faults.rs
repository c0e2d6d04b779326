//! Fault injection ([`Fault`]) and the exchange record ([`Exchange`]), applied and written by
//! [`HeadscaleControl::handle`], the entry point of every request.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;

use super::HeadscaleControl;
use super::json::rpc;
use crate::server::{Req, Resp, json as json_resp, text};

/// A fault applied to the next request(s) before normal handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with a grpc-gateway body `{"code":2,"message":"injected failure","details":[]}`.
    ServerError,
    /// HTTP 503 with a plain-text body, as a reverse proxy in front of Headscale answers.
    Unavailable,
    /// HTTP 401 `Unauthorized` (plain text) even with a valid key.
    Unauthorized,
    /// Sleep this long, then answer normally (drives client timeouts).
    Delay(Duration),
}

/// One request/response pair seen by the fake (the `Authorization` header is never recorded).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query, if any.
    pub query: Option<String>,
    /// The swagger path template that matched (`/api/v1/node/{nodeId}`), if any.
    pub operation: Option<&'static str>,
    /// The request body parsed as JSON (`None` when empty).
    pub request_json: Option<Value>,
    /// True when a non-empty request body was not JSON.
    pub request_not_json: bool,
    /// Response status.
    pub status: u16,
    /// The response body parsed as JSON (`None` for plain text).
    pub response_json: Option<Value>,
    /// True when a [`Fault`] produced this answer.
    pub injected: bool,
}

impl HeadscaleControl {
    /// Queues `count` copies of `fault` for the next requests (any path).
    pub fn inject(&self, fault: Fault, count: usize) {
        let mut s = self.lock();
        for _ in 0..count {
            s.faults.push_back(fault.clone());
        }
    }

    /// Drops queued faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every exchange so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.lock().exchanges.clone()
    }

    /// Forgets recorded exchanges.
    pub fn clear_exchanges(&self) {
        self.lock().exchanges.clear();
    }

    /// Answers one REST request (`/health`, `/version`, `/api/v1/…`) exactly as the fake's
    /// own server does; records the exchange when enabled; bumps the change generation after
    /// every non-GET request.
    pub async fn handle(self, req: Req) -> Resp {
        let fault = self.lock().faults.pop_front();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(String::from);
        let request_json: Option<Value> = if req.body.is_empty() {
            None
        } else {
            serde_json::from_slice(&req.body).ok()
        };
        let request_not_json = !req.body.is_empty() && request_json.is_none();
        let mut ex = Exchange {
            method: req.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            operation: None,
            request_json: request_json.clone(),
            request_not_json,
            status: 0,
            response_json: None,
            injected: false,
        };
        let resp = match fault {
            Some(Fault::ServerError) => {
                ex.injected = true;
                json_resp(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &rpc(2, "injected failure"),
                )
            }
            Some(Fault::Unavailable) => {
                ex.injected = true;
                text(StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable")
            }
            Some(Fault::Unauthorized) => {
                ex.injected = true;
                text(StatusCode::UNAUTHORIZED, "Unauthorized")
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.route(&req, &path, query.as_deref(), request_json, &mut ex)
            }
            None => self.route(&req, &path, query.as_deref(), request_json, &mut ex),
        };
        ex.status = resp.status().as_u16();
        if ex.injected && resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
            ex.response_json = Some(rpc(2, "injected failure"));
        }
        {
            let mut s = self.lock();
            if s.record_exchanges {
                s.exchanges.push(ex);
            }
        }
        if req.method != Method::GET {
            self.changed();
        }
        resp
    }
}
