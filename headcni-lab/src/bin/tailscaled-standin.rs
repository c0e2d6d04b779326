//! `tailscaled-standin`: the lab's test double of tailscaled (see
//! `headcni_lab::tailscaled_standin` and `docs/lab-standins.md`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = headcni_lab::tailscaled_standin::Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // block_on keeps the future on this (main) thread: wireguard-go's PDEATHSIG follows it.
    rt.block_on(headcni_lab::tailscaled_standin::run(args))
}
