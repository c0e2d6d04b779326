//! [`NetlinkHandle`]: an rtnetlink connection bound to one network namespace, plus the
//! request helpers shared by the link and route operations.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use headcni_core::link::{LinkError, LinkInfo};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

use crate::convert;
use crate::error::NlError;
use crate::netns;

/// How often a dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried.
const DUMP_RETRIES: usize = 3;

/// The namespace a handle is bound to, when it is not the process's own.
#[derive(Debug)]
pub(crate) struct NsRef {
    /// Path the namespace was opened from (for messages).
    pub(crate) path: PathBuf,
    /// An open nsfs descriptor, kept so the namespace stays reachable even if the path is
    /// unmounted while the handle lives.
    pub(crate) fd: Arc<OwnedFd>,
}

/// A `NETLINK_ROUTE` connection bound to one network namespace; implements
/// [`headcni_core::link::LinkManager`] and [`headcni_core::link::RouteManager`].
///
/// * [`NetlinkHandle::current`]: the namespace of the calling process.
/// * [`NetlinkHandle::for_netns`]: a container namespace given by path (`CNI_NETNS`).
///
/// The connection is driven by a task spawned on the tokio runtime that created the handle
/// (any flavour, `current_thread` included); the task ends when the handle is dropped. The
/// socket has `NETLINK_GET_STRICT_CHK` enabled so dump filters are honoured by the kernel
/// (results are filtered client-side as well). Source: rtnetlink(7), netlink(7).
pub struct NetlinkHandle {
    pub(crate) nl: rtnetlink::Handle,
    pub(crate) ns: Option<NsRef>,
    conn: tokio::task::JoinHandle<()>,
    /// The kernel runs one dump per netlink socket at a time (a second `NLM_F_DUMP` while one
    /// is in progress fails with `EBUSY`, `netlink_dump_start`), so concurrent callers of one
    /// handle take turns.
    dump_turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NetlinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkHandle")
            .field(
                "netns",
                &self.ns.as_ref().map(|n| n.path.display().to_string()),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for NetlinkHandle {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn io(what: impl Into<String>, source: std::io::Error) -> LinkError {
    LinkError::Io {
        what: what.into(),
        source,
    }
}

impl NetlinkHandle {
    /// A handle for the calling process's network namespace.
    ///
    /// Must be awaited inside a tokio runtime with IO enabled; the connection task is
    /// spawned on it.
    ///
    /// Errors: [`LinkError::Io`] if the socket cannot be opened or no tokio runtime is
    /// running.
    ///
    /// # Panics
    /// Like every tokio socket, if the runtime was built without its IO driver
    /// (`enable_io`/`enable_all`); tokio offers no way to detect that beforehand.
    pub async fn current() -> Result<NetlinkHandle, LinkError> {
        let sock = Socket::new(NETLINK_ROUTE).map_err(|e| io("open NETLINK_ROUTE socket", e))?;
        NetlinkHandle::from_socket(sock, None)
    }

    /// A handle for the network namespace at `path` (e.g. `/run/netns/x`,
    /// `/proc/<pid>/ns/net`).
    ///
    /// The `NETLINK_ROUTE` socket is created on a dedicated, freshly spawned OS thread that
    /// enters the namespace with `setns(fd, CLONE_NEWNET)` and exits right after; the socket
    /// stays bound to that namespace and is driven from the current runtime. No runtime
    /// thread ever changes namespace.
    ///
    /// Errors: [`LinkError::Netns`] if `path` is missing, not a network namespace or cannot
    /// be entered (the CLI maps this to "netns gone" for DEL); [`LinkError::Io`] otherwise.
    ///
    /// # Panics
    /// As [`NetlinkHandle::current`], if the runtime has no IO driver.
    pub async fn for_netns(path: &Path) -> Result<NetlinkHandle, LinkError> {
        let fd = Arc::new(netns::open(path)?);
        let sock = netns::run_in_fd(fd.clone(), path.to_path_buf(), || {
            Socket::new(NETLINK_ROUTE)
        })
        .await?
        .map_err(|e| io("open NETLINK_ROUTE socket in netns", e))?;
        NetlinkHandle::from_socket(
            sock,
            Some(NsRef {
                path: path.to_path_buf(),
                fd,
            }),
        )
    }

    /// The namespace path this handle is bound to; `None` for the process's own.
    pub fn netns_path(&self) -> Option<&Path> {
        self.ns.as_ref().map(|n| n.path.as_path())
    }

    fn from_socket(sock: Socket, ns: Option<NsRef>) -> Result<NetlinkHandle, LinkError> {
        sock.set_netlink_get_strict_chk(true)
            .map_err(|e| io("set NETLINK_GET_STRICT_CHK", e))?;
        // Errors need not echo the whole request back.
        sock.set_cap_ack(true)
            .map_err(|e| io("set NETLINK_CAP_ACK", e))?;
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            io(
                "netlink handle needs a tokio runtime",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let raw = sock.into_raw_fd();
        // SAFETY: `raw` is a valid, owned netlink socket fd just released by `Socket`.
        let tokio_sock = unsafe { TokioSocket::from_raw_fd(raw) };
        let (conn, nl, _unsolicited) = rtnetlink::from_socket(tokio_sock);
        let conn = rt.spawn(conn);
        Ok(NetlinkHandle {
            nl,
            ns,
            conn,
            dump_turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Sends `msg` with `flags` and collects the replies; a `NLMSG_ERROR` with a non-zero
    /// code becomes [`NlError::Errno`]. Returns the replies and whether the dump was
    /// interrupted.
    async fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), NlError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut nl = self.nl.clone();
        let mut replies = nl
            .request(req)
            .map_err(|e| NlError::Transport(e.to_string()))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        while let Some(reply) = replies.next().await {
            if reply.header.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(NlError::Errno(code.get().saturating_abs()));
                    }
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(NlError::Transport("netlink overrun".to_owned()));
                }
                _ => {}
            }
        }
        Ok((out, interrupted))
    }

    /// A request expecting only an acknowledgement (`NLM_F_REQUEST | NLM_F_ACK | extra`).
    pub(crate) async fn ack(&self, msg: RouteNetlinkMessage, extra: u16) -> Result<(), NlError> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | extra)
            .await
            .map(|_| ())
    }

    /// A single-object get (`NLM_F_REQUEST`), returning the replies.
    pub(crate) async fn get(
        &self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.exchange(msg, NLM_F_REQUEST).await.map(|(m, _)| m)
    }

    /// A dump (`NLM_F_DUMP`), retried when interrupted by a concurrent change.
    pub(crate) async fn dump(
        &self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let _turn = self.dump_turn.lock().await;
        let mut attempt = 0;
        loop {
            let (out, interrupted) = self
                .exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)
                .await?;
            attempt += 1;
            if !interrupted || attempt >= DUMP_RETRIES {
                return Ok(out);
            }
        }
    }

    /// `RTM_GETLINK` by name; `None` when the link does not exist.
    pub(crate) async fn link_msg(&self, name: &str) -> Result<Option<LinkMessage>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        match self.get(RouteNetlinkMessage::GetLink(msg)).await {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link named `name` as [`LinkInfo`], or [`LinkError::NotFound`].
    pub(crate) async fn require_link(&self, name: &str, op: &str) -> Result<LinkInfo, LinkError> {
        match self.link_msg(name).await {
            Ok(Some(m)) => Ok(convert::link_info(&m)),
            Ok(None) => Err(LinkError::NotFound(name.to_owned())),
            Err(e) => Err(e.on_link(format!("{op}: get link {name}"), name)),
        }
    }

    /// Dumps all links (`RTM_GETLINK` with `NLM_F_DUMP`), optionally filtered by master
    /// index (kernel-side with strict checking, and client-side).
    pub(crate) async fn dump_links(
        &self,
        master: Option<u32>,
    ) -> Result<Vec<LinkMessage>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        if let Some(m) = master {
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        let replies = self.dump(RouteNetlinkMessage::GetLink(msg)).await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .filter(|l| {
                master.is_none_or(|m| {
                    l.attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == m))
                })
            })
            .collect())
    }

    /// Runs `f` in this handle's namespace: directly for the process's own namespace, on a
    /// fresh OS thread that has entered it otherwise.
    pub(crate) async fn in_netns<T, F>(&self, f: F) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match &self.ns {
            None => Ok(f()),
            Some(ns) => Ok(netns::run_in_fd(ns.fd.clone(), ns.path.clone(), f).await?),
        }
    }
}
