//! Stable, non-cryptographic hashing for names and fingerprints that must not change between
//! versions (host veth names, the PodCIDR name hash, the IPAM index checksum).

/// 64-bit FNV-1a (Fowler–Noll–Vo, offset basis `0xcbf29ce484222325`, prime `0x100000001b3`)
/// of a byte sequence. Stable by definition: values derived from it are persisted or compared
/// across processes and versions.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;

    #[test]
    fn published_test_vectors() {
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }
}
