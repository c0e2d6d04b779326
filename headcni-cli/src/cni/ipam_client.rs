//! The two [`IpamClient`]s: `headcni-ipam` in-process, or any IPAM plugin delegated through
//! `CNI_PATH`.

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use headcni_core::cni::{CniError, CniResult, GcAttachment};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::{IpamAdd, IpamClient};
use headcni_ipam::plugin::IpamPlugin;

use super::delegate;

/// `headcni-ipam` running inside the `headcni` process: no second exec.
pub struct InProcessIpam {
    /// The IPAM plugin built from the request.
    pub plugin: IpamPlugin,
    /// The request's attachment.
    pub attachment: Attachment,
    /// Requested addresses.
    pub requested: Vec<IpAddr>,
}

fn to_attachments(valid: &[GcAttachment]) -> Vec<Attachment> {
    valid
        .iter()
        .map(|a| Attachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect()
}

#[async_trait]
impl IpamClient for InProcessIpam {
    async fn add(&self) -> Result<IpamAdd, CniError> {
        // A reservation that already exists belongs to a live (or half-built) attachment.
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
    async fn gc(&self, valid: &[GcAttachment]) -> Result<(), CniError> {
        self.plugin.gc(&to_attachments(valid)).map(|_| ())
    }
    async fn status(&self) -> Result<(), CniError> {
        self.plugin.status()
    }
}

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
    async fn gc(&self, _valid: &[GcAttachment]) -> Result<(), CniError> {
        delegate::exec(&self.binary, "GC", &self.config).map(|_| ())
    }
    async fn status(&self) -> Result<(), CniError> {
        delegate::exec(&self.binary, "STATUS", &self.config).map(|_| ())
    }
}
