//! [`NftFirewall`]: the `nft` [`FirewallDriver`]: HeadCNI's own table `inet <name>`
//! ([`crate::nft`]), and the accept rules for the pod CIDRs in the host's iptables `filter
//! FORWARD` chain ([`crate::forward`]) without which a host whose `FORWARD` policy is `DROP`
//! (Docker, hardened hosts) drops forwarded pod traffic.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use headcni_core::defaults::NFT_TABLE;
use headcni_core::node::firewall::{FirewallDriver, FirewallError, NFT_DRIVER};
use headcni_core::node::masq::{MasqueradePlan, TABLE_FAMILY};
use ipnetwork::IpNetwork;

use crate::{forward, nft};

/// The nftables firewall driver: [`nft::in_place`], [`nft::apply`] and [`nft::remove`] for
/// the masquerade table, and [`forward::ensure`] / [`forward::remove`] for the `filter
/// FORWARD` accept rules of the plan's pod CIDRs (the iptables backend is detected on first
/// use and kept). Each runs on a blocking-pool thread of the current tokio runtime (the tools
/// are child processes; they act in the network namespace of that thread, which is the
/// caller's: see [`crate::nft`]).
#[derive(Debug, Default)]
pub struct NftFirewall {
    backend: Arc<OnceLock<forward::Backend>>,
}

impl NftFirewall {
    /// A driver that detects the host's iptables backend on first use.
    pub fn new() -> NftFirewall {
        NftFirewall::default()
    }

    /// A driver that uses `backend` for the `FORWARD` rules (no detection).
    pub fn with_backend(backend: forward::Backend) -> NftFirewall {
        let cell = OnceLock::new();
        let _ = cell.set(backend);
        NftFirewall {
            backend: Arc::new(cell),
        }
    }

    fn backend(&self) -> Arc<OnceLock<forward::Backend>> {
        self.backend.clone()
    }
}

/// The pod CIDRs of a masquerade plan (its `pod_v4` / `pod_v6` sets): what the `FORWARD`
/// accept rules are for.
fn pod_cidrs(plan: &MasqueradePlan) -> Vec<IpNetwork> {
    plan.sets
        .iter()
        .filter(|s| s.name.starts_with("pod_"))
        .flat_map(|s| s.elements.iter().copied())
        .collect()
}

fn forward_failed(op: String) -> impl FnOnce(forward::ForwardError) -> FirewallError {
    move |e| FirewallError::Failed {
        op,
        source: Box::new(e),
    }
}

fn failed(op: String) -> impl FnOnce(nft::NftError) -> FirewallError {
    move |e| FirewallError::Failed {
        op,
        source: Box::new(e),
    }
}

/// Runs `f` off the async threads; a panicking or cancelled task becomes a [`FirewallError`]
/// for `op`.
async fn blocking<T, F>(op: &str, f: F) -> Result<Result<T, nft::NftError>, FirewallError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, nft::NftError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FirewallError::Failed {
            op: format!("{op} (nft task)"),
            source: Box::new(e),
        })
}

#[async_trait]
impl FirewallDriver for NftFirewall {
    fn name(&self) -> &str {
        NFT_DRIVER
    }
    fn manages_masquerade(&self) -> bool {
        true
    }
    async fn in_place(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        let op = format!("list nftables table {TABLE_FAMILY} {}", plan.table);
        let p = plan.clone();
        if !blocking(&op, move || nft::in_place(&p))
            .await?
            .map_err(failed(op))?
        {
            return Ok(false);
        }
        let cidrs = pod_cidrs(plan);
        let cell = self.backend();
        let op = "read iptables filter FORWARD".to_owned();
        blocking_fwd(&op, move || {
            forward::in_place(*cell.get_or_init(forward::detect_backend), &cidrs)
        })
        .await?
        .map_err(forward_failed(op))
    }
    async fn apply(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        let op = format!("apply nftables table {TABLE_FAMILY} {}", plan.table);
        let p = plan.clone();
        let table = blocking(&op, move || nft::apply(&p))
            .await?
            .map_err(failed(op))?;
        let cidrs = pod_cidrs(plan);
        let cell = self.backend();
        let op = "accept pod traffic in iptables filter FORWARD".to_owned();
        let fwd = blocking_fwd(&op, move || {
            forward::ensure(*cell.get_or_init(forward::detect_backend), &cidrs)
        })
        .await?
        .map_err(forward_failed(op))?;
        Ok(table || fwd.changed)
    }
    async fn remove(&self, table: &str) -> Result<bool, FirewallError> {
        let op = format!("remove nftables table {TABLE_FAMILY} {table}");
        let t = table.to_owned();
        let removed = blocking(&op, move || nft::remove(&t))
            .await?
            .map_err(failed(op))?;
        let cell = self.backend();
        let op = "remove HeadCNI's iptables filter FORWARD rules".to_owned();
        let fwd = blocking_fwd(&op, move || {
            forward::remove(*cell.get_or_init(forward::detect_backend))
        })
        .await?
        .map_err(forward_failed(op))?;
        Ok(removed || fwd)
    }
    async fn warnings(&self) -> Vec<String> {
        let drops = tokio::task::spawn_blocking(|| forward::foreign_forward_drops(NFT_TABLE))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        drops
            .into_iter()
            .map(|c| {
                format!(
                    "nftables chain {c} hooks forward with policy drop: HeadCNI cannot override it; accept the pod CIDRs there"
                )
            })
            .collect()
    }
}

/// [`blocking`] for the `FORWARD` rules' errors.
async fn blocking_fwd<T, F>(
    op: &str,
    f: F,
) -> Result<Result<T, forward::ForwardError>, FirewallError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, forward::ForwardError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FirewallError::Failed {
            op: format!("{op} (iptables task)"),
            source: Box::new(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::node::masq::{MasqueradeSpec, plan};

    #[tokio::test]
    async fn invalid_table_names_fail_before_nft_runs() {
        let d = NftFirewall::new();
        assert_eq!(d.name(), "nft");
        assert!(d.manages_masquerade());
        let e = d.remove("bad name").await.unwrap_err();
        assert_eq!(e.to_string(), "remove nftables table inet bad name");
        let mut spec = MasqueradeSpec::new(vec!["10.244.1.0/24".parse().unwrap()], vec![]);
        spec.table = "headcni".into();
        let mut p = plan(&spec).unwrap();
        p.table = "bad name".into();
        assert!(d.in_place(&p).await.is_err());
        assert!(d.apply(&p).await.is_err());
    }
}
