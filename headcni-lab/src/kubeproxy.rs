//! The iptables rules kube-proxy writes in iptables mode, generated from a small Service +
//! EndpointSlice description (pure: no I/O).
//!
//! No kube-proxy can run in the lab, so the lab installs, per node, the chains and matches
//! kube-proxy's iptables proxier writes (kubernetes/kubernetes `pkg/proxy/iptables/proxier.go`,
//! `syncProxyRules`, and the expected rule text in `pkg/proxy/iptables/proxier_test.go`). Only
//! what the lab's Services use is modelled: TCP/UDP ClusterIP and NodePort Services with
//! `externalTrafficPolicy` `Cluster` or `Local`, kube-proxy run with `--cluster-cidr` (its
//! "local traffic detector" by CIDR) and the default `--iptables-masquerade-bit=14` (mark
//! `0x4000`). Not modelled: session affinity, load balancers, external IPs, health-check node
//! ports, topology hints, terminating endpoints, IPv6.
//!
//! The `nat` table, as kube-proxy writes it:
//!
//! ```text
//! PREROUTING, OUTPUT  -> KUBE-SERVICES            ("kubernetes service portals")
//! POSTROUTING         -> KUBE-POSTROUTING         ("kubernetes postrouting rules")
//! KUBE-SERVICES       -d <clusterIP> --dport <port> -> KUBE-SVC-<hash>, one per Service port;
//!                     last: -m addrtype --dst-type LOCAL -> KUBE-NODEPORTS
//! KUBE-NODEPORTS      --dport <nodePort> -> KUBE-EXT-<hash>
//! KUBE-SVC-<hash>     ! -s <cluster CIDR> -> KUBE-MARK-MASQ (off-cluster clients of a ClusterIP),
//!                     then per endpoint -m statistic --mode random --probability 1/(n-i) -> KUBE-SEP-<hash>
//! KUBE-SVL-<hash>     the same split over the endpoints on this node (externalTrafficPolicy Local)
//! KUBE-EXT-<hash>     Cluster: -> KUBE-MARK-MASQ, -> KUBE-SVC; Local: pods -> KUBE-SVC,
//!                     node-local sources -> KUBE-MARK-MASQ + KUBE-SVC, everything else -> KUBE-SVL
//! KUBE-SEP-<hash>     -s <endpoint> -> KUBE-MARK-MASQ (hairpin); -j DNAT --to-destination ip:port
//! KUBE-MARK-MASQ      -j MARK --or-mark 0x4000
//! KUBE-POSTROUTING    unmarked -> RETURN; -j MARK --xor-mark 0x4000; -j MASQUERADE --random-fully
//! ```
//!
//! and in `filter`: `KUBE-FORWARD` (from `FORWARD`: accept marked traffic and established
//! connections), `KUBE-SERVICES` (REJECT for a ClusterIP without endpoints) and
//! `KUBE-EXTERNAL-SERVICES` (DROP for a NodePort with `Local` policy and no endpoint on this
//! node).
//!
//! Chain names are kube-proxy's: the prefix and the first 16 characters of the standard
//! base32 encoding of the SHA-256 of the service port name (`ns/name:port`) and the lower-case
//! protocol, with `ip:port` appended for an endpoint chain.
//!
//! [`generate`] returns a [`RuleSet`]: `iptables-restore --noflush` text for the `KUBE-*`
//! chains (each declared chain is flushed and rewritten, stale ones deleted) and the jumps from
//! the built-in chains, which kube-proxy ensures one by one (`iptables -C`, else `-I`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use sha2::{Digest, Sha256};

/// kube-proxy's masquerade mark, `1 << 14` (`--iptables-masquerade-bit` default 14).
pub const MASQ_MARK: &str = "0x4000";
/// The lowest NodePort (kube-apiserver `--service-node-port-range` default `30000-32767`).
pub const NODE_PORT_MIN: u16 = 30000;
/// The highest NodePort.
pub const NODE_PORT_MAX: u16 = 32767;
/// At most this many Service ports in one [`generate`] call.
pub const MAX_SERVICES: usize = 1000;
/// At most this many endpoints per Service port.
pub const MAX_ENDPOINTS: usize = 1000;

/// A Service port's protocol (`spec.ports[].protocol`; SCTP not modelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as iptables' `-p` and kube-proxy's chain hashes spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficPolicy {
    /// `Cluster`: any endpoint; external clients are masqueraded.
    #[default]
    Cluster,
    /// `Local`: only endpoints on the node the traffic arrived on; the source is kept.
    Local,
}

/// One endpoint of an EndpointSlice (`endpoints[].addresses[0]`, `endpoints[].nodeName`) with
/// the slice's port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// The endpoint's (pod's) address.
    pub ip: Ipv4Addr,
    /// The port it listens on (`ports[].port`, the Service's `targetPort`).
    pub port: u16,
    /// The node it runs on (`nodeName`).
    pub node: String,
}

/// One port of a Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServicePort {
    /// `metadata.namespace` (DNS label: 1-63 of `a-z`, `0-9`, `-`).
    pub namespace: String,
    /// `metadata.name` (DNS label).
    pub name: String,
    /// `spec.ports[].name`; empty for a single unnamed port.
    pub port_name: String,
    /// `spec.ports[].protocol`.
    pub protocol: Protocol,
    /// `spec.clusterIP`.
    pub cluster_ip: Ipv4Addr,
    /// `spec.ports[].port` (1-65535).
    pub port: u16,
    /// `spec.ports[].nodePort`, in [`NODE_PORT_MIN`]..=[`NODE_PORT_MAX`].
    pub node_port: Option<u16>,
    /// `spec.externalTrafficPolicy` (only used with a node port).
    pub external_traffic_policy: TrafficPolicy,
    /// Ready endpoints, in EndpointSlice order (at most [`MAX_ENDPOINTS`]).
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// kube-proxy's `ServicePortName.String()`: `ns/name` plus `:port_name` when named.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// kube-proxy's view of the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `--hostname-override`: which endpoints are local (for `Local` policy).
    pub node_name: String,
    /// `--cluster-cidr`: sources inside are pods (not masqueraded for a ClusterIP).
    pub cluster_cidr: Ipv4Network,
}

/// Why a Service description cannot be turned into rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeProxyError {
    /// A namespace, name or port name is not a DNS label (1-63 of `a-z0-9-`, not starting or
    /// ending with `-`; the port name may be empty).
    #[error("{what} {value:?} is not a DNS label (1-63 of a-z, 0-9, '-')")]
    BadName {
        /// `namespace`, `name` or `port name`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A port, target port or node port is 0, or a node port is outside
    /// [`NODE_PORT_MIN`]..=[`NODE_PORT_MAX`].
    #[error("{service}: bad {what} {port}")]
    BadPort {
        /// The service port name.
        service: String,
        /// `port`, `endpoint port` or `nodePort (30000-32767)`.
        what: &'static str,
        /// The value.
        port: u16,
    },
    /// Two Service ports share a name, a ClusterIP + port + protocol, or a node port.
    #[error("{0} is defined twice")]
    Duplicate(String),
    /// More than [`MAX_SERVICES`] Service ports or [`MAX_ENDPOINTS`] endpoints.
    #[error("too many {0}")]
    TooMany(&'static str),
}

/// A jump from a built-in chain into a kube-proxy chain, ensured as kube-proxy's
/// `EnsureRule(Prepend, ...)` does: `iptables -t <table> -C <chain> <args>`, else `-I`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The built-in chain (`PREROUTING`, `OUTPUT`, `POSTROUTING`, `FORWARD`, `INPUT`).
    pub chain: &'static str,
    /// The rule's arguments after the chain name.
    pub args: Vec<String>,
}

/// One table's chains and rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    /// Declared chains (each flushed by `iptables-restore --noflush`), in order.
    pub chains: Vec<String>,
    /// `-A <chain> ...` lines, in order.
    pub rules: Vec<String>,
}

/// What [`generate`] returns for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The `nat` table's `KUBE-*` chains.
    pub nat: TableRules,
    /// The `filter` table's `KUBE-*` chains.
    pub filter: TableRules,
    /// The jumps from the built-in chains.
    pub jumps: Vec<Jump>,
}

/// Prefixes of the per-Service chains kube-proxy deletes when they are no longer written.
pub const PER_SERVICE_PREFIXES: &[&str] = &["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-SEP-"];

impl RuleSet {
    /// The `iptables-restore --noflush` input: `*nat` and `*filter` sections declaring and
    /// filling every chain, then `-X` for each of `stale_nat` (per-Service chains that exist
    /// on the node but are not written any more, see [`stale_chains`]).
    pub fn restore_text(&self, stale_nat: &[String]) -> String {
        let mut s = String::new();
        for (name, t, stale) in [
            ("nat", &self.nat, stale_nat),
            ("filter", &self.filter, &[][..]),
        ] {
            let _ = writeln!(s, "*{name}");
            for c in t.chains.iter().chain(stale) {
                let _ = writeln!(s, ":{c} - [0:0]");
            }
            for r in &t.rules {
                let _ = writeln!(s, "{r}");
            }
            for c in stale {
                let _ = writeln!(s, "-X {c}");
            }
            let _ = writeln!(s, "COMMIT");
        }
        s
    }
}

/// The per-Service `nat` chains (see [`PER_SERVICE_PREFIXES`]) declared in `iptables_save`
/// (the output of `iptables-save -t nat`) that `rules` does not write.
pub fn stale_chains(iptables_save: &str, rules: &RuleSet) -> Vec<String> {
    let keep: BTreeSet<&str> = rules.nat.chains.iter().map(String::as_str).collect();
    let mut out: Vec<String> = iptables_save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| PER_SERVICE_PREFIXES.iter().any(|p| c.starts_with(p)))
        .filter(|c| !keep.contains(c))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The first 16 characters of the RFC 4648 base32 encoding of SHA-256(`input`) (kube-proxy's
/// `portProtoHash`; 16 characters are the first 80 bits, so no padding is involved).
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16)
        .map(|i| BASE32[((bits >> (75 - 5 * i)) & 0x1f) as usize] as char)
        .collect()
}

/// `KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-` + the hash of the service port name and protocol.
pub fn service_chain(prefix: &str, sp: &ServicePort) -> String {
    format!(
        "{prefix}{}",
        hash16(&format!(
            "{}{}",
            sp.port_name_string(),
            sp.protocol.as_str()
        ))
    )
}

/// `KUBE-SEP-` + the hash of the service port name, protocol and `ip:port`.
pub fn endpoint_chain(sp: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{}{}{}:{}",
            sp.port_name_string(),
            sp.protocol.as_str(),
            ep.ip,
            ep.port
        ))
    )
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn validate(services: &[ServicePort]) -> Result<(), KubeProxyError> {
    if services.len() > MAX_SERVICES {
        return Err(KubeProxyError::TooMany("service ports"));
    }
    let mut names = BTreeSet::new();
    let mut portals = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for sp in services {
        for (what, value) in [("namespace", &sp.namespace), ("name", &sp.name)] {
            if !is_dns_label(value) {
                return Err(KubeProxyError::BadName {
                    what,
                    value: value.clone(),
                });
            }
        }
        if !sp.port_name.is_empty() && !is_dns_label(&sp.port_name) {
            return Err(KubeProxyError::BadName {
                what: "port name",
                value: sp.port_name.clone(),
            });
        }
        let id = sp.port_name_string();
        let bad = |what, port| KubeProxyError::BadPort {
            service: id.clone(),
            what,
            port,
        };
        if sp.port == 0 {
            return Err(bad("port", 0));
        }
        if let Some(np) = sp.node_port
            && !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&np)
        {
            return Err(bad("nodePort (30000-32767)", np));
        }
        if sp.endpoints.len() > MAX_ENDPOINTS {
            return Err(KubeProxyError::TooMany("endpoints"));
        }
        if let Some(ep) = sp.endpoints.iter().find(|e| e.port == 0) {
            return Err(bad("endpoint port", ep.port));
        }
        if !names.insert(id.clone()) {
            return Err(KubeProxyError::Duplicate(format!("service port {id}")));
        }
        if !portals.insert((sp.cluster_ip, sp.port, sp.protocol.as_str())) {
            return Err(KubeProxyError::Duplicate(format!(
                "{}:{}/{}",
                sp.cluster_ip,
                sp.port,
                sp.protocol.as_str()
            )));
        }
        if let Some(np) = sp.node_port
            && !node_ports.insert((np, sp.protocol.as_str()))
        {
            return Err(KubeProxyError::Duplicate(format!("nodePort {np}")));
        }
    }
    Ok(())
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

/// The statistic-mode split of kube-proxy's `writeServiceToEndpointRules`: endpoint `i` of
/// `n` is taken with probability `1/(n-i)` (printed `%0.10f`), the last one unconditionally.
fn split_rules(chain: &str, sp: &ServicePort, endpoints: &[&Endpoint], rules: &mut Vec<String>) {
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let c = comment(&format!(
            "{} -> {}:{}",
            sp.port_name_string(),
            ep.ip,
            ep.port
        ));
        let stat = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        rules.push(format!(
            "-A {chain} {c}{stat} -j {}",
            endpoint_chain(sp, ep)
        ));
    }
}

/// The rules kube-proxy (iptables mode) writes on node `cfg.node_name` for `services`.
///
/// Errors: [`KubeProxyError`] for invalid names or ports, duplicates, or more than
/// [`MAX_SERVICES`] / [`MAX_ENDPOINTS`] entries.
pub fn generate(cfg: &ProxyConfig, services: &[ServicePort]) -> Result<RuleSet, KubeProxyError> {
    validate(services)?;
    let mut nat = TableRules {
        chains: vec![
            "KUBE-SERVICES".into(),
            "KUBE-NODEPORTS".into(),
            "KUBE-POSTROUTING".into(),
            "KUBE-MARK-MASQ".into(),
        ],
        rules: Vec::new(),
    };
    let mut filter = TableRules {
        chains: vec![
            "KUBE-FORWARD".into(),
            "KUBE-SERVICES".into(),
            "KUBE-EXTERNAL-SERVICES".into(),
        ],
        rules: Vec::new(),
    };
    let cluster = cfg.cluster_cidr.to_string();
    // Per-service chains first collected separately so KUBE-SERVICES' rules come first.
    let mut svc_rules = Vec::new();
    let mut nodeport_rules = Vec::new();
    let mut sep_rules = Vec::new();
    let mut declared = BTreeSet::new();
    for sp in services {
        let id = sp.port_name_string();
        let proto = sp.protocol.as_str();
        let svc = service_chain("KUBE-SVC-", sp);
        let portal = format!(
            "-m {proto} -p {proto} -d {}/32 --dport {}",
            sp.cluster_ip, sp.port
        );
        let all: Vec<&Endpoint> = sp.endpoints.iter().collect();
        let local: Vec<&Endpoint> = all
            .iter()
            .copied()
            .filter(|e| e.node == cfg.node_name)
            .collect();
        if all.is_empty() {
            // kube-proxy: no endpoints → REJECT in filter KUBE-SERVICES (and for a node port,
            // in KUBE-EXTERNAL-SERVICES), no nat chains at all.
            filter.rules.push(format!(
                "-A KUBE-SERVICES {} {portal} -j REJECT",
                comment(&format!("{id} has no endpoints"))
            ));
            if let Some(np) = sp.node_port {
                filter.rules.push(format!(
                    "-A KUBE-EXTERNAL-SERVICES {} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j REJECT",
                    comment(&format!("{id} has no endpoints"))
                ));
            }
            continue;
        }
        nat.rules.push(format!(
            "-A KUBE-SERVICES {} {portal} -j {svc}",
            comment(&format!("{id} cluster IP"))
        ));
        declared.insert(svc.clone());
        svc_rules.push(format!(
            "-A {svc} {} {portal} ! -s {cluster} -j KUBE-MARK-MASQ",
            comment(&format!("{id} cluster IP"))
        ));
        split_rules(&svc, sp, &all, &mut svc_rules);
        if let Some(np) = sp.node_port {
            let ext = service_chain("KUBE-EXT-", sp);
            declared.insert(ext.clone());
            nodeport_rules.push(format!(
                "-A KUBE-NODEPORTS {} -m {proto} -p {proto} --dport {np} -j {ext}",
                comment(&id)
            ));
            match sp.external_traffic_policy {
                TrafficPolicy::Cluster => {
                    svc_rules.push(format!(
                        "-A {ext} {} -j KUBE-MARK-MASQ",
                        comment(&format!(
                            "masquerade traffic for {id} external destinations"
                        ))
                    ));
                    svc_rules.push(format!("-A {ext} -j {svc}"));
                }
                TrafficPolicy::Local => {
                    svc_rules.push(format!(
                        "-A {ext} {} -s {cluster} -j {svc}",
                        comment(&format!("pod traffic for {id} external destinations"))
                    ));
                    svc_rules.push(format!(
                        "-A {ext} {} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                        comment(&format!(
                            "masquerade LOCAL traffic for {id} external destinations"
                        ))
                    ));
                    svc_rules.push(format!(
                        "-A {ext} {} -m addrtype --src-type LOCAL -j {svc}",
                        comment(&format!(
                            "route LOCAL traffic for {id} external destinations"
                        ))
                    ));
                    if local.is_empty() {
                        filter.rules.push(format!(
                            "-A KUBE-EXTERNAL-SERVICES {} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j DROP",
                            comment(&format!("{id} has no local endpoints"))
                        ));
                    } else {
                        let svl = service_chain("KUBE-SVL-", sp);
                        declared.insert(svl.clone());
                        svc_rules.push(format!("-A {ext} -j {svl}"));
                        split_rules(&svl, sp, &local, &mut svc_rules);
                    }
                }
            }
        }
        for ep in &all {
            let sep = endpoint_chain(sp, ep);
            if !declared.insert(sep.clone()) {
                continue;
            }
            sep_rules.push(format!(
                "-A {sep} {} -s {}/32 -j KUBE-MARK-MASQ",
                comment(&id),
                ep.ip
            ));
            sep_rules.push(format!(
                "-A {sep} {} -m {proto} -p {proto} -j DNAT --to-destination {}:{}",
                comment(&id),
                ep.ip,
                ep.port
            ));
        }
    }
    nat.rules.push(format!(
        "-A KUBE-SERVICES {} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
        comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    ));
    nat.rules.extend(nodeport_rules);
    nat.rules.push(format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    ));
    nat.rules.push(format!(
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    ));
    nat.rules.push(format!(
        "-A KUBE-POSTROUTING {} -j MASQUERADE --random-fully",
        comment("kubernetes service traffic requiring SNAT")
    ));
    nat.rules
        .push(format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"));
    nat.rules.extend(svc_rules);
    nat.rules.extend(sep_rules);
    // Declared in the order kube-proxy's output lists them: fixed chains, then sorted.
    nat.chains.extend(declared);

    filter.rules.push(format!(
        "-A KUBE-FORWARD {} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        comment("kubernetes forwarding rules")
    ));
    filter.rules.push(format!(
        "-A KUBE-FORWARD {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        comment("kubernetes forwarding conntrack rule")
    ));

    let args = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let portals = ["-m", "comment", "--comment", "kubernetes service portals"];
    let mut jumps = Vec::new();
    for chain in ["PREROUTING", "OUTPUT"] {
        let mut a = args(&portals);
        a.extend(args(&["-j", "KUBE-SERVICES"]));
        jumps.push(Jump {
            table: "nat",
            chain,
            args: a,
        });
    }
    jumps.push(Jump {
        table: "nat",
        chain: "POSTROUTING",
        args: args(&[
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            "KUBE-POSTROUTING",
        ]),
    });
    jumps.push(Jump {
        table: "filter",
        chain: "FORWARD",
        args: args(&[
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding rules",
            "-j",
            "KUBE-FORWARD",
        ]),
    });
    for chain in ["FORWARD", "OUTPUT"] {
        let mut a = args(&["-m", "conntrack", "--ctstate", "NEW"]);
        a.extend(args(&portals));
        a.extend(args(&["-j", "KUBE-SERVICES"]));
        jumps.push(Jump {
            table: "filter",
            chain,
            args: a,
        });
    }
    for chain in ["INPUT", "FORWARD"] {
        jumps.push(Jump {
            table: "filter",
            chain,
            args: args(&[
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                "kubernetes externally-visible service portals",
                "-j",
                "KUBE-EXTERNAL-SERVICES",
            ]),
        });
    }
    Ok(RuleSet { nat, filter, jumps })
}

#[cfg(test)]
#[path = "kubeproxy_tests.rs"]
mod tests;
