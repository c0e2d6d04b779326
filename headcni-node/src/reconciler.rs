//! [`NodeReconciler`]: one node's reconcile, built from its dependencies (the effect traits)
//! and driven by [`crate::run`] (or an embedder). Each pass ([`NodeReconciler::reconcile_once`])
//! observes, plans with `headcni_core::node::reconcile` and acts: data plane, conflist, IPAM
//! metrics, control plane. Each step is timed and reported; a failing step never stops the
//! others (the conflist is written even while Headscale is down, so CNI ADD keeps working).

use std::sync::{Arc, RwLock};
use std::time::Instant;

use headcni_core::control::bus::ControlPass;
use headcni_core::control::{ApprovalCheck, ControlPlaneBackend, ControlPlaneError, RouteState};
use headcni_core::ipam::IpamConf;
use headcni_core::link::LinkManager;
use headcni_core::node::chain_versions::ChainVersions;
use headcni_core::node::cniconf::{Conflist, ConflistIpam};
use headcni_core::node::conflist_sink::ConflistSink;
use headcni_core::node::firewall::FirewallDriver;
use headcni_core::node::mtu::{TailnetMtu, own_tailscaled_mtu, pod_mtu};
use headcni_core::node::reconcile::plan_conflist;
use headcni_core::sysctl::ForwardingSysctl;
use ipnetwork::IpNetwork;
use tokio_util::sync::CancellationToken;

use crate::chain::ChainProber;
use crate::cniconf;
use crate::config::{Config, Mode};
use crate::dataplane::{self, DataplaneError, DataplaneParams, DataplaneReport};
use crate::metrics::Metrics;
use crate::state::SharedState;

/// The node reconcile's effects.
#[derive(Clone)]
pub struct NodeDeps {
    /// The tailnet control plane (production: `headcni_headscale::TailnetBackend`).
    pub control: Arc<dyn ControlPlaneBackend>,
    /// The masquerade rule set's driver (`headcni_netlink::NftFirewall` or
    /// `headcni_core::node::firewall::NoFirewall`).
    pub firewall: Arc<dyn FirewallDriver>,
    /// Links of the node's namespace (production: `headcni_netlink::NetlinkHandle`).
    pub links: Arc<dyn LinkManager>,
    /// The node's forwarding sysctls (production: the same `NetlinkHandle`).
    pub sysctl: Arc<dyn ForwardingSysctl>,
    /// Where the conflist goes (production: [`cniconf::FileConflistSink`]).
    pub conflist: Arc<dyn ConflistSink>,
}

/// What one pass did. Nothing in it is fatal: the next pass tries again.
#[derive(Debug)]
pub struct ReconcileOutcome {
    /// The pod MTU used (bridge and conflist), in bytes.
    pub mtu: u32,
    /// The data-plane step: what it repaired, or why it failed.
    pub dataplane: Result<DataplaneReport, DataplaneError>,
    /// The conflist step: `Ok(true)` when it was written.
    pub conflist: Result<bool, std::io::Error>,
    /// The control-plane step: the route state, or why not; `None` when cancelled first or
    /// skipped ([`ControlPass::Skip`]).
    pub control: Option<Result<RouteState, ControlPlaneError>>,
    /// Why the node is not ready after the pass (`/readyz`); empty when ready.
    pub not_ready: Vec<String>,
}

impl ReconcileOutcome {
    /// Ready after the pass.
    pub fn ready(&self) -> bool {
        self.not_ready.is_empty()
    }

    /// Ready and no step failed: the loop waits the full interval
    /// ([`headcni_core::node::retry::ReconcileBackoff::next_wait`]).
    pub fn ok(&self) -> bool {
        self.dataplane.is_ok()
            && self.conflist.is_ok()
            && !matches!(self.control, Some(Err(_)))
            && self.ready()
    }
}

fn lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// One node's reconcile: configuration, PodCIDR(s), effects, and where it reports (the
/// shared [`crate::state::DaemonState`] and [`Metrics`]).
pub struct NodeReconciler {
    cfg: Config,
    pod_cidrs: Vec<IpNetwork>,
    deps: NodeDeps,
    state: SharedState,
    metrics: Arc<Metrics>,
    prober: ChainProber,
    node_warnings: Vec<String>,
}

/// Why ADD cannot succeed after a data-plane step: the bridge could not be made (STATUS code
/// 50 through the readiness file).
fn add_blocked(dp: &Result<DataplaneReport, DataplaneError>) -> Vec<String> {
    match dp {
        Err(DataplaneError::Link { step, source }) if step.starts_with("ensure bridge") => {
            vec![format!("{step}: {source}")]
        }
        _ => Vec::new(),
    }
}

impl NodeReconciler {
    /// A reconciler for `pod_cidrs` with `cfg` (bridge, MTU, cluster CIDR, conflist contents,
    /// mode, tailnet interface) and `deps`; records the PodCIDRs and the firewall driver's
    /// name in `state`.
    pub fn new(
        cfg: Config,
        pod_cidrs: Vec<IpNetwork>,
        deps: NodeDeps,
        state: SharedState,
        metrics: Arc<Metrics>,
    ) -> NodeReconciler {
        {
            let mut st = lock(&state);
            st.pod_cidrs = pod_cidrs.clone();
            st.firewall_driver = deps.firewall.name().to_owned();
        }
        NodeReconciler {
            cfg,
            pod_cidrs,
            deps,
            state,
            metrics,
            prober: ChainProber::new(),
            node_warnings: Vec::new(),
        }
    }

    /// Warnings about the node found outside the reconcile (e.g. `br_netfilter` missing, see
    /// `headcni_netlink::bridge_netfilter::ensure`), shown with the firewall warnings on
    /// `/readyz` and in `headcni status` from the next pass on.
    pub fn set_node_warnings(&mut self, warnings: Vec<String>) {
        self.node_warnings = warnings;
    }

    /// Replaces the configuration (SIGHUP); the PodCIDRs stay.
    pub fn set_config(&mut self, cfg: Config) {
        self.cfg = cfg;
    }

    /// Replaces the control-plane backend (rebuilt after a reload or once it can be built).
    pub fn set_control(&mut self, control: Arc<dyn ControlPlaneBackend>) {
        self.deps.control = control;
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The node's PodCIDRs.
    pub fn pod_cidrs(&self) -> &[IpNetwork] {
        &self.pod_cidrs
    }

    /// The pod MTU ([`pod_mtu`]): `[cni] mtu`; in daemon mode the MTU given to its own
    /// tailscaled; in host mode the tailnet interface's when ≥ 1280; else 1280. Only host
    /// mode reads the interface.
    pub async fn pod_mtu(&self) -> u32 {
        let tailnet = if self.cfg.tailscale.mode == Mode::Daemon {
            TailnetMtu::Own(own_tailscaled_mtu(self.cfg.cni.mtu))
        } else if self.cfg.cni.mtu.is_some() {
            TailnetMtu::Link(None)
        } else {
            let link = self.deps.links.link(&self.cfg.interface()).await;
            TailnetMtu::Link(link.ok().flatten().map(|l| l.mtu))
        };
        pod_mtu(self.cfg.cni.mtu, tailnet)
    }

    /// The data plane wanted with `mtu`.
    pub fn desired_dataplane(&self, mtu: u32) -> DataplaneParams {
        DataplaneParams {
            bridge: self.cfg.cni.bridge.clone(),
            mtu: Some(mtu),
            pod_cidrs: self.pod_cidrs.clone(),
            cluster_cidrs: self.cfg.node.cluster_cidr.clone(),
            no_masq_cidrs: self.cfg.node.no_masq_destinations(),
            table: crate::NFT_TABLE.to_owned(),
            masquerade_ipv6: self.cfg.node.masquerade_ipv6,
        }
    }

    /// The versions the chained plugins in `[cni] bin_dir` accept ([`ChainProber`]: execs
    /// each changed plugin with VERSION, bounded).
    pub async fn chain_versions(&self) -> ChainVersions {
        self.prober
            .versions(&self.cfg.cni.bin_dir, &self.cfg.cni.chained)
            .await
    }

    /// The conflist wanted with `mtu` and the chain's `versions` ([`cniconf::conflist_for`]).
    pub fn desired_conflist(&self, mtu: u32, versions: &ChainVersions) -> Conflist {
        cniconf::conflist_for(&self.cfg, &self.pod_cidrs, mtu, versions)
    }

    /// One pass: data plane, conflist, IPAM metrics, control plane (bounded by the backend's
    /// own timeouts; `cancel` abandons its step). Updates the shared state and the metrics
    /// (`headcni_reconcile_*{step}`, routes, ready, pods) and logs each failing step.
    pub async fn reconcile_once(&self, cancel: &CancellationToken) -> ReconcileOutcome {
        self.reconcile_with(cancel, ControlPass::Run(ApprovalCheck::Verify))
            .await
    }

    /// One pass like [`NodeReconciler::reconcile_once`], with the control-plane step as
    /// `pass` says (`headcni_core::control::bus::control_pass`): skipped (the last status
    /// stays; [`ReconcileOutcome::control`] is `None`), or run with its [`ApprovalCheck`].
    pub async fn reconcile_with(
        &self,
        cancel: &CancellationToken,
        pass: ControlPass,
    ) -> ReconcileOutcome {
        let d = &self.deps;
        let t = Instant::now();
        let mtu = self.pod_mtu().await;
        let dp = dataplane::reconcile_with(
            d.links.as_ref(),
            d.sysctl.as_ref(),
            d.firewall.as_ref(),
            &self.desired_dataplane(mtu),
        )
        .await;
        self.metrics
            .observe_reconcile("dataplane", t.elapsed().as_secs_f64(), dp.is_ok());
        match &dp {
            Ok(r) => tracing::debug!(?r, "data plane reconciled"),
            Err(e) => tracing::warn!("data plane: {}", crate::backend::chain(e)),
        }
        let mut firewall_warnings = d.firewall.warnings().await;
        firewall_warnings.extend(self.node_warnings.iter().cloned());
        {
            let mut st = lock(&self.state);
            if st.firewall_warnings != firewall_warnings {
                for w in &firewall_warnings {
                    tracing::warn!("firewall: {w}");
                }
            }
            st.dataplane_ready = dp.is_ok();
            st.masquerade_ready = dp.is_ok() && d.firewall.manages_masquerade();
            st.firewall_warnings = firewall_warnings;
        }

        let t = Instant::now();
        let versions = self.chain_versions().await;
        {
            let mut st = lock(&self.state);
            if st.chain_problems != versions.problems {
                for p in &versions.problems {
                    tracing::warn!("CNI chain: {p}");
                }
            }
            st.chain_problems = versions.problems.clone();
        }
        let conflist = self.desired_conflist(mtu, &versions);
        let written = d.conflist.read().and_then(|on_disk| {
            match plan_conflist(&conflist, on_disk.as_ref()) {
                Some(_) => d.conflist.write_if_changed(&conflist),
                None => Ok(false),
            }
        });
        self.metrics
            .observe_reconcile("conflist", t.elapsed().as_secs_f64(), written.is_ok());
        match &written {
            Ok(true) => tracing::info!(conflist = %d.conflist.location(), "CNI conflist written"),
            Ok(false) => {}
            Err(e) => tracing::warn!("writing the CNI conflist: {e}"),
        }
        {
            let mut st = lock(&self.state);
            st.conflist_written = written.is_ok();
            st.conflist = Some(d.conflist.location());
            st.cni_versions = conflist.cni_versions.clone();
        }

        ipam_metrics(
            &self.cfg.cni.network_name,
            &conflist.plugin.ipam,
            &self.metrics,
        );

        let cp = match pass {
            ControlPass::Skip => None,
            ControlPass::Run(check) => {
                let t = Instant::now();
                let cp = tokio::select! {
                    r = d.control.ensure_routes_checked(&self.pod_cidrs, check) => Some(r),
                    _ = cancel.cancelled() => None,
                };
                let cp_ok = matches!(cp, Some(Ok(_)));
                self.metrics
                    .observe_reconcile("control-plane", t.elapsed().as_secs_f64(), cp_ok);
                if let Some(Err(e)) = &cp {
                    tracing::warn!("control plane: {e}");
                }
                cp
            }
        };
        let status = d.control.status();
        for r in &self.pod_cidrs {
            self.metrics.set_route(
                &r.to_string(),
                status.routes.advertised.contains(r),
                status.routes.approved.contains(r),
                status.routes.primary.contains(r),
            );
        }
        let blocked = add_blocked(&dp);
        let mut st = lock(&self.state);
        st.control = Some(status);
        st.add_blocked = blocked.clone();
        let not_ready = st.not_ready_reasons();
        self.metrics.set_ready(not_ready.is_empty());
        self.metrics.set_pods(st.pods.len() as u64);
        drop(st);
        if let Some(socket) = self.cfg.cni.daemon_socket_path() {
            let doc = crate::ready_file::document(
                &not_ready,
                &blocked,
                self.cfg.daemon.reconcile_interval(),
            );
            if let Err(e) = crate::ready_file::write(socket, &doc) {
                tracing::warn!(
                    "writing the readiness file next to {}: {e}",
                    socket.display()
                );
            }
        }
        ReconcileOutcome {
            mtu,
            dataplane: dp,
            conflist: written,
            control: cp,
            not_ready,
        }
    }
}

/// IPAM usage per range set of the store the conflist's `ipam` section points at (the same
/// conflist that was written, so the metrics always describe the pods' store).
fn ipam_metrics(network: &str, section: &ConflistIpam, metrics: &Metrics) {
    let Ok(section) = serde_json::to_value(section) else {
        return;
    };
    let Ok(ipam) = IpamConf::parse(&section) else {
        return;
    };
    let subnets: Vec<String> = ipam
        .ranges
        .iter()
        .filter_map(|set| set.first())
        .map(|r| r.subnet.to_string())
        .collect();
    let Ok(plugin) = headcni_ipam::plugin::IpamPlugin::from_ipam(ipam, network, &[]) else {
        return;
    };
    if let Ok(usage) = plugin.usage() {
        for (u, subnet) in usage.iter().zip(&subnets) {
            let size = u64::try_from(u.size).unwrap_or(u64::MAX);
            let allocated = u64::try_from(u.allocated).unwrap_or(u64::MAX);
            metrics.set_ipam(subnet, allocated, size.saturating_sub(allocated));
        }
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
