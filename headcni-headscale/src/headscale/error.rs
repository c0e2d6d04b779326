//! Typed errors of the Headscale REST client.

use std::time::Duration;

use crate::retry::Retryable;

/// Errors of [`super::HeadscaleClient`]. Messages never contain the API key.
#[derive(Debug, thiserror::Error)]
pub enum HeadscaleError {
    /// Invalid client configuration (bad base URL, TLS setup).
    #[error("invalid headscale client configuration: {0}")]
    Config(String),
    /// The operation needs an API key and none was configured.
    #[error("{endpoint}: no headscale API key configured")]
    NoApiKey {
        /// `METHOD /path`.
        endpoint: String,
    },
    /// HTTP 401 (plain-text body `Unauthorized`): missing, invalid or expired API key. Also
    /// Headscale ≤ 0.25's HTTP 500 `Unauthorized` on a key-validation error.
    #[error("{endpoint}: unauthorized (HTTP {status}): the API key is missing, invalid or expired")]
    Unauthorized {
        /// `METHOD /path`.
        endpoint: String,
        /// HTTP status (401, or 500 on ≤ 0.25).
        status: u16,
    },
    /// HTTP 404: no such object (grpc `NotFound`), or the endpoint does not exist on this
    /// Headscale version (gateway routing error).
    #[error("{endpoint}: not found: {message}")]
    NotFound {
        /// `METHOD /path`.
        endpoint: String,
        /// The gateway message, or the problem+json message (main), truncated to 512 bytes.
        message: String,
    },
    /// Another HTTP error status with its grpc-gateway `{code,message,details}` body (0.22–0.29),
    /// its RFC 7807 problem body (main: `detail: errors[].message…`), or the plain text.
    #[error("{endpoint}: HTTP {status} (grpc code {code:?}): {message}")]
    Api {
        /// `METHOD /path`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// gRPC code from the body, if it was a grpc-gateway error (`None` for problem+json).
        code: Option<i32>,
        /// Message (truncated to 512 bytes).
        message: String,
    },
    /// The request did not complete within the configured timeout.
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
    /// A 2xx response whose body is not the expected JSON.
    #[error("{endpoint}: cannot decode response: {reason}")]
    Decode {
        /// `METHOD /path`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The operation does not exist on the detected API generation.
    #[error("{operation} is not available on headscale {generation}")]
    Unsupported {
        /// The operation.
        operation: &'static str,
        /// The detected generation.
        generation: String,
    },
}

impl HeadscaleError {
    /// HTTP status of an error answer, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadscaleError::Unauthorized { status, .. } | HeadscaleError::Api { status, .. } => {
                Some(*status)
            }
            HeadscaleError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// "The object does not exist": HTTP 404 (grpc-gateway ≤ 0.29 and main's RFC 7807 form),
    /// ≤ 0.25's HTTP 500 `record not found`, or the HTTP 400 (grpc `InvalidArgument`) that
    /// `approve_routes` answers for an unknown node on 0.26–0.29: `record not found` (0.26,
    /// `db.GetNodeByID`), `node not found in NodeStore: N` (0.27), `node no longer exists in
    /// NodeStore: N` (0.28–0.29; headscale `hscontrol/grpcv1.go` `SetApprovedRoutes`,
    /// `hscontrol/state/state.go` `ErrNodeNotInNodeStore`).
    pub fn is_not_found(&self) -> bool {
        match self {
            HeadscaleError::NotFound { .. } => true,
            HeadscaleError::Api {
                status: 500,
                message,
                ..
            } => message.contains("record not found"),
            HeadscaleError::Api {
                status: 400,
                code: Some(3),
                message,
                ..
            } => {
                message == "record not found"
                    || message.starts_with("node not found in NodeStore")
                    || message.starts_with("node no longer exists in NodeStore")
            }
            _ => false,
        }
    }
}

impl Retryable for HeadscaleError {
    /// Transport errors, timeouts, HTTP 429 and 5xx other than 501 (a ≤ 0.25 `record not found`
    /// 500 is not retried).
    fn is_retryable(&self) -> bool {
        match self {
            HeadscaleError::Timeout { .. } | HeadscaleError::Transport { .. } => true,
            HeadscaleError::Api { status, .. } => {
                (*status == 429 || (*status >= 500 && *status != 501)) && !self.is_not_found()
            }
            _ => false,
        }
    }
}
