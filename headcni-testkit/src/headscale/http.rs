//! The HTTP front of the REST API: `/health`, `/version`, Bearer API-key auth (401 plain
//! text), query decoding, then the operation dispatch (`rest`).

use std::collections::BTreeMap;

use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::HeadscaleControl;
use super::faults::Exchange;
use super::options::FakeApiVersion;
use crate::server::{Req, Resp, json as json_resp, respond, text};

impl HeadscaleControl {
    pub(super) fn route(
        &self,
        req: &Req,
        path: &str,
        query: Option<&str>,
        body: Option<Value>,
        ex: &mut Exchange,
    ) -> Resp {
        let mut s = self.lock();
        if path == "/health" && req.method == Method::GET {
            let (st, v) = if s.healthy {
                (StatusCode::OK, json!({"status": "pass"}))
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"status": "fail"}))
            };
            return respond(st, "application/health+json", v.to_string());
        }
        if path == "/version" && req.method == Method::GET {
            // ≥ 0.27: `hscontrol/handlers.go` `VersionHandler` encodes `types.VersionInfo`
            // (`hscontrol/types/version.go`); absent before (the router's 404).
            let v = match s.version {
                FakeApiVersion::V0_29 => json!({
                    "version": "v0.29.2", "commit": "8eea89488c642f3d5f617fab5493d5f51f6f4ad0",
                    "buildTime": "2026-07-01T00:00:00Z",
                    "go": {"version": "go1.25", "os": "linux", "arch": "amd64"}, "dirty": false
                }),
                // A build of main without a release tag: `GetVersionInfo` keeps "dev".
                FakeApiVersion::V0_30 => json!({
                    "version": "dev", "commit": "f20f1f127842c74dd5f6e10254307b65b1aee936",
                    "buildTime": "2026-07-21T11:28:35Z",
                    "go": {"version": "go1.26", "os": "linux", "arch": "amd64"}, "dirty": false
                }),
                FakeApiVersion::V0_26 | FakeApiVersion::V0_25 => {
                    return text(StatusCode::NOT_FOUND, "404 page not found");
                }
            };
            return json_resp(StatusCode::OK, &v);
        }
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return text(StatusCode::NOT_FOUND, "404 page not found");
        };
        let authorized = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| s.api_keys.iter().any(|x| x == k));
        if !authorized {
            if s.version.problem_errors() {
                // main: `hscontrol/api/v1/api.go` authMiddleware → huma.WriteErr(401).
                let v = json!({"title": "Unauthorized", "status": 401, "detail": "Unauthorized"});
                return respond(
                    StatusCode::UNAUTHORIZED,
                    "application/problem+json",
                    v.to_string(),
                );
            }
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let segs: Vec<&str> = rest.split('/').filter(|x| !x.is_empty()).collect();
        let q: BTreeMap<String, String> = query
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (pct_decode(k), pct_decode(v))
            })
            .collect();
        let body = body.unwrap_or_else(|| json!({}));
        let (op, res) = s.api(&req.method, &segs, &q, &body);
        ex.operation = op;
        if op.is_none() && s.version.problem_errors() {
            // main: a path no huma operation serves falls through to chi's plain 404.
            return text(StatusCode::NOT_FOUND, "404 page not found");
        }
        match res {
            Ok(v) => {
                ex.response_json = Some(v.clone());
                json_resp(StatusCode::OK, &v)
            }
            Err(fail) => {
                let (status, v, content_type) = fail.render(s.version);
                ex.response_json = Some(v.clone());
                respond(status, content_type, v.to_string())
            }
        }
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(pct_decode("a%20b+c"), "a b c");
        assert_eq!(pct_decode("100%"), "100%");
        assert_eq!(pct_decode("%zz"), "%zz");
    }
}
