//! `headcni policy`'s fragment against the fake Headscale's strict policy engine: accepted
//! by every generation, it gets a PodCIDR approved and visible to the peer, where a policy
//! without its ACL (≥ 0.26) or without its autoApprovers does not.

use headcni_headscale::policy::{Approver, PolicyRequirements, PolicyVersion, render_fragment};
use headcni_testkit::{FakeApiVersion, FakeHeadscaleOptions, HeadscaleControl};
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn control(v: PolicyVersion) -> HeadscaleControl {
    let opts = FakeHeadscaleOptions {
        version: if v == PolicyVersion::V0_25 {
            FakeApiVersion::V0_25
        } else {
            FakeApiVersion::V0_29
        },
        policy_version: Some(v),
        ..Default::default()
    };
    HeadscaleControl::new(&opts, None, "http://127.0.0.1:1".into()).0
}

fn fragment(v: PolicyVersion) -> String {
    render_fragment(&PolicyRequirements {
        cluster_cidrs: vec![net("10.244.0.0/16")],
        version: v,
        approver: Approver::User("ops".into()),
        tag_owner: None,
    })
    .unwrap()
}

/// Two nodes of user "ops" announcing their PodCIDRs under `policy`; returns (node 1's
/// approved routes, the routes node 2 sees at node 1).
fn run(v: PolicyVersion, policy: &str) -> (Vec<IpNetwork>, Vec<IpNetwork>) {
    let c = control(v);
    c.set_policy(policy).unwrap();
    let a = c.register_node("a", "ops", &headcni_testkit::random_node_key());
    let b = c.register_node("b", "ops", &headcni_testkit::random_node_key());
    c.announce_routes(a.id, &[net("10.244.1.0/24")]);
    c.announce_routes(b.id, &[net("10.244.2.0/24")]);
    let approved = c.node(a.id).unwrap().approved;
    let seen = c
        .peers_of(b.id)
        .into_iter()
        .find(|p| p.id == a.id)
        .map(|p| p.primary)
        .unwrap_or_default();
    (approved, seen)
}

#[test]
fn the_fragment_approves_and_shows_pod_routes_on_every_generation() {
    for v in PolicyVersion::ALL {
        let (approved, seen) = run(v, &fragment(v));
        assert_eq!(approved, vec![net("10.244.1.0/24")], "{v}");
        assert_eq!(seen, vec![net("10.244.1.0/24")], "{v}");
    }
}

#[test]
fn without_its_acl_peers_miss_pod_routes_since_0_26() {
    for v in PolicyVersion::ALL {
        let user = v.user_token("ops");
        // autoApprovers only, and an ACL between the nodes themselves
        let p = format!(
            r#"{{"acls": [{{"action": "accept", "src": ["{user}"], "dst": ["{user}:*"]}}],
                "autoApprovers": {{"routes": {{"10.244.0.0/16": ["{user}"]}}}}}}"#
        );
        let (approved, seen) = run(v, &p);
        assert_eq!(approved, vec![net("10.244.1.0/24")], "{v}");
        if v.filters_routes_by_acl() {
            assert_eq!(seen, vec![], "{v}: the route must be filtered");
        } else {
            assert_eq!(seen, vec![net("10.244.1.0/24")], "{v}");
        }
    }
}

#[test]
fn without_its_auto_approver_nothing_is_approved() {
    for v in PolicyVersion::ALL {
        let mut f = fragment(v);
        f = f.replace("\"10.244.0.0/16\": [", "\"10.245.0.0/16\": [");
        let (approved, seen) = run(v, &f);
        assert!(approved.is_empty(), "{v}");
        assert!(seen.is_empty(), "{v}");
    }
}

#[test]
fn a_policy_the_server_refuses_is_refused_and_the_old_one_kept() {
    let c = control(PolicyVersion::V0_29);
    c.set_policy(&fragment(PolicyVersion::V0_29)).unwrap();
    // 0.25's bare user name is a parse error since 0.26
    assert!(c.set_policy(&fragment(PolicyVersion::V0_25)).is_err());
    let a = c.register_node("a", "ops", &headcni_testkit::random_node_key());
    c.announce_routes(a.id, &[net("10.244.1.0/24")]);
    assert_eq!(c.node(a.id).unwrap().approved, vec![net("10.244.1.0/24")]);
}
