//! Internal netlink failure type and its mapping onto [`LinkError`].

use headcni_core::link::LinkError;

/// A failed netlink exchange, before it is given an operation name.
#[derive(Debug)]
pub(crate) enum NlError {
    /// The kernel answered `NLMSG_ERROR` with this (positive) errno.
    Errno(i32),
    /// The connection failed or the reply could not be understood.
    Transport(String),
}

impl NlError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NlError::Errno(e) => Some(*e),
            NlError::Transport(_) => None,
        }
    }

    pub(crate) fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }

    /// Human-readable reason, `strerror` text plus the errno name for the common ones.
    pub(crate) fn reason(&self) -> String {
        match self {
            NlError::Errno(e) => {
                let text = std::io::Error::from_raw_os_error(*e).to_string();
                match *e {
                    libc::EPERM => format!("{text} (EPERM: CAP_NET_ADMIN required)"),
                    libc::EEXIST => format!("{text} (EEXIST)"),
                    libc::ENODEV => format!("{text} (ENODEV)"),
                    libc::ENOENT => format!("{text} (ENOENT)"),
                    libc::EINVAL => format!("{text} (EINVAL)"),
                    libc::EOPNOTSUPP => format!("{text} (EOPNOTSUPP)"),
                    _ => text,
                }
            }
            NlError::Transport(s) => s.clone(),
        }
    }

    /// Generic mapping: `op` names the operation (e.g. `add address 10.0.0.1/24 to eth0`).
    pub(crate) fn into_link_error(self, op: impl Into<String>) -> LinkError {
        LinkError::Netlink {
            op: op.into(),
            reason: self.reason(),
        }
    }

    /// Mapping for operations on a named link: `ENODEV` (and `ENOENT` when the link is
    /// looked up) become [`LinkError::NotFound`], `EEXIST` [`LinkError::Exists`].
    pub(crate) fn on_link(self, op: impl Into<String>, link: &str) -> LinkError {
        match self.errno() {
            Some(libc::ENODEV) => LinkError::NotFound(link.to_owned()),
            Some(libc::EEXIST) => LinkError::Exists(link.to_owned()),
            _ => self.into_link_error(op),
        }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}
