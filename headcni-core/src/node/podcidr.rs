//! PodCIDR sources: file formats and the name hash.
