//! [`Namespaces`] on rtnetlink (`headcni-netlink`).

use std::path::Path;

use async_trait::async_trait;
use headcni_core::link::{LinkError, VethPair, VethSpec};
use headcni_core::plugin::Namespaces;
use headcni_netlink::NetlinkHandle;

/// Opens rtnetlink handles: the plugin's own namespace and container namespaces.
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
    async fn create_veth(
        &self,
        host: &NetlinkHandle,
        container: &NetlinkHandle,
        spec: &VethSpec,
    ) -> Result<VethPair, LinkError> {
        // Reuses the container handle ADD already opened: one netns socket per ADD.
        host.create_veth_in(spec, container).await
    }
}
