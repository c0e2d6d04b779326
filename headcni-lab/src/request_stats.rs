//! Request counters of the stand-ins, for `bench/scale.sh` (test-double territory: neither
//! Headscale nor tailscaled has this endpoint; it lives under `/lab/`, outside `/api/v1` and
//! `/localapi/v0`, so the real surfaces stay exactly as they were).
//!
//! `GET /lab/debug/requests` (not counted itself) answers a [`RequestCounts`]: time since
//! start, and per route (`METHOD /path` with every all-digit path segment written `{id}`, no
//! query) how many requests arrived, split by who asked: the lab's own probes (header
//! `user-agent: headcni-lab`, see [`LAB_USER_AGENT`]) are kept apart so they never inflate
//! what the daemons cost.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use headcni_testkit::server::{Req, Resp, json};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// Path of the counters' endpoint on both stand-ins.
pub const DEBUG_PATH: &str = "/lab/debug/requests";

/// The `user-agent` the lab's own requests carry (`lab status`, the tests' probes).
pub const LAB_USER_AGENT: &str = "headcni-lab";

/// The counters' answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Milliseconds since the stand-in started.
    pub uptime_ms: u64,
    /// Requests by route, except the lab's own (see the module docs for the key).
    pub routes: BTreeMap<String, u64>,
    /// The lab's own requests by route.
    pub lab_routes: BTreeMap<String, u64>,
}

impl RequestCounts {
    /// The sum over [`RequestCounts::routes`] whose path starts with `prefix` (e.g.
    /// `/api/v1/`), whatever the method.
    pub fn total_under(&self, prefix: &str) -> u64 {
        self.routes
            .iter()
            .filter(|(k, _)| {
                k.split_once(' ')
                    .is_some_and(|(_, p)| p.starts_with(prefix))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Thread-safe counters, one per stand-in process.
#[derive(Debug)]
pub struct RequestStats {
    started: Instant,
    counts: Mutex<RequestCounts>,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats::new()
    }
}

/// `METHOD /path` with all-digit segments replaced by `{id}` (no query).
pub fn route_key(method: &Method, path: &str) -> String {
    let path: Vec<&str> = path
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                s
            }
        })
        .collect();
    format!("{method} {}", path.join("/"))
}

impl RequestStats {
    /// Counters starting now.
    pub fn new() -> RequestStats {
        RequestStats {
            started: Instant::now(),
            counts: Mutex::new(RequestCounts::default()),
        }
    }

    /// Counts `req` (unless it is a request for the counters), or answers it when it is one:
    /// `Some(response)` for `GET` [`DEBUG_PATH`].
    pub fn observe(&self, req: &Req) -> Option<Resp> {
        let path = req.uri.path();
        if path == DEBUG_PATH {
            return Some(if req.method == Method::GET {
                let body = serde_json::to_value(self.snapshot()).unwrap_or_default();
                json(StatusCode::OK, &body)
            } else {
                json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "GET only"}),
                )
            });
        }
        let lab = req
            .headers
            .get(http::header::USER_AGENT)
            .is_some_and(|v| v.as_bytes() == LAB_USER_AGENT.as_bytes());
        let key = route_key(&req.method, path);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let map = if lab {
            &mut c.lab_routes
        } else {
            &mut c.routes
        };
        *map.entry(key).or_default() += 1;
        None
    }

    /// The counters now.
    pub fn snapshot(&self) -> RequestCounts {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        c.uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, ua: Option<&str>) -> Req {
        let mut headers = http::HeaderMap::new();
        if let Some(ua) = ua {
            headers.insert(http::header::USER_AGENT, ua.parse().expect("header"));
        }
        Req {
            method,
            uri: uri.parse().expect("uri"),
            headers,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn routes_are_counted_by_shape_and_the_lab_apart() {
        let s = RequestStats::new();
        assert!(
            s.observe(&req(Method::GET, "/api/v1/node/12", None))
                .is_none()
        );
        assert!(
            s.observe(&req(Method::GET, "/api/v1/node/3?x=1", None))
                .is_none()
        );
        assert!(
            s.observe(&req(Method::POST, "/api/v1/node/3/approve_routes", None))
                .is_none()
        );
        assert!(
            s.observe(&req(Method::GET, "/api/v1/node", Some(LAB_USER_AGENT)))
                .is_none()
        );
        assert!(
            s.observe(&req(Method::GET, "/lab/coord/v1/map?since=4", None))
                .is_none()
        );
        let resp = s
            .observe(&req(Method::GET, DEBUG_PATH, None))
            .expect("the counters answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let c = s.snapshot();
        assert_eq!(c.routes["GET /api/v1/node/{id}"], 2);
        assert_eq!(c.routes["POST /api/v1/node/{id}/approve_routes"], 1);
        assert_eq!(c.lab_routes["GET /api/v1/node"], 1);
        assert!(!c.routes.contains_key("GET /api/v1/node"));
        assert!(!c.routes.keys().any(|k| k.contains("/lab/debug")));
        assert_eq!(c.total_under("/api/v1/"), 3);
        assert_eq!(c.total_under("/lab/coord/"), 1);
    }
}
