//! Headscale REST JSON types (grpc-gateway protojson: lowerCamelCase keys, uint64 as strings,
//! `null` for unset messages). Decoding accepts both API generations (0.29.2 and 0.25.1 swagger).

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::Secret;
use crate::serde_util::{de_null_default, de_u64};

/// A Headscale node id (`v1Node.id`, swagger `format: uint64`, sent as a decimal string).
pub type NodeId = u64;

/// `v1User` (0.23–0.29). Source: Headscale `proto/headscale/v1/user.proto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct User {
    /// User id (uint64; on ≥ 0.26 this is what `preauthkey.user` takes).
    #[serde(deserialize_with = "de_u64")]
    pub id: u64,
    /// User name (what ≤ 0.25 `preauthkey.user` takes).
    #[serde(deserialize_with = "de_null_default")]
    pub name: String,
    /// RFC 3339 creation time, `None` when unset.
    pub created_at: Option<String>,
    /// Display name (0.24+).
    #[serde(deserialize_with = "de_null_default")]
    pub display_name: String,
    /// E-mail (0.24+).
    #[serde(deserialize_with = "de_null_default")]
    pub email: String,
    /// OIDC provider id (0.24+).
    #[serde(deserialize_with = "de_null_default")]
    pub provider_id: String,
    /// Provider (`cli`, `oidc`) (0.24+).
    #[serde(deserialize_with = "de_null_default")]
    pub provider: String,
    /// Profile picture URL (0.24+).
    #[serde(deserialize_with = "de_null_default")]
    pub profile_pic_url: String,
}

/// Owner of a pre-auth key: a `v1User` object on ≥ 0.26, the user *name* on ≤ 0.25.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PreAuthKeyOwner {
    /// ≥ 0.26.
    User(User),
    /// ≤ 0.25.
    Name(String),
}

/// `v1PreAuthKey`. The `key` is a [`Secret`] (full secret only in the create response; list
/// output shows a prefix since 0.28).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreAuthKey {
    /// Owner (`null` for tags-only keys on 0.28+).
    #[serde(default)]
    pub user: Option<PreAuthKeyOwner>,
    /// Key id (uint64 string on ≥ 0.26, plain decimal string on ≤ 0.25).
    #[serde(default, deserialize_with = "de_u64")]
    pub id: u64,
    /// The key.
    pub key: Secret,
    /// Reusable.
    #[serde(default, deserialize_with = "de_null_default")]
    pub reusable: bool,
    /// Ephemeral (node deleted after inactivity).
    #[serde(default, deserialize_with = "de_null_default")]
    pub ephemeral: bool,
    /// Already used.
    #[serde(default, deserialize_with = "de_null_default")]
    pub used: bool,
    /// RFC 3339 expiration (`0001-01-01T00:00:00Z` = created without expiration = expired).
    #[serde(default)]
    pub expiration: Option<String>,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// ACL tags.
    #[serde(default, deserialize_with = "de_null_default")]
    pub acl_tags: Vec<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret::new(String::deserialize(d)?))
    }
}

/// `v1Node` of either generation: route fields (`approvedRoutes`, `availableRoutes`,
/// `subnetRoutes`) exist on ≥ 0.26 only; `tags` on ≥ 0.28; `forcedTags`/`validTags`/
/// `invalidTags` on ≤ 0.27. Missing fields decode as empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    /// Node id: the `{nodeId}` path parameter; equals LocalAPI `Self.ID`.
    #[serde(deserialize_with = "de_u64")]
    pub id: NodeId,
    /// `mkey:…`.
    #[serde(deserialize_with = "de_null_default")]
    pub machine_key: String,
    /// `nodekey:<hex>`; equals LocalAPI `Self.PublicKey`.
    #[serde(deserialize_with = "de_null_default")]
    pub node_key: String,
    /// `discokey:…`.
    #[serde(deserialize_with = "de_null_default")]
    pub disco_key: String,
    /// Tailnet addresses.
    #[serde(deserialize_with = "de_null_default")]
    pub ip_addresses: Vec<String>,
    /// Host name reported by the client.
    #[serde(deserialize_with = "de_null_default")]
    pub name: String,
    /// DNS label.
    #[serde(deserialize_with = "de_null_default")]
    pub given_name: String,
    /// Owner (`null` for tags-only nodes on some versions).
    pub user: Option<User>,
    /// RFC 3339 or `None`.
    pub last_seen: Option<String>,
    /// RFC 3339 or `None`.
    pub expiry: Option<String>,
    /// RFC 3339 or `None`.
    pub created_at: Option<String>,
    /// The pre-auth key used to register, if any.
    pub pre_auth_key: Option<PreAuthKey>,
    /// `REGISTER_METHOD_*`.
    #[serde(deserialize_with = "de_null_default")]
    pub register_method: String,
    /// Connected to Headscale.
    #[serde(deserialize_with = "de_null_default")]
    pub online: bool,
    /// ≥ 0.26: routes approved by admin/API/autoApprovers.
    #[serde(deserialize_with = "de_null_default")]
    pub approved_routes: Vec<IpNetwork>,
    /// ≥ 0.26: routes the node announces.
    #[serde(deserialize_with = "de_null_default")]
    pub available_routes: Vec<IpNetwork>,
    /// ≥ 0.26: routes served as primary (+ approved exit routes). Filled by list-nodes and
    /// approve_routes only; `GET /api/v1/node/{id}` leaves it empty.
    #[serde(deserialize_with = "de_null_default")]
    pub subnet_routes: Vec<IpNetwork>,
    /// ≥ 0.28 tags.
    #[serde(deserialize_with = "de_null_default")]
    pub tags: Vec<String>,
    /// ≤ 0.27 forced tags.
    #[serde(deserialize_with = "de_null_default")]
    pub forced_tags: Vec<String>,
    /// ≤ 0.27 valid tags.
    #[serde(deserialize_with = "de_null_default")]
    pub valid_tags: Vec<String>,
    /// ≤ 0.27 invalid tags.
    #[serde(deserialize_with = "de_null_default")]
    pub invalid_tags: Vec<String>,
}

/// `v1Route` (≤ 0.25 only): one advertised prefix of one node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Route {
    /// Route id: the `{routeId}` path parameter.
    #[serde(deserialize_with = "de_u64")]
    pub id: u64,
    /// The node announcing it.
    pub node: Option<Node>,
    /// The prefix.
    pub prefix: Option<IpNetwork>,
    /// Currently announced by the node.
    #[serde(deserialize_with = "de_null_default")]
    pub advertised: bool,
    /// Enabled (approved); reset to false when the node stops announcing it.
    #[serde(deserialize_with = "de_null_default")]
    pub enabled: bool,
    /// Primary for its prefix.
    #[serde(deserialize_with = "de_null_default")]
    pub is_primary: bool,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339.
    pub updated_at: Option<String>,
    /// RFC 3339.
    pub deleted_at: Option<String>,
}

/// `GET /version` (≥ 0.27, unauthenticated).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionInfo {
    /// e.g. `v0.29.2` (or `dev`).
    #[serde(deserialize_with = "de_null_default")]
    pub version: String,
    /// Git commit.
    #[serde(deserialize_with = "de_null_default")]
    pub commit: String,
    /// Build time.
    #[serde(deserialize_with = "de_null_default")]
    pub build_time: String,
    /// Whether the build tree was dirty.
    #[serde(deserialize_with = "de_null_default")]
    pub dirty: bool,
}

/// grpc-gateway error body (`rpcStatus`): `{"code":<grpc code>,"message":…,"details":[]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RpcStatus {
    /// gRPC status code (5 = NotFound, 2 = Unknown, 3 = InvalidArgument, 16 = Unauthenticated).
    pub code: i32,
    /// Message.
    #[serde(deserialize_with = "de_null_default")]
    pub message: String,
}

/// RFC 7807 problem body (`Content-Type: application/problem+json`) of Headscale main (0.30):
/// huma's `ErrorModel` — `{"title","status","detail","errors":[{"message","location","value"}]}`
/// (all optional). `detail` is the handler's context (e.g. `setting approved routes`), the
/// cause is in `errors[].message`. Sources: juanfont/headscale main `hscontrol/api/v1/errors.go`
/// (`mapError`), `gen/client/v1/client.gen.go` (`ErrorModel`, `ErrorDetail`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Problem {
    /// URI of the problem type (`about:blank` when absent).
    #[serde(rename = "type", deserialize_with = "de_null_default")]
    pub type_uri: String,
    /// HTTP status text, e.g. `Not Found`.
    #[serde(deserialize_with = "de_null_default")]
    pub title: String,
    /// HTTP status repeated in the body (0 when absent).
    #[serde(deserialize_with = "de_null_default")]
    pub status: u16,
    /// Explanation of this occurrence.
    #[serde(deserialize_with = "de_null_default")]
    pub detail: String,
    /// Individual causes.
    #[serde(deserialize_with = "de_null_default")]
    pub errors: Vec<ProblemDetail>,
}

/// One entry of [`Problem::errors`] (huma `ErrorDetail`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ProblemDetail {
    /// Error text.
    #[serde(deserialize_with = "de_null_default")]
    pub message: String,
    /// Where, e.g. `body.user` (empty when absent).
    #[serde(deserialize_with = "de_null_default")]
    pub location: String,
}

impl Problem {
    /// The message Headscale's own CLI prints for it (`cmd/headscale/cli/utils.go` `apiError`
    /// on main): `detail`, then every non-empty `errors[].message`, joined by `": "`; the
    /// `title` when both are empty.
    pub fn message(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if !self.detail.is_empty() {
            parts.push(&self.detail);
        }
        parts.extend(
            self.errors
                .iter()
                .map(|e| e.message.as_str())
                .filter(|m| !m.is_empty()),
        );
        if parts.is_empty() && !self.title.is_empty() {
            parts.push(&self.title);
        }
        parts.join(": ")
    }
}

// ---- request bodies (swagger body schemas) ----

/// `HeadscaleServiceSetApprovedRoutesBody` (≥ 0.26).
#[derive(Debug, Serialize)]
pub(crate) struct ApproveRoutesBody {
    pub routes: Vec<String>,
}

/// `v1CreateUserRequest`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateUserBody<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub email: &'a str,
    pub picture_url: &'a str,
}

/// `v1CreatePreAuthKeyRequest`: `user` is the uint64 id as a string on ≥ 0.26, the user
/// name on ≤ 0.25; `expiration` is always sent.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatePreAuthKeyBody {
    pub user: String,
    pub reusable: bool,
    pub ephemeral: bool,
    pub expiration: String,
    pub acl_tags: Vec<String>,
}

// ---- response wrappers ----

#[derive(Deserialize)]
pub(crate) struct NodeResponse {
    pub node: Option<Node>,
}

#[derive(Deserialize)]
pub(crate) struct NodesResponse {
    #[serde(default, deserialize_with = "de_null_default")]
    pub nodes: Vec<Node>,
}

#[derive(Deserialize)]
pub(crate) struct UsersResponse {
    #[serde(default, deserialize_with = "de_null_default")]
    pub users: Vec<User>,
}

#[derive(Deserialize)]
pub(crate) struct UserResponse {
    pub user: Option<User>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreAuthKeyResponse {
    pub pre_auth_key: Option<PreAuthKey>,
}

#[derive(Deserialize)]
pub(crate) struct RoutesResponse {
    #[serde(default, deserialize_with = "de_null_default")]
    pub routes: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiHealthResponse {
    #[serde(default)]
    pub database_connectivity: bool,
}

#[derive(Deserialize)]
pub(crate) struct HealthBody {
    #[serde(default)]
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_029_decodes_with_nulls_and_string_ids() {
        let j = serde_json::json!({
            "id": "7", "machineKey": "mkey:aa", "nodeKey": "nodekey:bb", "discoKey": "discokey:cc",
            "ipAddresses": ["100.64.0.7"], "name": "n1", "user": {"id": "1", "name": "headcni",
            "createdAt": null, "displayName": "", "email": "", "providerId": "", "provider": "",
            "profilePicUrl": ""}, "lastSeen": null, "expiry": null, "preAuthKey": null,
            "createdAt": "2026-01-01T00:00:00Z", "registerMethod": "REGISTER_METHOD_AUTH_KEY",
            "givenName": "n1", "online": true, "approvedRoutes": ["10.244.1.0/24"],
            "availableRoutes": ["10.244.1.0/24", "0.0.0.0/0"], "subnetRoutes": [], "tags": []
        });
        let n: Node = serde_json::from_value(j).unwrap();
        assert_eq!(n.id, 7);
        assert_eq!(n.user.unwrap().id, 1);
        assert_eq!(n.available_routes.len(), 2);
    }

    #[test]
    fn preauth_key_owner_both_generations() {
        let new: PreAuthKey = serde_json::from_value(serde_json::json!({
            "user": {"id": "3", "name": "headcni"}, "id": "9", "key": "hskey-auth-x-y",
            "reusable": false, "ephemeral": false, "used": false,
            "expiration": "2026-01-01T00:10:00Z", "createdAt": null, "aclTags": []
        }))
        .unwrap();
        assert!(matches!(new.user, Some(PreAuthKeyOwner::User(ref u)) if u.id == 3));
        assert!(!format!("{new:?}").contains("hskey-auth-x-y"));
        let old: PreAuthKey = serde_json::from_value(serde_json::json!({
            "user": "headcni", "id": "4", "key": "abc", "reusable": false, "ephemeral": false,
            "used": false, "expiration": null, "createdAt": null, "aclTags": []
        }))
        .unwrap();
        assert!(matches!(old.user, Some(PreAuthKeyOwner::Name(ref n)) if n == "headcni"));
        assert_eq!(old.id, 4);
    }

    #[test]
    fn u64_accepts_number_and_rejects_garbage() {
        let u: User = serde_json::from_value(serde_json::json!({"id": 12, "name": "a"})).unwrap();
        assert_eq!(u.id, 12);
        assert!(serde_json::from_value::<User>(serde_json::json!({"id": "x"})).is_err());
    }
}
