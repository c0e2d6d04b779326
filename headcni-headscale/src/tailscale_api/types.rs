//! Wire shapes of the Tailscale API v2 (the parts HeadCNI uses) and the node reference.
//!
//! Sources: tailscale/tailscale-client-go-v2 `devices.go` (`Device`, `DeviceRoutes`),
//! `client.go` (`APIError`), `testdata/devices.json`; juanfont/headscale main
//! `hscontrol/api/v2/devices.go` and `oauth.go` (the same shapes served by Headscale).

use std::fmt;

use ipnetwork::IpNetwork;
use serde::Deserialize;

/// A device of `GET /api/v2/tailnet/{tailnet}/devices` (`{"devices": [...]}`).
///
/// Only the fields HeadCNI reads; unknown fields are ignored (Tailscale adds fields over
/// time). `advertisedRoutes`/`enabledRoutes` are present only with `fields=all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Device {
    /// The legacy numeric id (a decimal string), e.g. `"50053"`.
    pub id: String,
    /// The preferred stable id, e.g. `"nTESTJ31"` on Tailscale SaaS; Headscale uses the
    /// decimal node id. Equal to tailscaled's LocalAPI `Self.ID`.
    pub node_id: String,
    /// `nodekey:<64 hex>`: tailscaled's LocalAPI `Self.PublicKey`.
    pub node_key: String,
    /// The MagicDNS name, e.g. `"foo.example.com"`.
    pub name: String,
    /// The OS hostname.
    pub hostname: String,
    /// Routes the device advertises (`fields=all` only). client-go-v2 spells the tag
    /// `AdvertisedRoutes`; Go's decoder is case-insensitive, so both spellings are accepted.
    #[serde(alias = "AdvertisedRoutes")]
    pub advertised_routes: Vec<String>,
    /// Routes enabled (approved) for the device (`fields=all` only).
    pub enabled_routes: Vec<String>,
}

impl Device {
    /// The id to use in `/api/v2/device/{deviceId}/…`: `nodeId` (preferred, client-go-v2
    /// `devices.go`), else the legacy `id`.
    pub fn device_id(&self) -> &str {
        if self.node_id.is_empty() {
            &self.id
        } else {
            &self.node_id
        }
    }
}

#[derive(Deserialize)]
pub(super) struct DeviceList {
    pub(super) devices: Option<Vec<Device>>,
}

/// `GET`/`POST /api/v2/device/{deviceId}/routes` as received
/// (`{"advertisedRoutes": [...], "enabledRoutes": [...]}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeviceRoutesWire {
    #[serde(default)]
    pub(super) advertised_routes: Option<Vec<String>>,
    #[serde(default)]
    pub(super) enabled_routes: Option<Vec<String>>,
}

/// A device's routes, parsed. Enabled routes need not be advertised (Tailscale allows
/// pre-enabling), and advertised routes need not be enabled (client-go-v2 `devices.go`
/// `SubnetRoutes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRoutes {
    /// `advertisedRoutes`.
    pub advertised: Vec<IpNetwork>,
    /// `enabledRoutes`.
    pub enabled: Vec<IpNetwork>,
}

/// The body of `POST /api/v2/device/{deviceId}/routes`: the **full** enabled set (replace
/// semantics; client-go-v2 `devices.go` `SetSubnetRoutes`).
#[derive(serde::Serialize)]
pub(super) struct SetRoutesBody<'a> {
    pub(super) routes: &'a [String],
}

/// The Tailscale error body (client-go-v2 `client.go` `APIError`: `{"message", "data",
/// "status"}`; Headscale main `hscontrol/api/v2/errors.go` emits the same).
#[derive(Deserialize)]
pub(super) struct ApiErrorBody {
    #[serde(default)]
    pub(super) message: String,
}

/// The token endpoint's success body (RFC 6749 §5.1; Headscale main `hscontrol/api/v2/oauth.go`
/// `tokenResponse`).
#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub(super) access_token: String,
    #[serde(default)]
    pub(super) token_type: String,
    #[serde(default)]
    pub(super) expires_in: Option<u64>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
    }
}

/// The token endpoint's error body (RFC 6749 §5.2).
#[derive(Deserialize)]
pub(super) struct OAuthErrorBody {
    #[serde(default)]
    pub(super) error: String,
    #[serde(default)]
    pub(super) error_description: String,
}

/// Which device is "this node": tailscaled's LocalAPI `GET /localapi/v0/status` →
/// `Self.PublicKey` (`nodekey:…`) and/or `Self.ID` (the stable node id). At least one is set;
/// when both are, a device must match both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// `Self.PublicKey`, `nodekey:<64 hex>`.
    pub node_key: Option<String>,
    /// `Self.ID`, the stable node id (the API's `nodeId`).
    pub stable_id: Option<String>,
}

impl NodeRef {
    /// A reference by both identifiers (the normal case: both come from one LocalAPI status).
    pub fn new(node_key: impl Into<String>, stable_id: impl Into<String>) -> Self {
        NodeRef {
            node_key: Some(node_key.into()),
            stable_id: Some(stable_id.into()),
        }
    }

    /// A reference by node key only.
    pub fn by_node_key(node_key: impl Into<String>) -> Self {
        NodeRef {
            node_key: Some(node_key.into()),
            stable_id: None,
        }
    }

    /// A reference by stable id only.
    pub fn by_stable_id(stable_id: impl Into<String>) -> Self {
        NodeRef {
            node_key: None,
            stable_id: Some(stable_id.into()),
        }
    }

    /// The set identifiers, `None` when neither is non-empty.
    pub(super) fn keys(&self) -> Option<(Option<&str>, Option<&str>)> {
        let k = self.node_key.as_deref().filter(|s| !s.is_empty());
        let s = self.stable_id.as_deref().filter(|s| !s.is_empty());
        (k.is_some() || s.is_some()).then_some((k, s))
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.node_key, &self.stable_id) {
            (Some(k), Some(s)) => write!(f, "node key {k} / stable id {s}"),
            (Some(k), None) => write!(f, "node key {k}"),
            (None, Some(s)) => write!(f, "stable id {s}"),
            (None, None) => f.write_str("no node identifier"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of client-go-v2 `testdata/devices.json` (default fields) and the `fields=all`
    /// route fields in both spellings.
    #[test]
    fn device_list_decodes() {
        let body = r#"{"devices":[{"addresses":["100.121.200.21"],"authorized":true,
            "hostname":"foo","id":"50053","nodeId":"nTESTJ31","name":"foo.example.com",
            "nodeKey":"nodekey:30dc","created":"","lastSeen":"2022-04-15T13:25:21Z"},
            {"id":"7","nodeId":"","nodeKey":"nodekey:ab","AdvertisedRoutes":["10.0.0.0/24"],
            "enabledRoutes":[]}]}"#;
        let l: DeviceList = serde_json::from_str(body).unwrap();
        let d = l.devices.unwrap();
        assert_eq!(d[0].device_id(), "nTESTJ31");
        assert_eq!(d[0].node_key, "nodekey:30dc");
        assert_eq!(d[1].device_id(), "7");
        assert_eq!(d[1].advertised_routes, vec!["10.0.0.0/24"]);
    }

    #[test]
    fn node_ref_needs_an_identifier() {
        assert!(NodeRef::by_node_key("").keys().is_none());
        assert!(NodeRef::by_stable_id("n1").keys().is_some());
        assert_eq!(
            NodeRef::new("nodekey:1", "n1").to_string(),
            "node key nodekey:1 / stable id n1"
        );
    }
}
