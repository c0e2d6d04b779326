//! The fake's public options and the snapshot views it hands out ([`NodeView`],
//! [`PreAuthKeyView`]).

use std::net::{IpAddr, SocketAddr};

use headcni_headscale::policy::PolicyVersion;
use ipnetwork::IpNetwork;

/// Which Headscale the fake imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeApiVersion {
    /// Headscale main (0.30 in development, juanfont/headscale f20f1f1): the v0.29 JSON
    /// shapes served by huma (`hscontrol/api/v1/`), every error an RFC 7807
    /// `application/problem+json` body (`hscontrol/api/v1/errors.go` `mapError`: not found →
    /// 404, invalid input → 400, else 500), `GET /version` answering `dev` (a build without
    /// a release tag, `hscontrol/types/version.go`), pre-auth key `user` a JSON string.
    V0_30,
    /// v0.29.2 (default): `/version`, `approve_routes`, `/api/v1/health`, pre-auth key `user`
    /// by id, `hskey-auth-…` keys, 404 for a missing node.
    V0_29,
    /// 0.26.x: `approve_routes` but no `/version` (and no `/api/v1/routes`).
    V0_26,
    /// v0.25.1: route rows (`/api/v1/routes`, enable/disable), pre-auth key `user` by name,
    /// HTTP 500 `record not found` for a missing node.
    V0_25,
}

impl FakeApiVersion {
    /// True for the ≥ 0.26 route model.
    pub fn approves(self) -> bool {
        !matches!(self, FakeApiVersion::V0_25)
    }

    /// True for the behaviour of 0.28 and later (hashed `hskey-` keys, tags-only pre-auth
    /// keys, tag requests refused with a pre-auth key) and `/version`, `/api/v1/health`
    /// (≥ 0.27).
    pub fn at_least_0_28(self) -> bool {
        matches!(self, FakeApiVersion::V0_29 | FakeApiVersion::V0_30)
    }

    /// True when errors are RFC 7807 problem bodies (main) rather than grpc-gateway ones.
    pub fn problem_errors(self) -> bool {
        matches!(self, FakeApiVersion::V0_30)
    }

    /// The swagger file that describes this generation's JSON (`headscale-<ver>.swagger.json`;
    /// main keeps v0.29.2's success shapes, its error bodies are not in that file).
    pub fn spec_version(self) -> &'static str {
        match self {
            FakeApiVersion::V0_25 => "0.25.1",
            _ => "0.29.2",
        }
    }
}

/// Snapshot of a fake node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node id.
    pub id: u64,
    /// Host name.
    pub name: String,
    /// Owner's user name.
    pub user: String,
    /// `nodekey:<hex>`.
    pub node_key: String,
    /// Tailnet addresses.
    pub ips: Vec<IpAddr>,
    /// Routes the node announces (`availableRoutes`).
    pub announced: Vec<IpNetwork>,
    /// Approved routes (≥ 0.26 `approvedRoutes`; ≤ 0.25 the enabled rows).
    pub approved: Vec<IpNetwork>,
    /// Routes this node serves as primary.
    pub primary: Vec<IpNetwork>,
    /// Online.
    pub online: bool,
    /// ACL tags the node carries (from its pre-auth key's `aclTags`); empty: user-owned.
    pub tags: Vec<String>,
}

/// Snapshot of a fake pre-auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthKeyView {
    /// Key id.
    pub id: u64,
    /// Owner's user id.
    pub user_id: Option<u64>,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral.
    pub ephemeral: bool,
    /// Used.
    pub used: bool,
    /// RFC 3339 expiration as stored (`0001-01-01T00:00:00Z` when none was sent).
    pub expiration: String,
    /// Expired now.
    pub expired: bool,
}

/// Options of a [`FakeHeadscale`](super::FakeHeadscale).
#[derive(Debug, Clone)]
pub struct FakeHeadscaleOptions {
    /// API generation.
    pub version: FakeApiVersion,
    /// The Headscale policy (HuJSON), validated and evaluated as the server does (see
    /// [`HeadscaleControl::set_policy`](super::HeadscaleControl::set_policy)); `None`: no
    /// policy (nothing is auto-approved, every peer and route is visible).
    pub policy: Option<String>,
    /// The policy generation; `None`: the one of [`FakeHeadscaleOptions::version`] (0.25,
    /// 0.26–0.27, 0.29).
    pub policy_version: Option<PolicyVersion>,
    /// Listen address; default `127.0.0.1:0` (ephemeral port). The lab sets a fixed one.
    pub listen: SocketAddr,
    /// The valid API key; `None` generates one in the version's format.
    pub api_key: Option<String>,
    /// Record every exchange (default true; a long-running stand-in turns it off).
    pub record_exchanges: bool,
}

impl FakeHeadscaleOptions {
    /// The policy generation in effect: [`FakeHeadscaleOptions::policy_version`], else the
    /// API generation's.
    pub fn policy_version(&self) -> PolicyVersion {
        self.policy_version.unwrap_or(match self.version {
            FakeApiVersion::V0_25 => PolicyVersion::V0_25,
            FakeApiVersion::V0_26 => PolicyVersion::V0_26,
            FakeApiVersion::V0_29 => PolicyVersion::V0_29,
            FakeApiVersion::V0_30 => PolicyVersion::Main,
        })
    }
}

impl Default for FakeHeadscaleOptions {
    fn default() -> Self {
        FakeHeadscaleOptions {
            version: FakeApiVersion::V0_29,
            policy: None,
            policy_version: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            record_exchanges: true,
        }
    }
}
