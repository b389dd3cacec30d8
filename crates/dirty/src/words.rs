//! Operations on plain bitmaps: `u64` word slices a caller owns, in the layout of every bitmap
//! of this crate (bit `k` is page `k`, LSB-first in `u64` words).
//!
//! A [`DirtyBitmap`](crate::DirtyBitmap) is shared between threads and changes under its
//! locks; the buffers a GET_BITMAP fills, a bitmap read off the wire, or the dirty set a
//! migration pass builds from several sources are owned by one thread and need none of that.
//! These functions are the one set of word operations for them, so that no layer above
//! re-derives masks and shifts.
//!
//! None of them panics or writes outside the slice it is given: bits that would fall past
//! the end of `words` are left out, since a buffer shorter than its page range is a caller's
//! error that the caller has already refused (the kernel's bitmap-size checks) or cannot
//! make.

use crate::bits::{WORD_BITS, WordSpan};
use crate::runs::Runs;

/// The number of pages `words` has room for, `64 * words.len()` (saturated).
fn capacity(words: &[u64]) -> u64 {
    u64::try_from(words.len()).map_or(u64::MAX, |len| len.saturating_mul(WORD_BITS))
}

/// Sets pages `[first, first + pages)` of `words`; the part of the range past the end of
/// `words` is left out.
pub fn set_range(words: &mut [u64], first: u64, pages: u64) {
    let end = first.saturating_add(pages).min(capacity(words));
    if first >= end {
        return;
    }
    // end <= 64 * words.len(), so every word of the span is inside `words`.
    let span = WordSpan::new(first, end);
    if let Some(covered) = words.get_mut(span.words()) {
        for (index, word) in (span.first..).zip(covered) {
            *word |= span.mask(index);
        }
    }
}

/// Clears every bit of `words` at or past page `pages`: the tail of the word holding page
/// `pages` and every word after it.
pub fn mask_tail(words: &mut [u64], pages: u64) {
    let full = usize::try_from(pages / WORD_BITS).unwrap_or(usize::MAX);
    if let Some(last) = words.get_mut(full) {
        *last &= (1u64 << (pages % WORD_BITS)) - 1;
    }
    if let Some(beyond) = words.get_mut(full.saturating_add(1)..) {
        beyond.fill(0);
    }
}

/// ORs `src` into `dst` word for word, over the words both have.
pub fn or_words(dst: &mut [u64], src: &[u64]) {
    for (mine, theirs) in dst.iter_mut().zip(src) {
        *mine |= theirs;
    }
}

/// ORs the first `pages` bits of `src`, a bitmap as LSB-first bytes (bit `k % 8` of byte
/// `k / 8` is page `k`, as on the wire), into `dst` from page `at` on. Bits of `src` past
/// `pages` are ignored; so are bits that would land past the end of `dst`.
pub fn or_bytes_at(dst: &mut [u64], at: u64, src: &[u8], pages: u64) {
    let Ok(base) = usize::try_from(at / WORD_BITS) else {
        return;
    };
    let shift = at % WORD_BITS;
    let count = pages.div_ceil(WORD_BITS);
    for (i, chunk) in (0..count).zip(src.chunks(8)) {
        let mut bytes = [0u8; 8];
        bytes
            .get_mut(..chunk.len())
            .unwrap_or_default()
            .copy_from_slice(chunk);
        let mut word = u64::from_le_bytes(bytes);
        if i + 1 == count && !pages.is_multiple_of(WORD_BITS) {
            word &= (1u64 << (pages % WORD_BITS)) - 1;
        }
        let Ok(i) = usize::try_from(i) else { return };
        let index = base.saturating_add(i);
        if let Some(out) = dst.get_mut(index) {
            *out |= word << shift;
        }
        if shift != 0
            && let Some(out) = dst.get_mut(index.saturating_add(1))
        {
            *out |= word >> (WORD_BITS - shift);
        }
    }
}

/// The maximal runs of set bits among the first `pages` pages of `words` (pages past the
/// end of `words` count as clean), in increasing order; the same iterator as
/// [`DirtyBitmap::runs`](crate::DirtyBitmap::runs).
pub fn runs(words: &[u64], pages: u64) -> Runs<'_, u64> {
    Runs::new(words, 0, pages.min(capacity(words)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DirtyRun;

    fn pages_of(words: &[u64]) -> Vec<u64> {
        (0..capacity(words))
            .filter(|&b| words[(b / 64) as usize] & (1 << (b % 64)) != 0)
            .collect()
    }

    #[test]
    fn set_range_sets_exactly_the_range() {
        let mut words = [0u64; 3];
        set_range(&mut words, 60, 70);
        assert_eq!(words, [0xf << 60, !0, 0b11]);
    }

    #[test]
    fn set_range_of_zero_pages_sets_nothing() {
        let mut words = [0u64; 1];
        set_range(&mut words, 5, 0);
        assert_eq!(words, [0]);
    }

    #[test]
    fn set_range_leaves_out_what_is_past_the_slice() {
        let mut words = [0u64; 2];
        set_range(&mut words, 120, 100);
        assert_eq!(words, [0, 0xff << 56]);
        set_range(&mut words, u64::MAX - 1, 5);
        assert_eq!(words, [0, 0xff << 56]);
    }

    #[test]
    fn mask_tail_clears_the_last_word_above_the_pages_and_every_word_after() {
        let mut words = [u64::MAX; 4];
        mask_tail(&mut words, 68);
        assert_eq!(words, [u64::MAX, 0xf, 0, 0]);
    }

    #[test]
    fn mask_tail_on_a_word_boundary_keeps_the_whole_words() {
        let mut words = [u64::MAX; 2];
        mask_tail(&mut words, 128);
        assert_eq!(words, [u64::MAX; 2]);
        mask_tail(&mut words, 64);
        assert_eq!(words, [u64::MAX, 0]);
    }

    #[test]
    fn or_words_ors_the_common_prefix_only() {
        let mut dst = [1u64, 2];
        or_words(&mut dst, &[4, 8, 16]);
        assert_eq!(dst, [5, 10]);
    }

    #[test]
    fn or_bytes_at_an_aligned_page_lands_word_for_word() {
        let mut dst = vec![0u64; 3];
        let src = [0xffu8, 0, 0, 0, 0, 0, 0, 0x80];
        or_bytes_at(&mut dst, 64, &src, 64);
        assert_eq!(dst, [0, 0x8000_0000_0000_00ff, 0]);
    }

    #[test]
    fn or_bytes_at_an_unaligned_page_shifts_across_words() {
        let mut dst = vec![0u64; 2];
        let src = 0b11u64 << 62;
        or_bytes_at(&mut dst, 3, &src.to_le_bytes(), 64);
        assert_eq!(pages_of(&dst), [65, 66]);
    }

    #[test]
    fn or_bytes_at_ignores_bits_past_the_pages() {
        let mut dst = vec![0u64; 2];
        or_bytes_at(&mut dst, 10, &[0xff; 8], 4);
        assert_eq!(pages_of(&dst), [10, 11, 12, 13]);
    }

    #[test]
    fn or_bytes_at_writes_nothing_past_the_end() {
        let mut dst = vec![0u64; 1];
        or_bytes_at(&mut dst, 60, &[0xff; 16], 128);
        assert_eq!(pages_of(&dst), [60, 61, 62, 63]);
    }

    #[test]
    fn runs_of_plain_words_are_maximal_across_words() {
        let mut words = [0u64; 4];
        set_range(&mut words, 60, 10);
        set_range(&mut words, 5, 1);
        set_range(&mut words, 127, 2);
        let runs: Vec<_> = runs(&words, 200).collect();
        let run = |first, pages| DirtyRun { first, pages };
        assert_eq!(runs, [run(5, 1), run(60, 10), run(127, 2)]);
    }

    #[test]
    fn runs_of_plain_words_stop_at_the_page_count() {
        let words = [u64::MAX; 2];
        let runs: Vec<_> = runs(&words, 70).collect();
        assert_eq!(
            runs,
            [DirtyRun {
                first: 0,
                pages: 70
            }]
        );
        assert_eq!(super::runs(&words, 1000).map(|r| r.pages).sum::<u64>(), 128);
    }
}
