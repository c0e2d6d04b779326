//! The two route APIs: ≥ 0.26 `approve_routes` (replace semantics, exit routes expanded) and
//! the ≤ 0.25 route rows (enable refused unless advertised, exit pair toggled together).

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

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

    pub(super) fn approve_routes(&mut self, id: u64, body: &Value) -> HResult {
        let mut routes = Vec::new();
        let list = body
            .get("routes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for r in list {
            let s = r.as_str().unwrap_or_default();
            let p: IpNetwork = s
                .parse()
                .map_err(|e| (2, format!("parsing route: netip.ParsePrefix({s:?}): {e}")))?;
            // 0.0.0.0/0 or ::/0 expands to both exit routes.
            let expanded: Vec<IpNetwork> = if is_exit(&p) {
                vec![
                    "0.0.0.0/0"
                        .parse()
                        .map_err(|_| (13, "internal".to_string()))?,
                    "::/0".parse().map_err(|_| (13, "internal".to_string()))?,
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
        if let Some(n) = self.nodes.get_mut(&id) {
            n.approved = routes;
        }
        self.recompute();
        let n = self.nodes.get(&id).ok_or_else(|| self.missing_node())?;
        Ok(json!({ "node": self.node_json(n, true) }))
    }

    pub(super) fn enable_route(&mut self, rid: &str, enable: bool) -> HResult {
        let rid: u64 = rid.parse().map_err(|_| (3, "bad route id".to_string()))?;
        let Some(idx) = self.rows.iter().position(|r| r.id == rid) else {
            return Err((2, "record not found".to_string()));
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
            ));
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
