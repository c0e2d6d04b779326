//! `headscale-standin`: the lab's test double of Headscale (see
//! `headcni_lab::headscale_standin` and `docs/lab-standins.md`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = headcni_lab::headscale_standin::Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(headcni_lab::headscale_standin::run(args))
}
