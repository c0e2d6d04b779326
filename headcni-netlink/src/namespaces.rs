//! [`NetlinkNamespaces`]: the rtnetlink implementation of the main plugin's
//! [`Namespaces`] seam (`headcni_core::plugin::add/del/check`).

use std::path::Path;

use async_trait::async_trait;
use headcni_core::link::{LinkError, VethPair, VethSpec};
use headcni_core::plugin::Namespaces;

use crate::NetlinkHandle;

/// Opens [`NetlinkHandle`]s for the calling process's namespace (the node) and for
/// container namespaces by path.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetlinkNamespaces;

#[async_trait]
impl Namespaces for NetlinkNamespaces {
    type Handle = NetlinkHandle;
    async fn host(&self) -> Result<NetlinkHandle, LinkError> {
        NetlinkHandle::current().await
    }
    async fn open(&self, netns: &Path) -> Result<NetlinkHandle, LinkError> {
        NetlinkHandle::for_netns(netns).await
    }
    /// [`crate::netns::is_current`]: same nsfs inode as `/proc/self/ns/net`.
    async fn is_own(&self, netns: &Path) -> Result<bool, LinkError> {
        crate::netns::is_current(netns).map_err(LinkError::from)
    }
    /// Reuses the container handle ADD already opened: one netns socket per ADD.
    async fn create_veth(
        &self,
        host: &NetlinkHandle,
        container: &NetlinkHandle,
        spec: &VethSpec,
    ) -> Result<VethPair, LinkError> {
        host.create_veth_in(spec, container).await
    }
}
