//! [`NftFirewall`]: the `nft` [`FirewallDriver`] (HeadCNI's own table `inet <name>`,
//! [`crate::nft`]).

use async_trait::async_trait;
use headcni_core::node::firewall::{FirewallDriver, FirewallError, NFT_DRIVER};
use headcni_core::node::masq::{MasqueradePlan, TABLE_FAMILY};

use crate::nft;

/// The nftables firewall driver: [`nft::in_place`], [`nft::apply`] and [`nft::remove`], each
/// run on a blocking-pool thread of the current tokio runtime (`nft` is a child process; it
/// acts in the network namespace of that thread, which is the caller's: see [`crate::nft`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NftFirewall;

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
        blocking(&op, move || nft::in_place(&p))
            .await?
            .map_err(failed(op))
    }
    async fn apply(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        let op = format!("apply nftables table {TABLE_FAMILY} {}", plan.table);
        let p = plan.clone();
        blocking(&op, move || nft::apply(&p))
            .await?
            .map_err(failed(op))
    }
    async fn remove(&self, table: &str) -> Result<bool, FirewallError> {
        let op = format!("remove nftables table {TABLE_FAMILY} {table}");
        let t = table.to_owned();
        blocking(&op, move || nft::remove(&t))
            .await?
            .map_err(failed(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::node::masq::{MasqueradeSpec, plan};

    #[tokio::test]
    async fn invalid_table_names_fail_before_nft_runs() {
        let d = NftFirewall;
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
