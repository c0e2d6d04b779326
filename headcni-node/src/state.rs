//! The daemon's shared, observable state: what `/readyz`, `/status` and `headcni status`
//! report. Written by the reconcile loop and the event socket; read by the HTTP server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use headcni_core::control::ControlPlaneStatus;
use headcni_core::node::firewall::{NFT_DRIVER, NONE_DRIVER};
use headcni_core::node::readiness::{NodeReadiness, not_ready_reasons};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Where the node's PodCIDR came from (config, env, Kubernetes Node, local kubelet/k3s
/// files, name hash): [`headcni_core::node::podcidr_source::PodCidrOrigin`].
pub use headcni_core::node::podcidr_source::PodCidrOrigin as PodCidrSource;

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
    /// The masquerade table is in place (always `false` with `firewall_driver = "none"`,
    /// which does not manage it).
    pub masquerade_ready: bool,
    /// The firewall driver (`[node] firewall_driver`): `nft`, or `none` when someone else
    /// manages masquerading. Absent in a daemon older than the key: `nft`.
    #[serde(default = "default_firewall_driver")]
    pub firewall_driver: String,
    /// The data plane (bridge, forwarding; and the masquerade table with `nft`) is in place.
    #[serde(default)]
    pub dataplane_ready: bool,
    /// Other firewalls that would still drop pod traffic (the driver's
    /// `FirewallDriver::warnings`, e.g. a foreign nftables forward chain with policy drop).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firewall_warnings: Vec<String>,
    /// Chained plugins that are missing from `[cni] bin_dir` or answered no usable VERSION,
    /// and a chain without a common version (`headcni_core::node::chain_versions`); shown by
    /// `/readyz` and `headcni status` as warnings (the runtime may find a plugin in another
    /// of its CNI directories, so they do not make the node not ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_problems: Vec<String>,
    /// The conflist's `cniVersion` and `cniVersions` as last written; empty before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    /// Why a CNI ADD cannot succeed now (e.g. the bridge cannot be made): the readiness
    /// file's `addBlocked` (STATUS code 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_blocked: Vec<String>,
    /// The control plane's last observed status.
    pub control: Option<ControlPlaneStatus>,
    /// tailscaled's IPN bus: `connected` (passes follow its changes), `connecting`,
    /// `absent` (no bus: polling) or `failing` (polling until it reconnects).
    #[serde(default)]
    pub ipn_bus: crate::ipnbus::BusState,
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
            firewall_driver: default_firewall_driver(),
            dataplane_ready: false,
            firewall_warnings: Vec::new(),
            chain_problems: Vec::new(),
            cni_versions: Vec::new(),
            add_blocked: Vec::new(),
            control: None,
            ipn_bus: crate::ipnbus::BusState::default(),
            pods: BTreeMap::new(),
            started_at: SystemTime::now(),
        }
    }

    /// Why the node is not ready (`/readyz`): PodCIDR known, conflist written, masquerade in
    /// place (with the `nft` driver; the data plane with `none`), route approved. Empty when
    /// ready. The rules: [`headcni_core::node::readiness::not_ready_reasons`].
    pub fn not_ready_reasons(&self) -> Vec<String> {
        not_ready_reasons(&NodeReadiness {
            pod_cidr_known: !self.pod_cidrs.is_empty(),
            conflist_written: self.conflist_written,
            masquerade_managed: self.firewall_driver != NONE_DRIVER,
            masquerade_ready: self.masquerade_ready,
            dataplane_ready: self.dataplane_ready,
            control: self.control.as_ref().map(|c| &c.readiness),
        })
    }
}

fn default_firewall_driver() -> String {
    NFT_DRIVER.to_owned()
}

/// The most pods one `/status` answer lists (and the default page size): it bounds the
/// answer to about 128 × 1.6 KiB (the largest entry the event bounds allow, as JSON) plus the
/// node and control-plane part, whatever the size of the pod table.
pub const MAX_STATUS_PODS: usize = 128;

/// The `/status` document: the [`DaemonState`] with one page of its pod table (`pods` holds
/// at most [`MAX_STATUS_PODS`] entries, from `pods_offset` in key order), and where that page
/// is in the whole table. Deserializes from a daemon that sends the whole table without these
/// fields, too (`pods_total` is then `None`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The state; `pods` is one page only.
    #[serde(flatten)]
    pub state: DaemonState,
    /// How many pods the daemon's table holds.
    #[serde(default)]
    pub pods_total: Option<usize>,
    /// The index (in key order) of the first pod of this page.
    #[serde(default)]
    pub pods_offset: usize,
    /// Whether pods follow this page (ask again with `pods_offset` + the page's length).
    #[serde(default)]
    pub pods_truncated: bool,
}

impl DaemonState {
    /// The `/status` document with the pods from index `offset` (key order), at most `limit`
    /// of them (clamped to 1..=[`MAX_STATUS_PODS`]). Clones only that page of the table.
    pub fn status_page(&self, offset: usize, limit: usize) -> StatusDoc {
        let limit = limit.clamp(1, MAX_STATUS_PODS);
        let pods: BTreeMap<String, PodEntry> = self
            .pods
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let end = offset.saturating_add(pods.len());
        let state = DaemonState {
            node_name: self.node_name.clone(),
            mode: self.mode.clone(),
            pod_cidrs: self.pod_cidrs.clone(),
            pod_cidr_source: self.pod_cidr_source,
            conflist: self.conflist.clone(),
            conflist_written: self.conflist_written,
            masquerade_ready: self.masquerade_ready,
            firewall_driver: self.firewall_driver.clone(),
            dataplane_ready: self.dataplane_ready,
            firewall_warnings: self.firewall_warnings.clone(),
            chain_problems: self.chain_problems.clone(),
            cni_versions: self.cni_versions.clone(),
            add_blocked: self.add_blocked.clone(),
            control: self.control.clone(),
            ipn_bus: self.ipn_bus,
            pods,
            started_at: self.started_at,
        };
        StatusDoc {
            state,
            pods_total: Some(self.pods.len()),
            pods_offset: offset,
            pods_truncated: end < self.pods.len(),
        }
    }
}

/// The state shared between the daemon's tasks.
pub type SharedState = Arc<RwLock<DaemonState>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_none_does_not_require_the_masquerade_table() {
        let mut s = DaemonState::new("n", "host");
        s.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
        s.conflist_written = true;
        s.control = Some(ControlPlaneStatus {
            readiness: headcni_core::control::Readiness::Ready,
            ..ControlPlaneStatus::initial("x")
        });
        s.dataplane_ready = true;
        assert_eq!(s.not_ready_reasons(), ["masquerade rules not in place"]);
        s.firewall_driver = "none".into();
        assert!(s.not_ready_reasons().is_empty());
        // a status document from a daemon older than the key reads as the nft driver
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("firewall_driver");
        v.as_object_mut().unwrap().remove("dataplane_ready");
        let old: DaemonState = serde_json::from_value(v).unwrap();
        assert_eq!(old.firewall_driver, "nft");
    }

    #[test]
    fn status_pages_cover_the_table() {
        let mut s = DaemonState::new("n", "host");
        for i in 0..300 {
            s.pods.insert(
                format!("c{i:03}/eth0"),
                PodEntry {
                    container_id: format!("c{i:03}"),
                    ifname: "eth0".into(),
                    namespace: None,
                    name: None,
                    ips: Vec::new(),
                    added_at: SystemTime::UNIX_EPOCH,
                },
            );
        }
        let first = s.status_page(0, usize::MAX);
        assert_eq!(first.state.pods.len(), MAX_STATUS_PODS);
        assert_eq!((first.pods_total, first.pods_truncated), (Some(300), true));
        let last = s.status_page(256, 100);
        assert_eq!(last.state.pods.len(), 44);
        assert!(!last.pods_truncated);
        assert!(last.state.pods.contains_key("c299/eth0"));
        let past = s.status_page(1000, 10);
        assert!(past.state.pods.is_empty() && !past.pods_truncated);
        assert_eq!(s.status_page(0, 0).state.pods.len(), 1, "limit 0 means 1");
    }
}
