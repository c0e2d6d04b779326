//! Node-level domain logic for the daemon, free of I/O: PodCIDR sources' file formats,
//! the CNI conflist the daemon writes, and the masquerade rule set.

pub mod cniconf;
pub mod masq;
pub mod podcidr;
