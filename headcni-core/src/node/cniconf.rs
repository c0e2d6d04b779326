//! The CNI conflist the node daemon writes.
