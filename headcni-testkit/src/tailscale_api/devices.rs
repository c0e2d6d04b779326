//! The device operations: list devices, get and set a device's routes.
//!
//! Shapes: client-go-v2 `devices.go` (`Device`, `DeviceRoutes`, `{"routes": [...]}`) and
//! `testdata/devices.json`; behaviour: Headscale main `hscontrol/api/v2/devices.go`
//! (`listDevices`, `getDeviceRoutes`, `setDeviceRoutes`: route fields only with
//! `fields=all`, route lists never `null`, unknown device `404 device not found`, a route
//! that does not parse `400`, the set replaced, sorted and de-duplicated, an exit route
//! expanded to both families).

use http::StatusCode;
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use super::state::{Device, State};

/// An operation's outcome: status and JSON body (errors use [`api_error`]).
pub(super) type Outcome = (StatusCode, Value);

/// The Tailscale error body `{"message", "status"}` (client-go-v2 `client.go` `APIError`;
/// Headscale main `hscontrol/api/v2/errors.go`).
pub(super) fn api_error(status: StatusCode, message: &str) -> Outcome {
    (
        status,
        json!({"message": message, "status": status.as_u16()}),
    )
}

fn strings(routes: &[IpNetwork]) -> Vec<String> {
    routes.iter().map(|r| r.to_string()).collect()
}

fn device_json(d: &Device, all_fields: bool) -> Value {
    let v = &d.view;
    let n = d.seq as u32;
    let mut out = json!({
        "addresses": [
            format!("100.{}.{}.{}", 64 + (n >> 16) % 64, (n >> 8) & 255, n & 255),
            format!("fd7a:115c:a1e0::{:x}", n),
        ],
        "authorized": true,
        "blocksIncomingConnections": false,
        "clientVersion": "1.102.3-t0000000-g0000000",
        "connectedToControl": true,
        "created": "2026-01-01T00:00:00Z",
        "expires": "0001-01-01T00:00:00Z",
        "hostname": v.hostname,
        "id": v.id,
        "isEphemeral": false,
        "isExternal": false,
        "keyExpiryDisabled": true,
        "machineKey": format!("mkey:{:064x}", d.seq),
        "name": format!("{}.example.ts.net", v.hostname),
        "nodeId": v.node_id,
        "nodeKey": v.node_key,
        "os": "linux",
        "tags": [],
        "tailnetLockError": "",
        "tailnetLockKey": "",
        "updateAvailable": false,
        "user": "headcni@example.com",
    });
    if all_fields {
        out["advertisedRoutes"] = json!(strings(&v.advertised));
        out["enabledRoutes"] = json!(strings(&v.enabled));
        out["clientConnectivity"] = Value::Null;
    }
    out
}

fn routes_json(d: &Device) -> Value {
    json!({
        "advertisedRoutes": strings(&d.view.advertised),
        "enabledRoutes": strings(&d.view.enabled),
    })
}

impl State {
    pub(super) fn list_devices(&self, tailnet: &str, query: Option<&str>) -> Outcome {
        if tailnet != "-" && tailnet != self.opts.tailnet {
            return api_error(StatusCode::NOT_FOUND, "tailnet not found");
        }
        let all = query
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv == "fields=all");
        let devices: Vec<Value> = self.devices.iter().map(|d| device_json(d, all)).collect();
        (StatusCode::OK, json!({"devices": devices}))
    }

    pub(super) fn get_routes(&mut self, id: &str) -> Outcome {
        match self.device_mut(id) {
            Some(d) => (StatusCode::OK, routes_json(d)),
            None => api_error(StatusCode::NOT_FOUND, "device not found"),
        }
    }

    /// `POST /api/v2/device/{id}/routes` with `body` already parsed as JSON.
    pub(super) fn set_routes(&mut self, id: &str, body: &Value) -> Outcome {
        let require_advertised = self.opts.require_advertised;
        let Some(d) = self.device_mut(id) else {
            return api_error(StatusCode::NOT_FOUND, "device not found");
        };
        // Huma validates the body against setSubnetRoutesRequest before the handler: an
        // object with exactly `routes`, a non-null array of strings (`nullable:"false"`),
        // additional properties refused; a violation is 422.
        let Some(obj) = body.as_object() else {
            return api_error(StatusCode::UNPROCESSABLE_ENTITY, "validation failed");
        };
        if obj.keys().any(|k| k != "routes") {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation failed: unexpected property",
            );
        }
        let Some(items) = obj.get("routes").and_then(Value::as_array) else {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation failed: routes must be an array",
            );
        };
        let mut routes: Vec<IpNetwork> = Vec::new();
        for item in items {
            let Some(s) = item.as_str() else {
                return api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation failed: routes must be strings",
                );
            };
            let Ok(p) = s.parse::<IpNetwork>() else {
                return api_error(StatusCode::BAD_REQUEST, "parsing route");
            };
            // Stricter than Headscale (netip.ParsePrefix keeps host bits): a route with host
            // bits is not a route HeadCNI may send.
            if p.ip() != p.network() {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("parsing route: {s} has host bits set"),
                );
            }
            if require_advertised && !d.view.advertised.contains(&p) {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("route {s} is not advertised by the device"),
                );
            }
            if p.prefix() == 0 {
                // An exit route is enabled for both families (`parseRoutes`).
                routes.push("0.0.0.0/0".parse().expect("literal"));
                routes.push("::/0".parse().expect("literal"));
            } else {
                routes.push(p);
            }
        }
        routes.sort_by_key(|r| (r.is_ipv6(), r.network(), r.prefix()));
        routes.dedup();
        d.view.enabled = routes;
        (StatusCode::OK, routes_json(d))
    }
}
