//! `headcni-daemon`: the process image of HeadCNI's node tooling. Users run it as
//! `headcni daemon|uninstall|status|config ...`: the `headcni` binary execs this one with the
//! same arguments.
//!
//! The daemon (kube-rs, the Headscale client with rustls, the HTTP server, metrics) lives in
//! its own binary so that the CNI plugin, which the container runtime execs for every pod
//! operation, maps none of that code: a plugin exec's peak RSS is dominated by the pages of
//! its binary it touches (docs/performance.md).
//!
//! The node agent itself is the library `headcni-node`; this file is its process wiring:
//! arguments, logging, signals, the runtime, and printing.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use headcni_cli::install::{BINARY_NAME, IPAM_LINK_NAME};
use headcni_node::config::Config;
use headcni_node::config::{self, DEFAULT_CONFIG_PATH, DaemonFlags, LogFormat};
use headcni_node::status;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The HeadCNI node daemon (run it as `headcni daemon`).
#[derive(Parser, Debug)]
#[command(name = "headcni", bin_name = "headcni", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The node daemon: PodCIDR, conflist, bridge and masquerade, tailnet route.
    Daemon {
        #[command(flatten)]
        flags: DaemonFlags,
    },
    /// Withdraw this node's routes, remove the masquerade table and the conflist.
    Uninstall {
        #[command(flatten)]
        flags: DaemonFlags,
        /// Also remove `headcni` and `headcni-ipam` from the CNI bin dir.
        #[arg(long)]
        remove_binaries: bool,
    },
    /// What the node daemon reports: PodCIDR, routes, peers, pods, readiness.
    Status(StatusArgs),
    /// Check or show the daemon configuration (secrets redacted).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}
/// `headcni config check|show [--config PATH] [overrides]`.
#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Validate the effective configuration (file, environment, flags); non-zero exit on problems.
    Check(DaemonFlags),
    /// Print the effective configuration, secrets redacted, with where overrides came from.
    Show(DaemonFlags),
}

/// `headcni status` arguments.
#[derive(clap::Args, Debug, Clone)]
struct StatusArgs {
    /// Address of the daemon's HTTP endpoint (`[daemon] listen`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Print the daemon's status as JSON (every pod, in one document) instead of the human
    /// summary.
    #[arg(long)]
    json: bool,
}

/// Daemon logs: `[daemon] log_level` (a tracing filter; `HEADCNI_LOG` overrides it) and
/// `log_format` (`text` or `json`), to stderr.
fn init_logging(cfg: &Config) {
    let filter = std::env::var("HEADCNI_LOG").unwrap_or_else(|_| cfg.daemon.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cfg.daemon.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// SIGTERM/SIGINT cancel `cancel`; SIGHUP notifies `reload`.
fn spawn_signal_handler(cancel: CancellationToken, reload: Arc<Notify>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); cancel.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT"); cancel.cancel(); return; }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); reload.notify_one(); }
            }
        }
    });
    Ok(())
}

/// `headcni daemon`: runs the node agent until SIGTERM/SIGINT.
fn daemon(flags: DaemonFlags) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let (cfg, warnings) = headcni_node::load_config(&flags)?;
        init_logging(&cfg);
        headcni_node::log_warnings(&warnings);
        let (cancel, reload) = (CancellationToken::new(), Arc::new(Notify::new()));
        spawn_signal_handler(cancel.clone(), reload.clone())?;
        Ok(headcni_node::run(flags, cfg, cancel, reload).await?)
    })
}

/// `headcni uninstall`: the node agent's teardown, then optionally the binaries.
fn uninstall(flags: &DaemonFlags, remove_binaries: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cfg, _) = headcni_node::load_config(flags)?;
    let mut report = rt.block_on(headcni_node::uninstall(&cfg));
    for line in &report.done {
        eprintln!("{line}");
    }
    if remove_binaries {
        for name in [IPAM_LINK_NAME, BINARY_NAME] {
            let p = cfg.cni.bin_dir.join(name);
            match std::fs::remove_file(&p) {
                Ok(()) => eprintln!("removed {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report
                    .problems
                    .push(format!("removing {}: {e}", p.display())),
            }
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "uninstall incomplete: {}",
            report.problems.join("; ")
        ))
    }
}

/// `headcni status`: prints the daemon's status (human text, or JSON with `--json`), every
/// pod included; exit 0 when the node is ready, 1 when not (or the daemon is down).
fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let doc = rt.block_on(status::fetch_all(args.listen))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("encoding the status as JSON")?
        );
    } else {
        print!("{}", status::render(&doc.state));
    }
    if doc.state.not_ready_reasons().is_empty() {
        Ok(())
    } else {
        std::process::exit(1);
    }
}

/// `headcni config check`: every error and warning; non-zero exit on errors.
fn config_check(flags: &DaemonFlags) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let checked = config::check_from(flags, &env).context("loading the configuration")?;
    let (loaded, mut problems) = (checked.loaded, checked.errors);
    let source = match &loaded.file {
        Some(f) => format!("{}", f.display()),
        None => format!("{DEFAULT_CONFIG_PATH} (absent: defaults)"),
    };
    problems.extend(config::api_key_problem(&loaded.config, &env));
    problems.extend(config::oauth_file_problem(&loaded.config));
    for w in &checked.warnings {
        println!("warning: {w}");
    }
    for k in &loaded.unknown_keys {
        println!("warning: unknown key {k} (ignored)");
    }
    if problems.is_empty() {
        println!("configuration OK ({source})");
        return Ok(());
    }
    for p in &problems {
        println!("error: {p}");
    }
    let n = problems.len();
    bail!(
        "configuration {source} has {n} problem{}",
        if n == 1 { "" } else { "s" }
    )
}

/// `headcni config show`: the sources, then the redacted effective TOML.
fn config_show(flags: &DaemonFlags) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let loaded = config::load_from(flags, &env).context("loading the configuration")?;
    print!("{}", config::render_show(&loaded, &env));
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Daemon { flags } => daemon(flags),
        Cmd::Uninstall {
            flags,
            remove_binaries,
        } => uninstall(&flags, remove_binaries),
        Cmd::Status(args) => status(&args),
        Cmd::Config { action } => match action {
            ConfigAction::Check(flags) => config_check(&flags),
            ConfigAction::Show(flags) => config_show(&flags),
        },
    };
    if let Err(e) = result {
        eprintln!("headcni: {e:#}");
        std::process::exit(1);
    }
}
