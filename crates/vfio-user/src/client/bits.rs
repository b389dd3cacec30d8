//! Placing a bitmap from the wire (LSB-first bytes) into a `u64` result at any page offset.

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

/// Clears the bits of `words` past `pages`.
pub(super) fn mask_tail(words: &mut [u64], pages: u64) {
    let full = usize::try_from(pages / 64).unwrap_or(usize::MAX);
    let rest = pages % 64;
    if let Some(last) = words.get_mut(full) {
        *last &= (1u64 << rest) - 1;
    }
    if let Some(beyond) = words.get_mut(full.saturating_add(1)..) {
        beyond.fill(0);
    }
}

/// ORs the first `pages` bits of `src` into `dst` starting at bit `at`. Bits of `src` past
/// `pages` are ignored, and nothing past the end of `dst` is written.
pub(super) fn or_into(dst: &mut [u64], at: u64, src: &[u8], pages: u64) {
    let Ok(base) = usize::try_from(at / 64) else {
        return;
    };
    let shift = at % 64;
    let words = pages.div_ceil(64);
    for (i, chunk) in (0..words).zip(src.chunks(8)) {
        let mut bytes = [0u8; 8];
        bytes
            .get_mut(..chunk.len())
            .unwrap_or_default()
            .copy_from_slice(chunk);
        let mut word = u64::from_le_bytes(bytes);
        if i + 1 == words && !pages.is_multiple_of(64) {
            word &= (1u64 << (pages % 64)) - 1;
        }
        let Ok(i) = usize::try_from(i) else { return };
        let index = base.saturating_add(i);
        if let Some(out) = dst.get_mut(index) {
            *out |= word << shift;
        }
        if shift != 0
            && let Some(out) = dst.get_mut(index.saturating_add(1))
        {
            *out |= word >> (64 - shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages_of(words: &[u64]) -> Vec<u64> {
        (0..words.len() as u64 * 64)
            .filter(|&b| words[(b / 64) as usize] & (1 << (b % 64)) != 0)
            .collect()
    }

    #[test]
    fn aligned_bits_land_word_for_word() {
        let mut dst = vec![0u64; 3];
        let src = [0xffu8, 0, 0, 0, 0, 0, 0, 0x80];
        or_into(&mut dst, 64, &src, 64);
        assert_eq!(dst, [0, 0x8000_0000_0000_00ff, 0]);
    }

    #[test]
    fn unaligned_bits_are_shifted_across_words() {
        let mut dst = vec![0u64; 2];
        let src = 0b11u64 << 62;
        or_into(&mut dst, 3, &src.to_le_bytes(), 64);
        assert_eq!(pages_of(&dst), [65, 66]);
    }

    #[test]
    fn bits_past_the_pages_are_ignored() {
        let mut dst = vec![0u64; 2];
        or_into(&mut dst, 10, &[0xff; 8], 4);
        assert_eq!(pages_of(&dst), [10, 11, 12, 13]);
    }

    #[test]
    fn nothing_is_written_past_the_end() {
        let mut dst = vec![0u64; 1];
        or_into(&mut dst, 60, &[0xff; 16], 128);
        assert_eq!(pages_of(&dst), [60, 61, 62, 63]);
    }

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
