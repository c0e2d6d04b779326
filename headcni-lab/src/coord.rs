//! The stand-ins' private coordination protocol (test double territory).
//!
//! It plays the role of Tailscale's control protocol (Noise over HTTP/2, `tailcfg.MapRequest`
//! / `MapResponse`), which the stand-ins deliberately do not imitate: JSON over plain HTTP/1.1
//! on the Headscale stand-in's listen address, under `/lab/coord/v1/` (outside `/api/v1`, so
//! the REST surface stays exactly the spec's).
//!
//! | method + path | request | answer |
//! | --- | --- | --- |
//! | `POST /lab/coord/v1/register` | [`RegisterRequest`] | 200 [`Registered`]; 403 [`CoordErrorBody`] with Headscale's message (`invalid authkey`, `authkey expired`, `authkey already used`) |
//! | `POST /lab/coord/v1/attach` | [`Hostinfo`] (re-attach with a persisted node key) | 200 [`Registered`]; 404 `node not found` |
//! | `POST /lab/coord/v1/hostinfo` | [`Hostinfo`] | 200 [`Registered`]; 404 |
//! | `GET /lab/coord/v1/map?node_key=K&since=G` | – | 200 [`Netmap`], long-poll: answers when the generation differs from `G` or after [`MAP_LONG_POLL`]; 404 |
//! | `POST /lab/coord/v1/logout` | [`Hostinfo`] | 200 `{}` (routes withdrawn, node offline) |
//!
//! A node whose map session stops for [`OFFLINE_AFTER`] is marked offline (loses its primary
//! routes), as Headscale does when a map session ends (hscontrol/state/state.go@v0.29.2
//! `Disconnect`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Path prefix of the protocol.
pub const PREFIX: &str = "/lab/coord/v1/";

/// How long the server holds a map request without changes before answering.
pub const MAP_LONG_POLL: Duration = Duration::from_secs(2);

/// A node without map activity for this long is offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(3);

/// `register`: log in with a pre-auth key (`register_with_auth_key` semantics).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The pre-auth key (never logged).
    pub auth_key: String,
    /// What the node reports about itself.
    pub hostinfo: Hostinfo,
}

/// What a node reports: identity, endpoints, routable IPs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hostinfo {
    /// `nodekey:<64 hex>`: the Tailscale node key, which is also the WireGuard public key.
    pub node_key: String,
    /// Host name.
    pub hostname: String,
    /// Underlay endpoints: the node's IPv4 addresses with its WireGuard port.
    pub endpoints: Vec<SocketAddr>,
    /// `Hostinfo.RoutableIPs` = the `AdvertiseRoutes` pref while `WantRunning`.
    pub routable_ips: Vec<IpNetwork>,
    /// `Hostinfo.RequestTags` = the `AdvertiseTags` pref (`tailscale up --advertise-tags`).
    #[serde(default)]
    pub request_tags: Vec<String>,
}

/// Answer to `register`, `attach` and `hostinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The Headscale node id.
    pub node_id: u64,
}

/// Error body of every refused request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordErrorBody {
    /// Message (Headscale's wording where there is one).
    pub error: String,
}

/// One node in a [`Netmap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetmapNode {
    /// Headscale node id.
    pub id: u64,
    /// Host name.
    pub hostname: String,
    /// `nodekey:<hex>` (WireGuard public key).
    pub node_key: String,
    /// Underlay endpoints (`ip:port`).
    pub endpoints: Vec<SocketAddr>,
    /// Tailnet addresses (`100.64.0.N`, `fd7a:115c:a1e0::N`).
    pub tailnet_ips: Vec<IpAddr>,
    /// Subnet routes this node serves as primary.
    pub primary_routes: Vec<IpNetwork>,
    /// Whether its map session is live.
    pub online: bool,
}

/// The network map of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netmap {
    /// Generation (changes whenever anything in the tailnet changed).
    pub generation: u64,
    /// The node itself.
    #[serde(rename = "self")]
    pub self_node: NetmapNode,
    /// Every other node (no ACL filtering).
    pub peers: Vec<NetmapNode>,
    /// The tailnet's DNS settings (tailcfg `DNSConfig`); absent in older stand-ins' answers.
    #[serde(default)]
    pub dns: NetmapDns,
}

/// The DNS part of a netmap, as Headscale fills tailcfg's `DNSConfig` from its config
/// (headscale `hscontrol/types/config.go` `dnsToTailcfgDNS`): `Domains` = `[base_domain]`,
/// `Proxied` = `magic_dns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetmapDns {
    /// Headscale `dns.base_domain`: node `N` is `N.<base_domain>` (none when unset).
    pub base_domain: Option<String>,
    /// Headscale `dns.magic_dns` (tailcfg `DNSConfig.Proxied`): the base domain is a local
    /// domain of quad-100.
    pub magic_dns: bool,
}

/// A failed coordination call.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// Transport failure (connection refused, timeout, ...).
    #[error("coordination server {url} unreachable: {reason}")]
    Unreachable {
        /// Server URL.
        url: String,
        /// Reason.
        reason: String,
    },
    /// The server refused (`status`, message).
    #[error("coordination server refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Message.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("bad coordination answer: {0}")]
    Decode(String),
}

impl CoordError {
    /// True for a 404 (unknown node key).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CoordError::Refused { status: 404, .. })
    }
}

/// Client of the protocol (plain HTTP/1.1 over TCP).
#[derive(Debug, Clone)]
pub struct CoordClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl CoordClient {
    /// A client of the server at `base` (`http://host:port`, a trailing `/` is ignored).
    pub fn new(base: &str) -> CoordClient {
        CoordClient {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        path_q: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, CoordError> {
        let url = format!("{}{PREFIX}{path_q}", self.base);
        let unreachable = |reason: String| CoordError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(e.to_string()))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, CoordError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        if status != 200 {
            let message = serde_json::from_slice::<CoordErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(CoordError::Refused { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| CoordError::Decode(e.to_string()))
    }

    fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CoordError> {
        serde_json::to_vec(v).map_err(|e| CoordError::Decode(e.to_string()))
    }

    /// `POST register`. Errors: [`CoordError::Refused`] with Headscale's message for a bad key.
    pub async fn register(&self, req: &RegisterRequest) -> Result<Registered, CoordError> {
        let body = Self::encode(req)?;
        self.call(
            http::Method::POST,
            "register",
            Some(body),
            Duration::from_secs(5),
        )
        .await
    }

    /// `POST attach` (persisted node key). Errors: 404 ([`CoordError::is_not_found`]) when the
    /// node is unknown (deleted).
    pub async fn attach(&self, info: &Hostinfo) -> Result<Registered, CoordError> {
        let body = Self::encode(info)?;
        self.call(
            http::Method::POST,
            "attach",
            Some(body),
            Duration::from_secs(5),
        )
        .await
    }

    /// `POST hostinfo`.
    pub async fn hostinfo(&self, info: &Hostinfo) -> Result<Registered, CoordError> {
        let body = Self::encode(info)?;
        self.call(
            http::Method::POST,
            "hostinfo",
            Some(body),
            Duration::from_secs(5),
        )
        .await
    }

    /// `POST logout`.
    pub async fn logout(&self, info: &Hostinfo) -> Result<(), CoordError> {
        let body = Self::encode(info)?;
        let _: serde_json::Value = self
            .call(
                http::Method::POST,
                "logout",
                Some(body),
                Duration::from_secs(5),
            )
            .await?;
        Ok(())
    }

    /// `GET map` long-poll: returns when the generation differs from `since` (or after
    /// [`MAP_LONG_POLL`] with the current map).
    pub async fn map(&self, node_key: &str, since: u64) -> Result<Netmap, CoordError> {
        self.call(
            http::Method::GET,
            &format!("map?node_key={node_key}&since={since}"),
            None,
            MAP_LONG_POLL + Duration::from_secs(3),
        )
        .await
    }
}
