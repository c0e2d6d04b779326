//! The delegated [`IpamClient`]: any IPAM plugin exec'ed through `CNI_PATH` (the in-process
//! one is `headcni_ipam::InProcessIpam`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use headcni_core::cni::{CniError, CniResult, GcAttachment};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::{IpamAdd, IpamClient};

use crate::delegate;

/// An IPAM plugin exec'ed from `CNI_PATH` with the whole request configuration.
pub struct DelegatedIpam {
    /// The plugin binary.
    pub binary: PathBuf,
    /// The request configuration exactly as received.
    pub config: Vec<u8>,
    /// The request's `CNI_*` variables, passed on unchanged (only `CNI_COMMAND` may differ).
    pub cni_vars: Vec<(OsString, OsString)>,
    /// The time limit of each call (`delegateTimeoutSeconds`).
    pub timeout: Duration,
}

#[async_trait]
impl IpamClient for DelegatedIpam {
    async fn add(&self) -> Result<IpamAdd, CniError> {
        // A delegate refuses a duplicate (cid, ifname) itself (host-local: "duplicate
        // allocation is not allowed"), so a successful ADD is always a fresh reservation.
        let result = delegate::exec_add(&self.binary, &self.cni_vars, &self.config, self.timeout)?;
        Ok(IpamAdd {
            result,
            fresh: true,
        })
    }
    async fn del(&self) -> Result<(), CniError> {
        delegate::exec(
            &self.binary,
            "DEL",
            &self.cni_vars,
            &self.config,
            self.timeout,
        )
        .map(|_| ())
    }
    async fn check(&self, _prev: &CniResult) -> Result<(), CniError> {
        // `config` already carries prevResult.
        delegate::exec(
            &self.binary,
            "CHECK",
            &self.cni_vars,
            &self.config,
            self.timeout,
        )
        .map(|_| ())
    }
    /// Execs the delegate's GC. A delegate's GC has no result (CNI spec 1.1.0 §GC), so
    /// which attachments it released is unknown: returns none, and the main plugin's GC then
    /// removes no host veth.
    async fn gc(&self, _valid: &[GcAttachment]) -> Result<Vec<Attachment>, CniError> {
        delegate::exec(
            &self.binary,
            "GC",
            &self.cni_vars,
            &self.config,
            self.timeout,
        )
        .map(|_| Vec::new())
    }
    async fn status(&self) -> Result<(), CniError> {
        delegate::exec(
            &self.binary,
            "STATUS",
            &self.cni_vars,
            &self.config,
            self.timeout,
        )
        .map(|_| ())
    }
}
