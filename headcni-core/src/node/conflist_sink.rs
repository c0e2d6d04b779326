//! The conflist sink trait: where the node agent's CNI conflist ([`Conflist`]) lives (no I/O
//! here). `headcni_node::cniconf::FileConflistSink` is the file implementation
//! (`<conf_dir>/<conflist_name>`, written atomically, only HeadCNI's own file touched).

use super::cniconf::Conflist;

/// The conflist as found in a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflistOnDisk {
    /// The conflist, parsed ([`Conflist::parse`]).
    pub conflist: Conflist,
    /// Whether the stored form is exactly what the sink writes for `conflist` (for a file:
    /// its JSON equals `conflist`'s, and its mode is the sink's). When `false` the node
    /// reconcile writes the conflist again even if `conflist` is the wanted one (a key added
    /// by hand, a drifted mode), as the file writer always did.
    pub canonical: bool,
}

/// Stores the node agent's conflist.
pub trait ConflistSink: Send + Sync {
    /// Where the conflist goes, for people and `/status` (for a file: its path).
    fn location(&self) -> String;
    /// The stored conflist; `Ok(None)` when there is none, or it is not a HeadCNI conflist
    /// (not JSON, another shape): the reconcile then writes it.
    ///
    /// Errors: the store cannot be read (e.g. `EACCES`).
    fn read(&self) -> std::io::Result<Option<ConflistOnDisk>>;
    /// Stores `conflist` atomically (a reader sees the old or the new one, never a mix)
    /// unless the same conflist is already stored in canonical form; `Ok(true)` when written.
    ///
    /// Errors: the store's.
    fn write_if_changed(&self, conflist: &Conflist) -> std::io::Result<bool>;
    /// Removes HeadCNI's own conflist and nothing else (uninstall); `Ok(false)` when there
    /// was none.
    ///
    /// Errors: the store's.
    fn remove(&self) -> std::io::Result<bool>;
}
