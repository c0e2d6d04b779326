//! The two route APIs: ≥ 0.26 `approve_routes` (replace semantics, exit routes expanded) and
//! the ≤ 0.25 route rows (enable refused unless advertised, exit pair toggled together).

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use http::StatusCode;

use super::json::Fail;
use super::options::FakeApiVersion;
use super::policy::is_exit;
use super::rest::HResult;
use super::state::{FRoute, State, now};

impl State {
    pub(super) fn route_json(&self, r: &FRoute) -> Value {
        let node = self
            .nodes
            .get(&r.node_id)
            .map(|n| self.node_json(n, false))
            .unwrap_or(Value::Null);
        json!({
            "id": r.id.to_string(), "node": node, "prefix": r.prefix.to_string(),
            "advertised": r.advertised, "enabled": r.enabled,
            "isPrimary": self.primaries.get(&r.prefix) == Some(&r.node_id),
            "createdAt": r.created_at, "updatedAt": r.updated_at, "deletedAt": Value::Null
        })
    }

    /// `POST /api/v1/node/{id}/approve_routes` (≥ 0.26): parse every route (a bad one: the
    /// plain `parsing route: …` error, gRPC Unknown → 500; main 400 `parsing route`), expand
    /// exit routes, replace the approved set. An unknown node is **not** a 404 before main:
    /// `SetApprovedRoutes` answers gRPC InvalidArgument (HTTP 400) with the store's error —
    /// `record not found` (0.26, `hscontrol/db/node.go` `GetNodeByID`), `node no longer exists
    /// in NodeStore: N` (0.28–0.29, `hscontrol/state/state.go`); main maps it to 404
    /// `setting approved routes` (`hscontrol/api/v1/nodes.go`, `errors.go`).
    pub(super) fn approve_routes(&mut self, id: u64, body: &Value) -> HResult {
        let mut routes = Vec::new();
        let list = body
            .get("routes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for r in list {
            let s = r.as_str().unwrap_or_default();
            let p: IpNetwork = s.parse().map_err(|e| {
                let cause = format!("netip.ParsePrefix({s:?}): {e}");
                if self.version.problem_errors() {
                    Fail::from((3, cause)).with_huma(StatusCode::BAD_REQUEST, "parsing route")
                } else {
                    Fail::from((2, format!("parsing route: {cause}")))
                }
            })?;
            // 0.0.0.0/0 or ::/0 expands to both exit routes.
            let expanded: Vec<IpNetwork> = if is_exit(&p) {
                vec![
                    "0.0.0.0/0"
                        .parse()
                        .map_err(|_| Fail::from((13, "internal".to_string())))?,
                    "::/0"
                        .parse()
                        .map_err(|_| Fail::from((13, "internal".to_string())))?,
                ]
            } else {
                vec![p]
            };
            for e in expanded {
                if !routes.contains(&e) {
                    routes.push(e);
                }
            }
        }
        let Some(n) = self.nodes.get_mut(&id) else {
            let message = match self.version {
                FakeApiVersion::V0_26 => "record not found".to_string(),
                _ => format!("node no longer exists in NodeStore: {id}"),
            };
            return Err(Fail::from((3, message))
                .with_huma(StatusCode::NOT_FOUND, "setting approved routes"));
        };
        n.approved = routes;
        self.recompute();
        let n = self.nodes.get(&id).ok_or_else(|| self.missing_node())?;
        Ok(json!({ "node": self.node_json(n, true) }))
    }

    pub(super) fn enable_route(&mut self, rid: &str, enable: bool) -> HResult {
        let rid: u64 = rid
            .parse()
            .map_err(|_| Fail::from((3, "bad route id".to_string())))?;
        let Some(idx) = self.rows.iter().position(|r| r.id == rid) else {
            return Err((2, "record not found".to_string()).into());
        };
        let (node_id, prefix, advertised) = {
            let r = &self.rows[idx];
            (r.node_id, r.prefix, r.advertised)
        };
        if enable && !advertised {
            return Err((
                2,
                format!(
                    "route {prefix} is not available on node {node_id}: route is not advertised"
                ),
            )
                .into());
        }
        let t = now();
        for r in self.rows.iter_mut().filter(|r| {
            r.node_id == node_id && (r.id == rid || (is_exit(&prefix) && is_exit(&r.prefix)))
        }) {
            r.enabled = enable;
            r.updated_at = t.clone();
        }
        self.recompute();
        Ok(json!({}))
    }
}
