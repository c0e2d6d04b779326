//! The node reconcile's decisions, without root or a namespace: each decision the daemon's
//! end-to-end tests (headcni-cli/tests/daemon_e2e.rs, dataplane.rs) exercise on a kernel.

use std::path::Path;

use super::*;
use crate::ipam::Strategy;
use crate::node::cniconf::ConflistParams;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn desired(pods: &[&str], cluster: &[&str]) -> DesiredDataplane {
    DesiredDataplane {
        bridge: "headcni0".into(),
        mtu: Some(1280),
        pod_cidrs: pods.iter().map(|p| net(p)).collect(),
        cluster_cidrs: cluster.iter().map(|c| net(c)).collect(),
        no_masq_cidrs: Vec::new(),
        table: "headcni".into(),
        masquerade_ipv6: true,
    }
}

fn dual() -> ValidDataplane {
    validate(&desired(
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["10.244.0.0/16", "fd00:10:244::/48"],
    ))
    .unwrap()
}

/// The node as a finished reconcile leaves it for `v`.
fn in_place(v: &ValidDataplane) -> ObservedDataplane {
    ObservedDataplane {
        bridge: Some(ObservedBridge {
            kind: Some("bridge".into()),
            up: true,
            mtu: v.bridge.mtu.unwrap_or(1500),
            addresses: v.bridge.addresses.clone(),
        }),
        forwarding: ForwardingState {
            ipv4: Some(true),
            ipv6: Some(true),
        },
        firewall: FirewallObservation::InPlace,
    }
}

fn conflist(subnet: &str, mtu: u32) -> Conflist {
    Conflist::new(&ConflistParams {
        network_name: "headcni",
        bridge: "headcni0",
        mtu,
        pod_cidrs: &[net(subnet)],
        data_dir: Path::new("/var/lib/cni/networks"),
        strategy: Strategy::Sequential,
        daemon_socket: None,
        chained: &[],
        versions: &crate::node::chain_versions::ChainVersions::headcni_only(),
        dns: None,
    })
}

#[test]
fn nothing_to_do_when_everything_is_in_place() {
    let v = dual();
    assert_eq!(plan_dataplane(&v, &in_place(&v)), vec![]);
}

#[test]
fn first_reconcile_creates_everything() {
    let v = dual();
    let o = ObservedDataplane {
        bridge: None,
        forwarding: ForwardingState {
            ipv4: Some(false),
            ipv6: Some(false),
        },
        firewall: FirewallObservation::OutOfDate,
    };
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![
            NodeAction::EnsureBridge(BridgeSpec {
                name: "headcni0".into(),
                mtu: Some(1280),
                addresses: vec![net("10.244.1.1/24"), net("fd00:10:244:1::1/64")],
            }),
            NodeAction::EnableForwarding {
                ipv4: true,
                ipv6: true
            },
            NodeAction::ApplyFirewall(v.masquerade.clone()),
        ]
    );
}

#[test]
fn bridge_missing_down_wrong_mtu_or_missing_gateway_is_ensured() {
    let v = dual();
    let ensure = vec![NodeAction::EnsureBridge(v.bridge.clone())];
    let mut o = in_place(&v);
    o.bridge = None;
    assert_eq!(plan_dataplane(&v, &o), ensure, "missing");
    for (what, edit) in [
        (
            "down",
            Box::new(|b: &mut ObservedBridge| b.up = false) as Box<dyn Fn(&mut ObservedBridge)>,
        ),
        ("wrong MTU", Box::new(|b| b.mtu = 1500)),
        ("not a bridge", Box::new(|b| b.kind = Some("dummy".into()))),
        ("no kind", Box::new(|b| b.kind = None)),
        (
            "gateway address deleted",
            Box::new(|b| b.addresses.retain(|a| *a != net("10.244.1.1/24"))),
        ),
    ] {
        let mut o = in_place(&v);
        edit(o.bridge.as_mut().unwrap());
        assert_eq!(plan_dataplane(&v, &o), ensure, "{what}");
    }
}

#[test]
fn an_old_extra_address_is_left_alone() {
    let v = dual();
    let mut o = in_place(&v);
    o.bridge
        .as_mut()
        .unwrap()
        .addresses
        .push(net("10.244.9.1/24"));
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![],
        "no action for an extra address"
    );
    // and a repair never lists it: ensure_bridge only adds the wanted gateways
    o.bridge.as_mut().unwrap().up = false;
    match &plan_dataplane(&v, &o)[..] {
        [NodeAction::EnsureBridge(spec)] => {
            assert!(!spec.addresses.contains(&net("10.244.9.1/24")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_mtu_wanted_keeps_any_bridge_mtu() {
    let mut d = desired(&["10.244.1.0/24"], &[]);
    d.mtu = None;
    let v = validate(&d).unwrap();
    let mut o = in_place(&v);
    o.bridge.as_mut().unwrap().mtu = 9000;
    assert_eq!(plan_dataplane(&v, &o), vec![]);
}

#[test]
fn forwarding_off_enables_only_the_needed_family() {
    let v4only = validate(&desired(&["10.244.1.0/24"], &["10.244.0.0/16"])).unwrap();
    let mut o = in_place(&v4only);
    o.forwarding = ForwardingState {
        ipv4: Some(false),
        ipv6: Some(false),
    };
    assert_eq!(
        plan_dataplane(&v4only, &o),
        vec![NodeAction::EnableForwarding {
            ipv4: true,
            ipv6: false
        }],
        "an IPv4-only node leaves IPv6 forwarding alone"
    );
    let v = dual();
    let mut o = in_place(&v);
    o.forwarding.ipv6 = Some(false);
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![NodeAction::EnableForwarding {
            ipv4: false,
            ipv6: true
        }],
        "only the family that is off"
    );
    let v6only = validate(&desired(&["fd00:10:244:1::/64"], &[])).unwrap();
    let mut o = in_place(&v6only);
    o.forwarding.ipv4 = Some(false);
    assert_eq!(plan_dataplane(&v6only, &o), vec![]);
}

#[test]
fn missing_ipv6_sysctl_needs_nothing_missing_ipv4_sysctl_counts_as_off() {
    let v = dual();
    let mut o = in_place(&v);
    o.forwarding.ipv6 = None;
    assert_eq!(plan_dataplane(&v, &o), vec![], "IPv6 disabled");
    o.forwarding.ipv4 = None;
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![NodeAction::EnableForwarding {
            ipv4: true,
            ipv6: false
        }]
    );
}

#[test]
fn firewall_out_of_date_is_applied_only_when_managed() {
    let v = dual();
    let mut o = in_place(&v);
    o.firewall = FirewallObservation::OutOfDate;
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![NodeAction::ApplyFirewall(v.masquerade.clone())],
        "table deleted (uninstall) or stale (new cluster CIDR): only it is rewritten"
    );
    o.firewall = FirewallObservation::Unmanaged;
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![],
        "driver none: no firewall action"
    );
    o.bridge = None;
    assert_eq!(
        plan_dataplane(&v, &o),
        vec![NodeAction::EnsureBridge(v.bridge.clone())],
        "driver none still keeps the bridge"
    );
}

#[test]
fn a_new_cluster_cidr_changes_the_rule_set_to_apply() {
    let mut d = desired(&["10.244.1.0/24"], &["10.244.0.0/16"]);
    let before = validate(&d).unwrap();
    d.cluster_cidrs.push(net("198.51.100.0/24"));
    let after = validate(&d).unwrap();
    assert_ne!(before.masquerade, after.masquerade);
    assert!(after.masquerade.to_string().contains("198.51.100.0/24"));
}

#[test]
fn conflist_unchanged_is_not_written_changed_is() {
    let want = conflist("10.244.1.0/24", 1280);
    let same = ConflistOnDisk {
        conflist: want.clone(),
        canonical: true,
    };
    assert_eq!(plan_conflist(&want, Some(&same)), None);
    let write = Some(NodeAction::WriteConflist(Box::new(want.clone())));
    assert_eq!(plan_conflist(&want, None), write, "absent or unparsable");
    let other = ConflistOnDisk {
        conflist: conflist("10.244.2.0/24", 1280),
        canonical: true,
    };
    assert_eq!(plan_conflist(&want, Some(&other)), write, "another PodCIDR");
    let other_mtu = ConflistOnDisk {
        conflist: conflist("10.244.1.0/24", 1400),
        canonical: true,
    };
    assert_eq!(plan_conflist(&want, Some(&other_mtu)), write, "another MTU");
    let drifted = ConflistOnDisk {
        conflist: want.clone(),
        canonical: false,
    };
    assert_eq!(plan_conflist(&want, Some(&drifted)), write, "drifted form");
}

#[test]
fn plan_puts_the_conflist_after_the_data_plane() {
    let v = dual();
    let mut o = in_place(&v);
    o.firewall = FirewallObservation::OutOfDate;
    let want = conflist("10.244.1.0/24", 1280);
    let actions = plan(&v, &o, &want, None);
    assert_eq!(actions.len(), 2);
    assert!(matches!(actions[0], NodeAction::ApplyFirewall(_)));
    assert!(matches!(actions[1], NodeAction::WriteConflist(_)));
}

#[test]
fn invalid_parameters_fail_before_any_action() {
    let e = validate(&desired(&[], &[])).unwrap_err();
    assert_eq!(e, NodePlanError::Masquerade(MasqError::NoPodCidr));
    let e = validate(&desired(&["10.244.1.5/24"], &[])).unwrap_err();
    assert!(matches!(e, NodePlanError::HostBits { .. }), "{e:?}");
    for tiny in ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127"] {
        let e = validate(&desired(&[tiny], &[])).unwrap_err();
        assert!(matches!(e, NodePlanError::TooSmall(_)), "{tiny}: {e:?}");
    }
    let e = validate(&desired(&["10.244.1.0/24"], &["10.245.0.0/16"])).unwrap_err();
    assert!(
        matches!(
            e,
            NodePlanError::Masquerade(MasqError::PodOutsideCluster { .. })
        ),
        "{e:?}"
    );
    let mut d = desired(&["10.244.1.0/24"], &[]);
    d.table = "bad name".into();
    assert!(matches!(
        validate(&d),
        Err(NodePlanError::Masquerade(MasqError::InvalidTableName(_)))
    ));
}

#[test]
fn gateway_is_first_host_with_prefix() {
    assert_eq!(
        gateway_address(&net("10.244.1.0/24")).unwrap(),
        net("10.244.1.1/24")
    );
    assert_eq!(
        gateway_address(&net("fd00:10:244:1::/64")).unwrap(),
        net("fd00:10:244:1::1/64")
    );
    assert_eq!(
        gateway_address(&net("10.0.0.0/30")).unwrap(),
        net("10.0.0.1/30")
    );
    for bad in ["10.244.1.5/24", "10.0.0.0/31", "10.0.0.1/32", "fd00::/127"] {
        assert!(gateway_address(&net(bad)).is_err(), "{bad}");
    }
}

#[test]
fn masquerade_ipv6_off_keeps_the_ipv6_bridge_and_forwarding_but_not_its_masquerade() {
    use crate::node::masq::AddrFamily;
    let mut d = desired(
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["10.244.0.0/16", "fd00:10:244::/56"],
    );
    d.masquerade_ipv6 = false;
    let v = validate(&d).unwrap();
    assert_eq!(v.masquerade.families(), vec![AddrFamily::Ipv4]);
    assert!(v.bridge.addresses.contains(&net("fd00:10:244:1::1/64")));
    assert!(v.ipv6, "IPv6 forwarding is still needed");
    d.masquerade_ipv6 = true;
    assert_eq!(
        validate(&d).unwrap().masquerade.families(),
        vec![AddrFamily::Ipv4, AddrFamily::Ipv6]
    );
    // A PodCIDR outside the cluster CIDR fails whatever the choice.
    d.pod_cidrs = vec![net("10.244.1.0/24"), net("fd00:99::/64")];
    d.masquerade_ipv6 = false;
    assert!(matches!(
        validate(&d),
        Err(NodePlanError::Masquerade(
            MasqError::PodOutsideCluster { .. }
        ))
    ));
}

#[test]
fn no_masquerade_cidrs_join_the_exempt_set() {
    let mut d = desired(&["10.244.1.0/24"], &["10.244.0.0/16"]);
    d.no_masq_cidrs = vec![net("10.96.0.0/12"), net("192.0.2.0/24")];
    let v = validate(&d).unwrap();
    assert_eq!(
        v.masquerade.set("nomasq_v4").unwrap().elements,
        vec![
            net("10.96.0.0/12"),
            net("10.244.0.0/16"),
            net("100.64.0.0/10"),
            net("192.0.2.0/24"),
            net("224.0.0.0/4")
        ]
    );
    // A no-masquerade CIDR with host bits is refused like any other list.
    d.no_masq_cidrs = vec![net("10.96.0.1/12")];
    assert!(validate(&d).is_err());
}
