//! The daemon's the node's PodCIDR: config, env, Kubernetes Node, local files, name hash.
