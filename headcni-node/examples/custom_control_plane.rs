//! The node reconcile driven with a custom control plane: no Headscale, no tailscaled, no
//! root.
//!
//! [`InstantApproval`] is an in-memory [`ControlPlaneBackend`] that approves every route at
//! once (what an embedder's own control plane would do through its API). The links and the
//! forwarding sysctls are headcni-core's in-memory fake (`plugin::testing`, feature
//! `testing`), the firewall driver is `none` ([`NoFirewall`]: masquerading is someone else's)
//! and the conflist goes to a temporary directory through the real file sink. Everything else
//! is headcni-node's own [`NodeReconciler`]: the same observe, plan and act as `headcni
//! daemon`, the same state (`/readyz`, `/status`) and metrics.
//!
//! Run it with `cargo run -p headcni-node --example custom_control_plane`; it prints each
//! pass ([`render`]). `headcni-node/tests/examples.rs` runs [`run`] and checks what it
//! reports and prints.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use headcni_core::control::{
    ControlPlaneBackend, ControlPlaneError, ControlPlaneStatus, PeerRoutes, Readiness, RouteState,
};
use headcni_core::node::firewall::NoFirewall;
use headcni_core::plugin::Namespaces;
use headcni_core::plugin::testing::FakeNs;
use headcni_node::cniconf::FileConflistSink;
use headcni_node::config::Config;
use headcni_node::metrics::Metrics;
use headcni_node::state::{DaemonState, SharedState};
use headcni_node::{NodeDeps, NodeReconciler};
use ipnetwork::IpNetwork;
use tokio_util::sync::CancellationToken;

/// A control plane that approves whatever is asked, at once, and serves it as primary.
#[derive(Debug, Default)]
pub struct InstantApproval {
    routes: Mutex<RouteState>,
}

impl InstantApproval {
    fn routes(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ControlPlaneBackend for InstantApproval {
    async fn ensure_routes(&self, routes: &[IpNetwork]) -> Result<RouteState, ControlPlaneError> {
        let mut r = self.routes();
        *r = RouteState {
            advertised: routes.to_vec(),
            approved: routes.to_vec(),
            primary: routes.to_vec(),
        };
        Ok(r.clone())
    }
    async fn withdraw_routes(&self, routes: &[IpNetwork]) -> Result<(), ControlPlaneError> {
        let mut guard = self.routes();
        let r = &mut *guard;
        for list in [&mut r.advertised, &mut r.approved, &mut r.primary] {
            list.retain(|x| !routes.contains(x));
        }
        Ok(())
    }
    async fn peer_routes(&self) -> Result<Vec<PeerRoutes>, ControlPlaneError> {
        Ok(Vec::new())
    }
    fn status(&self) -> ControlPlaneStatus {
        let r = self.routes().clone();
        let mut s = ControlPlaneStatus::initial("example/instant-approval");
        s.wanted = r.primary.clone();
        s.readiness = if r.primary.is_empty() {
            s.readiness
        } else {
            Readiness::Ready
        };
        s.routes = r;
        s
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Ready after the pass (`/readyz` would answer 200).
    pub ready: bool,
    /// Why not, if not.
    pub not_ready: Vec<String>,
    /// The bridge had to be created or repaired.
    pub bridge_changed: bool,
    /// Forwarding had to be switched on.
    pub forwarding_changed: bool,
    /// The conflist was written.
    pub conflist_written: bool,
    /// The pod MTU used.
    pub mtu: u32,
}

/// What [`run`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The passes, in order.
    pub passes: Vec<Pass>,
    /// The conflist file.
    pub conflist: PathBuf,
    /// The PodCIDRs the conflist on disk names.
    pub conflist_pod_cidrs: Vec<IpNetwork>,
    /// The routes the control plane approved.
    pub approved: Vec<IpNetwork>,
    /// The bridge's addresses afterwards.
    pub bridge_addresses: Vec<IpNetwork>,
}

/// Two reconcile passes for PodCIDR `10.244.7.0/24` with the conflist under `dir`.
///
/// Errors: the runtime cannot be built, a pass fails, or the conflist cannot be read back.
pub fn run(dir: &Path) -> Result<Report, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pod_cidr: IpNetwork = "10.244.7.0/24".parse()?;
        let mut cfg = Config::default();
        cfg.node.name = Some("example-node".into());
        cfg.node.pod_cidr = vec![pod_cidr];
        cfg.cni.conf_dir = dir.join("net.d");
        cfg.cni.data_dir = dir.join("ipam");
        cfg.cni.daemon_socket = PathBuf::new();

        let world = FakeNs::default();
        let host = Arc::new(world.host().await?);
        let control = Arc::new(InstantApproval::default());
        let sink = FileConflistSink::for_config(&cfg);
        let conflist = sink.path();
        let deps = NodeDeps {
            control: control.clone(),
            firewall: Arc::new(NoFirewall),
            links: host.clone(),
            sysctl: host,
            conflist: Arc::new(sink),
        };
        let state: SharedState = Arc::new(RwLock::new(DaemonState::new("example-node", "host")));
        let node = NodeReconciler::new(cfg, vec![pod_cidr], deps, state, Arc::new(Metrics::new()));

        let cancel = CancellationToken::new();
        let mut passes = Vec::new();
        for _ in 0..2 {
            let o = node.reconcile_once(&cancel).await;
            let dp = o.dataplane.as_ref().map_err(|e| e.to_string())?;
            passes.push(Pass {
                ready: o.ready(),
                not_ready: o.not_ready.clone(),
                bridge_changed: dp.bridge_changed,
                forwarding_changed: dp.forwarding_changed,
                conflist_written: *o.conflist.as_ref().map_err(|e| e.to_string())?,
                mtu: o.mtu,
            });
        }
        let on_disk = headcni_core::node::cniconf::Conflist::parse(&std::fs::read(&conflist)?)?;
        let bridge_addresses = world
            .w()
            .links
            .get(headcni_core::plugin::testing::HOST)
            .and_then(|l| l.get("headcni0"))
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        let approved = control.status().routes.approved;
        Ok(Report {
            passes,
            conflist,
            conflist_pod_cidrs: on_disk.pod_cidrs(),
            approved,
            bridge_addresses,
        })
    })
}

/// What [`run`] saw, for people: one line per pass, then the conflist, the approved routes
/// and the bridge's addresses.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for (i, p) in report.passes.iter().enumerate() {
        let why = if p.ready {
            String::new()
        } else {
            format!(" not ready: {}", p.not_ready.join("; "))
        };
        out.push_str(&format!(
            "pass {}: ready={} bridge_changed={} forwarding_changed={} conflist_written={} mtu={}{why}\n",
            i + 1,
            p.ready,
            p.bridge_changed,
            p.forwarding_changed,
            p.conflist_written,
            p.mtu,
        ));
    }
    let list = |v: &[IpNetwork]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!(
        "conflist {} written with PodCIDR {}\n",
        report.conflist.display(),
        list(&report.conflist_pod_cidrs)
    ));
    out.push_str(&format!("approved routes: {}\n", list(&report.approved)));
    out.push_str(&format!(
        "bridge headcni0 addresses: {}\n",
        list(&report.bridge_addresses)
    ));
    out
}

#[allow(dead_code)] // the test includes this file as a module and calls `run` and `render`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    print!("{}", render(&run(dir.path())?));
    Ok(())
}
