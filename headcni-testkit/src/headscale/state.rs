//! The fake's state model: users, nodes, pre-auth keys, ≤ 0.25 route rows, primaries, API
//! keys, and its durable form ([`PersistedState`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use headcni_headscale::time::{format_unix, unix_now};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use headcni_headscale::policy::PolicyVersion;

use super::acl::Policy;
use super::faults::{Exchange, Fault};
use super::options::{FakeApiVersion, FakeHeadscaleOptions, NodeView};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FUser {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FNode {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) user_id: u64,
    pub(super) machine_key: String,
    pub(super) node_key: String,
    pub(super) disco_key: String,
    pub(super) announced: Vec<IpNetwork>,
    pub(super) approved: Vec<IpNetwork>,
    pub(super) online: bool,
    pub(super) created_at: String,
    pub(super) pre_auth_key: Option<u64>,
    pub(super) register_method: String,
    /// Tags the node carries (its pre-auth key's `aclTags`, Headscale `Node.Tags`).
    #[serde(default)]
    pub(super) tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FKey {
    pub(super) id: u64,
    pub(super) key: String,
    pub(super) user_id: Option<u64>,
    pub(super) reusable: bool,
    pub(super) ephemeral: bool,
    pub(super) used: bool,
    pub(super) expiration: String,
    pub(super) created_at: String,
    pub(super) acl_tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FRoute {
    pub(super) id: u64,
    pub(super) node_id: u64,
    pub(super) prefix: IpNetwork,
    pub(super) advertised: bool,
    pub(super) enabled: bool,
    pub(super) created_at: String,
    pub(super) updated_at: String,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) version: FakeApiVersion,
    pub(super) api_keys: Vec<String>,
    pub(super) users: Vec<FUser>,
    pub(super) nodes: BTreeMap<u64, FNode>,
    pub(super) keys: Vec<FKey>,
    pub(super) rows: Vec<FRoute>,
    pub(super) primaries: BTreeMap<IpNetwork, u64>,
    /// The validated policy (`None`: no policy, no auto-approval, every peer and route
    /// visible).
    pub(super) policy: Option<Policy>,
    pub(super) policy_text: Option<String>,
    pub(super) policy_version: PolicyVersion,
    pub(super) faults: VecDeque<Fault>,
    pub(super) exchanges: Vec<Exchange>,
    pub(super) healthy: bool,
    pub(super) next_id: u64,
    /// Node ids have their own sequence (a table of their own in Headscale): node N gets
    /// 100.64.0.N.
    pub(super) next_node_id: u64,
    pub(super) record_exchanges: bool,
}

/// The durable part of a fake Headscale's state (users, nodes with keys and routes, pre-auth
/// keys, API keys, route rows, primaries, the policy document, the id counter), as JSON-serializable
/// data: what a stand-in persists and reloads. Opaque to callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedState {
    api_keys: Vec<String>,
    users: Vec<FUser>,
    nodes: Vec<FNode>,
    keys: Vec<FKey>,
    rows: Vec<FRoute>,
    primaries: Vec<(IpNetwork, u64)>,
    /// The policy document (HuJSON), re-validated on import.
    #[serde(default)]
    policy: Option<String>,
    next_id: u64,
    #[serde(default)]
    next_node_id: u64,
}

pub(super) const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub(super) fn now() -> String {
    format_unix(unix_now())
}

pub(super) fn rand_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// A fresh `nodekey:<64 hex>`.
pub fn random_node_key() -> String {
    format!("nodekey:{}", rand_hex(32))
}

pub(super) fn node_ips(id: u64) -> Vec<IpAddr> {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + id as u32);
    let v6 = Ipv6Addr::from(
        u128::from(
            "fd7a:115c:a1e0::"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::UNSPECIFIED),
        ) + id as u128,
    );
    vec![IpAddr::V4(v4), IpAddr::V6(v6)]
}

impl State {
    pub(super) fn new(opts: &FakeHeadscaleOptions) -> Self {
        State {
            version: opts.version,
            api_keys: Vec::new(),
            users: Vec::new(),
            nodes: BTreeMap::new(),
            keys: Vec::new(),
            rows: Vec::new(),
            primaries: BTreeMap::new(),
            policy: None,
            policy_text: None,
            policy_version: opts.policy_version(),
            faults: VecDeque::new(),
            exchanges: Vec::new(),
            healthy: true,
            next_id: 1,
            next_node_id: 1,
            record_exchanges: opts.record_exchanges,
        }
    }

    pub(super) fn export(&self) -> PersistedState {
        PersistedState {
            api_keys: self.api_keys.clone(),
            users: self.users.clone(),
            nodes: self.nodes.values().cloned().collect(),
            keys: self.keys.clone(),
            rows: self.rows.clone(),
            primaries: self.primaries.iter().map(|(p, n)| (*p, *n)).collect(),
            policy: self.policy_text.clone(),
            next_id: self.next_id,
            next_node_id: self.next_node_id,
        }
    }

    pub(super) fn import(&mut self, p: PersistedState) {
        self.api_keys = p.api_keys;
        self.users = p.users;
        self.nodes = p.nodes.into_iter().map(|n| (n.id, n)).collect();
        self.keys = p.keys;
        self.rows = p.rows;
        self.primaries = p.primaries.into_iter().collect();
        self.policy_text = None;
        self.policy = None;
        if let Some(text) = p.policy {
            match Policy::parse(&text, self.policy_version) {
                Ok(pol) => {
                    self.policy = Some(pol);
                    self.policy_text = Some(text);
                }
                Err(e) => tracing::warn!(error = %e, "persisted policy refused: dropped"),
            }
        }
        self.next_id = p.next_id.max(1);
        let after_nodes = self.nodes.keys().max().map_or(1, |m| m + 1);
        self.next_node_id = p.next_node_id.max(after_nodes);
    }

    pub(super) fn id(&mut self) -> u64 {
        let i = self.next_id;
        self.next_id += 1;
        i
    }

    pub(super) fn add_node(
        &mut self,
        name: &str,
        user_id: u64,
        node_key: String,
        key: Option<u64>,
    ) -> u64 {
        let id = self.next_node_id;
        self.next_node_id += 1;
        self.nodes.insert(
            id,
            FNode {
                id,
                name: name.to_string(),
                user_id,
                machine_key: format!("mkey:{}", rand_hex(32)),
                node_key,
                disco_key: format!("discokey:{}", rand_hex(32)),
                announced: Vec::new(),
                approved: Vec::new(),
                online: true,
                created_at: now(),
                pre_auth_key: key,
                register_method: if key.is_some() {
                    "REGISTER_METHOD_AUTH_KEY"
                } else {
                    "REGISTER_METHOD_CLI"
                }
                .to_string(),
                tags: Vec::new(),
            },
        );
        id
    }

    pub(super) fn user_id_by_name(&mut self, name: &str) -> u64 {
        if let Some(u) = self.users.iter().find(|u| u.name == name) {
            return u.id;
        }
        let id = self.id();
        self.users.push(FUser {
            id,
            name: name.to_string(),
            created_at: now(),
        });
        id
    }

    pub(super) fn view(&self, n: &FNode) -> NodeView {
        NodeView {
            id: n.id,
            name: n.name.clone(),
            user: self
                .users
                .iter()
                .find(|u| u.id == n.user_id)
                .map(|u| u.name.clone())
                .unwrap_or_default(),
            node_key: n.node_key.clone(),
            ips: node_ips(n.id),
            announced: n.announced.clone(),
            approved: self.approved_of(n),
            primary: self.primary_of(n.id),
            online: n.online,
            tags: n.tags.clone(),
        }
    }
}

pub(super) fn empty_view(id: u64) -> NodeView {
    NodeView {
        id,
        name: String::new(),
        user: String::new(),
        node_key: String::new(),
        ips: Vec::new(),
        announced: Vec::new(),
        approved: Vec::new(),
        primary: Vec::new(),
        online: false,
        tags: Vec::new(),
    }
}
