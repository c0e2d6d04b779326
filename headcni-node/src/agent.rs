//! The node agent's loop (`headcni daemon`): discovers the node's PodCIDR, writes the CNI
//! conflist, keeps the bridge, forwarding and the masquerade table in place, and makes the
//! tailnet carry this node's pods (advertise + approve the PodCIDR through the control plane);
//! and `headcni uninstall`'s steps.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use headcni_core::control::bus::{ControlPass, PassInputs, control_pass, jittered};
use headcni_core::control::{ApprovalCheck, ControlPlaneBackend};
use headcni_core::node::conflist_sink::ConflistSink;
use headcni_core::node::firewall::{FirewallDriver, NoFirewall};
use headcni_core::node::retry::ReconcileBackoff;
use headcni_netlink::{NetlinkHandle, NftFirewall};
use ipnetwork::IpNetwork;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backend::{self, build_or_unavailable};
use crate::cniconf::FileConflistSink;
use crate::config::{self, Config, DaemonFlags, FirewallDriverKind, Mode};
use crate::metrics::Metrics;
use crate::reconciler::{NodeDeps, NodeReconciler};
use crate::state::{self, DaemonState, SharedState};
use crate::{dataplane, events, http, ipnbus, podcidr, tailscaled};

/// The nftables table HeadCNI owns (`inet headcni`): [`headcni_core::defaults::NFT_TABLE`].
pub use headcni_core::defaults::NFT_TABLE;
/// MTU when neither the config nor the tailnet interface gives one (tailscaled's TUN MTU):
/// [`headcni_core::defaults::TAILNET_MTU`].
pub use headcni_core::defaults::TAILNET_MTU as DEFAULT_TAILNET_MTU;
/// How long SIGTERM may take before the daemon returns anyway.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// After an IPN bus change, how long the loop gathers further notifications before its pass
/// (at most one event-driven pass per this long, plus the pass itself).
pub const BUS_DEBOUNCE: Duration = Duration::from_millis(50);

/// The configuration from `flags` and the process environment, with every error at once
/// ([`config::check_from`]) and its warnings, which the caller logs ([`log_warnings`]) once
/// logging is set up.
///
/// # Errors
/// [`config::ConfigError`]: the file cannot be used, or one or more values are invalid.
pub fn load_config(
    flags: &DaemonFlags,
) -> std::result::Result<(Config, Vec<config::Problem>), config::ConfigError> {
    config::check_from(flags, &|k| std::env::var(k).ok())?.into_result()
}

/// Logs configuration warnings (one `warn` event per [`config::Problem`]).
pub fn log_warnings(warnings: &[config::Problem]) {
    for w in warnings {
        tracing::warn!(key = %w.key, "configuration: {}", w.message);
    }
}

fn lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// The firewall driver `[node] firewall_driver` names.
pub fn firewall_driver(cfg: &Config) -> Arc<dyn FirewallDriver> {
    match cfg.node.firewall_driver {
        FirewallDriverKind::Nft => Arc::new(NftFirewall::new()),
        FirewallDriverKind::Unmanaged => Arc::new(NoFirewall),
    }
}

/// Daemon mode: starts the supervisor of the dedicated tailscaled; each (re)start wakes the
/// reconcile loop (`wake`), whose control plane logs it in ([`crate::backend::DaemonModeBackend`]).
fn start_daemon_mode(
    cfg: &Config,
    wake: Arc<Notify>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<tailscaled::SupervisorReport> {
    let spec = tailscaled::TailscaledSpec {
        binary: cfg.tailscale.tailscaled_path.clone(),
        tun: cfg.interface(),
        socket: cfg.tailscale_socket(),
        state_dir: cfg.tailscaled_state_dir(),
        port: cfg.tailscale.port,
        env: vec![(
            "TS_DEBUG_MTU".into(),
            headcni_core::node::mtu::own_tailscaled_mtu(cfg.cni.mtu).to_string(),
        )],
    };
    tokio::spawn(tailscaled::supervise(
        spec,
        tailscaled::RestartPolicy::default(),
        cancel.child_token(),
        move |n| {
            tracing::info!(start = n, "dedicated tailscaled started");
            wake.notify_one();
        },
    ))
}

/// Why [`run`] could not start the node agent (it does not fail once running: failing
/// reconcile steps are logged, counted and retried).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The HTTP listener (`[daemon] listen`) could not be bound.
    #[error(transparent)]
    Bind(#[from] http::BindError),
    /// Daemon mode, but a host tailscaled answers on its LocalAPI socket (`socket`).
    #[error(
        "daemon mode refuses to start: a host tailscaled answers on {}. Two tailscaled in one network \
         namespace fight over route table 52, ip rules 52xx and the ts-* netfilter chains; use \
         [tailscale] mode = \"host\" on this node",
        socket.display()
    )]
    HostTailscaled {
        /// The host tailscaled's socket.
        socket: std::path::PathBuf,
    },
    /// No PodCIDR could be discovered.
    #[error(transparent)]
    PodCidr(#[from] podcidr::PodCidrError),
    /// No netlink socket could be opened in the node's namespace.
    #[error("open netlink in the node namespace")]
    Netlink(#[source] headcni_core::link::LinkError),
}

/// Runs the node agent with `cfg` (loaded from `flags`, [`load_config`]) until `cancel` is
/// cancelled (the binary cancels on SIGTERM/SIGINT); each `reload` notification (SIGHUP)
/// reloads the configuration from the same `flags` and the environment. Serves the HTTP
/// endpoints ([`http`]) and the plugin event socket ([`events`]), discovers the PodCIDR
/// ([`podcidr`]), supervises tailscaled in daemon mode ([`tailscaled`]), follows tailscaled's
/// IPN bus ([`ipnbus`]) and reconciles every `[daemon] reconcile_interval_secs` (sooner, with
/// backoff, while not ready) and at once (debounced by [`BUS_DEBOUNCE`]) when the bus reports
/// a prefs, state or netmap-route change. While the bus is connected and the node ready, the
/// periodic passes leave the control plane alone; every `[headscale] resync_secs` (jittered)
/// a pass verifies the approval with Headscale (`headcni_core::control::bus::control_pass`).
/// On cancel the tasks get [`SHUTDOWN_BUDGET`] to finish.
///
/// # Errors
/// Start-up only ([`NodeError`]): the HTTP listener cannot be bound, daemon mode beside a
/// host tailscaled, or PodCIDR discovery failed. (A failing event socket ends its task,
/// logged at shutdown, as before.)
pub async fn run(
    flags: DaemonFlags,
    cfg: Config,
    cancel: CancellationToken,
    reload: Arc<Notify>,
) -> std::result::Result<(), NodeError> {
    headcni_headscale::tls::install_ring_provider();
    let mut cfg = cfg;
    let state: SharedState = Arc::new(RwLock::new(DaemonState::new(
        cfg.node_name(),
        cfg.tailscale.mode.as_str(),
    )));
    let metrics = Arc::new(Metrics::new());
    tracing::info!(node = %cfg.node_name(), mode = cfg.tailscale.mode.as_str(), "headcni daemon starting");

    let listener = http::bind(cfg.daemon.listen).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let serve_http = http::serve(
        listener,
        state.clone(),
        metrics.clone(),
        cancel.child_token(),
    );
    tasks.spawn(async move { serve_http.await.map_err(anyhow::Error::from) });
    if let Some(sock) = cfg.cni.daemon_socket_path() {
        let serve_events = events::serve(
            sock.to_path_buf(),
            state.clone(),
            metrics.clone(),
            cancel.child_token(),
        );
        tasks.spawn(async move { serve_events.await.map_err(anyhow::Error::from) });
    }

    if cfg.tailscale.mode == Mode::Daemon {
        let host_socket = Path::new(config::HOST_TAILSCALE_SOCKET);
        if host_socket != cfg.tailscale_socket()
            && headcni_headscale::daemon::tailscaled_answers(host_socket).await
        {
            return Err(NodeError::HostTailscaled {
                socket: host_socket.to_path_buf(),
            });
        }
    }

    let discovered = tokio::select! {
        d = podcidr::discover(&cfg, &cancel) => d?,
        _ = cancel.cancelled() => {
            shutdown(tasks, None).await;
            return Ok(());
        }
    };
    tracing::info!(cidrs = ?discovered.cidrs, source = ?discovered.source, detail = %discovered.detail, "PodCIDR");
    if discovered.source != state::PodCidrSource::Config {
        log_warnings(&config::cidr_warnings("PodCIDR", &discovered.cidrs));
    }
    lock(&state).pod_cidr_source = Some(discovered.source);
    let (control, mut control_built, _) = build_or_unavailable(&cfg, &metrics);
    let wake = Arc::new(Notify::new());
    let supervisor = if cfg.tailscale.mode == Mode::Daemon {
        Some(start_daemon_mode(&cfg, wake.clone(), &cancel))
    } else {
        None
    };
    let netlink = Arc::new(NetlinkHandle::current().await.map_err(NodeError::Netlink)?);
    let deps = NodeDeps {
        control,
        firewall: firewall_driver(&cfg),
        links: netlink.clone(),
        sysctl: netlink,
        conflist: Arc::new(FileConflistSink::for_config(&cfg)),
    };
    let mut node = NodeReconciler::new(
        cfg.clone(),
        discovered.cidrs.clone(),
        deps,
        state.clone(),
        metrics.clone(),
    );

    // What kube-proxy needs from the bridge (once, as kube-proxy does at start).
    let bridge_netfilter = cfg.node.bridge_netfilter;
    let bridge_warning = tokio::task::spawn_blocking(move || {
        headcni_netlink::bridge_netfilter::ensure(bridge_netfilter)
    })
    .await
    .ok()
    .flatten();
    if let Some(w) = &bridge_warning {
        tracing::warn!("bridge netfilter: {w}");
    }
    node.set_node_warnings(bridge_warning.into_iter().collect());
    let bus_signal = Arc::new(Notify::new());
    let (bus_tx, bus_rx) = tokio::sync::watch::channel(ipnbus::BusState::default());
    {
        let client = headcni_headscale::LocalApiClient::new(cfg.tailscale_socket())
            .with_timeout(cfg.headscale.timeout())
            .with_observer(backend::metrics_observer(&metrics));
        let opts = ipnbus::BusOptions {
            retry_absent: cfg.headscale.resync(),
            idle: cfg.headscale.resync(),
        };
        let follow = ipnbus::follow(
            client,
            bus_signal.clone(),
            bus_tx,
            opts,
            cancel.child_token(),
        );
        tasks.spawn(async move {
            follow.await;
            Ok(())
        });
    }

    let mut backoff =
        ReconcileBackoff::new(Duration::from_secs(cfg.daemon.reconcile_interval_secs));
    let mut first = true;
    let mut last_ready = false;
    let mut signalled = false;
    let mut next_resync = Instant::now() + jittered(cfg.headscale.resync(), rand::random());
    loop {
        if !control_built {
            // e.g. the API key file was fixed through its Secret
            let (control, built, _) = build_or_unavailable(&cfg, &metrics);
            node.set_control(control);
            control_built = built;
            first = true;
        }
        let bus = *bus_rx.borrow();
        lock(&state).ipn_bus = bus;
        let resync_due = Instant::now() >= next_resync;
        let pass = control_pass(PassInputs {
            first,
            bus_connected: bus.is_connected(),
            bus_signalled: signalled,
            last_ready,
            resync_due,
        });
        if pass == ControlPass::Run(ApprovalCheck::Verify) {
            next_resync = Instant::now() + jittered(cfg.headscale.resync(), rand::random());
        }
        tracing::debug!(?pass, ?bus, signalled, "reconcile pass");
        let outcome = node.reconcile_with(&cancel, pass).await;
        if outcome.control.is_some() {
            first = false;
        }
        last_ready = outcome.ok();
        signalled = false;
        // Not ready: retry sooner, with capped exponential backoff; ready: the normal interval.
        let wait = backoff
            .next_wait(outcome.ok())
            .min(next_resync.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = reload.notified() => {
                match load_config(&flags) {
                    Ok((new, warnings)) => {
                        log_warnings(&warnings);
                        if new.node.pod_cidr != cfg.node.pod_cidr || new.tailscale.mode != cfg.tailscale.mode {
                            tracing::warn!("PodCIDR or mode changed in the config: restart the daemon to apply");
                        }
                        if new.node.firewall_driver != cfg.node.firewall_driver {
                            tracing::warn!("firewall_driver changed in the config: restart the daemon to apply");
                        }
                        let (control, built, _) = build_or_unavailable(&new, &metrics);
                        node.set_control(control);
                        control_built = built;
                        first = true;
                        node.set_config(new.clone());
                        cfg = new;
                        tracing::info!("configuration reloaded (flags and environment re-applied)");
                    }
                    Err(e) => tracing::error!("reload failed, keeping the running configuration: {e:#}"),
                }
            }
            _ = wake.notified() => signalled = true,
            _ = bus_signal.notified() => {
                signalled = true;
                // Debounce: one pass for a burst of notifications (bounded pass rate).
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(BUS_DEBOUNCE) => {}
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(socket) = cfg.cni.daemon_socket_path()
        && let Err(e) = crate::ready_file::remove(socket)
    {
        tracing::warn!("removing the readiness file: {e}");
    }
    shutdown(tasks, supervisor).await;
    Ok(())
}

async fn shutdown(
    mut tasks: tokio::task::JoinSet<Result<()>>,
    supervisor: Option<tokio::task::JoinHandle<tailscaled::SupervisorReport>>,
) {
    tracing::info!("shutting down");
    let deadline = Instant::now() + SHUTDOWN_BUDGET;
    if let Some(s) = supervisor {
        let _ = tokio::time::timeout_at(deadline.into(), s).await;
    }
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
            Ok(Some(Ok(Err(e)))) => tracing::warn!("task ended with an error: {e:#}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!("shutdown budget exceeded; exiting");
                tasks.abort_all();
                break;
            }
        }
    }
}

/// The pod CIDRs recorded in the conflist HeadCNI wrote (for uninstall when discovery is not
/// possible any more).
fn cidrs_from_conflist(sink: &dyn ConflistSink) -> Vec<IpNetwork> {
    sink.read()
        .ok()
        .flatten()
        .map(|c| c.conflist.pod_cidrs())
        .unwrap_or_default()
}

/// What [`uninstall`] did (one line per step, for people) and what it could not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallReport {
    /// Steps done, e.g. `removed the nftables table inet headcni`.
    pub done: Vec<String>,
    /// Steps that failed or could not be attempted, each with its reason.
    pub problems: Vec<String>,
}

/// `headcni uninstall`: withdraw this node's routes (the PodCIDRs of the conflist HeadCNI
/// wrote, else the configured ones), remove the masquerade table and the conflist (only
/// HeadCNI's own file). Not done on a plain restart. Prints nothing: the caller reports.
pub async fn uninstall(cfg: &Config) -> UninstallReport {
    headcni_headscale::tls::install_ring_provider();
    let sink = FileConflistSink::for_config(cfg);
    let control = backend::build(cfg, None)
        .map(|(b, _)| b as Arc<dyn ControlPlaneBackend>)
        .map_err(|e| backend::chain(&e));
    uninstall_with(cfg, control, firewall_driver(cfg).as_ref(), &sink).await
}

/// [`uninstall`] with the given effects: withdraw through `control` (or report why it could
/// not be built), remove the rule set through `firewall` (nothing with the `none` driver),
/// remove the conflist from `sink`.
pub async fn uninstall_with(
    cfg: &Config,
    control: std::result::Result<Arc<dyn ControlPlaneBackend>, String>,
    firewall: &dyn FirewallDriver,
    sink: &dyn ConflistSink,
) -> UninstallReport {
    let mut report = UninstallReport::default();
    let (done, problems) = (&mut report.done, &mut report.problems);
    let conflist = sink.location();
    let mut cidrs = cidrs_from_conflist(sink);
    if cidrs.is_empty() {
        cidrs = podcidr::from_config(cfg).unwrap_or_default();
    }
    if cidrs.is_empty() {
        problems.push(
            "no PodCIDR known (no conflist, none configured): routes not withdrawn".to_owned(),
        );
    } else {
        match control {
            Ok(b) => match b.withdraw_routes(&cidrs).await {
                Ok(()) => done.push(format!("withdrew {cidrs:?} from the tailnet")),
                Err(e) => problems.push(format!("withdrawing routes: {e}")),
            },
            Err(e) => problems.push(format!("control plane: {e}")),
        }
    }
    if firewall.manages_masquerade() {
        match dataplane::teardown_with(firewall, NFT_TABLE).await {
            Ok(_) => done.push(format!("removed the nftables table inet {NFT_TABLE}")),
            Err(e) => problems.push(format!("masquerade table: {}", backend::chain(&e))),
        }
    } else {
        done.push(format!(
            "left the firewall alone (firewall_driver = \"{}\")",
            firewall.name()
        ));
    }
    match sink.remove() {
        Ok(true) => done.push(format!("removed {conflist}")),
        Ok(false) => {}
        Err(e) => problems.push(format!("removing {conflist}: {e}")),
    }
    report
}
