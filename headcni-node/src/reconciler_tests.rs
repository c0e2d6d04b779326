//! [`NodeReconciler`] with in-memory effects: no root, no namespace.

use std::path::PathBuf;

use headcni_core::control::{NotReadyReason, Readiness};
use headcni_core::node::firewall::NoFirewall;
use headcni_core::plugin::Namespaces;
use headcni_core::plugin::testing::{FakeNs, HOST, info};

use super::*;
use crate::backend::UnavailableBackend;
use crate::state::DaemonState;

struct Fixture {
    node: NodeReconciler,
    world: FakeNs,
    state: SharedState,
    _dir: tempfile::TempDir,
}

async fn fixture(mode: Mode, control: Arc<dyn ControlPlaneBackend>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.tailscale.mode = mode;
    cfg.cni.conf_dir = dir.path().join("net.d");
    cfg.cni.data_dir = dir.path().join("ipam");
    cfg.cni.daemon_socket = PathBuf::new();
    let world = FakeNs::default();
    let host = Arc::new(world.host().await.unwrap());
    let state: SharedState = Arc::new(RwLock::new(DaemonState::new("n", mode.as_str())));
    let deps = NodeDeps {
        control,
        firewall: Arc::new(NoFirewall),
        links: host.clone(),
        sysctl: host,
        conflist: Arc::new(cniconf::FileConflistSink::for_config(&cfg)),
    };
    let node = NodeReconciler::new(
        cfg,
        vec!["10.244.3.0/24".parse().unwrap()],
        deps,
        state.clone(),
        Arc::new(Metrics::new()),
    );
    Fixture {
        node,
        world,
        state,
        _dir: dir,
    }
}

fn tailnet_link(world: &FakeNs, name: &str, mtu: u32) {
    let mut w = world.w();
    let mut l = info(&mut w, name, "tun", None);
    l.mtu = mtu;
    w.links
        .entry(HOST.to_owned())
        .or_default()
        .insert(name.to_owned(), (l, vec![]));
}

#[tokio::test]
async fn a_backend_that_could_not_be_built_is_refused_but_the_node_is_prepared() {
    let control = Arc::new(UnavailableBackend::new(
        "headscale",
        "headscale API key: gone",
    ));
    let f = fixture(Mode::Host, control).await;
    let o = f.node.reconcile_once(&CancellationToken::new()).await;
    assert!(o.dataplane.is_ok() && matches!(o.conflist, Ok(true)));
    assert!(matches!(o.control, Some(Err(_))));
    assert!(!o.ok());
    assert_eq!(
        o.not_ready,
        ["control plane: refused: headscale API key: gone"]
    );
    let st = f.state.read().unwrap();
    assert!(matches!(
        st.control.as_ref().map(|c| &c.readiness),
        Some(Readiness::NotReady {
            reason: NotReadyReason::Refused,
            ..
        })
    ));
    assert_eq!(st.control.as_ref().unwrap().wanted, f.node.pod_cidrs());
}

#[tokio::test]
async fn driver_none_neither_claims_nor_requires_the_masquerade_table() {
    let control = Arc::new(UnavailableBackend::new("headscale", "x"));
    let f = fixture(Mode::Host, control).await;
    f.node.reconcile_once(&CancellationToken::new()).await;
    let st = f.state.read().unwrap();
    assert_eq!(st.firewall_driver, "none");
    assert!(st.dataplane_ready);
    assert!(!st.masquerade_ready, "not claimed");
    assert!(
        !st.not_ready_reasons()
            .iter()
            .any(|r| r.contains("masquerade")),
        "not required: {:?}",
        st.not_ready_reasons()
    );
}

#[tokio::test]
async fn an_unchanged_conflist_is_not_rewritten() {
    let f = fixture(Mode::Host, Arc::new(UnavailableBackend::new("h", "x"))).await;
    let cancel = CancellationToken::new();
    assert!(matches!(
        f.node.reconcile_once(&cancel).await.conflist,
        Ok(true)
    ));
    let second = f.node.reconcile_once(&cancel).await;
    assert!(matches!(second.conflist, Ok(false)));
    assert_eq!(
        second.dataplane.unwrap(),
        DataplaneReport::default(),
        "nothing to repair"
    );
}

#[tokio::test]
async fn host_mode_takes_the_tailnet_link_mtu_daemon_mode_never_reads_it() {
    let host = fixture(Mode::Host, Arc::new(UnavailableBackend::new("h", "x"))).await;
    assert_eq!(host.node.pod_mtu().await, 1280, "no tailnet link yet");
    tailnet_link(&host.world, "tailscale0", 1420);
    assert_eq!(host.node.pod_mtu().await, 1420);
    let o = host.node.reconcile_once(&CancellationToken::new()).await;
    assert_eq!(o.mtu, 1420);
    assert_eq!(host.node.desired_conflist(o.mtu).plugin.mtu, 1420);

    let daemon = fixture(Mode::Daemon, Arc::new(UnavailableBackend::new("h", "x"))).await;
    tailnet_link(&daemon.world, "headcni01", 1420);
    assert_eq!(
        daemon.node.pod_mtu().await,
        1280,
        "the TUN's 1420 is ignored"
    );
}
