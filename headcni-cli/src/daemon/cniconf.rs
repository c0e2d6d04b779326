//! The daemon's the CNI conflist: render and write atomically, only when it changes.
