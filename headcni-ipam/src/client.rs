//! [`InProcessIpam`]: `headcni-ipam` as the [`IpamClient`] of the main plugin's orchestration
//! (`headcni_core::plugin::add/del/check`), without a second exec.

use std::net::IpAddr;

use async_trait::async_trait;
use headcni_core::cni::{CniError, CniResult, GcAttachment};
use headcni_core::ipam::{Attachment, IpamStore};
use headcni_core::plugin::{IpamAdd, IpamClient};

use crate::plugin::IpamPlugin;
use crate::store::Store;

/// `headcni-ipam` in-process for one request's attachment, over the on-disk [`Store`] by
/// default or any [`IpamStore`] (see [`IpamPlugin::with_store`]).
///
/// ```no_run
/// # fn demo(conf: &headcni_core::cni::NetConf<headcni_core::plugin::BridgeConf>) -> Result<(), headcni_core::cni::CniError> {
/// use headcni_core::ipam::Attachment;
/// use headcni_ipam::{InProcessIpam, IpamPlugin};
/// let ipam = InProcessIpam {
///     plugin: IpamPlugin::from_conf(conf)?,
///     attachment: Attachment { container_id: "c1".into(), ifname: "eth0".into() },
///     requested: Vec::new(),
/// };
/// # let _ = ipam; Ok(()) }
/// ```
#[derive(Debug)]
pub struct InProcessIpam<S = Store> {
    /// The IPAM plugin built from the request (`IpamPlugin::from_conf`).
    pub plugin: IpamPlugin<S>,
    /// The request's attachment (`CNI_CONTAINERID`, `CNI_IFNAME`).
    pub attachment: Attachment,
    /// Requested addresses (`IpamPlugin::requested_ips`); empty for any free address.
    pub requested: Vec<IpAddr>,
}

#[async_trait]
impl<S: IpamStore + Send + Sync> IpamClient for InProcessIpam<S> {
    /// Reserves (or returns the attachment's existing) addresses; `fresh` is false when the
    /// attachment already held a reservation, so a failing repeated ADD never releases it.
    async fn add(&self) -> Result<IpamAdd, CniError> {
        let existed = self.plugin.check(&self.attachment, None).is_ok();
        let result = self.plugin.add(&self.attachment, &self.requested)?;
        Ok(IpamAdd {
            result,
            fresh: !existed,
        })
    }
    async fn del(&self) -> Result<(), CniError> {
        self.plugin.del(&self.attachment)
    }
    async fn check(&self, prev: &CniResult) -> Result<(), CniError> {
        self.plugin.check(&self.attachment, Some(prev))
    }
    /// Releases every reservation not in `valid`; returns the attachments that held them
    /// (each once; legacy cid-only reservations name no ifname and are left out).
    async fn gc(&self, valid: &[GcAttachment]) -> Result<Vec<Attachment>, CniError> {
        let released = self
            .plugin
            .gc(&valid.iter().map(Attachment::from).collect::<Vec<_>>())?;
        let mut out: Vec<Attachment> = released.into_iter().filter_map(|(_, a)| a).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
    async fn status(&self) -> Result<(), CniError> {
        self.plugin.status()
    }
}
