//! Unit tests of the kube-proxy rule generator: chain names checked against kube-proxy's own
//! expected output (kubernetes/kubernetes `pkg/proxy/iptables/proxier_test.go`,
//! `TestOverallIPTablesRules`), and the rule text per policy.

use super::*;

fn ep(ip: [u8; 4], node: &str) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(ip),
        port: 80,
        node: node.into(),
    }
}

fn svc(ns: &str, name: &str, ip: [u8; 4], endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        namespace: ns.into(),
        name: name.into(),
        port_name: "p80".into(),
        protocol: Protocol::Tcp,
        cluster_ip: Ipv4Addr::from(ip),
        port: 80,
        node_port: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        endpoints,
    }
}

fn cfg(node: &str) -> ProxyConfig {
    ProxyConfig {
        node_name: node.into(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
    }
}

fn rules_of<'a>(t: &'a TableRules, chain: &str) -> Vec<&'a str> {
    let p = format!("-A {chain} ");
    t.rules
        .iter()
        .filter(|r| r.starts_with(&p))
        .map(String::as_str)
        .collect()
}

#[test]
fn chain_names_are_kube_proxys() {
    // From proxier_test.go's expected iptables-save output.
    let s1 = svc(
        "ns1",
        "svc1",
        [172, 30, 0, 41],
        vec![ep([10, 180, 0, 1], "n")],
    );
    assert_eq!(service_chain("KUBE-SVC-", &s1), "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(
        endpoint_chain(&s1, &s1.endpoints[0]),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
    let s2 = svc(
        "ns2",
        "svc2",
        [172, 30, 0, 42],
        vec![ep([10, 180, 0, 2], "n")],
    );
    assert_eq!(service_chain("KUBE-EXT-", &s2), "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
    assert_eq!(service_chain("KUBE-SVL-", &s2), "KUBE-SVL-GNZBNJ2PO5MGZ6GT");
    assert_eq!(
        endpoint_chain(&s2, &s2.endpoints[0]),
        "KUBE-SEP-RS4RBKLTHTF2IUXJ"
    );
    // Unnamed port: "ns/name" without ":".
    let mut s3 = s1.clone();
    s3.port_name.clear();
    assert_eq!(s3.port_name_string(), "ns1/svc1");
    assert_ne!(
        service_chain("KUBE-SVC-", &s3),
        service_chain("KUBE-SVC-", &s1)
    );
}

#[test]
fn cluster_ip_with_three_endpoints_splits_evenly() {
    let s = svc(
        "lab",
        "web",
        [10, 96, 0, 10],
        vec![
            ep([10, 244, 1, 2], "node-1"),
            ep([10, 244, 2, 2], "node-2"),
            ep([10, 244, 2, 3], "node-2"),
        ],
    );
    let r = generate(&cfg("node-1"), std::slice::from_ref(&s)).unwrap();
    let svc = service_chain("KUBE-SVC-", &s);
    assert_eq!(
        rules_of(&r.nat, "KUBE-SERVICES"),
        vec![
            format!("-A KUBE-SERVICES -m comment --comment \"lab/web:p80 cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 -j {svc}").as_str(),
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
        ]
    );
    let seps: Vec<String> = s.endpoints.iter().map(|e| endpoint_chain(&s, e)).collect();
    assert_eq!(
        rules_of(&r.nat, &svc),
        vec![
            format!(
                "-A {svc} -m comment --comment \"lab/web:p80 cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"
            ),
            format!(
                "-A {svc} -m comment --comment \"lab/web:p80 -> 10.244.1.2:80\" -m statistic --mode random --probability 0.3333333333 -j {}",
                seps[0]
            ),
            format!(
                "-A {svc} -m comment --comment \"lab/web:p80 -> 10.244.2.2:80\" -m statistic --mode random --probability 0.5000000000 -j {}",
                seps[1]
            ),
            format!(
                "-A {svc} -m comment --comment \"lab/web:p80 -> 10.244.2.3:80\" -j {}",
                seps[2]
            ),
        ]
    );
    assert_eq!(
        rules_of(&r.nat, &seps[1]),
        vec![
            format!(
                "-A {} -m comment --comment \"lab/web:p80\" -s 10.244.2.2/32 -j KUBE-MARK-MASQ",
                seps[1]
            ),
            format!(
                "-A {} -m comment --comment \"lab/web:p80\" -m tcp -p tcp -j DNAT --to-destination 10.244.2.2:80",
                seps[1]
            ),
        ]
    );
    assert_eq!(
        rules_of(&r.nat, "KUBE-MARK-MASQ"),
        vec!["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    );
    assert_eq!(
        rules_of(&r.nat, "KUBE-POSTROUTING"),
        vec![
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        ]
    );
    assert!(rules_of(&r.nat, "KUBE-NODEPORTS").is_empty());
    // Every chain a rule jumps to or fills is declared, every declared chain exists once.
    for rule in &r.nat.rules {
        let chain = rule.split_whitespace().nth(1).unwrap();
        assert!(
            r.nat.chains.iter().any(|c| c == chain),
            "{chain} undeclared"
        );
    }
    let set: BTreeSet<_> = r.nat.chains.iter().collect();
    assert_eq!(set.len(), r.nat.chains.len());
    assert_eq!(
        rules_of(&r.filter, "KUBE-FORWARD"),
        vec![
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]
    );
}

#[test]
fn node_port_with_cluster_policy_masquerades_external_clients() {
    let mut s = svc(
        "lab",
        "web",
        [10, 96, 0, 10],
        vec![ep([10, 244, 2, 2], "node-2")],
    );
    s.node_port = Some(30080);
    let r = generate(&cfg("node-1"), std::slice::from_ref(&s)).unwrap();
    let (svc, ext) = (
        service_chain("KUBE-SVC-", &s),
        service_chain("KUBE-EXT-", &s),
    );
    assert_eq!(
        rules_of(&r.nat, "KUBE-NODEPORTS"),
        vec![format!(
            "-A KUBE-NODEPORTS -m comment --comment \"lab/web:p80\" -m tcp -p tcp --dport 30080 -j {ext}"
        )]
    );
    assert_eq!(
        rules_of(&r.nat, &ext),
        vec![
            format!(
                "-A {ext} -m comment --comment \"masquerade traffic for lab/web:p80 external destinations\" -j KUBE-MARK-MASQ"
            ),
            format!("-A {ext} -j {svc}"),
        ]
    );
    // One endpoint: no statistic match.
    assert!(
        rules_of(&r.nat, &svc)
            .iter()
            .all(|r| !r.contains("statistic"))
    );
    assert!(!r.nat.chains.contains(&service_chain("KUBE-SVL-", &s)));
}

#[test]
fn node_port_with_local_policy_keeps_the_source_and_uses_local_endpoints() {
    let mut s = svc(
        "lab",
        "web",
        [10, 96, 0, 10],
        vec![ep([10, 244, 1, 2], "node-1"), ep([10, 244, 2, 2], "node-2")],
    );
    s.node_port = Some(30081);
    s.external_traffic_policy = TrafficPolicy::Local;
    let r = generate(&cfg("node-2"), std::slice::from_ref(&s)).unwrap();
    let (svc, ext, svl) = (
        service_chain("KUBE-SVC-", &s),
        service_chain("KUBE-EXT-", &s),
        service_chain("KUBE-SVL-", &s),
    );
    assert_eq!(
        rules_of(&r.nat, &ext),
        vec![
            format!(
                "-A {ext} -m comment --comment \"pod traffic for lab/web:p80 external destinations\" -s 10.244.0.0/16 -j {svc}"
            ),
            format!(
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for lab/web:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            ),
            format!(
                "-A {ext} -m comment --comment \"route LOCAL traffic for lab/web:p80 external destinations\" -m addrtype --src-type LOCAL -j {svc}"
            ),
            format!("-A {ext} -j {svl}"),
        ]
    );
    // Only node-2's endpoint, unconditionally.
    assert_eq!(
        rules_of(&r.nat, &svl),
        vec![format!(
            "-A {svl} -m comment --comment \"lab/web:p80 -> 10.244.2.2:80\" -j {}",
            endpoint_chain(&s, &s.endpoints[1])
        )]
    );
    assert!(rules_of(&r.filter, "KUBE-EXTERNAL-SERVICES").is_empty());

    // A node without a local endpoint drops external NodePort traffic instead.
    let r3 = generate(&cfg("node-3"), std::slice::from_ref(&s)).unwrap();
    assert!(!r3.nat.chains.contains(&svl));
    assert_eq!(
        rules_of(&r3.filter, "KUBE-EXTERNAL-SERVICES"),
        vec![
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"lab/web:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30081 -j DROP"
        ]
    );
}

#[test]
fn a_service_without_endpoints_is_rejected_in_filter() {
    let mut s = svc("lab", "empty", [10, 96, 0, 11], vec![]);
    s.node_port = Some(30090);
    let r = generate(&cfg("node-1"), &[s.clone()]).unwrap();
    assert!(!r.nat.chains.contains(&service_chain("KUBE-SVC-", &s)));
    assert_eq!(
        rules_of(&r.filter, "KUBE-SERVICES"),
        vec![
            "-A KUBE-SERVICES -m comment --comment \"lab/empty:p80 has no endpoints\" -m tcp -p tcp -d 10.96.0.11/32 --dport 80 -j REJECT"
        ]
    );
    assert_eq!(rules_of(&r.filter, "KUBE-EXTERNAL-SERVICES").len(), 1);
}

#[test]
fn restore_text_declares_fills_and_deletes_stale_chains() {
    let s = svc(
        "lab",
        "web",
        [10, 96, 0, 10],
        vec![ep([10, 244, 1, 2], "node-1")],
    );
    let r = generate(&cfg("node-1"), &[s]).unwrap();
    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OLDOLDOLDOLDOLD0 - [0:0]\n:KUBE-SEP-OLDOLDOLDOLDOLD0 - [0:0]\n:DOCKER - [0:0]\n"
        .to_owned()
        + &r.nat.chains.iter().map(|c| format!(":{c} - [0:0]\n")).collect::<String>();
    let stale = stale_chains(&save, &r);
    assert_eq!(
        stale,
        vec!["KUBE-SEP-OLDOLDOLDOLDOLD0", "KUBE-SVC-OLDOLDOLDOLDOLD0"]
    );
    let text = r.restore_text(&stale);
    assert!(text.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"), "{text}");
    assert!(text.contains(":KUBE-SVC-OLDOLDOLDOLDOLD0 - [0:0]\n"));
    assert!(
        text.contains("-X KUBE-SVC-OLDOLDOLDOLDOLD0\n-X KUBE-SEP-OLDOLDOLDOLDOLD0\n")
            || text.contains("-X KUBE-SEP-OLDOLDOLDOLDOLD0\n-X KUBE-SVC-OLDOLDOLDOLDOLD0\n")
    );
    assert_eq!(text.matches("COMMIT\n").count(), 2);
    assert!(text.contains("*filter\n:KUBE-FORWARD - [0:0]\n"));
    // The -X lines come after every -A of the nat section.
    let nat = &text[..text.find("*filter").unwrap()];
    assert!(nat.rfind("-A ").unwrap() < nat.find("-X ").unwrap());
}

#[test]
fn jumps_are_the_built_in_chains_kube_proxy_ensures() {
    let r = generate(&cfg("node-1"), &[]).unwrap();
    let got: Vec<(&str, &str, &str)> = r
        .jumps
        .iter()
        .map(|j| (j.table, j.chain, j.args.last().unwrap().as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("nat", "PREROUTING", "KUBE-SERVICES"),
            ("nat", "OUTPUT", "KUBE-SERVICES"),
            ("nat", "POSTROUTING", "KUBE-POSTROUTING"),
            ("filter", "FORWARD", "KUBE-FORWARD"),
            ("filter", "FORWARD", "KUBE-SERVICES"),
            ("filter", "OUTPUT", "KUBE-SERVICES"),
            ("filter", "INPUT", "KUBE-EXTERNAL-SERVICES"),
            ("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES"),
        ]
    );
}

#[test]
fn invalid_descriptions_are_refused() {
    let ok = || {
        svc(
            "lab",
            "web",
            [10, 96, 0, 10],
            vec![ep([10, 244, 1, 2], "node-1")],
        )
    };
    let c = cfg("node-1");
    let mut s = ok();
    s.name = "Web".into();
    assert!(matches!(
        generate(&c, &[s]),
        Err(KubeProxyError::BadName { what: "name", .. })
    ));
    let mut s = ok();
    s.port_name = "-x".into();
    assert!(matches!(
        generate(&c, &[s]),
        Err(KubeProxyError::BadName { .. })
    ));
    let mut s = ok();
    s.namespace = "a".repeat(64);
    assert!(generate(&c, &[s]).is_err());
    let mut s = ok();
    s.port = 0;
    assert!(matches!(
        generate(&c, &[s]),
        Err(KubeProxyError::BadPort { .. })
    ));
    let mut s = ok();
    s.node_port = Some(8080);
    assert_eq!(
        generate(&c, &[s]).unwrap_err().to_string(),
        "lab/web:p80: bad nodePort (30000-32767) 8080"
    );
    let mut s = ok();
    s.endpoints[0].port = 0;
    assert!(generate(&c, &[s]).is_err());
    assert!(matches!(
        generate(&c, &[ok(), ok()]),
        Err(KubeProxyError::Duplicate(_))
    ));
    let mut other = ok();
    other.name = "web2".into();
    assert!(matches!(
        generate(&c, &[ok(), other]),
        Err(KubeProxyError::Duplicate(_))
    ));
    let (mut a, mut b) = (ok(), ok());
    b.name = "b".into();
    b.cluster_ip = Ipv4Addr::new(10, 96, 0, 99);
    a.node_port = Some(30000);
    b.node_port = Some(30000);
    assert!(matches!(
        generate(&c, &[a, b]),
        Err(KubeProxyError::Duplicate(_))
    ));
    let mut s = ok();
    s.endpoints = vec![ep([10, 244, 1, 2], "node-1"); MAX_ENDPOINTS + 1];
    assert_eq!(
        generate(&c, &[s]),
        Err(KubeProxyError::TooMany("endpoints"))
    );
}
