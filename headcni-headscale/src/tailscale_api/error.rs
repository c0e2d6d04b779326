//! Typed errors of the Tailscale API v2 client.

use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::retry::Retryable;
use crate::secret::SecretError;

/// Errors of [`super::TailscaleApi`]. No message ever contains the OAuth client secret or an
/// access token: server-supplied text is truncated and passed through
/// [`crate::secret::redact_urls_in`] (which replaces any word holding `tskey-`/`hskey-`).
#[derive(Debug, thiserror::Error)]
pub enum TailscaleApiError {
    /// Invalid client configuration (bad base URL, tailnet, TLS setup).
    #[error("invalid tailscale API client configuration: {0}")]
    Config(String),
    /// The credentials file could not be read safely (permissions, owner, size, type).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The credentials file was read but is not in the documented format
    /// ([`super::OAuthCredentials::from_file`]); `reason` names keys and lines, never values.
    #[error("OAuth credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The token endpoint (`POST /api/v2/oauth/token`) refused to mint a token. `error` is the
    /// RFC 6749 §5.2 code (`invalid_client` for a wrong id or secret, `invalid_scope` for a
    /// scope the OAuth client does not hold, `unsupported_grant_type`).
    #[error("POST /api/v2/oauth/token: HTTP {status} {error}: {description}")]
    TokenRejected {
        /// HTTP status.
        status: u16,
        /// The `error` field (or `""` when the body was not an OAuth error body).
        error: String,
        /// The `error_description` (or the body text), truncated and redacted.
        description: String,
    },
    /// HTTP 401 with a freshly minted token: the server does not accept the token.
    #[error("{endpoint}: unauthorized (HTTP 401): {message}")]
    Unauthorized {
        /// `METHOD /path`.
        endpoint: String,
        /// The `message` of the Tailscale error body.
        message: String,
    },
    /// HTTP 403: the token lacks the scope the operation needs (e.g. `devices:routes`).
    #[error("{endpoint}: forbidden (HTTP 403): {message}")]
    Forbidden {
        /// `METHOD /path`.
        endpoint: String,
        /// The `message` of the Tailscale error body.
        message: String,
    },
    /// HTTP 404: unknown device or tailnet (or an endpoint this server lacks).
    #[error("{endpoint}: not found (HTTP 404): {message}")]
    NotFound {
        /// `METHOD /path`.
        endpoint: String,
        /// The `message` of the Tailscale error body.
        message: String,
    },
    /// Another HTTP error status with the Tailscale error body `{"message", "data", "status"}`
    /// (client-go-v2 `client.go` `APIError`), or the plain text when it is not JSON.
    #[error("{endpoint}: HTTP {status}: {message}")]
    Api {
        /// `METHOD /path`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The message (truncated to 512 bytes, redacted).
        message: String,
    },
    /// The request did not complete within the configured request timeout.
    #[error("{endpoint}: timed out after {after:?}")]
    Timeout {
        /// `METHOD /path`.
        endpoint: String,
        /// The configured request timeout.
        after: Duration,
    },
    /// Connection or protocol failure (DNS, refused, TLS, reset).
    #[error("{endpoint}: transport error: {reason}")]
    Transport {
        /// `METHOD /path`.
        endpoint: String,
        /// The error chain as text.
        reason: String,
    },
    /// The response body exceeded the configured size cap.
    #[error("{endpoint}: response larger than {limit} bytes")]
    TooLarge {
        /// `METHOD /path`.
        endpoint: String,
        /// The cap, in bytes.
        limit: usize,
    },
    /// A 2xx response whose body is not the expected JSON.
    #[error("{endpoint}: cannot decode response: {reason}")]
    Decode {
        /// `METHOD /path`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// No device of the tailnet has this node's node key or stable id.
    #[error(
        "no device in tailnet {tailnet:?} matches {node} (is tailscaled logged in to this tailnet?)"
    )]
    DeviceNotFound {
        /// The tailnet searched.
        tailnet: String,
        /// The node reference, as text.
        node: String,
    },
    /// The device found by one identifier disagrees with the other (a node key that belongs
    /// to another stable id, or the reverse); nothing is approved.
    #[error("identity mismatch: {reason}; refusing to change routes")]
    IdentityMismatch {
        /// What disagrees.
        reason: String,
    },
    /// Several distinct devices match the node reference.
    #[error("{count} distinct devices match {node}; refusing to change routes")]
    AmbiguousDevice {
        /// The node reference, as text.
        node: String,
        /// How many distinct device ids matched.
        count: usize,
    },
    /// The device does not (yet) advertise these routes: tailscaled has not announced them, or
    /// the device found is not the one advertising them.
    #[error("device {device} does not advertise {routes:?}")]
    NotAdvertised {
        /// The device id.
        device: String,
        /// The routes missing from `advertisedRoutes`.
        routes: Vec<IpNetwork>,
    },
    /// HeadCNI refuses to manage this route (an exit route `/0`, or a prefix with host bits).
    #[error("route {route}: {reason}")]
    InvalidRoute {
        /// The route.
        route: IpNetwork,
        /// Why.
        reason: String,
    },
    /// The server accepted the new route set but its answer does not enable these routes.
    #[error("device {device}: routes {routes:?} are not enabled after the update")]
    NotApproved {
        /// The device id.
        device: String,
        /// The routes still missing from `enabledRoutes`.
        routes: Vec<IpNetwork>,
    },
}

impl TailscaleApiError {
    /// HTTP status of an error answer, if the server answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            TailscaleApiError::TokenRejected { status, .. }
            | TailscaleApiError::Api { status, .. } => Some(*status),
            TailscaleApiError::Unauthorized { .. } => Some(401),
            TailscaleApiError::Forbidden { .. } => Some(403),
            TailscaleApiError::NotFound { .. } => Some(404),
            _ => None,
        }
    }
}

impl Retryable for TailscaleApiError {
    /// Transport errors, timeouts, HTTP 429 and 5xx other than 501 (also from the token
    /// endpoint), and [`TailscaleApiError::NotAdvertised`] (tailscaled may not have announced
    /// the route yet). Bad credentials, missing scopes, unknown devices, identity conflicts
    /// and configuration errors are not retryable.
    fn is_retryable(&self) -> bool {
        match self {
            TailscaleApiError::Timeout { .. }
            | TailscaleApiError::Transport { .. }
            | TailscaleApiError::NotAdvertised { .. } => true,
            TailscaleApiError::Api { status, .. }
            | TailscaleApiError::TokenRejected { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        let rejected = |status| TailscaleApiError::TokenRejected {
            status,
            error: "invalid_client".into(),
            description: String::new(),
        };
        assert!(!rejected(401).is_retryable());
        assert!(rejected(503).is_retryable());
        assert!(rejected(429).is_retryable());
        let api = |status| TailscaleApiError::Api {
            endpoint: "GET /x".into(),
            status,
            message: String::new(),
        };
        assert!(api(500).is_retryable());
        assert!(!api(501).is_retryable());
        assert!(!api(400).is_retryable());
        assert!(
            !TailscaleApiError::Forbidden {
                endpoint: "POST /x".into(),
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            TailscaleApiError::NotAdvertised {
                device: "1".into(),
                routes: vec![]
            }
            .is_retryable()
        );
        assert_eq!(api(418).status(), Some(418));
    }
}
