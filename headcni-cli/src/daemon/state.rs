//! The daemon's shared, observable state: what `/readyz`, `/status` and `headcni status`
//! report. Written by the reconcile loop and the event socket; read by the HTTP server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use headcni_core::control::ControlPlaneStatus;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Where the node's PodCIDR came from (issue order: config, env, Kubernetes Node, local
/// kubelet/k3s files, name hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodCidrSource {
    /// `[node] pod_cidr` in the config file (or its flag).
    Config,
    /// The `NODE_POD_CIDR` environment variable.
    Env,
    /// The Kubernetes Node object's `spec.podCIDRs`.
    KubernetesNode,
    /// Local kubelet or k3s files.
    LocalFiles,
    /// A hash of the node name inside the cluster CIDR (opt-in).
    NameHash,
}

/// One pod attachment on this node, as reported by the plugin's best-effort events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEntry {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`, if sent.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`, if sent.
    pub name: Option<String>,
    /// Addresses from the ADD result.
    pub ips: Vec<IpAddr>,
    /// When the ADD event arrived.
    pub added_at: SystemTime,
}

/// Everything the daemon knows and reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonState {
    /// Kubernetes node name.
    pub node_name: String,
    /// `host` or `daemon`.
    pub mode: String,
    /// The node's PodCIDR(s); empty until discovered.
    pub pod_cidrs: Vec<IpNetwork>,
    /// Which source won.
    pub pod_cidr_source: Option<PodCidrSource>,
    /// Path of the conflist once written.
    pub conflist: Option<String>,
    /// The conflist on disk matches what the daemon wants.
    pub conflist_written: bool,
    /// The masquerade table is in place.
    pub masquerade_ready: bool,
    /// The control plane's last observed status.
    pub control: Option<ControlPlaneStatus>,
    /// Pods on this node keyed by `containerID/ifname`.
    pub pods: BTreeMap<String, PodEntry>,
    /// Daemon start time.
    pub started_at: SystemTime,
}

impl DaemonState {
    /// A fresh state for `node_name` in `mode`.
    pub fn new(node_name: impl Into<String>, mode: impl Into<String>) -> DaemonState {
        DaemonState {
            node_name: node_name.into(),
            mode: mode.into(),
            pod_cidrs: Vec::new(),
            pod_cidr_source: None,
            conflist: None,
            conflist_written: false,
            masquerade_ready: false,
            control: None,
            pods: BTreeMap::new(),
            started_at: SystemTime::now(),
        }
    }

    /// Why the node is not ready (`/readyz`): PodCIDR known, conflist written, masquerade in
    /// place, route approved. Empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut r = Vec::new();
        if self.pod_cidrs.is_empty() {
            r.push("PodCIDR not known yet".to_owned());
        }
        if !self.conflist_written {
            r.push("CNI conflist not written".to_owned());
        }
        if !self.masquerade_ready {
            r.push("masquerade rules not in place".to_owned());
        }
        match &self.control {
            None => r.push("control plane not reconciled yet".to_owned()),
            Some(c) => {
                if let headcni_core::control::Readiness::NotReady { reason, detail } = &c.readiness
                {
                    r.push(format!("control plane: {}: {detail}", reason.as_str()));
                }
            }
        }
        r
    }
}

/// The state shared between the daemon's tasks.
pub type SharedState = Arc<RwLock<DaemonState>>;
