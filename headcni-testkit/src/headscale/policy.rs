//! The route model and policy: which announced routes are approved (per API generation),
//! auto-approval and the peer view through the policy engine (`acl`, `acl_eval`), and primary
//! election (Headscale `types/node.go`).

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;

use super::acl_eval::Facts;
use super::options::NodeView;
use super::state::{FNode, FRoute, State, node_ips, now};

pub(super) fn is_exit(p: &IpNetwork) -> bool {
    p.prefix() == 0
}

impl State {
    pub(super) fn approved_of(&self, n: &FNode) -> Vec<IpNetwork> {
        if self.version.approves() {
            n.approved.clone()
        } else {
            self.rows
                .iter()
                .filter(|r| r.node_id == n.id && r.enabled)
                .map(|r| r.prefix)
                .collect()
        }
    }

    pub(super) fn primary_of(&self, id: u64) -> Vec<IpNetwork> {
        self.primaries
            .iter()
            .filter(|(_, n)| **n == id)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Headscale types/node.go: a subnet route is served when announced ∩ approved; per prefix
    /// one online node is primary (the current one while it stays eligible, else the lowest id).
    pub(super) fn recompute(&mut self) {
        let mut candidates: BTreeMap<IpNetwork, Vec<u64>> = BTreeMap::new();
        for n in self.nodes.values() {
            if !n.online {
                continue;
            }
            let approved = self.approved_of(n);
            for p in n
                .announced
                .iter()
                .filter(|p| !is_exit(p) && approved.contains(p))
            {
                candidates.entry(*p).or_default().push(n.id);
            }
        }
        let mut prim = BTreeMap::new();
        for (p, ids) in candidates {
            let keep = self
                .primaries
                .get(&p)
                .filter(|cur| ids.contains(cur))
                .copied();
            if let Some(id) = keep.or_else(|| ids.iter().min().copied()) {
                prim.insert(p, id);
            }
        }
        self.primaries = prim;
    }

    /// What the policy needs to know about every node (`acl_eval::Facts`).
    pub(super) fn facts(&self) -> Vec<Facts> {
        self.nodes
            .values()
            .map(|n| {
                let approved = self.approved_of(n);
                Facts {
                    id: n.id,
                    user: self
                        .users
                        .iter()
                        .find(|u| u.id == n.user_id)
                        .map(|u| u.name.clone())
                        .unwrap_or_default(),
                    tags: n.tags.clone(),
                    ips: node_ips(n.id),
                    subnet: n
                        .announced
                        .iter()
                        .filter(|p| !is_exit(p) && approved.contains(p))
                        .copied()
                        .collect(),
                }
            })
            .collect()
    }

    /// The peers `id` sees, as its netmap shows them: peers an ACL lets either side reach
    /// (`policy.ReduceNodes`), each with only the primary routes the ACL lets `id` reach
    /// (≥ 0.26 `policy.ReduceRoutes`). Without a policy every node and route.
    pub(super) fn peers_view(&self, id: u64) -> Vec<NodeView> {
        let facts = self.facts();
        let me = facts.iter().find(|f| f.id == id);
        let matchers = self.policy.as_ref().and_then(|p| p.matchers(&facts));
        self.nodes
            .values()
            .filter(|n| n.id != id)
            .filter_map(|n| {
                let mut v = self.view(n);
                if let (Some(p), Some(me)) = (&self.policy, me) {
                    let peer = facts.iter().find(|f| f.id == n.id)?;
                    if !p.peer_visible(matchers.as_deref(), me, peer) {
                        return None;
                    }
                    v.primary
                        .retain(|r| p.route_visible(matchers.as_deref(), me, r));
                }
                Some(v)
            })
            .collect()
    }

    /// Auto-approval of a node's announced routes by the policy's `autoApprovers.routes`
    /// (never exit routes: the fake models no `autoApprovers.exitNode`). Approvals are only
    /// added, as Headscale does on a hostinfo or policy change.
    pub(super) fn auto_approve(&mut self, node_id: u64) {
        let Some(policy) = &self.policy else {
            return;
        };
        let facts = self.facts();
        let (Some(me), Some(n)) = (
            facts.iter().find(|f| f.id == node_id),
            self.nodes.get(&node_id),
        ) else {
            return;
        };
        let eligible: Vec<IpNetwork> = n
            .announced
            .iter()
            .filter(|p| !is_exit(p) && policy.can_approve(me, &facts, p))
            .copied()
            .collect();
        if self.version.approves() {
            if let Some(n) = self.nodes.get_mut(&node_id) {
                for p in eligible {
                    if !n.approved.contains(&p) {
                        n.approved.push(p);
                    }
                }
            }
        } else {
            let t = now();
            for r in self
                .rows
                .iter_mut()
                .filter(|r| r.node_id == node_id && r.advertised && !r.enabled)
            {
                if eligible.contains(&r.prefix) {
                    r.enabled = true;
                    r.updated_at = t.clone();
                }
            }
        }
    }

    pub(super) fn announce(&mut self, node_id: u64, routes: &[IpNetwork]) {
        let Some(n) = self.nodes.get_mut(&node_id) else {
            return;
        };
        n.announced = routes.to_vec();
        if !self.version.approves() {
            // db/routes.go SaveNodeRoutes: new prefixes get a row (advertised, disabled);
            // prefixes no longer announced become advertised=false AND enabled=false.
            let t = now();
            for r in self.rows.iter_mut().filter(|r| r.node_id == node_id) {
                let adv = routes.contains(&r.prefix);
                if r.advertised != adv || (!adv && r.enabled) {
                    r.advertised = adv;
                    if !adv {
                        r.enabled = false;
                    }
                    r.updated_at = t.clone();
                }
            }
            for p in routes {
                if !self
                    .rows
                    .iter()
                    .any(|r| r.node_id == node_id && r.prefix == *p)
                {
                    let id = self.id();
                    self.rows.push(FRoute {
                        id,
                        node_id,
                        prefix: *p,
                        advertised: true,
                        enabled: false,
                        created_at: t.clone(),
                        updated_at: t.clone(),
                    });
                }
            }
        }
        self.auto_approve(node_id);
        self.recompute();
    }
}
