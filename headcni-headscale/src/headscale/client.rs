//! The Headscale REST client (grpc-gateway `/api/v1/…`, `Authorization: Bearer <api key>`).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::HeadscaleError;
use super::types::*;
use crate::secret::Secret;
use crate::time::format_rfc3339;

/// Which Headscale route model the server speaks (swagger diff v0.25.1 → v0.26.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiGeneration {
    /// 0.23–0.25: `/api/v1/routes`, `/api/v1/node/{id}/routes`, `routes/{id}/enable|disable`;
    /// pre-auth keys take the user **name**.
    RouteRows,
    /// ≥ 0.26: `POST /api/v1/node/{id}/approve_routes` (replace semantics); pre-auth keys take
    /// the user **id**.
    ApprovedRoutes,
}

impl fmt::Display for ApiGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApiGeneration::RouteRows => "<=0.25 (route rows)",
            ApiGeneration::ApprovedRoutes => ">=0.26 (approved routes)",
        })
    }
}

/// What [`HeadscaleClient::detect`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerInfo {
    /// The route model.
    pub generation: ApiGeneration,
    /// `GET /version`'s `version` (≥ 0.27); `None` on older servers.
    pub version: Option<String>,
}

/// Result of the unauthenticated `GET /health` (all versions 0.22–0.29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// HTTP 200 `{"status":"pass"}`.
    Pass,
    /// HTTP 500 `{"status":"fail"}` (database unreachable).
    Fail,
}

/// Options of a new pre-auth key. `ttl` is mandatory: the request always carries an
/// `expiration` (Headscale stores the zero time, i.e. an already expired key, without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthKeyOptions {
    /// Key may register several nodes.
    pub reusable: bool,
    /// Nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Lifetime from now; sent as `expiration = now + ttl` (RFC 3339).
    pub ttl: Duration,
    /// ACL tags (`tag:…`, lower case).
    pub acl_tags: Vec<String>,
}

impl Default for PreAuthKeyOptions {
    /// Single use, not ephemeral, 10 minutes, no tags.
    fn default() -> Self {
        PreAuthKeyOptions {
            reusable: false,
            ephemeral: false,
            ttl: Duration::from_secs(600),
            acl_tags: Vec::new(),
        }
    }
}

/// Configuration of a [`HeadscaleClient`].
#[derive(Clone)]
pub struct HeadscaleConfig {
    /// Base URL, e.g. `https://headscale.example.com` (a path prefix is kept).
    pub url: String,
    /// The API key; `None` for unauthenticated use only (`/health`, `/version`).
    pub api_key: Option<Secret>,
    /// Total time budget of one request (connect + send + receive). Default 10 s.
    pub request_timeout: Duration,
    /// TCP/TLS connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Extra PEM root certificates (a private CA), added to the platform's roots.
    pub extra_root_pem: Option<Vec<u8>>,
}

impl fmt::Debug for HeadscaleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadscaleConfig")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("api_key", &self.api_key)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "extra_root_pem",
                &self.extra_root_pem.as_ref().map(|p| p.len()),
            )
            .finish()
    }
}

impl HeadscaleConfig {
    /// A configuration with default timeouts.
    pub fn new(url: impl Into<String>, api_key: Option<Secret>) -> Self {
        HeadscaleConfig {
            url: url.into(),
            api_key,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            extra_root_pem: None,
        }
    }
}

/// Headscale REST client (reqwest + rustls with the ring provider).
///
/// Every call is one HTTP request bounded by [`HeadscaleConfig::request_timeout`]; retries are
/// the caller's choice (see [`crate::retry::Backoff`]). The API generation is detected once by
/// [`HeadscaleClient::detect`] (or set with [`HeadscaleClient::set_generation`]) and cached.
pub struct HeadscaleClient {
    http: reqwest::Client,
    base: Url,
    api_key: Option<Secret>,
    timeout: Duration,
    info: Mutex<Option<ServerInfo>>,
    observer: Option<crate::observe::RequestObserver>,
}

impl fmt::Debug for HeadscaleClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadscaleClient")
            .field("base", &crate::secret::redact_url(self.base.as_str()))
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("info", &self.server_info())
            .finish()
    }
}

impl HeadscaleClient {
    /// Builds a client. Installs the rustls ring provider (idempotent).
    ///
    /// Errors: [`HeadscaleError::Config`] for a URL that is not `http(s)://…` or a bad PEM.
    pub fn new(config: HeadscaleConfig) -> Result<Self, HeadscaleError> {
        // Userinfo and query are redacted in every message (a password must not reach logs).
        let mut base = crate::http::base_url(&config.url).map_err(HeadscaleError::Config)?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = crate::http::client(
            &base,
            config.request_timeout,
            config.connect_timeout,
            config.extra_root_pem.as_deref(),
        )
        .map_err(HeadscaleError::Config)?;
        Ok(HeadscaleClient {
            http,
            base,
            api_key: config.api_key,
            timeout: config.request_timeout,
            info: Mutex::new(None),
            observer: None,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// Whether an API key is configured.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The cached detection result, if [`HeadscaleClient::detect`] ran or a generation was set.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.info.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// Forces the API generation (configuration override; skips detection).
    pub fn set_generation(&self, generation: ApiGeneration) {
        if let Ok(mut g) = self.info.lock() {
            *g = Some(ServerInfo {
                generation,
                version: None,
            });
        }
    }

    /// The API generation: cached, else detected with [`HeadscaleClient::detect`].
    pub async fn generation(&self) -> Result<ApiGeneration, HeadscaleError> {
        if let Some(i) = self.server_info() {
            return Ok(i.generation);
        }
        Ok(self.detect().await?.generation)
    }

    /// Detects the API generation: `GET /version` (≥ 0.27: 200 ⇒ new model); on 404 probes
    /// `GET /api/v1/routes` (200 ⇒ ≤ 0.25 route rows, 404 ⇒ 0.26.x). Caches the result.
    ///
    /// Errors: any error of the two requests other than the 404s above (e.g.
    /// [`HeadscaleError::Unauthorized`] from the probe).
    pub async fn detect(&self) -> Result<ServerInfo, HeadscaleError> {
        let info = match self.version().await? {
            Some(v) => {
                let generation = match parse_version(&v.version) {
                    Some((0, minor, _)) if minor < 26 => ApiGeneration::RouteRows,
                    _ => ApiGeneration::ApprovedRoutes,
                };
                ServerInfo {
                    generation,
                    version: Some(v.version),
                }
            }
            None => {
                let probe: Result<serde_json::Value, _> = self
                    .call(Method::GET, "api/v1/routes", &[], None::<&()>, true)
                    .await;
                match probe {
                    Ok(_) => ServerInfo {
                        generation: ApiGeneration::RouteRows,
                        version: None,
                    },
                    Err(HeadscaleError::NotFound { .. }) => ServerInfo {
                        generation: ApiGeneration::ApprovedRoutes,
                        version: None,
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        tracing::info!(generation = %info.generation, version = ?info.version, "detected headscale API generation");
        if let Ok(mut g) = self.info.lock() {
            *g = Some(info.clone());
        }
        Ok(info)
    }

    /// Headscale ≥ 0.27 `GET /version` (unauthenticated); `Ok(None)` on 404 (≤ 0.26) and
    /// on a 200 that is not the version JSON (a web UI in front of Headscale answering every
    /// path), so that detection falls back to the route probe.
    pub async fn version(&self) -> Result<Option<VersionInfo>, HeadscaleError> {
        let r: Result<VersionInfo, _> = self
            .call(Method::GET, "version", &[], None::<&()>, false)
            .await;
        match r {
            Ok(v) if !v.version.is_empty() => Ok(Some(v)),
            Ok(_) | Err(HeadscaleError::NotFound { .. }) | Err(HeadscaleError::Decode { .. }) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Headscale `GET /health` (unauthenticated, 0.22–0.29): 200 `{"status":"pass"}` or 500
    /// `{"status":"fail"}`.
    ///
    /// Errors: transport/timeout, or any other status.
    pub async fn health(&self) -> Result<Health, HeadscaleError> {
        let endpoint = "GET /health".to_string();
        let url = self.url("health", &[])?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.transport(&endpoint, e))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| self.transport(&endpoint, e))?;
        let body: Option<HealthBody> = serde_json::from_str(&text).ok();
        match (status, body) {
            (StatusCode::OK, Some(b)) if b.status == "pass" => Ok(Health::Pass),
            (_, Some(b)) if b.status == "fail" => Ok(Health::Fail),
            _ => Err(error_from_response(&endpoint, status, &text)),
        }
    }

    /// Headscale ≥ 0.27 `GET /api/v1/health` → `databaseConnectivity`.
    pub async fn api_health(&self) -> Result<bool, HeadscaleError> {
        let r: ApiHealthResponse = self
            .call(Method::GET, "api/v1/health", &[], None::<&()>, true)
            .await?;
        Ok(r.database_connectivity)
    }

    /// Headscale `GET /api/v1/node[?user=<name>]` → all nodes (with `subnetRoutes` on ≥ 0.26).
    pub async fn list_nodes(&self, user: Option<&str>) -> Result<Vec<Node>, HeadscaleError> {
        let q: Vec<(&str, &str)> = user.map(|u| vec![("user", u)]).unwrap_or_default();
        let r: NodesResponse = self
            .call(Method::GET, "api/v1/node", &q, None::<&()>, true)
            .await?;
        Ok(r.nodes)
    }

    /// Headscale `GET /api/v1/node/{nodeId}` (`subnetRoutes` is left empty by the server).
    ///
    /// Errors: [`HeadscaleError::NotFound`] (≥ 0.26) or an `Api` 500 `record not found`
    /// (≤ 0.25) for a missing node — see [`HeadscaleError::is_not_found`].
    pub async fn get_node(&self, id: NodeId) -> Result<Node, HeadscaleError> {
        let path = format!("api/v1/node/{id}");
        let r: NodeResponse = self
            .call(Method::GET, &path, &[], None::<&()>, true)
            .await?;
        r.node
            .ok_or_else(|| decode_err(&format!("GET /{path}"), "missing `node`"))
    }

    /// Headscale `DELETE /api/v1/node/{nodeId}` (removes its routes too).
    pub async fn delete_node(&self, id: NodeId) -> Result<(), HeadscaleError> {
        let path = format!("api/v1/node/{id}");
        let _: serde_json::Value = self
            .call(Method::DELETE, &path, &[], None::<&()>, true)
            .await?;
        Ok(())
    }

    /// Headscale ≥ 0.26 `POST /api/v1/node/{nodeId}/approve_routes` `{"routes":[…]}`.
    ///
    /// **Replace semantics**: the node's approved set becomes exactly `routes`; send the union
    /// you want (`[]` clears). Returns the node with `subnetRoutes` = its primary routes.
    ///
    /// Errors: [`HeadscaleError::Unsupported`] on ≤ 0.25; HTTP errors as usual.
    pub async fn approve_routes(
        &self,
        id: NodeId,
        routes: &[IpNetwork],
    ) -> Result<Node, HeadscaleError> {
        self.require(ApiGeneration::ApprovedRoutes, "approve_routes")
            .await?;
        let path = format!("api/v1/node/{id}/approve_routes");
        let body = ApproveRoutesBody {
            routes: routes.iter().map(|r| r.to_string()).collect(),
        };
        let r: NodeResponse = self
            .call(Method::POST, &path, &[], Some(&body), true)
            .await?;
        r.node
            .ok_or_else(|| decode_err(&format!("POST /{path}"), "missing `node`"))
    }

    /// Headscale ≤ 0.25 `GET /api/v1/routes` → every route row of every node.
    pub async fn list_routes(&self) -> Result<Vec<Route>, HeadscaleError> {
        self.require(ApiGeneration::RouteRows, "list_routes")
            .await?;
        let r: RoutesResponse = self
            .call(Method::GET, "api/v1/routes", &[], None::<&()>, true)
            .await?;
        Ok(r.routes)
    }

    /// Headscale ≤ 0.25 `GET /api/v1/node/{nodeId}/routes` → that node's route rows.
    pub async fn node_routes(&self, id: NodeId) -> Result<Vec<Route>, HeadscaleError> {
        self.require(ApiGeneration::RouteRows, "node_routes")
            .await?;
        let path = format!("api/v1/node/{id}/routes");
        let r: RoutesResponse = self
            .call(Method::GET, &path, &[], None::<&()>, true)
            .await?;
        Ok(r.routes)
    }

    /// Headscale ≤ 0.25 `POST /api/v1/routes/{routeId}/enable` (refused unless the row is
    /// currently advertised).
    pub async fn enable_route(&self, route_id: u64) -> Result<(), HeadscaleError> {
        self.route_op(route_id, "enable", Method::POST).await
    }

    /// Headscale ≤ 0.25 `POST /api/v1/routes/{routeId}/disable`.
    pub async fn disable_route(&self, route_id: u64) -> Result<(), HeadscaleError> {
        self.route_op(route_id, "disable", Method::POST).await
    }

    /// Headscale ≤ 0.25 `DELETE /api/v1/routes/{routeId}`.
    pub async fn delete_route(&self, route_id: u64) -> Result<(), HeadscaleError> {
        self.route_op(route_id, "", Method::DELETE).await
    }

    async fn route_op(
        &self,
        route_id: u64,
        op: &str,
        method: Method,
    ) -> Result<(), HeadscaleError> {
        self.require(ApiGeneration::RouteRows, "route enable/disable/delete")
            .await?;
        let path = if op.is_empty() {
            format!("api/v1/routes/{route_id}")
        } else {
            format!("api/v1/routes/{route_id}/{op}")
        };
        let _: serde_json::Value = self.call(method, &path, &[], None::<&()>, true).await?;
        Ok(())
    }

    /// Headscale `GET /api/v1/user[?name=<name>]` (the `name` filter exists since 0.24).
    pub async fn list_users(&self, name: Option<&str>) -> Result<Vec<User>, HeadscaleError> {
        let q: Vec<(&str, &str)> = name.map(|n| vec![("name", n)]).unwrap_or_default();
        let r: UsersResponse = self
            .call(Method::GET, "api/v1/user", &q, None::<&()>, true)
            .await?;
        Ok(r.users)
    }

    /// The user named exactly `name`, if any (filtered client side too, for 0.23 which
    /// ignores the query).
    pub async fn get_user_by_name(&self, name: &str) -> Result<Option<User>, HeadscaleError> {
        Ok(self
            .list_users(Some(name))
            .await?
            .into_iter()
            .find(|u| u.name == name))
    }

    /// Headscale `POST /api/v1/user` `{"name":…,"displayName":"","email":"","pictureUrl":""}`.
    pub async fn create_user(&self, name: &str) -> Result<User, HeadscaleError> {
        let body = CreateUserBody {
            name,
            display_name: "",
            email: "",
            picture_url: "",
        };
        let r: UserResponse = self
            .call(Method::POST, "api/v1/user", &[], Some(&body), true)
            .await?;
        r.user
            .ok_or_else(|| decode_err("POST /api/v1/user", "missing `user`"))
    }

    /// The user `name`, created when missing.
    pub async fn ensure_user(&self, name: &str) -> Result<User, HeadscaleError> {
        match self.get_user_by_name(name).await? {
            Some(u) => Ok(u),
            None => self.create_user(name).await,
        }
    }

    /// Headscale `POST /api/v1/preauthkey` with `user` = the user's **id** (≥ 0.26) or
    /// **name** (≤ 0.25) per the detected generation, and `expiration = now + opts.ttl`.
    pub async fn create_preauth_key(
        &self,
        user: &User,
        opts: &PreAuthKeyOptions,
    ) -> Result<PreAuthKey, HeadscaleError> {
        let user_ref = match self.generation().await? {
            ApiGeneration::ApprovedRoutes => user.id.to_string(),
            ApiGeneration::RouteRows => user.name.clone(),
        };
        let body = CreatePreAuthKeyBody {
            user: user_ref,
            reusable: opts.reusable,
            ephemeral: opts.ephemeral,
            expiration: format_rfc3339(SystemTime::now() + opts.ttl),
            acl_tags: opts.acl_tags.clone(),
        };
        let r: PreAuthKeyResponse = self
            .call(Method::POST, "api/v1/preauthkey", &[], Some(&body), true)
            .await?;
        r.pre_auth_key
            .ok_or_else(|| decode_err("POST /api/v1/preauthkey", "missing `preAuthKey`"))
    }

    async fn require(&self, want: ApiGeneration, op: &'static str) -> Result<(), HeadscaleError> {
        let g = self.generation().await?;
        if g == want {
            Ok(())
        } else {
            Err(HeadscaleError::Unsupported {
                operation: op,
                generation: g.to_string(),
            })
        }
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, HeadscaleError> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| HeadscaleError::Config(format!("path {path}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn transport(&self, endpoint: &str, e: reqwest::Error) -> HeadscaleError {
        if e.is_timeout() {
            HeadscaleError::Timeout {
                endpoint: endpoint.to_string(),
                after: self.timeout,
            }
        } else {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                src = s.source();
            }
            HeadscaleError::Transport {
                endpoint: endpoint.to_string(),
                reason,
            }
        }
    }

    /// Reports every request to `observer` (e.g. the daemon's metrics by endpoint).
    pub fn with_observer(mut self, observer: crate::observe::RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
        auth: bool,
    ) -> Result<T, HeadscaleError> {
        let label = self
            .observer
            .as_ref()
            .map(|_| crate::observe::endpoint_label("headscale", method.as_str(), path));
        let result = self.call_unobserved(method, path, query, body, auth).await;
        if let (Some(o), Some(l)) = (&self.observer, label) {
            o.observe(&l, result.is_ok());
        }
        result
    }

    async fn call_unobserved<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
        auth: bool,
    ) -> Result<T, HeadscaleError> {
        let endpoint = format!("{method} /{path}");
        let url = self.url(path, query)?;
        let mut req = self
            .http
            .request(method, url)
            .header(http::header::ACCEPT, "application/json");
        if auth {
            let key = self
                .api_key
                .as_ref()
                .ok_or_else(|| HeadscaleError::NoApiKey {
                    endpoint: endpoint.clone(),
                })?;
            // bearer_auth marks the header value sensitive (never printed by hyper/reqwest).
            req = req.bearer_auth(key.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        tracing::debug!(%endpoint, "headscale request");
        let resp = req.send().await.map_err(|e| self.transport(&endpoint, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport(&endpoint, e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let err = error_from_response(&endpoint, status, &text);
            tracing::debug!(%endpoint, status = status.as_u16(), error = %err, "headscale error");
            return Err(err);
        }
        serde_json::from_slice(&bytes).map_err(|e| decode_err(&endpoint, &e.to_string()))
    }
}

fn decode_err(endpoint: &str, reason: &str) -> HeadscaleError {
    HeadscaleError::Decode {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Maps an error answer: 401 (plain text ≤ 0.29, problem+json on main), ≤ 0.25's 500
/// `Unauthorized`, grpc-gateway `{code,message,details}` bodies (0.22–0.29), RFC 7807
/// problem bodies (main: [`Problem::message`]), 404 (object missing or unknown route), others.
/// The message is bounded to 512 bytes.
pub(crate) fn error_from_response(
    endpoint: &str,
    status: StatusCode,
    body: &str,
) -> HeadscaleError {
    let trimmed = body.trim();
    if status == StatusCode::UNAUTHORIZED
        || (status == StatusCode::INTERNAL_SERVER_ERROR && trimmed == "Unauthorized")
    {
        return HeadscaleError::Unauthorized {
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
        };
    }
    let (code, message) = match ErrorBody::parse(trimmed) {
        ErrorBody::Rpc(r) => (Some(r.code), r.message),
        ErrorBody::Problem(p) => (None, p.message()),
        ErrorBody::Text => (None, trimmed.to_string()),
    };
    let message = truncate(&message, 512);
    if status == StatusCode::NOT_FOUND {
        return HeadscaleError::NotFound {
            endpoint: endpoint.to_string(),
            message,
        };
    }
    HeadscaleError::Api {
        endpoint: endpoint.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// The two JSON error forms Headscale answers with.
enum ErrorBody {
    /// grpc-gateway `rpcStatus` (0.22–0.29): an object with an integer `code`.
    Rpc(RpcStatus),
    /// RFC 7807 (main): an object with `title`, `detail`, `status` or `errors` and no `code`.
    Problem(Problem),
    /// Anything else (plain text, HTML from a proxy, other JSON).
    Text,
}

impl ErrorBody {
    fn parse(body: &str) -> ErrorBody {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(body)
        else {
            return ErrorBody::Text;
        };
        let obj = serde_json::Value::Object(obj);
        if obj.get("code").is_some_and(serde_json::Value::is_i64) {
            if let Ok(r) = serde_json::from_value::<RpcStatus>(obj) {
                return ErrorBody::Rpc(r);
            }
            return ErrorBody::Text;
        }
        let problem_keys = ["title", "detail", "status", "errors"];
        if problem_keys.iter().any(|k| obj.get(k).is_some())
            && let Ok(p) = serde_json::from_value::<Problem>(obj)
            && !p.message().is_empty()
        {
            return ErrorBody::Problem(p);
        }
        ErrorBody::Text
    }
}

/// Parses `v0.29.2` / `0.26.0-beta.1` into `(major, minor, patch)`.
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("v0.29.2"), Some((0, 29, 2)));
        assert_eq!(parse_version("0.26.0-beta.1"), Some((0, 26, 0)));
        assert_eq!(parse_version("dev"), None);
    }

    #[test]
    fn error_mapping() {
        let e = error_from_response("GET /x", StatusCode::UNAUTHORIZED, "Unauthorized");
        assert!(matches!(
            e,
            HeadscaleError::Unauthorized { status: 401, .. }
        ));
        let e = error_from_response(
            "GET /x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unauthorized\n",
        );
        assert!(matches!(
            e,
            HeadscaleError::Unauthorized { status: 500, .. }
        ));
        let e = error_from_response(
            "GET /x",
            StatusCode::NOT_FOUND,
            r#"{"code":5,"message":"node not found","details":[]}"#,
        );
        assert!(e.is_not_found());
        let e = error_from_response(
            "GET /x",
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":2,"message":"record not found","details":[]}"#,
        );
        assert!(e.is_not_found());
        assert!(!crate::retry::Retryable::is_retryable(&e));
        let e = error_from_response(
            "GET /x",
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":2,"message":"database is locked","details":[]}"#,
        );
        assert!(matches!(e, HeadscaleError::Api { code: Some(2), .. }));
        assert!(crate::retry::Retryable::is_retryable(&e));
    }

    #[test]
    fn problem_json_keeps_its_message() {
        // headscale main `hscontrol/api/v1/nodes.go` setApprovedRoutes → mapError → huma 404.
        let body = r#"{"title":"Not Found","status":404,"detail":"setting approved routes","errors":[{"message":"node no longer exists in NodeStore: 9"}]}"#;
        let e = error_from_response("POST /x", StatusCode::NOT_FOUND, body);
        assert!(e.is_not_found());
        assert!(
            e.to_string()
                .contains("setting approved routes: node no longer exists in NodeStore: 9"),
            "{e}"
        );
        // 400 with a detail only (main parseNodeID), no grpc code
        let body = r#"{"title":"Bad Request","status":400,"detail":"type mismatch, parameter: node_id, error: x"}"#;
        let e = error_from_response("GET /x", StatusCode::BAD_REQUEST, body);
        match &e {
            HeadscaleError::Api {
                status: 400,
                code: None,
                message,
                ..
            } => assert_eq!(message, "type mismatch, parameter: node_id, error: x"),
            other => panic!("{other:?}"),
        }
        // only a title
        let e = error_from_response(
            "GET /x",
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"title":"Internal Server Error","status":500}"#,
        );
        assert!(e.to_string().ends_with(": Internal Server Error"), "{e}");
        assert!(crate::retry::Retryable::is_retryable(&e));
        // main's 401 is a problem too, still Unauthorized
        let e = error_from_response(
            "GET /x",
            StatusCode::UNAUTHORIZED,
            r#"{"title":"Unauthorized","status":401,"detail":"Unauthorized"}"#,
        );
        assert!(matches!(e, HeadscaleError::Unauthorized { .. }));
        // bounded: a huge detail is cut to 512 bytes (+ the ellipsis)
        let big = format!(
            r#"{{"title":"Bad Request","status":400,"detail":"{}"}}"#,
            "é".repeat(2000)
        );
        let e = error_from_response("GET /x", StatusCode::BAD_REQUEST, &big);
        let HeadscaleError::Api { message, .. } = e else {
            panic!("not Api")
        };
        assert!(message.len() <= 512 + '…'.len_utf8(), "{}", message.len());
        // other JSON is kept as text
        let e = error_from_response("GET /x", StatusCode::BAD_GATEWAY, r#"{"error":"upstream"}"#);
        assert!(e.to_string().contains(r#"{"error":"upstream"}"#), "{e}");
    }

    #[test]
    fn approve_routes_unknown_node_is_not_found_on_every_generation() {
        // 0.26 (db.GetNodeByID), 0.27, 0.28–0.29: HTTP 400 InvalidArgument.
        for m in [
            "record not found",
            "node not found in NodeStore: 7",
            "node no longer exists in NodeStore: 7",
        ] {
            let body = format!(r#"{{"code":3,"message":"{m}","details":[]}}"#);
            let e = error_from_response("POST /x", StatusCode::BAD_REQUEST, &body);
            assert!(e.is_not_found(), "{m}");
            assert!(!crate::retry::Retryable::is_retryable(&e));
        }
        let e = error_from_response(
            "POST /x",
            StatusCode::BAD_REQUEST,
            r#"{"code":3,"message":"invalid tag","details":[]}"#,
        );
        assert!(!e.is_not_found());
    }

    #[test]
    fn bad_urls_refused() {
        assert!(HeadscaleClient::new(HeadscaleConfig::new("ftp://x", None)).is_err());
        assert!(HeadscaleClient::new(HeadscaleConfig::new("not a url", None)).is_err());
        // issue 8 item 5: a password in the URL is never printed, valid URL or not
        for u in [
            "https://user:s3cret@[bad",
            "ftp://user:s3cret@h",
            "https://u:s3cret@h/?t=x",
        ] {
            let cfg = HeadscaleConfig::new(u, None);
            assert!(!format!("{cfg:?}").contains("s3cret"), "{cfg:?}");
            match HeadscaleClient::new(cfg) {
                Err(e) => assert!(!format!("{e} {e:?}").contains("s3cret"), "{e}"),
                Ok(c) => assert!(!format!("{c:?}").contains("s3cret"), "{c:?}"),
            }
        }
        let c = HeadscaleClient::new(HeadscaleConfig::new("http://127.0.0.1:1/hs", None)).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1/hs/");
    }
}
