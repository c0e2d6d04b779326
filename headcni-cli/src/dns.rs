//! `headcni dns coredns`: prints the CoreDNS server block that forwards the tailnet's
//! MagicDNS base domain to tailscaled's resolver at `100.100.100.100` (tailscale
//! `net/tsaddr` `TailscaleServiceIP`), so that every pod using the cluster DNS resolves
//! `<node>.<base domain>`. CoreDNS pods reach quad-100 through their node like any pod (see
//! `docs/operations.md` §MagicDNS).
//!
//! The base domain is, in order: `--base-domain`, the daemon configuration's
//! `[magic_dns] base_domain`, the LocalAPI status' `CurrentTailnet.MagicDNSSuffix` /
//! `MagicDNSSuffix` (tailscale `ipn/ipnstate/ipnstate.go`) on the configured socket.

use anyhow::{Context, bail};
use headcni_node::config::{DaemonFlags, MAGIC_DNS_IP, MagicDnsConfig, load};

/// `headcni dns` arguments.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// What to print.
    #[command(subcommand)]
    pub cmd: DnsCmd,
}

/// `headcni dns` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DnsCmd {
    /// The CoreDNS server block for the tailnet's base domain (Corefile syntax).
    Coredns {
        /// The base domain (default: config `[magic_dns] base_domain`, else LocalAPI status).
        #[arg(long)]
        base_domain: Option<String>,
        /// The daemon configuration file (default: HEADCNI_CONFIG, /etc/headcni/config.toml).
        #[arg(long, env = "HEADCNI_CONFIG", value_name = "PATH")]
        config: Option<std::path::PathBuf>,
    },
}

/// The Corefile server block for `base_domain` (a domain without trailing dot): answers
/// cached for at most 30 s (tailscaled's own TTLs are 5 s positive, 10 s negative).
pub fn coredns_block(base_domain: &str) -> String {
    format!("{base_domain}:53 {{\n    errors\n    cache 30\n    forward . {MAGIC_DNS_IP}\n}}\n")
}

/// Runs `headcni dns`: prints the block on stdout.
///
/// Errors: unreadable config, an invalid base domain, no base domain anywhere.
pub fn run(a: &DnsArgs) -> anyhow::Result<()> {
    let DnsCmd::Coredns {
        base_domain,
        config,
    } = &a.cmd;
    let domain = match base_domain {
        Some(d) => d.trim_end_matches('.').to_owned(),
        None => {
            let flags = DaemonFlags {
                config: config.clone(),
                ..Default::default()
            };
            let cfg = load(&flags).context("load the daemon configuration")?;
            match cfg.magic_dns.base_domain.clone() {
                Some(d) => d,
                None => from_localapi(&cfg.tailscale_socket())?,
            }
        }
    };
    let check = MagicDnsConfig {
        base_domain: Some(domain.clone()),
        ..Default::default()
    };
    if let Some((_, msg)) = check.problems().into_iter().next() {
        bail!("base domain: {msg}");
    }
    print!("{}", coredns_block(&domain));
    Ok(())
}

fn from_localapi(socket: &std::path::Path) -> anyhow::Result<String> {
    let client = headcni_headscale::localapi::LocalApiClient::new(socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt
        .block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                client.status_without_peers(),
            )
            .await
        })
        .map_err(|_| anyhow::anyhow!("LocalAPI {}: no answer in 10 s", socket.display()))?
        .with_context(|| format!("LocalAPI status on {}", socket.display()))?;
    status.magic_dns_suffix().ok_or_else(|| {
        anyhow::anyhow!(
            "no base domain: set [magic_dns] base_domain or --base-domain (tailscaled on {} \
             reports no MagicDNS suffix)",
            socket.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_forwards_the_base_domain_to_quad_100() {
        assert_eq!(
            coredns_block("tailnet.lab"),
            "tailnet.lab:53 {\n    errors\n    cache 30\n    forward . 100.100.100.100\n}\n"
        );
    }

    #[test]
    fn flag_and_config_give_the_domain_and_bad_domains_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "[magic_dns]\nbase_domain = \"tailnet.lab\"\n").unwrap();
        let args = |d: Option<&str>| DnsArgs {
            cmd: DnsCmd::Coredns {
                base_domain: d.map(str::to_owned),
                config: Some(cfg.clone()),
            },
        };
        assert!(run(&args(None)).is_ok());
        assert!(run(&args(Some("x.example."))).is_ok());
        assert!(run(&args(Some("bad domain"))).is_err());
    }
}
