//! CRC32C (Castagnoli, "CRC-32/ISCSI"), the checksum of every stream header and section.
//!
//! CRC32C rather than CRC32 (IEEE) because CPUs compute it fast: the `crc-fast` crate (pure
//! Rust) picks at run time the best of the x86-64 `crc32` instruction, carry-less
//! multiplication folding (PCLMULQDQ, and VPCLMULQDQ with AVX-512) or the AArch64 `crc32c`
//! and PMULL instructions, and falls back to tables elsewhere. On the development machine
//! it checksums cached data at 75–100 GiB/s, four times the `crc32` instruction alone, so the
//! checksum costs a small fraction of the copies a section needs anyway. A CRC of 32 bits
//! detects every error burst of up to 32 bits, so one corrupted byte (or four adjacent ones)
//! inside a checksummed range is always detected.

use crc_fast::{CrcAlgorithm, Digest, checksum_combine};

/// The value XORed into the register at the start and the end.
const XOROUT: u32 = 0xffff_ffff;

/// The CRC32C of `data` (reflected, initial value and final XOR `0xffff_ffff`, as in iSCSI,
/// ext4 and the `crc32c` instruction). The check value of `b"123456789"` is `0xe306_9283`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC32C of `a || data`, given `crc` = the CRC32C of `a`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut digest = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(crc ^ XOROUT));
    digest.update(data);
    low_u32(digest.finalize())
}

/// The CRC32C of `a || b`, given `crc_a` = the CRC32C of `a` and `crc_b` = the CRC32C of `b`,
/// which is `len_b` bytes long.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    low_u32(checksum_combine(
        CrcAlgorithm::Crc32Iscsi,
        u64::from(crc_a),
        u64::from(crc_b),
        len_b,
    ))
}

/// The 32-bit CRC the crate returns in a `u64`.
fn low_u32(value: u64) -> u32 {
    let [a, b, c, d, ..] = value.to_le_bytes();
    u32::from_le_bytes([a, b, c, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CRC32C computed bit by bit from the definition, to check the fast one against.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = XOROUT;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
            }
        }
        crc ^ XOROUT
    }

    fn sample() -> Vec<u8> {
        (0..2_500u32)
            .flat_map(|i| i.wrapping_mul(0x9e37_79b9).to_le_bytes())
            .collect()
    }

    #[test]
    fn check_value_is_the_standard_one() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(reference(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn fast_crc_matches_the_definition_at_every_length() {
        let data = sample();
        for len in (0..300).chain([1023, 1024, 4095, 4096, 4097, data.len()]) {
            assert_eq!(
                crc32c(&data[..len]),
                reference(&data[..len]),
                "length {len}"
            );
        }
    }

    #[test]
    fn append_and_combine_equal_one_pass() {
        let data = sample();
        let whole = crc32c(&data);
        for split in [0, 1, 8, 3_333, data.len()] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), whole, "split {split}");
            assert_eq!(
                crc32c_combine(crc32c(a), crc32c(b), b.len() as u64),
                whole,
                "split {split}"
            );
        }
    }
}
