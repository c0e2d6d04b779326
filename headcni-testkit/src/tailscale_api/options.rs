//! The fake's options ([`FakeTailscaleApiOptions`]) and the snapshots it hands out
//! ([`FakeDeviceView`], [`ApiRequest`]).

use std::net::SocketAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::state::rand_alnum;

/// Options of a [`FakeTailscaleApi`](super::FakeTailscaleApi).
#[derive(Debug, Clone)]
pub struct FakeTailscaleApiOptions {
    /// Where to listen (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// The tailnet name accepted in `/api/v2/tailnet/{tailnet}/…` besides `-` (the
    /// credential's tailnet). Default `example.com`.
    pub tailnet: String,
    /// The OAuth client id (default `k` + 10 random alphanumerics).
    pub client_id: String,
    /// The OAuth client secret (default `tskey-client-<client_id>-<random>`, Tailscale's
    /// shape).
    pub client_secret: String,
    /// The scopes the OAuth client holds (default `devices:core`, `devices:routes`). A token
    /// request may narrow them (`scope`), never widen them.
    pub client_scopes: Vec<String>,
    /// The lifetime of a minted access token, reported as `expires_in` (whole seconds).
    /// Tailscale and Headscale use one hour (Headscale main `hscontrol/api/v2/oauth.go`
    /// `accessTokenTTL`); tests shorten it.
    pub token_lifetime: Duration,
    /// Refuse `POST /device/{id}/routes` with a route the device does not advertise (HTTP 400).
    ///
    /// Default `true`, **stricter than the real servers**: Tailscale allows pre-enabling a
    /// route that is not advertised yet (client-go-v2 `devices.go` `SetSubnetRoutes`) and
    /// Headscale main does not check (`hscontrol/api/v2/devices.go` `parseRoutes`). HeadCNI
    /// never enables what its device does not advertise, so the default catches a client that
    /// would enable a route of another device.
    pub require_advertised: bool,
}

impl Default for FakeTailscaleApiOptions {
    fn default() -> Self {
        let client_id = format!("k{}", rand_alnum(10));
        let client_secret = format!("tskey-client-{client_id}-{}", rand_alnum(32));
        FakeTailscaleApiOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tailnet: "example.com".to_string(),
            client_id,
            client_secret,
            client_scopes: vec!["devices:core".into(), "devices:routes".into()],
            token_lifetime: Duration::from_secs(3600),
            require_advertised: true,
        }
    }
}

/// Snapshot of a fake device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDeviceView {
    /// The legacy numeric id (decimal string).
    pub id: String,
    /// The stable id (`nodeId`, tailscaled's `Self.ID`), e.g. `nAbC123xyzCNTRL`.
    pub node_id: String,
    /// `nodekey:<64 hex>` (tailscaled's `Self.PublicKey`).
    pub node_key: String,
    /// OS hostname.
    pub hostname: String,
    /// Advertised routes.
    pub advertised: Vec<IpNetwork>,
    /// Enabled routes.
    pub enabled: Vec<IpNetwork>,
}

/// One request seen by the fake. Neither the `Authorization` header nor the token request's
/// body is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query, if any.
    pub query: Option<String>,
    /// The answer's status.
    pub status: u16,
    /// Index (0-based, in minting order) of the access token the request carried, if it named
    /// a token this fake minted (valid or not).
    pub token: Option<usize>,
    /// Whether that token was still valid (not expired, not revoked) when the request arrived.
    pub token_valid: bool,
    /// The JSON request body (API requests only; `None` when empty or not JSON).
    pub body: Option<serde_json::Value>,
}
