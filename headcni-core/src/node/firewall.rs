//! The firewall driver trait: how the node agent puts HeadCNI's masquerade rule set
//! ([`MasqueradePlan`]) in place and removes it, as netavark's `FirewallDriver`
//! (`src/firewall/mod.rs`: one driver per backend, chosen by configuration, `none` for users
//! who manage the firewall themselves). No I/O here.
//!
//! Implementations: `headcni_netlink::firewall::NftFirewall` (one nftables table of
//! HeadCNI's own, `nft -j`) and [`NoFirewall`] (does nothing and says so: the node agent then
//! neither claims nor requires the masquerade rule set).

use async_trait::async_trait;

use super::masq::MasqueradePlan;

/// The `[node] firewall_driver` name of the nftables driver (the default).
pub const NFT_DRIVER: &str = "nft";
/// The `[node] firewall_driver` name of [`NoFirewall`].
pub const NONE_DRIVER: &str = "none";

/// Why a firewall driver could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The driver's backend failed while doing `op` (e.g. `apply nftables table inet
    /// headcni`); the backend's error is the source.
    #[error("{op}")]
    Failed {
        /// What was being done, for people.
        op: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// Puts HeadCNI's masquerade rule set in place (one table of its own) and removes it.
/// Acts in the network namespace the driver is bound to (the node's).
#[async_trait]
pub trait FirewallDriver: Send + Sync {
    /// The driver's name as configured (`[node] firewall_driver`), e.g. [`NFT_DRIVER`].
    fn name(&self) -> &str;
    /// Whether this driver installs the masquerade rule set at all: `false` for
    /// [`NoFirewall`], whose users masquerade pod traffic themselves. When `false` the node
    /// agent plans no firewall action and its readiness does not require the rule set.
    fn manages_masquerade(&self) -> bool;
    /// Whether the live rule set already equals `plan` (cheap; no change).
    ///
    /// Errors: [`FirewallError`] when the live state cannot be read.
    async fn in_place(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError>;
    /// Makes the live rule set equal to `plan`, atomically; `Ok(true)` when it changed
    /// anything, `Ok(false)` when it already was in place.
    ///
    /// Errors: [`FirewallError`]; the previous rule set then stays as it was.
    async fn apply(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError>;
    /// Removes the rule set `table` (uninstall); `Ok(true)` when there was one. Nothing
    /// else is touched.
    ///
    /// Errors: [`FirewallError`].
    async fn remove(&self, table: &str) -> Result<bool, FirewallError>;
    /// Other firewalls on the node that would still drop pod traffic although this driver's
    /// rules are in place (e.g. an nftables forward chain with policy `drop` in a table the
    /// driver does not own), one sentence each, for `headcni status`. Default: none known.
    async fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The `none` driver: installs and removes nothing ([`FirewallDriver::manages_masquerade`]
/// is `false`), for nodes whose masquerade is managed by someone else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoFirewall;

#[async_trait]
impl FirewallDriver for NoFirewall {
    fn name(&self) -> &str {
        NONE_DRIVER
    }
    fn manages_masquerade(&self) -> bool {
        false
    }
    async fn in_place(&self, _plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        Ok(true)
    }
    async fn apply(&self, _plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        Ok(false)
    }
    async fn remove(&self, _table: &str) -> Result<bool, FirewallError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::masq::{MasqueradeSpec, plan};

    #[test]
    fn none_does_nothing_and_says_so() {
        let p = plan(&MasqueradeSpec::new(
            vec!["10.244.1.0/24".parse().unwrap()],
            vec![],
        ))
        .unwrap();
        let d = NoFirewall;
        assert_eq!(d.name(), "none");
        assert!(!d.manages_masquerade());
        let r = futures::executor::block_on(async {
            (
                d.in_place(&p).await.unwrap(),
                d.apply(&p).await.unwrap(),
                d.remove("headcni").await.unwrap(),
            )
        });
        assert_eq!(r, (true, false, false));
    }
}
