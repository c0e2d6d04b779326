//! The HTTP front: operation routing, Bearer-token authentication, the scope check, the request
//! record. Order as in Headscale main `hscontrol/api/v2/api.go`: the operation is matched first
//! (an unknown path is `404`), then `authMiddleware` (a missing, unknown or expired token is
//! `401 {"message":"unauthorized"}`; the Tailscale SDK's HTTP Basic form with the token as
//! user name is accepted too, `bearerOrBasicToken`), then the operation's required scope
//! (`403 token is missing the required scope …`).

use http::{HeaderMap, Method, StatusCode, header};
use serde_json::Value;
use tokio::time::Instant;

use super::control::FakeTailscaleApiControl;
use super::devices::{Outcome, api_error};
use super::oauth::{base64_decode, grants};
use super::options::ApiRequest;
use crate::server::{Req, Resp, json as json_resp, text};

fn credential(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.to_string());
    }
    let raw = base64_decode(v.strip_prefix("Basic ")?)?;
    let user = std::str::from_utf8(&raw)
        .ok()?
        .split(':')
        .next()?
        .to_string();
    Some(user)
}

/// JSON bodies only: `Content-Type` absent (Huma's default format) or `application/json`.
fn json_content_type(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) => v
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")),
    }
}

impl FakeTailscaleApiControl {
    pub(super) fn respond(&self, req: Req) -> Resp {
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let mut s = self.lock();
        let mut rec = ApiRequest {
            method: req.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            status: 0,
            token: None,
            token_valid: false,
            body: None,
        };
        if path == "/api/v2/oauth/token" {
            let resp = if req.method == Method::POST {
                s.token_endpoint(&req.headers, &req.body)
            } else {
                text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
            };
            rec.status = resp.status().as_u16();
            s.requests.push(rec);
            return resp;
        }
        rec.body = serde_json::from_slice::<Value>(&req.body).ok();
        let segs: Vec<&str> = path
            .strip_prefix("/api/v2/")
            .unwrap_or("")
            .split('/')
            .collect();
        // (operation, required scope)
        let op: Option<(&str, &str)> = match (&req.method, segs.as_slice()) {
            (&Method::GET, ["tailnet", _, "devices"]) => Some(("list", "devices:core:read")),
            (&Method::GET, ["device", _, "routes"]) => Some(("get_routes", "devices:routes:read")),
            (&Method::POST, ["device", _, "routes"]) => Some(("set_routes", "devices:routes")),
            _ => None,
        };
        let outcome: Outcome = match op {
            None if matches!(
                segs.as_slice(),
                ["tailnet", _, "devices"] | ["device", _, "routes"]
            ) =>
            {
                api_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            None => api_error(StatusCode::NOT_FOUND, "not found"),
            Some((op, scope)) => {
                let idx = credential(&req.headers).and_then(|t| s.token_index(&t));
                rec.token = idx;
                rec.token_valid = idx.is_some_and(|i| s.tokens[i].valid(Instant::now()));
                match idx {
                    _ if !rec.token_valid => api_error(StatusCode::UNAUTHORIZED, "unauthorized"),
                    Some(i) if !grants(&s.tokens[i].scopes, scope) => api_error(
                        StatusCode::FORBIDDEN,
                        &format!("token is missing the required scope {scope}"),
                    ),
                    _ => match (op, segs.as_slice()) {
                        ("list", [_, tailnet, _]) => s.list_devices(tailnet, query.as_deref()),
                        ("get_routes", [_, id, _]) => s.get_routes(id),
                        ("set_routes", [_, id, _]) => {
                            if !json_content_type(&req.headers) {
                                api_error(
                                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                                    "unsupported media type",
                                )
                            } else {
                                match &rec.body {
                                    Some(b) => s.set_routes(id, b),
                                    None => api_error(StatusCode::BAD_REQUEST, "invalid JSON body"),
                                }
                            }
                        }
                        _ => api_error(StatusCode::NOT_FOUND, "not found"),
                    },
                }
            }
        };
        rec.status = outcome.0.as_u16();
        s.requests.push(rec);
        json_resp(outcome.0, &outcome.1)
    }
}
