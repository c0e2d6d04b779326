//! Node-level domain logic for the daemon, free of I/O: PodCIDR sources' file formats,
//! the CNI conflist the daemon writes, the masquerade rule set and the `filter FORWARD`
//! accept rules.

pub mod cniconf;
pub mod forward;
pub mod masq;
pub mod podcidr;
