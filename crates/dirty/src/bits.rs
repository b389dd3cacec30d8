//! Word arithmetic shared by every operation: which word holds a page, which bits of the
//! first and last word a page range covers, and the kernel's bitmap sizes.

use std::ops::Range;

/// Bits in one bitmap word.
pub(crate) const WORD_BITS: u64 = u64::BITS as u64;

// Every word index of a bitmap within `MAX_PAGES` is below 2^26, so it fits a `usize`
// on every platform with at least 32-bit pointers; `word_of` relies on this.
const _: () = assert!(usize::BITS >= 32);
const _: () = assert!(crate::MAX_PAGES / WORD_BITS <= u32::MAX as u64);

/// The number of `u64` words a bitmap of `pages` pages takes: `ceil(pages / 64)`.
///
/// Never overflows, unlike the kernel's `ALIGN(pages, 64) / 64` at `u64::MAX`.
pub const fn words_for(pages: u64) -> u64 {
    pages.div_ceil(WORD_BITS)
}

/// The kernel's `DIRTY_BITMAP_BYTES(pages)`: `ALIGN(pages, 64) / 8`, the size in bytes of a
/// bitmap of `pages` pages. Bitmaps are always a whole number of `u64` words.
pub const fn bitmap_bytes(pages: u64) -> u64 {
    // words_for(u64::MAX) is 2^58, so the product is at most 2^61.
    words_for(pages) * (WORD_BITS / 8)
}

/// The index of the word holding `page`, for a page of a bitmap within `MAX_PAGES`.
#[allow(
    clippy::cast_possible_truncation,
    reason = "page / 64 < 2^26 for every page of a bitmap within MAX_PAGES (asserted above)"
)]
pub(crate) const fn word_of(page: u64) -> usize {
    (page / WORD_BITS) as usize
}

/// The number of words of a bitmap of `pages <= MAX_PAGES` pages, as a `usize`.
pub(crate) const fn word_count(pages: u64) -> usize {
    word_of(pages + (WORD_BITS - 1))
}

/// The position of `page` inside its word.
pub(crate) const fn bit_of(page: u64) -> u32 {
    (page % WORD_BITS) as u32
}

/// The words of a non-empty page range `[first, end)`, and which bits of its first and
/// last word belong to the range. The words between are covered whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WordSpan {
    /// Index of the word holding `first`.
    pub(crate) first: usize,
    /// Index of the word holding `end - 1`.
    pub(crate) last: usize,
    /// The bits of word `first` at or above `first`.
    pub(crate) head: u64,
    /// The bits of word `last` below `end`.
    pub(crate) tail: u64,
}

impl WordSpan {
    /// The span of pages `[first, end)`; the caller guarantees `first < end <= MAX_PAGES`.
    pub(crate) const fn new(first: u64, end: u64) -> WordSpan {
        debug_assert!(first < end);
        WordSpan {
            first: word_of(first),
            last: word_of(end - 1),
            head: !0 << bit_of(first),
            tail: !0 >> (63 - bit_of(end - 1)),
        }
    }

    /// The indices of the words the span touches.
    pub(crate) const fn words(&self) -> Range<usize> {
        self.first..self.last + 1
    }

    /// The bits of word `index` that belong to the span.
    pub(crate) const fn mask(&self, index: usize) -> u64 {
        let mut mask = !0;
        if index == self.first {
            mask &= self.head;
        }
        if index == self.last {
            mask &= self.tail;
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bytes_rounds_up_to_whole_words() {
        assert_eq!(bitmap_bytes(0), 0);
        assert_eq!(bitmap_bytes(1), 8);
        assert_eq!(bitmap_bytes(64), 8);
        assert_eq!(bitmap_bytes(65), 16);
        assert_eq!(bitmap_bytes(1 << 28), 32 << 20);
    }

    #[test]
    fn bitmap_bytes_of_the_largest_count_does_not_overflow() {
        assert_eq!(words_for(u64::MAX), 1 << 58);
        assert_eq!(bitmap_bytes(u64::MAX), 1 << 61);
    }

    #[test]
    fn word_span_inside_one_word_masks_both_ends() {
        let span = WordSpan::new(3, 7);
        assert_eq!(span.words(), 0..1);
        assert_eq!(span.mask(0), 0b0111_1000);
    }

    #[test]
    fn word_span_across_words_masks_head_and_tail_only() {
        let span = WordSpan::new(62, 130);
        assert_eq!(span.words(), 0..3);
        assert_eq!(span.mask(0), 0b11 << 62);
        assert_eq!(span.mask(1), !0);
        assert_eq!(span.mask(2), 0b11);
    }

    #[test]
    fn word_span_ending_on_a_word_boundary_covers_the_whole_last_word() {
        let span = WordSpan::new(64, 128);
        assert_eq!(span.words(), 1..2);
        assert_eq!(span.mask(1), !0);
    }
}
