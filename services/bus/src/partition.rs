//! Stable partitioning of keys (usually SKUs) onto stream partitions.
//!
//! The hash is **FNV-1a, 64 bit** over the UTF-8 bytes of the key, and the partition is
//! `hash % partitions`. It is implemented here rather than taken from a crate so that it
//! can never change under us: changing it would move keys to other partitions and break
//! per-key ordering across a rolling upgrade. The tests pin known values.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The partition (in `0..partitions`) that `key` belongs to. `partitions` must be at least 1.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let partitions = u64::from(partitions.max(1));
    // The remainder is below `partitions`, which came from a u32.
    u32::try_from(fnv1a64(key.as_bytes()) % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partitions_of_known_skus_are_pinned() {
        // Pinned forever: a change here moves SKUs between partitions.
        let got: Vec<u32> = ["SKU-1", "SKU-2", "sku-000042", "ABC"]
            .iter()
            .map(|k| partition_of(k, 16))
            .collect();
        assert_eq!(got, [12, 5, 3, 11]);
        assert_eq!(fnv1a64(b"SKU-1"), 0x1513_e49c_4b06_7b2c);
        assert_eq!(fnv1a64(b"sku-000042"), 0xaad0_8561_1e18_f783);
    }

    #[test]
    fn one_partition_takes_everything() {
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("", 1), 0);
        assert_eq!(partition_of("x", 0), 0);
    }
}
