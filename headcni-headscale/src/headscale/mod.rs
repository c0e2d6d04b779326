//! Headscale REST API client (grpc-gateway `/api/v1/…`), both route models.
//!
//! Sources: juanfont/headscale `gen/openapiv2/headscale/v1/headscale.swagger.json` at v0.29.2
//! and v0.25.1, `hscontrol/grpcv1.go`, `hscontrol/app.go` (auth middleware); Headscale main
//! (0.30) `hscontrol/api/v1/` (huma: the same paths and JSON, RFC 7807 error bodies).

mod client;
mod error;
mod types;

pub use client::{
    ApiGeneration, HeadscaleClient, HeadscaleConfig, Health, PreAuthKeyOptions, ServerInfo,
};
pub use error::HeadscaleError;
pub use types::{
    Node, NodeId, PreAuthKey, PreAuthKeyOwner, Problem, ProblemDetail, Route, RpcStatus, User,
    VersionInfo,
};
