//! [`NodeReconciler`] with in-memory effects: no root, no namespace.

use std::path::PathBuf;

use headcni_core::control::{NotReadyReason, Readiness};
use headcni_core::node::firewall::NoFirewall;
use headcni_core::plugin::Namespaces;
use headcni_core::plugin::testing::{FakeNs, HOST, info};

use super::*;
use crate::backend::UnavailableBackend;
use crate::state::DaemonState;
use headcni_core::node::chain_versions::ChainVersions;

struct Fixture {
    node: NodeReconciler,
    world: FakeNs,
    state: SharedState,
    _dir: tempfile::TempDir,
}

async fn fixture(mode: Mode, control: Arc<dyn ControlPlaneBackend>) -> Fixture {
    fixture_with(mode, control, |_, _| {}).await
}

async fn fixture_with(
    mode: Mode,
    control: Arc<dyn ControlPlaneBackend>,
    tweak: impl FnOnce(&mut Config, &std::path::Path),
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.cni.bin_dir = dir.path().join("bin");
    cfg.tailscale.mode = mode;
    cfg.cni.conf_dir = dir.path().join("net.d");
    cfg.cni.data_dir = dir.path().join("ipam");
    cfg.cni.daemon_socket = PathBuf::new();
    tweak(&mut cfg, dir.path());
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
    assert_eq!(
        host.node
            .desired_conflist(o.mtu, &ChainVersions::headcni_only())
            .plugin
            .mtu,
        1420
    );

    let daemon = fixture(Mode::Daemon, Arc::new(UnavailableBackend::new("h", "x"))).await;
    tailnet_link(&daemon.world, "headcni01", 1420);
    assert_eq!(
        daemon.node.pod_mtu().await,
        1280,
        "the TUN's 1420 is ignored"
    );
}

/// Each pass asks the chained plugins for their versions (the conflist offers what all
/// accept; a missing one is a warning, not a reason) and writes the readiness file next to
/// the event socket with the pass's reasons.
#[tokio::test]
async fn a_pass_negotiates_versions_and_writes_the_readiness_file() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture_with(
        Mode::Host,
        Arc::new(UnavailableBackend::new("h", "x")),
        |cfg, dir| {
            std::fs::create_dir(dir.join("bin")).unwrap();
            let p = dir.join("bin/new-plugin");
            std::fs::write(
                &p,
                "#!/bin/sh\necho '{\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]}'\n",
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            cfg.cni.chained = vec![serde_json::json!({"type": "new-plugin"})];
            cfg.cni.daemon_socket = dir.join("run/daemon.sock");
        },
    )
    .await;
    let o = f.node.reconcile_once(&CancellationToken::new()).await;
    let sink = cniconf::FileConflistSink::for_config(f.node.config());
    let on_disk = sink.read().unwrap().unwrap().conflist;
    assert_eq!(on_disk.cni_version, "1.0.0");
    assert_eq!(on_disk.cni_versions, ["0.4.0", "1.0.0", "1.1.0"]);
    let socket = f.node.config().cni.daemon_socket.clone();
    let path = headcni_core::node::ready_file::ready_file_path(&socket);
    let doc: headcni_core::node::ready_file::ReadyFile =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(!doc.ready);
    assert_eq!(doc.reasons, o.not_ready);
    assert!(f.state.read().unwrap().chain_problems.is_empty());

    // The plugin disappears: reported, and the list stops at 1.0.0.
    std::fs::remove_file(f.node.config().cni.bin_dir.join("new-plugin")).unwrap();
    let o = f.node.reconcile_once(&CancellationToken::new()).await;
    let on_disk = sink.read().unwrap().unwrap().conflist;
    assert_eq!(on_disk.cni_versions, ["0.3.1", "0.4.0", "1.0.0"]);
    let st = f.state.read().unwrap();
    assert_eq!(st.chain_problems.len(), 1, "{:?}", st.chain_problems);
    assert!(st.chain_problems[0].contains("new-plugin"));
    assert!(
        !o.not_ready.iter().any(|r| r.contains("new-plugin")),
        "a warning, not a reason: {:?}",
        o.not_ready
    );
}
