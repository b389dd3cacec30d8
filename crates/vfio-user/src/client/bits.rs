//! Reading a bitmap from the wire (LSB-first bytes) into `u64` words. The word operations
//! themselves (ORing in at a page offset, masking the tail) are `vfmig_dirty::words`.

use vfmig_dirty::words::mask_tail;
use zerocopy::FromBytes;

/// Replaces the contents of `out` with the bits of `pages` pages from `src`, as `u64` words,
/// bits past the last page cleared. `out`'s allocation is reused.
pub(super) fn copy_words(out: &mut Vec<u64>, src: &[u8], pages: u64) {
    out.clear();
    // Whole words (the target is little-endian): one memcpy when `src` is 8-byte aligned, as a
    // received bitmap is (it starts 40 bytes into a heap buffer).
    let whole = src.get(..src.len() / 8 * 8).unwrap_or_default();
    match <[u64]>::ref_from_bytes(whole) {
        Ok(words) => out.extend_from_slice(words),
        Err(_) => out.extend(
            whole
                .chunks_exact(8)
                .map(|chunk| chunk.try_into().map_or(0, u64::from_le_bytes)),
        ),
    }
    mask_tail(out, pages);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_words_reads_unaligned_bytes_too() {
        let bytes = [0u8, 1, 0, 0, 0, 0, 0, 0, 0x80];
        let mut out = Vec::new();
        copy_words(&mut out, &bytes[1..], 64);
        assert_eq!(out, [1 | 0x80 << 56]);
    }

    #[test]
    fn copy_words_masks_the_tail_and_replaces_the_contents() {
        let mut out = vec![7; 5];
        copy_words(&mut out, &[0xff; 16], 68);
        assert_eq!(out, [u64::MAX, 0xf]);
    }
}
