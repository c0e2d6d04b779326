//! PodCIDR sources: file formats and the name hash. Pure functions over text (no I/O); the
//! daemon (`headcni-cli`'s `daemon::podcidr`) reads the files and calls these.
//!
//! # Formats handled
//!
//! - CIDR lists as written in `NODE_POD_CIDR`, `--cluster-cidr=` and k3s' `cluster-cidr:`:
//!   comma-separated, host bits must be zero ([`parse_cidr_list`]).
//! - The few YAML shapes the node-local files use: top-level `key: value` (plain, `"..."` or
//!   `'...'` quoted, `# comments`), block lists (`- item`, indented or at the key's column) and
//!   flow lists (`[a, b]`) ([`yaml_top_level`]). A JSON document (valid YAML) is accepted too.
//!   This is deliberately not a YAML implementation: nested mappings, anchors and block
//!   scalars are not interpreted, and none of the keys read here use them.
//!   - `KubeletConfiguration` (`/var/lib/kubelet/config.yaml`, k3s drop-ins under
//!     `/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/`): `podCIDR:` ([`kubelet_pod_cidr`]).
//!   - k3s' `/etc/rancher/k3s/config.yaml` (+ `config.yaml.d/*.yaml`): `cluster-cidr:`,
//!     `kubelet-arg:` (`pod-cidr=`), `kube-controller-manager-arg:` (`node-cidr-mask-size*=`)
//!     ([`k3s_config`]).
//! - Command lines: `--cluster-cidr=` / `--node-cidr-mask-size=` in a static-pod manifest
//!   (`/etc/kubernetes/manifests/kube-controller-manager.yaml`) or a systemd unit's
//!   `ExecStart=` ([`command_line_flags`], [`controller_manager_flags`]).
//! - flannel's `subnet.env` (`FLANNEL_NETWORK`, `FLANNEL_SUBNET`, `FLANNEL_IPV6_*`), which k3s'
//!   embedded flannel and standalone flannel write under `/run/flannel/` ([`flannel_subnet_env`]).
//!
//! A cluster CIDR alone does not say which subnet is this node's: it only feeds the opt-in
//! name hash ([`name_hash_cidrs`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Errors of the PodCIDR formats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodCidrFormatError {
    /// Not a CIDR (`a.b.c.d/n` or `x::/n`).
    #[error("invalid CIDR {value:?}: {reason}")]
    InvalidCidr {
        /// The text.
        value: String,
        /// Why.
        reason: String,
    },
    /// Host bits set, e.g. `10.244.1.5/24`.
    #[error("CIDR {value:?} has host bits set (did you mean {masked}?)")]
    HostBitsSet {
        /// The text.
        value: String,
        /// The masked network.
        masked: IpNetwork,
    },
    /// Two node CIDRs of one address family (a node has at most one IPv4 and one IPv6 CIDR).
    #[error("more than one {family} CIDR: {first} and {second}")]
    DuplicateFamily {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The first one.
        first: IpNetwork,
        /// The second one.
        second: IpNetwork,
    },
    /// An integer value (a mask size) that is not one.
    #[error("invalid {what} {value:?}")]
    InvalidNumber {
        /// What was being parsed.
        what: &'static str,
        /// The text.
        value: String,
    },
    /// The name hash has no cluster CIDR to pick from.
    #[error("no cluster CIDR to derive a node CIDR from")]
    NoClusterCidr,
    /// The node prefix does not fit in the cluster CIDR or is too small to allocate from.
    #[error(
        "node CIDR prefix /{prefix} does not fit cluster CIDR {cluster} \
         (needs {min}..={max})"
    )]
    PrefixOutOfRange {
        /// The cluster CIDR.
        cluster: IpNetwork,
        /// The requested node prefix.
        prefix: u8,
        /// Smallest allowed prefix (the cluster's).
        min: u8,
        /// Largest allowed prefix (/30 for IPv4, /126 for IPv6: IPAM needs 4 addresses).
        max: u8,
    },
}

type Result<T> = std::result::Result<T, PodCidrFormatError>;

/// Largest node prefix the IPAM can allocate from (4 addresses).
pub const MAX_NODE_PREFIX_V4: u8 = 30;
/// Largest IPv6 node prefix the IPAM can allocate from.
pub const MAX_NODE_PREFIX_V6: u8 = 126;
/// Default node prefix for IPv4 (kube-controller-manager's `--node-cidr-mask-size-ipv4`).
pub const DEFAULT_NODE_PREFIX_V4: u8 = 24;
/// Default node prefix for IPv6 (kube-controller-manager's `--node-cidr-mask-size-ipv6`).
pub const DEFAULT_NODE_PREFIX_V6: u8 = 64;

// ---------------------------------------------------------------------------------------------
// CIDRs
// ---------------------------------------------------------------------------------------------

/// The network with host bits cleared.
pub fn masked(net: IpNetwork) -> IpNetwork {
    // A prefix that was valid stays valid.
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// `true` when `net` has no host bits set.
pub fn is_masked(net: &IpNetwork) -> bool {
    net.ip() == net.network()
}

/// Parses one CIDR; a prefix length is required and host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<IpNetwork> {
    let s = s.trim();
    let invalid = |reason: &str| PodCidrFormatError::InvalidCidr {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    if !s.contains('/') {
        return Err(invalid("no prefix length"));
    }
    let net: IpNetwork = s.parse().map_err(|e| invalid(&format!("{e}")))?;
    if !is_masked(&net) {
        return Err(PodCidrFormatError::HostBitsSet {
            value: s.to_owned(),
            masked: masked(net),
        });
    }
    Ok(net)
}

/// Parses a comma-separated list of CIDRs (surrounding whitespace and empty items ignored;
/// an empty string is an empty list). Duplicates are dropped, order kept.
pub fn parse_cidr_list(s: &str) -> Result<Vec<IpNetwork>> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let n = parse_cidr(item)?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Checks that `cidrs` can be one node's PodCIDRs (at most one IPv4 and one IPv6) and
/// returns them IPv4 first.
pub fn node_cidrs(cidrs: &[IpNetwork]) -> Result<Vec<IpNetwork>> {
    let mut v4: Option<IpNetwork> = None;
    let mut v6: Option<IpNetwork> = None;
    for &c in cidrs {
        let (slot, family) = if c.is_ipv4() {
            (&mut v4, "IPv4")
        } else {
            (&mut v6, "IPv6")
        };
        match slot {
            Some(first) if *first != c => {
                return Err(PodCidrFormatError::DuplicateFamily {
                    family,
                    first: *first,
                    second: c,
                });
            }
            _ => *slot = Some(c),
        }
    }
    Ok(v4.into_iter().chain(v6).collect())
}

/// Parses a comma-separated node PodCIDR list (`NODE_POD_CIDR`, `--pod-cidr=`, `podCIDR:`):
/// [`parse_cidr_list`] then [`node_cidrs`].
pub fn parse_node_cidrs(s: &str) -> Result<Vec<IpNetwork>> {
    node_cidrs(&parse_cidr_list(s)?)
}

// ---------------------------------------------------------------------------------------------
// The YAML subset
// ---------------------------------------------------------------------------------------------

/// A top-level YAML value as far as this module reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlValue {
    /// A scalar, unquoted.
    Scalar(String),
    /// A block or flow sequence of scalars, unquoted.
    List(Vec<String>),
}

impl YamlValue {
    /// The scalar, or the list's items, as one list.
    pub fn items(&self) -> Vec<String> {
        match self {
            YamlValue::Scalar(s) => vec![s.clone()],
            YamlValue::List(v) => v.clone(),
        }
    }
}

/// Removes a trailing `# comment` (a `#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_ws => return &line[..i],
            None => {}
        }
        prev_ws = c.is_whitespace();
    }
    line
}

/// Unquotes a scalar: `"..."` (with `\"`, `\\`, `\n`, `\t` escapes), `'...'` (with `''`),
/// or plain (trimmed).
pub fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let inner = &s[1..s.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(o) => out.push(o),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else {
        s.to_owned()
    }
}

/// Splits a flow sequence body (`a, "b, c", d`) on commas outside quotes.
fn split_flow(body: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in body.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c == ',' => items.push(std::mem::take(&mut cur)),
            None => cur.push(c),
        }
    }
    items.push(cur);
    items
        .iter()
        .map(|i| unquote(i))
        .filter(|i| !i.is_empty())
        .collect()
}

/// Parses an inline value: a flow sequence or a scalar; `None` for an empty value and for
/// block scalars / nested flow mappings, which this subset does not read.
fn inline_value(v: &str) -> Option<YamlValue> {
    let v = v.trim();
    if v.is_empty() || v.starts_with('|') || v.starts_with('>') || v.starts_with('{') {
        return None;
    }
    if v.starts_with('[') && v.ends_with(']') {
        return Some(YamlValue::List(split_flow(&v[1..v.len() - 1])));
    }
    Some(YamlValue::Scalar(unquote(v)))
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t']).len()
}

/// Splits `key: rest` at the first `:` followed by whitespace or the end (outside quotes).
fn split_key(line: &str) -> Option<(String, &str)> {
    let mut quote: Option<char> = None;
    let bytes = line.as_bytes();
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ':' => {
                let next = bytes.get(i + 1).copied();
                if next.is_none() || next == Some(b' ') || next == Some(b'\t') {
                    let key = unquote(&line[..i]);
                    return Some((key, &line[i + 1..]));
                }
            }
            None => {}
        }
    }
    None
}

/// Every occurrence of the top-level (column 0) `key` in a YAML document, in order. Lines of
/// all documents of a multi-document stream are read as one.
fn yaml_top_level_all(text: &str, key: &str) -> Vec<YamlValue> {
    let text = text.trim_start_matches('\u{feff}');
    if let Some(v) = json_top_level(text, key) {
        return vec![v];
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        if indent_of(raw) != 0 || raw.starts_with('-') || raw.starts_with('#') {
            continue;
        }
        let line = strip_comment(raw).trim_end();
        let Some((k, rest)) = split_key(line) else {
            continue;
        };
        if k != key {
            continue;
        }
        if let Some(v) = inline_value(rest) {
            out.push(v);
            continue;
        }
        if !rest.trim().is_empty() {
            continue; // a block scalar or a flow mapping: not read
        }
        // A block sequence: `- item` lines, indented or at column 0.
        let mut items = Vec::new();
        let mut seen_item = false;
        while i < lines.len() {
            let l = strip_comment(lines[i]).trim_end();
            let t = l.trim_start();
            if t.is_empty() {
                i += 1;
                continue;
            }
            let ind = indent_of(l);
            if t == "-" || t.starts_with("- ") {
                items.push(unquote(t[1..].trim()));
                seen_item = true;
                i += 1;
            } else if ind > 0 && seen_item {
                // continuation of a multi-line item: not used by these files
                i += 1;
            } else {
                break;
            }
        }
        if seen_item {
            out.push(YamlValue::List(
                items.into_iter().filter(|s| !s.is_empty()).collect(),
            ));
        }
    }
    out
}

fn json_top_level(text: &str, key: &str) -> Option<YamlValue> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v.get(key)? {
        serde_json::Value::String(s) => Some(YamlValue::Scalar(s.clone())),
        serde_json::Value::Number(n) => Some(YamlValue::Scalar(n.to_string())),
        serde_json::Value::Array(a) => Some(YamlValue::List(
            a.iter()
                .filter_map(|x| match x {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}

/// The value of the top-level `key` of a YAML (or JSON) document; the last occurrence wins.
pub fn yaml_top_level(text: &str, key: &str) -> Option<YamlValue> {
    yaml_top_level_all(text, key).pop()
}

// ---------------------------------------------------------------------------------------------
// File formats
// ---------------------------------------------------------------------------------------------

/// `podCIDR:` of a `KubeletConfiguration` (kubelet's `--config` file or a drop-in). `None`
/// when absent or empty. The kubelet's field is one string; a comma-separated dual-stack
/// value is accepted as the kubelet's `--pod-cidr` flag would be.
pub fn kubelet_pod_cidr(text: &str) -> Result<Option<Vec<IpNetwork>>> {
    let Some(v) = yaml_top_level(text, "podCIDR") else {
        return Ok(None);
    };
    let cidrs = parse_node_cidrs(&v.items().join(","))?;
    Ok((!cidrs.is_empty()).then_some(cidrs))
}

/// The PodCIDR-related settings of a k3s configuration file (`/etc/rancher/k3s/config.yaml`
/// or a `config.yaml.d/*.yaml` drop-in). Unset fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K3sConfig {
    /// `cluster-cidr:` (server only; string, comma list or YAML list).
    pub cluster_cidr: Option<Vec<IpNetwork>>,
    /// `pod-cidr=` from `kubelet-arg:`.
    pub kubelet_pod_cidr: Option<Vec<IpNetwork>>,
    /// `node-cidr-mask-size(-ipv4)=` from `kube-controller-manager-arg:`.
    pub node_mask_v4: Option<u8>,
    /// `node-cidr-mask-size(-ipv6)=` from `kube-controller-manager-arg:`.
    pub node_mask_v6: Option<u8>,
}

impl K3sConfig {
    /// Applies a later file (k3s reads `config.yaml`, then the drop-ins in lexical order; a
    /// later scalar replaces an earlier one).
    pub fn merge(&mut self, later: K3sConfig) {
        if later.cluster_cidr.is_some() {
            self.cluster_cidr = later.cluster_cidr;
        }
        if later.kubelet_pod_cidr.is_some() {
            self.kubelet_pod_cidr = later.kubelet_pod_cidr;
        }
        if later.node_mask_v4.is_some() {
            self.node_mask_v4 = later.node_mask_v4;
        }
        if later.node_mask_v6.is_some() {
            self.node_mask_v6 = later.node_mask_v6;
        }
    }
}

/// The values of a k3s list key, including its `key+:` append form (k3s drop-ins).
fn k3s_list(text: &str, key: &str) -> Vec<String> {
    let mut items = Vec::new();
    for v in yaml_top_level_all(text, key) {
        items = v.items(); // a later plain key replaces
    }
    for v in yaml_top_level_all(text, &format!("{key}+")) {
        items.extend(v.items());
    }
    items
}

/// `name=value` pairs of k3s `*-arg` items (`pod-cidr=10.42.0.0/24`, also with a leading `--`).
fn arg_pairs(items: &[String]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| {
            let i = i.trim().trim_start_matches('-');
            let (k, v) = i.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn parse_mask(what: &'static str, v: &str) -> Result<u8> {
    v.trim()
        .parse::<u8>()
        .ok()
        .filter(|m| *m <= 128)
        .ok_or_else(|| PodCidrFormatError::InvalidNumber {
            what,
            value: v.to_owned(),
        })
}

/// Mask sizes from `node-cidr-mask-size*` flags (last one wins), resolved against the
/// cluster CIDR's families: the single-stack `node-cidr-mask-size` is the IPv6 mask when the
/// cluster is IPv6-only and the IPv4 mask otherwise (kube-controller-manager refuses it for
/// dual-stack, where the per-family flags are required). Returns `(v4, v6)`.
fn mask_flags(
    pairs: &[(String, String)],
    cluster: &[IpNetwork],
) -> Result<(Option<u8>, Option<u8>)> {
    let (mut single, mut v4, mut v6) = (None, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "node-cidr-mask-size" => single = Some(parse_mask("node-cidr-mask-size", v)?),
            "node-cidr-mask-size-ipv4" => v4 = Some(parse_mask("node-cidr-mask-size-ipv4", v)?),
            "node-cidr-mask-size-ipv6" => v6 = Some(parse_mask("node-cidr-mask-size-ipv6", v)?),
            _ => {}
        }
    }
    if !cluster.is_empty() && cluster.iter().all(|n| n.is_ipv6()) {
        v6 = v6.or(single);
    } else {
        v4 = v4.or(single);
    }
    Ok((v4, v6))
}

/// Reads a k3s configuration file.
pub fn k3s_config(text: &str) -> Result<K3sConfig> {
    let cluster = k3s_list(text, "cluster-cidr");
    let cluster_cidr = if cluster.is_empty() {
        None
    } else {
        Some(parse_cidr_list(&cluster.join(","))?).filter(|v| !v.is_empty())
    };
    let kubelet = arg_pairs(&k3s_list(text, "kubelet-arg"));
    let mut kubelet_pod_cidr = None;
    for (k, v) in &kubelet {
        if k == "pod-cidr" {
            kubelet_pod_cidr = Some(parse_node_cidrs(v)?).filter(|v| !v.is_empty());
        }
    }
    let kcm = arg_pairs(&k3s_list(text, "kube-controller-manager-arg"));
    let (node_mask_v4, node_mask_v6) = mask_flags(&kcm, cluster_cidr.as_deref().unwrap_or(&[]))?;
    Ok(K3sConfig {
        cluster_cidr,
        kubelet_pod_cidr,
        node_mask_v4,
        node_mask_v6,
    })
}

/// Command-line flags found anywhere in `text`: `--name=value` tokens, and `--name value`
/// token pairs (the value being the next token when it does not start with `-`). Tokens are
/// split on whitespace, YAML list markers, quotes, brackets and line continuations (commas
/// around a token are dropped, commas inside a value are kept),
/// so a static-pod manifest (`- --cluster-cidr=10.244.0.0/16`), a JSON manifest
/// (`"--cluster-cidr=…",`) and a systemd `ExecStart=` line all work. Comments are skipped.
/// Flags without a value get an empty one.
pub fn command_line_flags(text: &str) -> Vec<(String, String)> {
    let mut tokens: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let line = strip_comment(line);
        for t in
            line.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '[' | ']' | '\\'))
        {
            let t = t.trim().trim_matches(',');
            // `ExecStart=/usr/local/bin/k3s` and YAML markers are not flags.
            if !t.is_empty() && t != "-" {
                tokens.push(t.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        i += 1;
        let Some(flag) = t.strip_prefix("--") else {
            continue;
        };
        if flag.is_empty() {
            continue;
        }
        if let Some((k, v)) = flag.split_once('=') {
            out.push((k.to_owned(), v.to_owned()));
        } else if i < tokens.len() && !tokens[i].starts_with('-') && !tokens[i].ends_with(':') {
            out.push((flag.to_owned(), tokens[i].clone()));
            i += 1;
        } else {
            out.push((flag.to_owned(), String::new()));
        }
    }
    out
}

/// The node-CIDR allocation settings of a kube-controller-manager command line (a static-pod
/// manifest, or any text with its flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerManagerFlags {
    /// `--cluster-cidr=` (comma-separated for dual-stack); empty when absent.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// `--node-cidr-mask-size(-ipv4)=`.
    pub node_mask_v4: Option<u8>,
    /// `--node-cidr-mask-size(-ipv6)=`.
    pub node_mask_v6: Option<u8>,
    /// `--allocate-node-cidrs` (`true` when present without a value).
    pub allocate_node_cidrs: Option<bool>,
}

/// Reads the node-CIDR flags of a kube-controller-manager command line (last flag wins).
/// On a k3s server command line the controller-manager's flags are passed through as
/// `--kube-controller-manager-arg=name=value`; those are read as `--name=value`.
pub fn controller_manager_flags(text: &str) -> Result<ControllerManagerFlags> {
    let mut flags = Vec::new();
    for (k, v) in command_line_flags(text) {
        if k == "kube-controller-manager-arg" {
            flags.extend(arg_pairs(std::slice::from_ref(&v)));
        } else {
            flags.push((k, v));
        }
    }
    let mut out = ControllerManagerFlags::default();
    for (k, v) in &flags {
        match k.as_str() {
            "cluster-cidr" => out.cluster_cidrs = parse_cidr_list(v)?,
            "allocate-node-cidrs" => out.allocate_node_cidrs = Some(v.is_empty() || v == "true"),
            _ => {}
        }
    }
    let (v4, v6) = mask_flags(&flags, &out.cluster_cidrs)?;
    out.node_mask_v4 = v4;
    out.node_mask_v6 = v6;
    Ok(out)
}

/// The content of flannel's `subnet.env`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlannelSubnetEnv {
    /// `FLANNEL_NETWORK`, `FLANNEL_IPV6_NETWORK`: the cluster CIDR(s).
    pub networks: Vec<IpNetwork>,
    /// `FLANNEL_SUBNET`, `FLANNEL_IPV6_SUBNET`: this node's subnet(s). flannel writes the
    /// first host address with the prefix (`10.42.1.1/24`); returned masked (`10.42.1.0/24`).
    pub subnets: Vec<IpNetwork>,
}

/// Reads flannel's `subnet.env` (`KEY=value` lines, optionally quoted).
pub fn flannel_subnet_env(text: &str) -> Result<FlannelSubnetEnv> {
    let mut out = FlannelSubnetEnv::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = unquote(v);
        if v.is_empty() {
            continue;
        }
        let parse_any = |v: &str| -> Result<IpNetwork> {
            v.parse::<IpNetwork>()
                .ok()
                .filter(|_| v.contains('/'))
                .map(masked)
                .ok_or_else(|| PodCidrFormatError::InvalidCidr {
                    value: v.to_owned(),
                    reason: format!("in {k}"),
                })
        };
        match k.trim() {
            "FLANNEL_NETWORK" | "FLANNEL_IPV6_NETWORK" => out.networks.push(parse_cidr(&v)?),
            "FLANNEL_SUBNET" | "FLANNEL_IPV6_SUBNET" => out.subnets.push(parse_any(&v)?),
            _ => {}
        }
    }
    out.subnets = node_cidrs(&out.subnets)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The name hash
// ---------------------------------------------------------------------------------------------

/// The 64-bit FNV-1a hash of a node name. Part of the name-hash source's contract: changing it
/// would move every hashed node to another subnet, so it is pinned by tests.
pub fn name_hash(name: &str) -> u64 {
    crate::hash::fnv1a64(name.bytes())
}

/// Number of node subnets of `/prefix` in `cluster` as a power of two (`prefix - cluster`).
fn subnet_bits(cluster: &IpNetwork, prefix: u8) -> Result<u32> {
    let max_node = if cluster.is_ipv4() {
        MAX_NODE_PREFIX_V4
    } else {
        MAX_NODE_PREFIX_V6
    };
    if prefix < cluster.prefix() || prefix > max_node {
        return Err(PodCidrFormatError::PrefixOutOfRange {
            cluster: *cluster,
            prefix,
            min: cluster.prefix(),
            max: max_node,
        });
    }
    Ok(u32::from(prefix - cluster.prefix()))
}

/// The `index`-th `/prefix` subnet of `cluster` (index taken modulo the number of subnets).
fn nth_subnet(cluster: &IpNetwork, prefix: u8, index: u64) -> Result<IpNetwork> {
    let bits = subnet_bits(cluster, prefix)?;
    let idx: u128 = if bits >= 64 {
        u128::from(index)
    } else {
        u128::from(index) & ((1u128 << bits) - 1)
    };
    let net = match cluster.network() {
        IpAddr::V4(a) => {
            let host_bits = 32 - u32::from(prefix);
            let base = u128::from(u32::from(a));
            IpAddr::V4(Ipv4Addr::from((base + (idx << host_bits)) as u32))
        }
        IpAddr::V6(a) => {
            let host_bits = 128 - u32::from(prefix);
            let base = u128::from(a);
            IpAddr::V6(Ipv6Addr::from(base + (idx << host_bits)))
        }
    };
    IpNetwork::new(net, prefix).map_err(|e| PodCidrFormatError::InvalidCidr {
        value: format!("{net}/{prefix}"),
        reason: e.to_string(),
    })
}

/// Derives node CIDRs from the node name: for the first cluster CIDR of each address family,
/// the subnet of `/prefix_v4` (or `/prefix_v6`) whose index is [`name_hash`] modulo the number
/// of such subnets. Deterministic across nodes and versions, but **not coordinated**: two
/// names can hash to one subnet (with `s` subnets and `n` nodes, probability ≈ n²/2s), which
/// is why the daemon only uses it when explicitly enabled.
///
/// Errors: no cluster CIDR; a prefix outside `cluster prefix..=30` (IPv4) / `..=126` (IPv6).
pub fn name_hash_cidrs(
    name: &str,
    cluster: &[IpNetwork],
    prefix_v4: u8,
    prefix_v6: u8,
) -> Result<Vec<IpNetwork>> {
    let h = name_hash(name);
    let v4 = cluster.iter().find(|c| c.is_ipv4());
    let v6 = cluster.iter().find(|c| c.is_ipv6());
    if v4.is_none() && v6.is_none() {
        return Err(PodCidrFormatError::NoClusterCidr);
    }
    let mut out = Vec::new();
    if let Some(c) = v4 {
        out.push(nth_subnet(&masked(*c), prefix_v4, h)?);
    }
    if let Some(c) = v6 {
        out.push(nth_subnet(&masked(*c), prefix_v6, h)?);
    }
    Ok(out)
}

/// The number of `/prefix` subnets in `cluster` (saturating), for the collision warning.
pub fn subnet_count(cluster: &IpNetwork, prefix: u8) -> u128 {
    match subnet_bits(cluster, prefix) {
        Ok(b) if b >= 127 => u128::MAX,
        Ok(b) => 1u128 << b,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr(" 10.244.1.0/24 ").unwrap(), n("10.244.1.0/24"));
        assert!(matches!(
            parse_cidr("10.244.1.5/24"),
            Err(PodCidrFormatError::HostBitsSet { masked, .. }) if masked == n("10.244.1.0/24")
        ));
        assert!(matches!(
            parse_cidr("10.244.1.0"),
            Err(PodCidrFormatError::InvalidCidr { .. })
        ));
        assert!(matches!(
            parse_cidr("10.244.1.0/33"),
            Err(PodCidrFormatError::InvalidCidr { .. })
        ));
        assert!(parse_cidr("bogus/8").is_err());
        assert_eq!(
            parse_cidr_list("10.1.0.0/16, fd00::/48,,10.1.0.0/16").unwrap(),
            vec![n("10.1.0.0/16"), n("fd00::/48")]
        );
        assert!(parse_cidr_list("").unwrap().is_empty());
        assert_eq!(
            parse_node_cidrs("fd00:1::/64,10.244.1.0/24").unwrap(),
            vec![n("10.244.1.0/24"), n("fd00:1::/64")]
        );
        assert!(matches!(
            parse_node_cidrs("10.244.1.0/24,10.244.2.0/24"),
            Err(PodCidrFormatError::DuplicateFamily { family: "IPv4", .. })
        ));
        assert!(matches!(
            parse_node_cidrs("fd00:1::/64,fd00:2::/64"),
            Err(PodCidrFormatError::DuplicateFamily { family: "IPv6", .. })
        ));
    }

    #[test]
    fn yaml_subset() {
        let y = r#"
# comment: podCIDR: 1.1.1.0/24
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  podCIDR: 9.9.9.0/24   # nested: not top level
podCIDR: "10.244.3.0/24" # trailing comment
quoted: 'it''s # not a comment'
flow: [a, "b, c", 'd']
block:
  - x   # c
  - "y"

  - 'z'
compact:
- 1
- 2
after: v
empty:
url: http://a:b@c/#frag
"#;
        assert_eq!(
            yaml_top_level(y, "podCIDR"),
            Some(YamlValue::Scalar("10.244.3.0/24".into()))
        );
        assert_eq!(
            yaml_top_level(y, "quoted"),
            Some(YamlValue::Scalar("it's # not a comment".into()))
        );
        assert_eq!(
            yaml_top_level(y, "flow"),
            Some(YamlValue::List(vec!["a".into(), "b, c".into(), "d".into()]))
        );
        assert_eq!(
            yaml_top_level(y, "block"),
            Some(YamlValue::List(vec!["x".into(), "y".into(), "z".into()]))
        );
        assert_eq!(
            yaml_top_level(y, "compact"),
            Some(YamlValue::List(vec!["1".into(), "2".into()]))
        );
        assert_eq!(
            yaml_top_level(y, "after"),
            Some(YamlValue::Scalar("v".into()))
        );
        assert_eq!(yaml_top_level(y, "empty"), None);
        assert_eq!(yaml_top_level(y, "authentication"), None);
        assert_eq!(yaml_top_level(y, "missing"), None);
        assert_eq!(
            yaml_top_level(y, "url"),
            Some(YamlValue::Scalar("http://a:b@c/#frag".into()))
        );
        // the last occurrence wins
        assert_eq!(
            yaml_top_level("a: 1\na: 2\n", "a"),
            Some(YamlValue::Scalar("2".into()))
        );
        // JSON is YAML
        assert_eq!(
            yaml_top_level(r#"{"podCIDR": "10.1.2.0/24", "x": [1, "b"]}"#, "x"),
            Some(YamlValue::List(vec!["1".into(), "b".into()]))
        );
        // block scalars and nested mappings are not read
        assert_eq!(yaml_top_level("a: |\n  text\n", "a"), None);
        assert_eq!(yaml_top_level("a: {b: c}\n", "a"), None);
    }

    #[test]
    fn kubelet_config() {
        assert_eq!(
            kubelet_pod_cidr("kind: KubeletConfiguration\npodCIDR: 10.244.3.0/24\n").unwrap(),
            Some(vec![n("10.244.3.0/24")])
        );
        assert_eq!(kubelet_pod_cidr("podCIDR: \"\"\n").unwrap(), None);
        assert_eq!(
            kubelet_pod_cidr("kind: KubeletConfiguration\n").unwrap(),
            None
        );
        assert!(kubelet_pod_cidr("podCIDR: 10.244.3.7/24\n").is_err());
    }

    #[test]
    fn k3s_config_file() {
        let c = k3s_config(
            "cluster-cidr: \"10.42.0.0/16,2001:cafe:42::/56\"\n\
             kubelet-arg:\n  - \"pod-cidr=10.42.7.0/24\"\n  - max-pods=200\n\
             kube-controller-manager-arg: [\"node-cidr-mask-size-ipv4=25\", \"--node-cidr-mask-size-ipv6=80\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.cluster_cidr,
            Some(vec![n("10.42.0.0/16"), n("2001:cafe:42::/56")])
        );
        assert_eq!(c.kubelet_pod_cidr, Some(vec![n("10.42.7.0/24")]));
        assert_eq!((c.node_mask_v4, c.node_mask_v6), (Some(25), Some(80)));

        let list = k3s_config("cluster-cidr:\n- 10.42.0.0/16\n- fd42::/56\n").unwrap();
        assert_eq!(
            list.cluster_cidr,
            Some(vec![n("10.42.0.0/16"), n("fd42::/56")])
        );
        let v6 = k3s_config(
            "cluster-cidr: fd42::/56\nkube-controller-manager-arg: node-cidr-mask-size=72\n",
        )
        .unwrap();
        assert_eq!((v6.node_mask_v4, v6.node_mask_v6), (None, Some(72)));
        assert_eq!(k3s_config("token: x\n").unwrap(), K3sConfig::default());
        // append form of a drop-in
        let app = k3s_config("kubelet-arg+:\n  - pod-cidr=10.42.9.0/24\n").unwrap();
        assert_eq!(app.kubelet_pod_cidr, Some(vec![n("10.42.9.0/24")]));
        let mut base = list.clone();
        base.merge(app);
        assert_eq!(base.kubelet_pod_cidr, Some(vec![n("10.42.9.0/24")]));
        assert_eq!(base.cluster_cidr, list.cluster_cidr);
        assert!(k3s_config("cluster-cidr: 10.42.0.1/16\n").is_err());
    }

    #[test]
    fn flags() {
        let f = command_line_flags(
            "ExecStart=/usr/local/bin/k3s \\\n    server \\\n    '--cluster-cidr=10.42.0.0/16' \\\n    --disable traefik --write-kubeconfig-mode=644\n# --cluster-cidr=1.0.0.0/8\n",
        );
        assert!(f.contains(&("cluster-cidr".into(), "10.42.0.0/16".into())));
        assert!(f.contains(&("disable".into(), "traefik".into())));
        assert!(!f.iter().any(|(_, v)| v == "1.0.0.0/8"));
        let m = controller_manager_flags(
            "spec:\n  containers:\n  - command:\n    - kube-controller-manager\n    - --allocate-node-cidrs\n    - --cluster-cidr=10.244.0.0/16,fd00:10:244::/56\n    - --node-cidr-mask-size-ipv4=24\n    - --node-cidr-mask-size-ipv6=64\n    image: registry.k8s.io/kube-controller-manager:v1.33.0\n",
        )
        .unwrap();
        assert_eq!(
            m.cluster_cidrs,
            vec![n("10.244.0.0/16"), n("fd00:10:244::/56")]
        );
        assert_eq!((m.node_mask_v4, m.node_mask_v6), (Some(24), Some(64)));
        assert_eq!(m.allocate_node_cidrs, Some(true));
        let sep = controller_manager_flags(
            "- --cluster-cidr\n- 10.10.0.0/16\n- --node-cidr-mask-size=26\n",
        )
        .unwrap();
        assert_eq!(sep.cluster_cidrs, vec![n("10.10.0.0/16")]);
        assert_eq!(sep.node_mask_v4, Some(26));
        let k3s = controller_manager_flags(
            "ExecStart=/usr/local/bin/k3s server --cluster-cidr=10.42.0.0/16 \\\n  --kube-controller-manager-arg=node-cidr-mask-size-ipv4=25 \\\n  --kube-controller-manager-arg node-cidr-mask-size=26\n",
        )
        .unwrap();
        assert_eq!(k3s.cluster_cidrs, vec![n("10.42.0.0/16")]);
        assert_eq!(
            k3s.node_mask_v4,
            Some(25),
            "per-family flag beats the single-stack one"
        );
        let json = controller_manager_flags(
            r#"{"spec":{"containers":[{"command":["kube-controller-manager","--cluster-cidr=10.9.0.0/16","--node-cidr-mask-size=23"]}]}}"#,
        )
        .unwrap();
        assert_eq!(json.cluster_cidrs, vec![n("10.9.0.0/16")]);
        assert_eq!(json.node_mask_v4, Some(23));
        let v6 =
            controller_manager_flags("--cluster-cidr=fd00::/48 --node-cidr-mask-size=64").unwrap();
        assert_eq!((v6.node_mask_v4, v6.node_mask_v6), (None, Some(64)));
        assert!(controller_manager_flags("--node-cidr-mask-size=abc").is_err());
        assert_eq!(
            controller_manager_flags("nothing here").unwrap(),
            ControllerManagerFlags::default()
        );
    }

    #[test]
    fn flannel_env() {
        let e = flannel_subnet_env(
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(e.networks, vec![n("10.42.0.0/16"), n("2001:cafe:42::/56")]);
        assert_eq!(e.subnets, vec![n("10.42.1.0/24"), n("2001:cafe:42:1::/64")]);
        assert!(flannel_subnet_env("FLANNEL_SUBNET=nope\n").is_err());
        assert_eq!(
            flannel_subnet_env("FLANNEL_MTU=1450\n").unwrap(),
            FlannelSubnetEnv::default()
        );
    }

    #[test]
    fn name_hash_is_pinned() {
        // FNV-1a 64 reference vectors.
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(name_hash("foobar"), 0x8594_4171_f739_67e8);
        let c = [n("10.244.0.0/16"), n("fd00:10:244::/56")];
        let a = name_hash_cidrs("node-1", &c, 24, 64).unwrap();
        let idx = name_hash("node-1") & 0xff;
        assert_eq!(a[0], n(&format!("10.244.{idx}.0/24")));
        assert_eq!(a[1], n(&format!("fd00:10:244:{idx:x}::/64")));
        assert_eq!(a, name_hash_cidrs("node-1", &c, 24, 64).unwrap());
        assert_ne!(a, name_hash_cidrs("node-2", &c, 24, 64).unwrap());
        // every result lies inside the cluster CIDR
        for i in 0..500 {
            let r = name_hash_cidrs(&format!("n{i}"), &c, 26, 72).unwrap();
            assert!(c[0].contains(r[0].ip()) && r[0].prefix() == 26 && is_masked(&r[0]));
            assert!(c[1].contains(r[1].ip()) && r[1].prefix() == 72 && is_masked(&r[1]));
        }
        assert_eq!(
            name_hash_cidrs("x", &[], 24, 64),
            Err(PodCidrFormatError::NoClusterCidr)
        );
        assert!(matches!(
            name_hash_cidrs("x", &[n("10.0.0.0/16")], 8, 64),
            Err(PodCidrFormatError::PrefixOutOfRange { .. })
        ));
        assert!(matches!(
            name_hash_cidrs("x", &[n("10.0.0.0/16")], 31, 64),
            Err(PodCidrFormatError::PrefixOutOfRange { .. })
        ));
        // equal prefixes: the cluster CIDR itself
        assert_eq!(
            name_hash_cidrs("x", &[n("10.0.0.0/24")], 24, 64).unwrap(),
            vec![n("10.0.0.0/24")]
        );
        // a huge IPv6 space uses the whole hash
        let big = name_hash_cidrs("x", &[n("fd00::/32")], 24, 112).unwrap();
        assert!(n("fd00::/32").contains(big[0].ip()));
        assert_eq!(subnet_count(&n("10.244.0.0/16"), 24), 256);
        assert_eq!(subnet_count(&n("10.244.0.0/16"), 8), 0);
    }
}
