//! `headcni install`: copy the binary into the CNI bin dir atomically and link headcni-ipam to it.
