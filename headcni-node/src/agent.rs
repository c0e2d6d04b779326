//! The node agent's loop (`headcni daemon`): discovers the node's PodCIDR, writes the CNI
//! conflist, keeps the bridge, forwarding and the masquerade table in place, and makes the
//! tailnet carry this node's pods (advertise + approve the PodCIDR through the control plane);
//! and `headcni uninstall`'s steps.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use headcni_core::control::{ControlPlaneBackend, ControlPlaneStatus};
use headcni_core::ipam::IpamConf;
use headcni_core::link::LinkManager;
use headcni_core::node::cniconf::{Conflist, ConflistIpam};
use headcni_headscale::{
    ApprovalMode, BackendOptions, HeadscaleClient, HeadscaleConfig, LocalApiClient,
    RequestObserver, Secret, TailnetBackend,
};
use ipnetwork::IpNetwork;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Approval, Config, DaemonFlags, Mode};
use crate::metrics::Metrics;
use crate::state::{self, DaemonState, SharedState};
use crate::{cniconf, dataplane, events, http, podcidr, tailscaled};

/// The nftables table HeadCNI owns (`inet headcni`): [`headcni_core::defaults::NFT_TABLE`].
pub use headcni_core::defaults::NFT_TABLE;
/// MTU when neither the config nor the tailnet interface gives one (tailscaled's TUN MTU).
pub const DEFAULT_TAILNET_MTU: u32 = 1280;
/// How long SIGTERM may take before the daemon returns anyway.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

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

/// A Headscale client with `[headscale] timeout_secs` as its request budget.
fn headscale_client(
    cfg: &Config,
    url: &str,
    key: Secret,
    observer: Option<RequestObserver>,
) -> Result<HeadscaleClient> {
    let mut hc = HeadscaleConfig::new(url.to_owned(), Some(key));
    hc.request_timeout = cfg.headscale.timeout();
    hc.connect_timeout = cfg.headscale.timeout().min(Duration::from_secs(5));
    let client = HeadscaleClient::new(hc)?;
    Ok(match observer {
        Some(o) => client.with_observer(o),
        None => client,
    })
}

/// Feeds `headcni_control_plane_requests_total{endpoint,result}` from both clients.
fn metrics_observer(metrics: &Arc<Metrics>) -> RequestObserver {
    let m = metrics.clone();
    RequestObserver::new(move |endpoint, ok| m.record_control(endpoint, ok))
}

/// Builds the control-plane backend for the configured mode and approval. Both clients use
/// `[headscale] timeout_secs` per request, so an unresponsive Headscale or tailscaled makes
/// the node not ready instead of stalling the reconcile.
fn backend(
    cfg: &Config,
    observer: Option<RequestObserver>,
) -> Result<(Arc<TailnetBackend>, Option<Arc<HeadscaleClient>>)> {
    let mut localapi =
        LocalApiClient::new(cfg.tailscale_socket()).with_timeout(cfg.headscale.timeout());
    if let Some(o) = &observer {
        localapi = localapi.with_observer(o.clone());
    }
    let headscale = match (&cfg.headscale.url, cfg.headscale.approval) {
        (Some(url), Approval::Api) => {
            let key = Secret::load_api_key(cfg.headscale.api_key_file.as_deref())
                .map_err(|e| anyhow!("headscale API key: {e}"))?;
            Some(Arc::new(headscale_client(cfg, url, key, observer.clone())?))
        }
        (Some(url), Approval::AutoApprovers) if cfg.tailscale.mode == Mode::Daemon => {
            // daemon mode still needs the API for the bootstrap pre-auth key
            match Secret::load_api_key(cfg.headscale.api_key_file.as_deref()) {
                Ok(key) => Some(Arc::new(headscale_client(cfg, url, key, observer.clone())?)),
                Err(_) => None,
            }
        }
        _ => None,
    };
    let approval = match (cfg.headscale.approval, &headscale) {
        (Approval::Api, Some(h)) => ApprovalMode::Api(h.clone()),
        (Approval::Api, None) => {
            bail!("[headscale] approval = \"api\" needs [headscale] url and an API key")
        }
        (Approval::AutoApprovers, _) => ApprovalMode::AutoApprovers,
    };
    let opts = BackendOptions {
        approval_timeout: Duration::from_secs(10),
        ..BackendOptions::default()
    };
    Ok((
        Arc::new(TailnetBackend::new(localapi, approval, opts)),
        headscale,
    ))
}

/// The control plane as the reconcile loop sees it: a backend, or why none could be built
/// (reported as not ready / refused and retried on every pass).
type Backend = std::result::Result<Arc<TailnetBackend>, String>;

fn try_backend(cfg: &Config, metrics: &Arc<Metrics>) -> (Backend, Option<Arc<HeadscaleClient>>) {
    match backend(cfg, Some(metrics_observer(metrics))) {
        Ok((b, h)) => (Ok(b), h),
        Err(e) => {
            tracing::error!("control plane: {e:#}");
            (Err(format!("{e:#}")), None)
        }
    }
}

/// The pod MTU: the config's; in daemon mode the MTU the daemon gives its own tailscaled
/// (`TS_DEBUG_MTU`, the same value); in host mode the tailnet interface's, else 1280.
///
/// Daemon mode never reads the interface: a TUN is visible before its owner has set the MTU
/// (wireguard-go creates it at 1420), and a pod attached in that window would keep the wrong
/// MTU for its lifetime.
async fn pod_mtu(cfg: &Config) -> u32 {
    if let Some(m) = cfg.cni.mtu {
        return m;
    }
    if cfg.tailscale.mode == config::Mode::Daemon {
        return DEFAULT_TAILNET_MTU;
    }
    match headcni_netlink::NetlinkHandle::current().await {
        Ok(h) => match h.link(&cfg.interface()).await {
            Ok(Some(l)) if l.mtu >= 1280 => l.mtu,
            _ => DEFAULT_TAILNET_MTU,
        },
        Err(_) => DEFAULT_TAILNET_MTU,
    }
}

/// One pass of the node reconcile: data plane, conflist, IPAM metrics, control plane. Each
/// step is timed and reported; a failing step never stops the others (the conflist is written
/// even while Headscale is down, so CNI ADD keeps working).
async fn reconcile(
    cfg: &Config,
    pod_cidrs: &[IpNetwork],
    backend: &Backend,
    state: &SharedState,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> bool {
    let mut all_ok = true;

    let t = Instant::now();
    let mtu = pod_mtu(cfg).await;
    let params = dataplane::DataplaneParams {
        bridge: cfg.cni.bridge.clone(),
        mtu: Some(mtu),
        pod_cidrs: pod_cidrs.to_vec(),
        cluster_cidrs: cfg.node.cluster_cidr.clone(),
        table: NFT_TABLE.to_owned(),
    };
    // As anyhow, so that the log line shows the step and its causes (`{e:#}`).
    let dp = dataplane::reconcile(&params)
        .await
        .map_err(anyhow::Error::from);
    metrics.observe_reconcile("dataplane", t.elapsed().as_secs_f64(), dp.is_ok());
    match &dp {
        Ok(r) => tracing::debug!(?r, "data plane reconciled"),
        Err(e) => {
            all_ok = false;
            tracing::warn!("data plane: {e:#}");
        }
    }
    lock(state).masquerade_ready = dp.is_ok();

    let t = Instant::now();
    let conflist = cniconf::conflist_for(cfg, pod_cidrs, mtu);
    let written = cniconf::write_if_changed(&cfg.cni.conf_dir, &cfg.cni.conflist_name, &conflist);
    metrics.observe_reconcile("conflist", t.elapsed().as_secs_f64(), written.is_ok());
    match &written {
        Ok(true) => {
            tracing::info!(dir = %cfg.cni.conf_dir.display(), file = %cfg.cni.conflist_name, "CNI conflist written")
        }
        Ok(false) => {}
        Err(e) => {
            all_ok = false;
            tracing::warn!("writing the CNI conflist: {e}");
        }
    }
    {
        let mut st = lock(state);
        st.conflist_written = written.is_ok();
        st.conflist = Some(cfg.cni.conflist_path().display().to_string());
    }

    ipam_metrics(&cfg.cni.network_name, &conflist.plugin.ipam, metrics);

    let t = Instant::now();
    let status: ControlPlaneStatus = match backend {
        Ok(backend) => {
            let cp = tokio::select! {
                r = backend.ensure_routes(pod_cidrs) => Some(r),
                _ = cancel.cancelled() => None,
            };
            let ok = matches!(cp, Some(Ok(_)));
            metrics.observe_reconcile("control-plane", t.elapsed().as_secs_f64(), ok);
            if let Some(Err(e)) = &cp {
                all_ok = false;
                tracing::warn!("control plane: {e}");
            }
            backend.status()
        }
        Err(why) => {
            all_ok = false;
            metrics.observe_reconcile("control-plane", t.elapsed().as_secs_f64(), false);
            let mut s = ControlPlaneStatus::initial("headscale");
            s.wanted = pod_cidrs.to_vec();
            s.readiness = headcni_core::control::Readiness::NotReady {
                reason: headcni_core::control::NotReadyReason::Refused,
                detail: why.clone(),
            };
            s
        }
    };
    for r in pod_cidrs {
        metrics.set_route(
            &r.to_string(),
            status.routes.advertised.contains(r),
            status.routes.approved.contains(r),
            status.routes.primary.contains(r),
        );
    }
    let mut st = lock(state);
    st.control = Some(status);
    let ready = st.not_ready_reasons().is_empty();
    metrics.set_ready(ready);
    metrics.set_pods(st.pods.len() as u64);
    all_ok && ready
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

/// Daemon mode: refuse beside a host tailscaled, then start the supervisor and log in on
/// every (re)start.
fn start_daemon_mode(
    cfg: &Config,
    pod_cidrs: &[IpNetwork],
    headscale: Option<Arc<HeadscaleClient>>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<tailscaled::SupervisorReport> {
    let state_dir = cfg.tailscaled_state_dir();
    let spec = tailscaled::TailscaledSpec {
        binary: cfg.tailscale.tailscaled_path.clone(),
        tun: cfg.interface(),
        socket: cfg.tailscale_socket(),
        state_dir: state_dir.clone(),
        port: cfg.tailscale.port,
        env: vec![(
            "TS_DEBUG_MTU".into(),
            cfg.cni.mtu.unwrap_or(DEFAULT_TAILNET_MTU).to_string(),
        )],
    };
    let prefs = headcni_headscale::daemon::DaemonPrefs {
        control_url: cfg.headscale.url.clone().unwrap_or_default(),
        hostname: cfg.node_name(),
        routes: pod_cidrs.to_vec(),
        advertise_tags: Vec::new(),
        netfilter_mode: Default::default(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let sup = tokio::spawn(tailscaled::supervise(
        spec,
        tailscaled::RestartPolicy::default(),
        cancel.child_token(),
        move |n| {
            let _ = tx.send(n);
        },
    ));
    let socket = cfg.tailscale_socket();
    let user = cfg.headscale.user.clone();
    let login_cancel = cancel.child_token();
    tokio::spawn(async move {
        let localapi = LocalApiClient::new(socket).with_timeout(Duration::from_secs(5));
        let backoff = headcni_headscale::retry::Backoff::default();
        while let Some(n) =
            tokio::select! { n = rx.recv() => n, _ = login_cancel.cancelled() => None }
        {
            let has_state = state_dir.join("tailscaled.state").exists();
            match headcni_headscale::daemon::login_as(
                &localapi,
                headscale.as_deref(),
                &prefs,
                &user,
                has_state,
                Duration::from_secs(30),
                &backoff,
            )
            .await
            {
                Ok(_) => tracing::info!(start = n, "dedicated tailscaled logged in"),
                Err(e) => tracing::warn!(start = n, "dedicated tailscaled login: {e}"),
            }
        }
    });
    sup
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
}

/// Runs the node agent with `cfg` (loaded from `flags`, [`load_config`]) until `cancel` is
/// cancelled (the binary cancels on SIGTERM/SIGINT); each `reload` notification (SIGHUP)
/// reloads the configuration from the same `flags` and the environment. Serves the HTTP
/// endpoints ([`http`]) and the plugin event socket ([`events`]), discovers the PodCIDR
/// ([`podcidr`]), supervises tailscaled in daemon mode ([`tailscaled`]) and reconciles every
/// `[daemon] reconcile_interval_secs` (sooner, with backoff, while not ready). On cancel the
/// tasks get [`SHUTDOWN_BUDGET`] to finish.
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
    {
        let mut st = lock(&state);
        st.pod_cidrs = discovered.cidrs.clone();
        st.pod_cidr_source = Some(discovered.source);
    }
    let (mut backend, headscale) = try_backend(&cfg, &metrics);
    let supervisor = if cfg.tailscale.mode == Mode::Daemon {
        Some(start_daemon_mode(
            &cfg,
            &discovered.cidrs,
            headscale,
            &cancel,
        ))
    } else {
        None
    };

    let interval = Duration::from_secs(cfg.daemon.reconcile_interval_secs.max(1));
    let mut retry = Duration::from_secs(1);
    loop {
        if backend.is_err() {
            // e.g. the API key file was fixed through its Secret
            backend = try_backend(&cfg, &metrics).0;
        }
        let ok = reconcile(&cfg, &discovered.cidrs, &backend, &state, &metrics, &cancel).await;
        // Not ready: retry sooner, with capped exponential backoff; ready: the normal interval.
        let wait = if ok { interval } else { retry.min(interval) };
        retry = if ok {
            Duration::from_secs(1)
        } else {
            (retry * 2).min(interval)
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = reload.notified() => {
                match load_config(&flags) {
                    Ok((new, warnings)) => {
                        log_warnings(&warnings);
                        if new.node.pod_cidr != cfg.node.pod_cidr || new.tailscale.mode != cfg.tailscale.mode {
                            tracing::warn!("PodCIDR or mode changed in the config: restart the daemon to apply");
                        }
                        backend = try_backend(&new, &metrics).0;
                        cfg = new;
                        tracing::info!("configuration reloaded (flags and environment re-applied)");
                    }
                    Err(e) => tracing::error!("reload failed, keeping the running configuration: {e:#}"),
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
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
fn cidrs_from_conflist(path: &Path) -> Vec<IpNetwork> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| Conflist::parse(&bytes).ok())
        .map(|c| c.pod_cidrs())
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
    let mut report = UninstallReport::default();
    let (done, problems) = (&mut report.done, &mut report.problems);
    let conflist = cfg.cni.conf_dir.join(&cfg.cni.conflist_name);
    let mut cidrs = cidrs_from_conflist(&conflist);
    if cidrs.is_empty() {
        cidrs = podcidr::from_config(cfg).unwrap_or_default();
    }
    if cidrs.is_empty() {
        problems.push(
            "no PodCIDR known (no conflist, none configured): routes not withdrawn".to_owned(),
        );
    } else {
        match backend(cfg, None) {
            Ok((b, _)) => match b.withdraw_routes(&cidrs).await {
                Ok(()) => done.push(format!("withdrew {cidrs:?} from the tailnet")),
                Err(e) => problems.push(format!("withdrawing routes: {e}")),
            },
            Err(e) => problems.push(format!("control plane: {e:#}")),
        }
    }
    match dataplane::teardown(NFT_TABLE).await {
        Ok(()) => done.push(format!("removed the nftables table inet {NFT_TABLE}")),
        Err(e) => problems.push(format!("masquerade table: {:#}", anyhow::Error::from(e))),
    }
    match cniconf::remove(&cfg.cni.conf_dir, &cfg.cni.conflist_name) {
        Ok(true) => done.push(format!("removed {}", conflist.display())),
        Ok(false) => {}
        Err(e) => problems.push(format!("removing {}: {e}", conflist.display())),
    }
    report
}
