//! Which peers' pod routes this node's netmap lacks: the control server says a node serves a
//! route, but this node does not receive it (since Headscale 0.26 each node only sees the
//! peers' routes the policy's ACL lets it reach, headscale `hscontrol/policy/v2/filter.go`
//! `ReduceRoutes`). A missing route means broken pod traffic to that node.

use ipnetwork::IpNetwork;

use crate::control::PeerRoutes;

/// A node and the routes the control server says it serves (Headscale ≥ 0.26: a node's
/// `subnetRoutes` from `GET /api/v1/node`; ≤ 0.25: its enabled, advertised route rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRoutes {
    /// The control server's node id (decimal).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether the control server reports it online.
    pub online: bool,
    /// The routes it serves.
    pub routes: Vec<IpNetwork>,
}

/// Whether `route` is one of HeadCNI's concern: inside one of `cluster` (every non-exit
/// route when `cluster` is empty).
fn in_cluster(route: &IpNetwork, cluster: &[IpNetwork]) -> bool {
    if route.prefix() == 0 {
        return false;
    }
    cluster.is_empty()
        || cluster
            .iter()
            .any(|c| c.prefix() <= route.prefix() && c.contains(route.network()))
}

/// For every node of `served` other than `self_id`: its routes inside `cluster` that no peer
/// in `netmap` (this node's peers' primary routes, LocalAPI status) carries. Nodes the
/// control server reports offline are skipped (their routes are withdrawn on purpose).
/// Sorted by name, then id.
pub fn missing_peer_routes(
    self_id: &str,
    served: &[ServedRoutes],
    netmap: &[PeerRoutes],
    cluster: &[IpNetwork],
) -> Vec<PeerRoutes> {
    let mut out: Vec<PeerRoutes> = served
        .iter()
        .filter(|s| s.id != self_id && s.online)
        .filter_map(|s| {
            let routes: Vec<IpNetwork> = s
                .routes
                .iter()
                .filter(|r| in_cluster(r, cluster))
                .filter(|r| !netmap.iter().any(|p| p.routes.contains(r)))
                .copied()
                .collect();
            (!routes.is_empty()).then(|| PeerRoutes {
                name: s.name.clone(),
                id: Some(s.id.clone()),
                online: s.online,
                routes,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn served(id: &str, name: &str, online: bool, routes: &[&str]) -> ServedRoutes {
        ServedRoutes {
            id: id.into(),
            name: name.into(),
            online,
            routes: routes.iter().map(|r| n(r)).collect(),
        }
    }

    #[test]
    fn a_served_pod_route_absent_from_the_netmap_is_missing() {
        let served = [
            served("1", "node-1", true, &["10.244.1.0/24"]),
            served("2", "node-2", true, &["10.244.2.0/24", "192.168.9.0/24"]),
            served("3", "node-3", true, &["10.244.3.0/24", "0.0.0.0/0"]),
            served("4", "node-4", false, &["10.244.4.0/24"]),
        ];
        let netmap = [PeerRoutes {
            name: "node-3".into(),
            id: Some("3".into()),
            online: true,
            routes: vec![n("10.244.3.0/24")],
        }];
        let cluster = [n("10.244.0.0/16")];
        let missing = missing_peer_routes("1", &served, &netmap, &cluster);
        // node-1 is this node; node-2's pod route is missing (its LAN route is not ours);
        // node-3's is there (its exit route is never ours); node-4 is offline
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].name, "node-2");
        assert_eq!(missing[0].routes, vec![n("10.244.2.0/24")]);
        // without a cluster CIDR every non-exit route counts
        let all = missing_peer_routes("1", &served, &netmap, &[]);
        assert_eq!(all[0].routes, vec![n("10.244.2.0/24"), n("192.168.9.0/24")]);
        // a route served by another peer (HA failover) is not missing
        let moved = [PeerRoutes {
            name: "node-5".into(),
            id: Some("5".into()),
            online: true,
            routes: vec![n("10.244.2.0/24"), n("10.244.3.0/24")],
        }];
        assert!(missing_peer_routes("1", &served, &moved, &cluster).is_empty());
    }
}
