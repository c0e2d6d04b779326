//! The delegated [`IpamClient`]: any IPAM plugin exec'ed through `CNI_PATH` (the in-process
//! one is `headcni_ipam::InProcessIpam`).

use std::path::PathBuf;

use async_trait::async_trait;
use headcni_core::cni::{CniError, CniResult, GcAttachment};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::{IpamAdd, IpamClient};

use super::delegate;

/// An IPAM plugin exec'ed from `CNI_PATH` with the whole request configuration.
pub struct DelegatedIpam {
    /// The plugin binary.
    pub binary: PathBuf,
    /// The request configuration exactly as received.
    pub config: Vec<u8>,
}

#[async_trait]
impl IpamClient for DelegatedIpam {
    async fn add(&self) -> Result<IpamAdd, CniError> {
        // A delegate refuses a duplicate (cid, ifname) itself (host-local: "duplicate
        // allocation is not allowed"), so a successful ADD is always a fresh reservation.
        let result = delegate::exec_add(&self.binary, &self.config)?;
        Ok(IpamAdd {
            result,
            fresh: true,
        })
    }
    async fn del(&self) -> Result<(), CniError> {
        delegate::exec(&self.binary, "DEL", &self.config).map(|_| ())
    }
    async fn check(&self, _prev: &CniResult) -> Result<(), CniError> {
        // `config` already carries prevResult.
        delegate::exec(&self.binary, "CHECK", &self.config).map(|_| ())
    }
    /// Execs the delegate's GC. A delegate's GC has no result (CNI spec 1.1.0 §GC), so
    /// which attachments it released is unknown: returns none, and the main plugin's GC then
    /// removes no host veth.
    async fn gc(&self, _valid: &[GcAttachment]) -> Result<Vec<Attachment>, CniError> {
        delegate::exec(&self.binary, "GC", &self.config).map(|_| Vec::new())
    }
    async fn status(&self) -> Result<(), CniError> {
        delegate::exec(&self.binary, "STATUS", &self.config).map(|_| ())
    }
}
