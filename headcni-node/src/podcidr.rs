//! The node's PodCIDR: which subnet this node's pods get addresses from.
//!
//! Sources, first match wins ([`discover`]); each is a
//! [`headcni_core::node::podcidr_source::PodCidrSource`] ([`sources`]):
//!
//! 1. **config**: `[node] pod_cidr` (or `HEADCNI_NODE_POD_CIDR`, `--pod-cidr`);
//! 2. **env**: `NODE_POD_CIDR` (comma-separated for dual-stack);
//! 3. **Kubernetes Node**: `spec.podCIDRs` (else `spec.podCIDR`) of this node. When an API is
//!    configured (`[node] kubeconfig`, in-cluster, `KUBECONFIG`, `~/.kube/config`) the daemon
//!    **waits** for the controller-manager to assign one, watching the single Node (field
//!    selector `metadata.name=<node>`), like flannel; it logs while waiting, and later sources
//!    are not consulted (they could contradict what the cluster will assign);
//! 4. **local files** under `[node] local_files_root`, in this order ([`from_local_files`]):
//!    - `/var/lib/kubelet/config.yaml` `podCIDR:` (KubeletConfiguration; set on standalone
//!      kubelets, rarely by kubeadm);
//!    - `/var/lib/kubelet/kubeadm-flags.env`, `/etc/default/kubelet`, `/etc/sysconfig/kubelet`:
//!      a kubelet `--pod-cidr=` flag;
//!    - k3s: `/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/*.conf` (the kubelet drop-ins k3s
//!      writes, `00-k3s-defaults.conf` and the operator's own; `podCIDR:`, later files win);
//!    - k3s: `/etc/rancher/k3s/config.yaml` and `config.yaml.d/*.yaml`, a `kubelet-arg:` item
//!      `pod-cidr=…`;
//!    - `/var/lib/rancher/k3s/agent/etc/node-<name>.yaml` `podCIDR:`/`podCIDRs:`: the path
//!      the earlier Go HeadCNI documented. **k3s itself does not write this file**; it is read
//!      for operators who created it following that documentation;
//!    - `/run/flannel/subnet.env` `FLANNEL_SUBNET` / `FLANNEL_IPV6_SUBNET`: written by k3s'
//!      embedded flannel (and standalone flannel) from this node's `spec.podCIDR`. It lives on
//!      tmpfs, so after switching a k3s node from flannel to HeadCNI it still names the
//!      node's subnet until the next reboot;
//! 5. **name hash** (only with `[node] pod_cidr_from_name_hash = true`): a deterministic
//!    subnet of `/node_cidr_prefix` inside the cluster CIDR, picked by a hash of the node
//!    name ([`from_name_hash`]); loudly warned about, because nodes do not coordinate and two
//!    can pick the same subnet. The cluster CIDR is `[node] cluster_cidr`, else found in local
//!    files ([`cluster_from_local_files`]): the `--cluster-cidr=` and
//!    `--node-cidr-mask-size*=` flags of `/etc/kubernetes/manifests/kube-controller-manager.yaml`,
//!    k3s' `cluster-cidr:` (config.yaml, drop-ins) or `--cluster-cidr` in
//!    `/etc/systemd/system/k3s.service`, and flannel's `FLANNEL_NETWORK`. A cluster CIDR alone
//!    never gives a node CIDR: it is only used by this source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use headcni_core::node::podcidr::{self as formats, PodCidrFormatError};
use headcni_core::node::podcidr_source::{
    Discovery, FoundPodCidrs, PodCidrSource as Source, first_found,
};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::state::PodCidrSource;

/// The environment variable of the env source.
pub const NODE_POD_CIDR_ENV: &str = "NODE_POD_CIDR";
/// How often [`wait_for_node`] repeats its "still waiting" message.
pub const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The outcome of discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The node's CIDRs, IPv4 first (at most one per family).
    pub cidrs: Vec<IpNetwork>,
    /// The source that won.
    pub source: PodCidrSource,
    /// Which key, variable, object or file it came from, for people.
    pub detail: String,
}

/// Errors of PodCIDR discovery.
#[derive(Debug, thiserror::Error)]
pub enum PodCidrError {
    /// A source holds a value that is not a valid node CIDR list.
    #[error("{origin}: {error}")]
    Format {
        /// Where the value came from (a variable, a file, a Node field).
        origin: String,
        /// What is wrong with it.
        #[source]
        error: PodCidrFormatError,
    },
    /// A local file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configured kubeconfig cannot be used.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// The name hash was enabled but has nothing to hash into.
    #[error(
        "pod_cidr_from_name_hash is enabled but no cluster CIDR is known: set [node] cluster_cidr"
    )]
    NoClusterCidr,
    /// No source produced a PodCIDR.
    #[error(
        "no PodCIDR for node {node}: set [node] pod_cidr or NODE_POD_CIDR, give the daemon \
         Kubernetes API access (the Node's spec.podCIDRs), or opt in to \
         [node] pod_cidr_from_name_hash with a cluster_cidr (tried: {tried})"
    )]
    NotFound {
        /// The node.
        node: String,
        /// What was tried.
        tried: String,
    },
    /// The cancellation token fired while waiting for the Node.
    #[error("cancelled while waiting for the PodCIDR of node {node}")]
    Cancelled {
        /// The node.
        node: String,
    },
}

fn format_err(origin: impl Into<String>) -> impl FnOnce(PodCidrFormatError) -> PodCidrError {
    let origin = origin.into();
    move |error| PodCidrError::Format { origin, error }
}

/// How [`discover_with`] reaches the Kubernetes API.
#[derive(Clone)]
pub enum KubeAccess {
    /// `[node] kubeconfig`, else kube-rs' inference (kubeconfig, then in-cluster); no API when
    /// nothing is configured.
    Infer,
    /// This client.
    Client(kube::Client),
    /// Do not use the API.
    Disabled,
}

impl std::fmt::Debug for KubeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KubeAccess::Infer => "Infer",
            KubeAccess::Client(_) => "Client",
            KubeAccess::Disabled => "Disabled",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The sources
// ---------------------------------------------------------------------------------------------

/// Source 1: `[node] pod_cidr`; `None` when empty.
pub fn from_config(cfg: &Config) -> Option<Vec<IpNetwork>> {
    let mut v = cfg.node.pod_cidr.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_by_key(IpNetwork::is_ipv6);
    Some(v)
}

/// Source 2: the value of `NODE_POD_CIDR` (comma-separated, dual-stack at most one per
/// family); `None` when unset or blank.
pub fn from_env(value: Option<&str>) -> Result<Option<Vec<IpNetwork>>, PodCidrError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let cidrs = formats::parse_node_cidrs(v).map_err(format_err(NODE_POD_CIDR_ENV))?;
    Ok((!cidrs.is_empty()).then_some(cidrs))
}

/// Source 3: a Node's `spec.podCIDRs`, else its `spec.podCIDR`; `None` when unassigned.
pub fn from_node(node: &Node) -> Result<Option<Vec<IpNetwork>>, PodCidrError> {
    let name = node.metadata.name.as_deref().unwrap_or("?");
    let Some(spec) = &node.spec else {
        return Ok(None);
    };
    if let Some(list) = spec.pod_cidrs.as_ref().filter(|l| !l.is_empty()) {
        let cidrs = formats::parse_node_cidrs(&list.join(","))
            .map_err(format_err(format!("Node {name} spec.podCIDRs")))?;
        return Ok((!cidrs.is_empty()).then_some(cidrs));
    }
    match spec
        .pod_cidr
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(s) => Ok(Some(
            formats::parse_node_cidrs(s)
                .map_err(format_err(format!("Node {name} spec.podCIDR")))?,
        )),
        None => Ok(None),
    }
}

/// A client for source 3: `[node] kubeconfig` when set (an unusable file is an error), else
/// kube-rs' inference (`KUBECONFIG`, `~/.kube/config`, in-cluster). `Ok(None)` when no API is
/// configured at all.
pub async fn kube_client(cfg: &Config) -> Result<Option<kube::Client>, PodCidrError> {
    let config = if let Some(path) = &cfg.node.kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| PodCidrError::Kube(format!("{}: {e}", path.display())))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| PodCidrError::Kube(format!("{}: {e}", path.display())))?
    } else {
        match kube::Config::infer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no Kubernetes API configured");
                return Ok(None);
            }
        }
    };
    kube::Client::try_from(config)
        .map(Some)
        .map_err(|e| PodCidrError::Kube(e.to_string()))
}

/// Source 3, waiting: watches the Node `name` until its PodCIDR is set and returns it. Logs
/// at start and every [`WAIT_LOG_INTERVAL`]; API errors are logged and retried with backoff;
/// returns [`PodCidrError::Cancelled`] when `cancel` fires.
pub async fn wait_for_node(
    client: kube::Client,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Vec<IpNetwork>, PodCidrError> {
    wait_for_node_logging(client, name, cancel, WAIT_LOG_INTERVAL).await
}

async fn wait_for_node_logging(
    client: kube::Client,
    name: &str,
    cancel: &CancellationToken,
    log_every: Duration,
) -> Result<Vec<IpNetwork>, PodCidrError> {
    let api: kube::Api<Node> = kube::Api::all(client);
    let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + log_every, log_every);
    let mut seen = false;
    tracing::info!(
        node = name,
        "waiting for the Kubernetes Node's spec.podCIDRs"
    );
    // A watcher stream re-lists and re-watches by itself and does not end; the outer loop
    // only guards against that assumption breaking.
    loop {
        let mut events = watcher::watcher(api.clone(), wc.clone())
            .default_backoff()
            .boxed();
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    return Err(PodCidrError::Cancelled { node: name.to_owned() });
                }
                _ = tick.tick() => {
                    tracing::info!(
                        node = name,
                        waited_secs = started.elapsed().as_secs(),
                        node_seen = seen,
                        "still waiting for the Node's spec.podCIDRs (is kube-controller-manager \
                         running with --allocate-node-cidrs? set [node] pod_cidr or \
                         NODE_POD_CIDR to skip)"
                    );
                }
                ev = events.next() => match ev {
                    Some(Ok(Event::Apply(node) | Event::InitApply(node))) => {
                        seen = true;
                        if let Some(cidrs) = from_node(&node)? {
                            tracing::info!(node = name, ?cidrs, "the Node has its PodCIDR");
                            return Ok(cidrs);
                        }
                        tracing::debug!(node = name, "the Node has no PodCIDR yet");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(node = name, error = %e, "watching the Node failed; retrying");
                    }
                    None => {
                        tracing::warn!(node = name, "the Node watch ended; restarting it");
                        break;
                    }
                }
            }
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, PodCidrError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(None),
        Err(source) => Err(PodCidrError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The files of a drop-in directory with `ext`, in lexical order (the order kubelet and k3s
/// apply them).
fn drop_ins(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, PodCidrError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(PodCidrError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == ext)
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// The k3s configuration merged from `config.yaml` and its drop-ins, with the files it came
/// from.
fn k3s_merged(root: &Path) -> Result<(formats::K3sConfig, Vec<PathBuf>), PodCidrError> {
    let main = under(root, "/etc/rancher/k3s/config.yaml");
    let mut files = vec![main.clone()];
    files.extend(drop_ins(
        &under(root, "/etc/rancher/k3s/config.yaml.d"),
        "yaml",
    )?);
    let mut merged = formats::K3sConfig::default();
    let mut read = Vec::new();
    for f in files {
        if let Some(text) = read_optional(&f)? {
            let c = formats::k3s_config(&text).map_err(format_err(f.display().to_string()))?;
            merged.merge(c);
            read.push(f);
        }
    }
    Ok((merged, read))
}

/// Source 4: kubelet and k3s files under `root` (see the module documentation for the list
/// and order). Returns the CIDRs and the file (and key) they came from.
pub fn from_local_files(
    root: &Path,
    node_name: &str,
) -> Result<Option<(Vec<IpNetwork>, String)>, PodCidrError> {
    // kubelet's KubeletConfiguration
    let f = under(root, "/var/lib/kubelet/config.yaml");
    if let Some(text) = read_optional(&f)?
        && let Some(c) =
            formats::kubelet_pod_cidr(&text).map_err(format_err(f.display().to_string()))?
    {
        return Ok(Some((c, format!("{} podCIDR", f.display()))));
    }
    // kubelet flags files
    for rel in [
        "/var/lib/kubelet/kubeadm-flags.env",
        "/etc/default/kubelet",
        "/etc/sysconfig/kubelet",
    ] {
        let f = under(root, rel);
        if let Some(text) = read_optional(&f)? {
            let value = formats::command_line_flags(&text)
                .into_iter()
                .filter(|(k, _)| k == "pod-cidr")
                .map(|(_, v)| v)
                .next_back();
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                let c = formats::parse_node_cidrs(&v)
                    .map_err(format_err(format!("{} --pod-cidr", f.display())))?;
                return Ok(Some((c, format!("{} --pod-cidr", f.display()))));
            }
        }
    }
    // k3s kubelet drop-ins: later files override earlier ones
    let mut found = None;
    for f in drop_ins(
        &under(root, "/var/lib/rancher/k3s/agent/etc/kubelet.conf.d"),
        "conf",
    )? {
        if let Some(text) = read_optional(&f)?
            && let Some(c) =
                formats::kubelet_pod_cidr(&text).map_err(format_err(f.display().to_string()))?
        {
            found = Some((c, format!("{} podCIDR", f.display())));
        }
    }
    if found.is_some() {
        return Ok(found);
    }
    // k3s config: kubelet-arg pod-cidr=
    let (k3s, files) = k3s_merged(root)?;
    if let Some(c) = k3s.kubelet_pod_cidr {
        let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Ok(Some((
            c,
            format!("{} kubelet-arg pod-cidr", list.join(", ")),
        )));
    }
    // the earlier HeadCNI's documented k3s path (not written by k3s)
    let f = under(
        root,
        &format!("/var/lib/rancher/k3s/agent/etc/node-{node_name}.yaml"),
    );
    if !node_name.contains('/')
        && let Some(text) = read_optional(&f)?
    {
        let list = formats::yaml_top_level(&text, "podCIDRs")
            .map(|v| v.items())
            .filter(|v| !v.is_empty())
            .or_else(|| formats::yaml_top_level(&text, "podCIDR").map(|v| v.items()));
        if let Some(items) = list {
            let c = formats::parse_node_cidrs(&items.join(","))
                .map_err(format_err(f.display().to_string()))?;
            if !c.is_empty() {
                return Ok(Some((c, format!("{} podCIDR", f.display()))));
            }
        }
    }
    // flannel's subnet.env (k3s embedded flannel)
    let f = under(root, "/run/flannel/subnet.env");
    if let Some(text) = read_optional(&f)? {
        let env =
            formats::flannel_subnet_env(&text).map_err(format_err(f.display().to_string()))?;
        if !env.subnets.is_empty() {
            return Ok(Some((
                env.subnets,
                format!("{} FLANNEL_SUBNET", f.display()),
            )));
        }
    }
    Ok(None)
}

/// A cluster CIDR found in local files, with the node mask sizes if they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCidrHint {
    /// The cluster CIDR(s).
    pub cidrs: Vec<IpNetwork>,
    /// `--node-cidr-mask-size(-ipv4)`.
    pub mask_v4: Option<u8>,
    /// `--node-cidr-mask-size(-ipv6)`.
    pub mask_v6: Option<u8>,
    /// Where it came from.
    pub detail: String,
}

/// The cluster CIDR from local files, for the name hash only: the kube-controller-manager
/// static-pod manifest, k3s' configuration, k3s' systemd unit, flannel's `subnet.env`.
pub fn cluster_from_local_files(root: &Path) -> Result<Option<ClusterCidrHint>, PodCidrError> {
    for rel in [
        "/etc/kubernetes/manifests/kube-controller-manager.yaml",
        "/etc/kubernetes/manifests/kube-controller-manager.json",
    ] {
        let f = under(root, rel);
        if let Some(text) = read_optional(&f)? {
            let m = formats::controller_manager_flags(&text)
                .map_err(format_err(f.display().to_string()))?;
            if !m.cluster_cidrs.is_empty() {
                return Ok(Some(ClusterCidrHint {
                    cidrs: m.cluster_cidrs,
                    mask_v4: m.node_mask_v4,
                    mask_v6: m.node_mask_v6,
                    detail: format!("{} --cluster-cidr", f.display()),
                }));
            }
        }
    }
    let (k3s, files) = k3s_merged(root)?;
    if let Some(cidrs) = k3s.cluster_cidr {
        let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Ok(Some(ClusterCidrHint {
            cidrs,
            mask_v4: k3s.node_mask_v4,
            mask_v6: k3s.node_mask_v6,
            detail: format!("{} cluster-cidr", list.join(", ")),
        }));
    }
    let f = under(root, "/etc/systemd/system/k3s.service");
    if let Some(text) = read_optional(&f)? {
        let m = formats::controller_manager_flags(&text)
            .map_err(format_err(f.display().to_string()))?;
        if !m.cluster_cidrs.is_empty() {
            return Ok(Some(ClusterCidrHint {
                cidrs: m.cluster_cidrs,
                mask_v4: m.node_mask_v4,
                mask_v6: m.node_mask_v6,
                detail: format!("{} --cluster-cidr", f.display()),
            }));
        }
    }
    let f = under(root, "/run/flannel/subnet.env");
    if let Some(text) = read_optional(&f)? {
        let env =
            formats::flannel_subnet_env(&text).map_err(format_err(f.display().to_string()))?;
        if !env.networks.is_empty() {
            // flannel's subnets tell the mask size actually in use
            let mask = |v4: bool| {
                env.subnets
                    .iter()
                    .find(|s| s.is_ipv4() == v4)
                    .map(|s| s.prefix())
            };
            return Ok(Some(ClusterCidrHint {
                cidrs: env.networks.clone(),
                mask_v4: mask(true),
                mask_v6: mask(false),
                detail: format!("{} FLANNEL_NETWORK", f.display()),
            }));
        }
    }
    Ok(None)
}

/// Source 5: a subnet of the cluster CIDR picked by a hash of the node name
/// ([`formats::name_hash_cidrs`]). Warns loudly: nodes do not coordinate, so two nodes can
/// pick the same subnet and then both lose pod connectivity.
pub fn from_name_hash(
    name: &str,
    cluster: &[IpNetwork],
    prefix_v4: u8,
    prefix_v6: u8,
) -> Result<Vec<IpNetwork>, PodCidrError> {
    if cluster.is_empty() {
        return Err(PodCidrError::NoClusterCidr);
    }
    let cidrs = formats::name_hash_cidrs(name, cluster, prefix_v4, prefix_v6)
        .map_err(format_err("name hash"))?;
    let spaces: Vec<String> = cidrs
        .iter()
        .filter_map(|c| {
            let k = cluster.iter().find(|k| k.is_ipv4() == c.is_ipv4())?;
            Some(format!(
                "{c} of {} /{} subnets in {k}",
                formats::subnet_count(k, c.prefix()),
                c.prefix()
            ))
        })
        .collect();
    tracing::warn!(
        node = name,
        cidrs = ?cidrs,
        "PodCIDR DERIVED FROM A HASH OF THE NODE NAME ({}). Nodes do not coordinate: any two \
         nodes hash to the same subnet with probability 1/(number of subnets), about n²/2s for \
         n nodes and s subnets, and a collision breaks pod networking on both nodes without \
         any error. Use [node] pod_cidr, NODE_POD_CIDR or the Kubernetes Node's \
         spec.podCIDRs (kube-controller-manager --allocate-node-cidrs) instead",
        spaces.join("; ")
    );
    Ok(cidrs)
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

/// Runs the sources in order with the process environment and an inferred Kubernetes client.
pub async fn discover(
    cfg: &Config,
    cancel: &CancellationToken,
) -> Result<Discovered, PodCidrError> {
    let env = std::env::var(NODE_POD_CIDR_ENV).ok();
    discover_with(cfg, env.as_deref(), KubeAccess::Infer, cancel).await
}

/// Source 1 as a [`Source`]: `[node] pod_cidr`, checked as a node CIDR list.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    cidrs: Vec<IpNetwork>,
}

impl ConfigSource {
    /// The source for `cfg`'s `[node] pod_cidr`.
    pub fn new(cfg: &Config) -> ConfigSource {
        ConfigSource {
            cidrs: cfg.node.pod_cidr.clone(),
        }
    }
}

#[async_trait]
impl Source for ConfigSource {
    type Error = PodCidrError;
    fn origin(&self) -> PodCidrSource {
        PodCidrSource::Config
    }
    fn tried(&self) -> String {
        "[node] pod_cidr".to_owned()
    }
    async fn lookup(&self) -> Result<Option<FoundPodCidrs>, PodCidrError> {
        let mut v = self.cidrs.clone();
        if v.is_empty() {
            return Ok(None);
        }
        v.sort_by_key(IpNetwork::is_ipv6);
        let cidrs = formats::node_cidrs(&v).map_err(format_err("[node] pod_cidr"))?;
        Ok(Some(FoundPodCidrs {
            cidrs,
            detail: "[node] pod_cidr".to_owned(),
        }))
    }
}

/// Source 2 as a [`Source`]: the value of `NODE_POD_CIDR` ([`from_env`]).
#[derive(Debug, Clone)]
pub struct EnvSource {
    value: Option<String>,
}

impl EnvSource {
    /// The source for this value of `NODE_POD_CIDR` (`None`: unset).
    pub fn new(value: Option<&str>) -> EnvSource {
        EnvSource {
            value: value.map(str::to_owned),
        }
    }
}

#[async_trait]
impl Source for EnvSource {
    type Error = PodCidrError;
    fn origin(&self) -> PodCidrSource {
        PodCidrSource::Env
    }
    fn tried(&self) -> String {
        NODE_POD_CIDR_ENV.to_owned()
    }
    async fn lookup(&self) -> Result<Option<FoundPodCidrs>, PodCidrError> {
        Ok(from_env(self.value.as_deref())?.map(|cidrs| FoundPodCidrs {
            cidrs,
            detail: NODE_POD_CIDR_ENV.to_owned(),
        }))
    }
}

/// Source 3 as a [`Source`]: the Kubernetes Node. With an API (configured or inferred) it
/// waits for the Node's PodCIDR ([`wait_for_node`]) and so always answers (or fails, or is
/// cancelled); without one it has nothing.
#[derive(Debug, Clone)]
pub struct KubeNodeSource {
    cfg: Config,
    access: KubeAccess,
    cancel: CancellationToken,
}

impl KubeNodeSource {
    /// The source for `cfg`'s node and `[node] kubeconfig`, reaching the API through
    /// `access`; `cancel` ends the wait with [`PodCidrError::Cancelled`].
    pub fn new(cfg: &Config, access: KubeAccess, cancel: &CancellationToken) -> KubeNodeSource {
        KubeNodeSource {
            cfg: cfg.clone(),
            access,
            cancel: cancel.clone(),
        }
    }
}

#[async_trait]
impl Source for KubeNodeSource {
    type Error = PodCidrError;
    fn origin(&self) -> PodCidrSource {
        PodCidrSource::KubernetesNode
    }
    fn tried(&self) -> String {
        "Kubernetes API (not configured)".to_owned()
    }
    async fn lookup(&self) -> Result<Option<FoundPodCidrs>, PodCidrError> {
        let client = match &self.access {
            KubeAccess::Infer => kube_client(&self.cfg).await?,
            KubeAccess::Client(c) => Some(c.clone()),
            KubeAccess::Disabled => None,
        };
        let Some(client) = client else {
            return Ok(None);
        };
        let node = self.cfg.node_name();
        let cidrs = wait_for_node(client, &node, &self.cancel).await?;
        Ok(Some(FoundPodCidrs {
            cidrs,
            detail: format!("Node {node} spec.podCIDRs"),
        }))
    }
}

/// Source 4 as a [`Source`]: the kubelet/k3s files under `[node] local_files_root`
/// ([`from_local_files`]).
#[derive(Debug, Clone)]
pub struct LocalFilesSource {
    root: PathBuf,
    node: String,
}

impl LocalFilesSource {
    /// The source for `cfg`'s `[node] local_files_root` and node name.
    pub fn new(cfg: &Config) -> LocalFilesSource {
        LocalFilesSource {
            root: cfg.node.local_files_root.clone(),
            node: cfg.node_name(),
        }
    }
}

#[async_trait]
impl Source for LocalFilesSource {
    type Error = PodCidrError;
    fn origin(&self) -> PodCidrSource {
        PodCidrSource::LocalFiles
    }
    fn tried(&self) -> String {
        "kubelet/k3s local files".to_owned()
    }
    async fn lookup(&self) -> Result<Option<FoundPodCidrs>, PodCidrError> {
        Ok(from_local_files(&self.root, &self.node)?
            .map(|(cidrs, detail)| FoundPodCidrs { cidrs, detail }))
    }
}

/// Source 5 as a [`Source`]: the name hash, only with `[node] pod_cidr_from_name_hash`
/// ([`from_name_hash`]; the cluster CIDR is `[node] cluster_cidr`, else
/// [`cluster_from_local_files`]).
#[derive(Debug, Clone)]
pub struct NameHashSource {
    cfg: Config,
}

impl NameHashSource {
    /// The source for `cfg`.
    pub fn new(cfg: &Config) -> NameHashSource {
        NameHashSource { cfg: cfg.clone() }
    }
}

#[async_trait]
impl Source for NameHashSource {
    type Error = PodCidrError;
    fn origin(&self) -> PodCidrSource {
        PodCidrSource::NameHash
    }
    fn tried(&self) -> String {
        "name hash (disabled)".to_owned()
    }
    async fn lookup(&self) -> Result<Option<FoundPodCidrs>, PodCidrError> {
        let cfg = &self.cfg;
        if !cfg.node.pod_cidr_from_name_hash {
            return Ok(None);
        }
        let node = cfg.node_name();
        let (cluster, hint_masks, from) = if cfg.node.cluster_cidr.is_empty() {
            match cluster_from_local_files(&cfg.node.local_files_root)? {
                Some(h) => (h.cidrs, (h.mask_v4, h.mask_v6), h.detail),
                None => return Err(PodCidrError::NoClusterCidr),
            }
        } else {
            (
                cfg.node.cluster_cidr.clone(),
                (None, None),
                "[node] cluster_cidr".to_owned(),
            )
        };
        let (p4, p6) = cfg.node_cidr_prefixes().unwrap_or((
            hint_masks.0.unwrap_or(formats::DEFAULT_NODE_PREFIX_V4),
            hint_masks.1.unwrap_or(formats::DEFAULT_NODE_PREFIX_V6),
        ));
        let cidrs = from_name_hash(&node, &cluster, p4, p6)?;
        let cl: Vec<String> = cluster.iter().map(ToString::to_string).collect();
        Ok(Some(FoundPodCidrs {
            cidrs,
            detail: format!(
                "hash of node name {node:?} in {} ({from}), /{p4} and /{p6}",
                cl.join(",")
            ),
        }))
    }
}

/// The sources in discovery's order: [`ConfigSource`], [`EnvSource`] (with
/// `node_pod_cidr_env`), [`KubeNodeSource`] (with `kube`), [`LocalFilesSource`],
/// [`NameHashSource`].
pub fn sources(
    cfg: &Config,
    node_pod_cidr_env: Option<&str>,
    kube: KubeAccess,
    cancel: &CancellationToken,
) -> Vec<Box<dyn Source<Error = PodCidrError>>> {
    vec![
        Box::new(ConfigSource::new(cfg)),
        Box::new(EnvSource::new(node_pod_cidr_env)),
        Box::new(KubeNodeSource::new(cfg, kube, cancel)),
        Box::new(LocalFilesSource::new(cfg)),
        Box::new(NameHashSource::new(cfg)),
    ]
}

/// [`discover`] with the `NODE_POD_CIDR` value and the Kubernetes access given: the first of
/// [`sources`] with an answer wins ([`headcni_core::node::podcidr_source::first_found`]).
pub async fn discover_with(
    cfg: &Config,
    node_pod_cidr_env: Option<&str>,
    kube: KubeAccess,
    cancel: &CancellationToken,
) -> Result<Discovered, PodCidrError> {
    let node = cfg.node_name();
    match first_found(&sources(cfg, node_pod_cidr_env, kube, cancel)).await? {
        Discovery::Found(source, found) => {
            let d = Discovered {
                cidrs: found.cidrs,
                source,
                detail: found.detail,
            };
            tracing::info!(node = %node, cidrs = ?d.cidrs, source = ?d.source, detail = %d.detail, "PodCIDR discovered");
            Ok(d)
        }
        Discovery::NotFound(tried) => Err(PodCidrError::NotFound {
            node,
            tried: tried.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn node(pod_cidr: Option<&str>, pod_cidrs: Option<Vec<&str>>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: pod_cidr.map(Into::into),
                pod_cidrs: pod_cidrs.map(|v| v.into_iter().map(Into::into).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn node_fields() {
        assert_eq!(
            from_node(&node(
                Some("10.244.1.0/24"),
                Some(vec!["10.244.1.0/24", "fd00:1::/64"])
            ))
            .unwrap(),
            Some(vec![n("10.244.1.0/24"), n("fd00:1::/64")])
        );
        assert_eq!(
            from_node(&node(Some("10.244.2.0/24"), None)).unwrap(),
            Some(vec![n("10.244.2.0/24")])
        );
        assert_eq!(
            from_node(&node(Some("10.244.2.0/24"), Some(vec![]))).unwrap(),
            Some(vec![n("10.244.2.0/24")])
        );
        assert_eq!(from_node(&node(None, None)).unwrap(), None);
        assert_eq!(from_node(&node(Some(""), None)).unwrap(), None);
        assert_eq!(from_node(&Node::default()).unwrap(), None);
        let e = from_node(&node(None, Some(vec!["10.244.1.7/24"]))).unwrap_err();
        assert!(e.to_string().contains("spec.podCIDRs"), "{e}");
    }

    #[test]
    fn env_values() {
        assert_eq!(from_env(None).unwrap(), None);
        assert_eq!(from_env(Some("  ")).unwrap(), None);
        assert_eq!(
            from_env(Some("fd00:1::/64, 10.244.1.0/24")).unwrap(),
            Some(vec![n("10.244.1.0/24"), n("fd00:1::/64")])
        );
        let e = from_env(Some("10.244.1.0/24,10.244.2.0/24")).unwrap_err();
        assert!(e.to_string().starts_with("NODE_POD_CIDR:"), "{e}");
        assert!(from_env(Some("nope")).is_err());
    }

    #[test]
    fn config_source() {
        let mut c = Config::default();
        assert_eq!(from_config(&c), None);
        c.node.pod_cidr = vec![n("fd00:1::/64"), n("10.0.0.0/24")];
        assert_eq!(
            from_config(&c),
            Some(vec![n("10.0.0.0/24"), n("fd00:1::/64")])
        );
    }

    #[test]
    fn name_hash_needs_a_cluster() {
        assert!(matches!(
            from_name_hash("a", &[], 24, 64),
            Err(PodCidrError::NoClusterCidr)
        ));
        let r = from_name_hash("a", &[n("10.244.0.0/16")], 24, 64).unwrap();
        assert_eq!(
            r,
            formats::name_hash_cidrs("a", &[n("10.244.0.0/16")], 24, 64).unwrap()
        );
        assert!(from_name_hash("a", &[n("10.244.0.0/16")], 12, 64).is_err());
    }
}
