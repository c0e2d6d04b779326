//! The daemon's the node data plane: bridge, forwarding, masquerade table.
