//! [`DirtyBitmap`]: storage, chunk locks, marking, counting and whole-bitmap operations.
//!
//! Reading out ([`DirtyBitmap::read_and_clear`], [`DirtyBitmap::peek`]) lives in
//! `transfer.rs`, run iteration in `runs.rs`, page-size conversion in `convert.rs`.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::bits::{WordSpan, bit_of, word_count, word_of, words_for};
use crate::{DirtyError, PageSize};

/// The largest page count a bitmap can have: 2^32 pages, 16 TiB of 4 KiB pages, a 512 MiB
/// bitmap. It bounds the allocation [`DirtyBitmap::new`] makes.
///
/// The kernel's own limit for one `VFIO_IOMMU_DIRTY_PAGES` request is `INT_MAX` pages
/// (`DIRTY_BITMAP_PAGES_MAX`), so one bitmap here can hold any reply the kernel gives.
pub const MAX_PAGES: u64 = 1 << 32;

/// Checks that a bitmap of `pages` pages of `page_size` stays within [`MAX_PAGES`] and
/// covers no more than `u64::MAX` bytes.
pub(crate) fn check_page_count(pages: u64, page_size: PageSize) -> Result<(), DirtyError> {
    let max_pages = MAX_PAGES.min(u64::MAX >> page_size.shift());
    if pages > max_pages {
        return Err(DirtyError::TooManyPages { pages, max_pages });
    }
    Ok(())
}

/// log2 of the words one chunk lock guards: 4096 words, 32 KiB of bitmap, 1 GiB of guest
/// memory in 4 KiB pages.
const CHUNK_SHIFT: u32 = 12;

/// A lock for one chunk of words, alone in its cache lines so that markers working on
/// neighbouring chunks do not bounce one line between cores.
///
/// It guards no data of its own: the words stay atomics that anyone may load. What it
/// orders is who may *change* them; see the crate docs.
#[repr(align(128))]
#[derive(Debug, Default)]
struct ChunkLock(RwLock<()>);

/// How [`DirtyBitmap::for_each_chunk`] holds each chunk's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The shared side: for operations that only set bits.
    Shared,
    /// The exclusive side: for operations that clear bits.
    Exclusive,
    /// No lock: for operations that only load.
    Unlocked,
}

// Markers and the reader share a bitmap across threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<DirtyBitmap>();
};

/// A dirty bitmap: one bit per page, safe to mark from many threads while another reads
/// and clears it.
///
/// Bit `j` of word `i` stands for page `64 * i + j`, the layout of the kernel's
/// `VFIO_IOMMU_DIRTY_PAGES` user bitmap. See the [crate docs](crate) for the locking
/// scheme and why no bit is ever lost.
pub struct DirtyBitmap {
    /// The bits. Bits at or above `pages` in the last word are always zero.
    words: Box<[AtomicU64]>,
    /// One lock per `1 << chunk_shift` words.
    locks: Box<[ChunkLock]>,
    /// log2 of the words per chunk lock.
    chunk_shift: u32,
    /// The number of pages (bits) the bitmap has.
    pages: u64,
    /// The size of the page each bit stands for.
    page_size: PageSize,
}

impl DirtyBitmap {
    /// A clean bitmap of `pages` pages of `page_size` bytes.
    ///
    /// # Errors
    /// [`DirtyError::TooManyPages`] if `pages` is above [`MAX_PAGES`], or above what keeps
    /// `pages * page_size` within a `u64`.
    pub fn new(pages: u64, page_size: PageSize) -> Result<DirtyBitmap, DirtyError> {
        DirtyBitmap::with_chunk_shift(pages, page_size, CHUNK_SHIFT)
    }

    /// [`DirtyBitmap::new`] with `1 << chunk_shift` words per lock; tests use tiny chunks
    /// to make every range cross chunk boundaries.
    pub(crate) fn with_chunk_shift(
        pages: u64,
        page_size: PageSize,
        chunk_shift: u32,
    ) -> Result<DirtyBitmap, DirtyError> {
        check_page_count(pages, page_size)?;
        let words = word_count(pages);
        let chunks = words.div_ceil(1 << chunk_shift);
        Ok(DirtyBitmap {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            locks: (0..chunks).map(|_| ChunkLock::default()).collect(),
            chunk_shift,
            pages,
            page_size,
        })
    }

    /// A bitmap holding `words` as they are; `words` must have exactly
    /// `words_for(pages)` entries and no bit at or above `pages`.
    pub(crate) fn from_words(
        words: Vec<u64>,
        pages: u64,
        page_size: PageSize,
    ) -> Result<DirtyBitmap, DirtyError> {
        let mut bitmap = DirtyBitmap::new(pages, page_size)?;
        debug_assert_eq!(bitmap.words.len(), words.len());
        for (word, value) in bitmap.words.iter_mut().zip(words) {
            *word.get_mut() = value;
        }
        Ok(bitmap)
    }

    /// The number of pages (bits).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The size of the page each bit stands for.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The bytes of memory the bitmap covers: `pages * page_size`. Never overflows:
    /// [`DirtyBitmap::new`] refuses bitmaps whose coverage would not fit a `u64`.
    pub fn bytes_covered(&self) -> u64 {
        self.pages << self.page_size.shift()
    }

    /// Marks one page dirty.
    ///
    /// # Errors
    /// [`DirtyError::RangeOutOfBounds`] if `page >= self.pages()`.
    pub fn mark_page(&self, page: u64) -> Result<(), DirtyError> {
        self.check_range(page, 1)?;
        let index = word_of(page);
        let _shared = self.shared(index >> self.chunk_shift);
        self.words[index].fetch_or(1 << bit_of(page), Relaxed);
        Ok(())
    }

    /// Marks pages `[first, first + pages)` dirty. Marking zero pages does nothing.
    ///
    /// # Errors
    /// [`DirtyError::RangeOutOfBounds`] if the range does not lie inside the bitmap.
    pub fn mark_pages(&self, first: u64, pages: u64) -> Result<(), DirtyError> {
        let end = self.check_range(first, pages)?;
        if pages > 0 {
            self.set_span(WordSpan::new(first, end));
        }
        Ok(())
    }

    /// Marks dirty every page that holds a byte of `[offset, offset + len)`, counting from
    /// the start of the covered memory: a partial first and last page are both marked.
    /// A zero-length range marks nothing.
    ///
    /// # Errors
    /// [`DirtyError::ByteRangeOutOfBounds`] if the range does not lie inside
    /// [`DirtyBitmap::bytes_covered`].
    pub fn mark_bytes(&self, offset: u64, len: u64) -> Result<(), DirtyError> {
        let covered = self.bytes_covered();
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= covered)
            .ok_or(DirtyError::ByteRangeOutOfBounds {
                offset,
                len,
                covered,
            })?;
        if len > 0 {
            let shift = self.page_size.shift();
            self.set_span(WordSpan::new(offset >> shift, ((end - 1) >> shift) + 1));
        }
        Ok(())
    }

    /// The number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.load(Relaxed).count_ones()))
            .sum()
    }

    /// The number of dirty pages in `[first, first + pages)`.
    ///
    /// # Errors
    /// [`DirtyError::RangeOutOfBounds`] if the range does not lie inside the bitmap.
    pub fn count_range(&self, first: u64, pages: u64) -> Result<u64, DirtyError> {
        let end = self.check_range(first, pages)?;
        if pages == 0 {
            return Ok(0);
        }
        let span = WordSpan::new(first, end);
        let words = &self.words[span.words()];
        Ok((span.first..)
            .zip(words)
            .map(|(index, word)| u64::from((word.load(Relaxed) & span.mask(index)).count_ones()))
            .sum())
    }

    /// Whether no page is dirty.
    pub fn is_clean(&self) -> bool {
        self.words.iter().all(|word| word.load(Relaxed) == 0)
    }

    /// Marks every page dirty.
    pub fn set_all(&self) {
        if self.pages > 0 {
            self.set_span(WordSpan::new(0, self.pages));
        }
    }

    /// Clears every page, discarding what was marked.
    pub fn clear_all(&self) {
        self.for_each_chunk(0..self.words.len(), Access::Exclusive, |words, _| {
            for word in words {
                if word.load(Relaxed) != 0 {
                    word.store(0, Relaxed);
                }
            }
        });
    }

    /// Marks dirty every page that is dirty in `other`, which must have the same page size
    /// and page count. `other` is read as [`DirtyBitmap::peek`] reads, and left as it is.
    ///
    /// # Errors
    /// [`DirtyError::PageSizeMismatch`] or [`DirtyError::PageCountMismatch`].
    pub fn or_from(&self, other: &DirtyBitmap) -> Result<(), DirtyError> {
        self.check_same_shape(other)?;
        self.for_each_chunk(0..self.words.len(), Access::Shared, |words, base| {
            for (word, theirs) in words.iter().zip(&other.words[base..]) {
                let bits = theirs.load(Relaxed);
                if bits != 0 {
                    word.fetch_or(bits, Relaxed);
                }
            }
        });
        Ok(())
    }

    /// Checks that `[first, first + pages)` lies inside the bitmap and returns its end.
    pub(crate) fn check_range(&self, first: u64, pages: u64) -> Result<u64, DirtyError> {
        first
            .checked_add(pages)
            .filter(|&end| end <= self.pages)
            .ok_or(DirtyError::RangeOutOfBounds {
                first,
                pages,
                len: self.pages,
            })
    }

    /// Checks that `other` has this bitmap's page size and page count.
    fn check_same_shape(&self, other: &DirtyBitmap) -> Result<(), DirtyError> {
        if self.page_size != other.page_size {
            return Err(DirtyError::PageSizeMismatch {
                ours: self.page_size,
                theirs: other.page_size,
            });
        }
        if self.pages != other.pages {
            return Err(DirtyError::PageCountMismatch {
                ours: self.pages,
                theirs: other.pages,
            });
        }
        Ok(())
    }

    /// Sets every bit of a span of this bitmap.
    fn set_span(&self, span: WordSpan) {
        self.for_each_chunk(span.words(), Access::Shared, |words, base| {
            for (index, word) in (base..).zip(words) {
                let mask = span.mask(index);
                if mask == !0 {
                    // A plain store gives the same word as `fetch_or(!0)`: under the shared
                    // side nothing clears bits, and everything else only sets them.
                    word.store(!0, Relaxed);
                } else {
                    word.fetch_or(mask, Relaxed);
                }
            }
        });
    }

    /// The words, for the modules that read them.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    /// Calls `f(words, first_index)` for each piece of `span` that lies in one chunk, in
    /// order, holding that chunk's lock as `access` says while `f` runs. The lock of a chunk
    /// is held only for that chunk, so markers elsewhere never wait for a whole pass.
    ///
    /// `span` must lie inside the bitmap's words.
    pub(crate) fn for_each_chunk(
        &self,
        span: Range<usize>,
        access: Access,
        mut f: impl FnMut(&[AtomicU64], usize),
    ) {
        let mut start = span.start;
        while start < span.end {
            let chunk = start >> self.chunk_shift;
            let end = ((chunk + 1) << self.chunk_shift).min(span.end);
            let words = &self.words[start..end];
            match access {
                Access::Shared => {
                    let _shared = self.shared(chunk);
                    f(words, start);
                }
                Access::Exclusive => {
                    let _exclusive = self.exclusive(chunk);
                    f(words, start);
                }
                Access::Unlocked => f(words, start),
            }
            start = end;
        }
    }

    /// The shared side of chunk `chunk`'s lock.
    ///
    /// Poisoning is ignored: the lock guards `()`, and no code that holds it can leave the
    /// bits half-changed, since atomic operations do not panic.
    fn shared(&self, chunk: usize) -> RwLockReadGuard<'_, ()> {
        self.locks[chunk]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The exclusive side of chunk `chunk`'s lock; poisoning is ignored as in `shared`.
    fn exclusive(&self, chunk: usize) -> RwLockWriteGuard<'_, ()> {
        self.locks[chunk]
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirtyBitmap")
            .field("pages", &self.pages)
            .field("page_size", &self.page_size)
            .field("words", &words_for(self.pages))
            .field("chunk_words", &(1u64 << self.chunk_shift))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(pages: u64) -> DirtyBitmap {
        DirtyBitmap::with_chunk_shift(pages, PageSize::SIZE_4K, 1).unwrap()
    }

    fn dirty_pages(bitmap: &DirtyBitmap) -> Vec<u64> {
        (0..bitmap.pages())
            .filter(|&page| bitmap.count_range(page, 1).unwrap() == 1)
            .collect()
    }

    #[test]
    fn new_bitmap_is_clean_with_the_given_shape() {
        let bitmap = DirtyBitmap::new(1000, PageSize::SIZE_2M).unwrap();
        assert!(bitmap.is_clean());
        assert_eq!(bitmap.pages(), 1000);
        assert_eq!(bitmap.page_size(), PageSize::SIZE_2M);
        assert_eq!(bitmap.bytes_covered(), 1000 << 21);
    }

    #[test]
    fn the_cap_allows_16_tib_of_4k_pages() {
        // Checked without allocating the 512 MiB bitmap.
        assert_eq!(MAX_PAGES << 12, 16 << 40);
        assert_eq!(check_page_count(MAX_PAGES, PageSize::SIZE_4K), Ok(()));
    }

    #[test]
    fn new_rejects_one_page_over_the_cap() {
        assert_eq!(
            DirtyBitmap::new(MAX_PAGES + 1, PageSize::SIZE_4K).unwrap_err(),
            DirtyError::TooManyPages {
                pages: MAX_PAGES + 1,
                max_pages: MAX_PAGES
            }
        );
    }

    #[test]
    fn new_rejects_2_pow_40_pages() {
        assert!(matches!(
            DirtyBitmap::new(1 << 40, PageSize::SIZE_4K),
            Err(DirtyError::TooManyPages { .. })
        ));
    }

    #[test]
    fn new_rejects_coverage_that_overflows_u64() {
        let huge = PageSize::new(1 << 60).unwrap();
        assert_eq!(
            DirtyBitmap::new(17, huge).unwrap_err(),
            DirtyError::TooManyPages {
                pages: 17,
                max_pages: 15
            }
        );
        assert_eq!(
            DirtyBitmap::new(15, huge).unwrap().bytes_covered(),
            15 << 60
        );
    }

    #[test]
    fn empty_bitmap_has_nothing_to_mark() {
        let bitmap = bitmap(0);
        assert!(bitmap.is_clean());
        assert_eq!(bitmap.count(), 0);
        bitmap.set_all();
        assert!(bitmap.is_clean());
        assert!(bitmap.mark_page(0).is_err());
    }

    #[test]
    fn mark_page_sets_one_bit() {
        let bitmap = bitmap(200);
        bitmap.mark_page(130).unwrap();
        assert_eq!(dirty_pages(&bitmap), [130]);
    }

    #[test]
    fn mark_page_out_of_bounds_is_an_error() {
        let bitmap = bitmap(200);
        assert_eq!(
            bitmap.mark_page(200),
            Err(DirtyError::RangeOutOfBounds {
                first: 200,
                pages: 1,
                len: 200
            })
        );
        assert!(bitmap.mark_page(u64::MAX).is_err());
        assert!(bitmap.is_clean());
    }

    #[test]
    fn mark_pages_sets_an_unaligned_range_across_words_and_chunks() {
        // Chunks of 2 words: pages 60..300 cross four words and three chunks.
        let bitmap = bitmap(400);
        bitmap.mark_pages(60, 240).unwrap();
        assert_eq!(dirty_pages(&bitmap), (60..300).collect::<Vec<_>>());
    }

    #[test]
    fn mark_pages_of_zero_pages_marks_nothing() {
        let bitmap = bitmap(100);
        bitmap.mark_pages(100, 0).unwrap();
        assert!(bitmap.is_clean());
    }

    #[test]
    fn mark_pages_out_of_bounds_is_an_error_and_marks_nothing() {
        let bitmap = bitmap(100);
        assert_eq!(
            bitmap.mark_pages(90, 11),
            Err(DirtyError::RangeOutOfBounds {
                first: 90,
                pages: 11,
                len: 100
            })
        );
        assert!(bitmap.mark_pages(1, u64::MAX).is_err());
        assert!(bitmap.mark_pages(101, 0).is_err());
        assert!(bitmap.is_clean());
    }

    #[test]
    fn mark_bytes_marks_partial_first_and_last_pages() {
        let bitmap = bitmap(10);
        // From the last byte of page 2 to the first byte of page 5.
        bitmap.mark_bytes(3 * 4096 - 1, 2 * 4096 + 2).unwrap();
        assert_eq!(dirty_pages(&bitmap), [2, 3, 4, 5]);
    }

    #[test]
    fn mark_bytes_inside_one_page_marks_that_page() {
        let bitmap = bitmap(10);
        bitmap.mark_bytes(4096 + 10, 1).unwrap();
        assert_eq!(dirty_pages(&bitmap), [1]);
    }

    #[test]
    fn mark_bytes_of_zero_length_marks_nothing() {
        let bitmap = bitmap(10);
        bitmap.mark_bytes(4096, 0).unwrap();
        assert!(bitmap.is_clean());
    }

    #[test]
    fn mark_bytes_out_of_bounds_is_an_error() {
        let bitmap = bitmap(10);
        assert_eq!(
            bitmap.mark_bytes(10 * 4096 - 1, 2),
            Err(DirtyError::ByteRangeOutOfBounds {
                offset: 10 * 4096 - 1,
                len: 2,
                covered: 10 * 4096
            })
        );
        assert!(bitmap.mark_bytes(1, u64::MAX).is_err());
        assert!(bitmap.is_clean());
    }

    #[test]
    fn mark_bytes_up_to_the_last_byte_marks_the_last_page() {
        let bitmap = bitmap(10);
        bitmap.mark_bytes(0, 10 * 4096).unwrap();
        assert_eq!(bitmap.count(), 10);
    }

    #[test]
    fn count_range_counts_only_inside_the_range() {
        let bitmap = bitmap(300);
        bitmap.mark_pages(50, 200).unwrap();
        assert_eq!(bitmap.count(), 200);
        assert_eq!(bitmap.count_range(0, 60).unwrap(), 10);
        assert_eq!(bitmap.count_range(63, 130).unwrap(), 130);
        assert_eq!(bitmap.count_range(240, 60).unwrap(), 10);
        assert_eq!(bitmap.count_range(300, 0).unwrap(), 0);
    }

    #[test]
    fn count_range_out_of_bounds_is_an_error() {
        let bitmap = bitmap(300);
        assert!(bitmap.count_range(299, 2).is_err());
        assert!(bitmap.count_range(u64::MAX, 2).is_err());
    }

    #[test]
    fn set_all_sets_exactly_the_pages_of_the_bitmap() {
        let bitmap = bitmap(131);
        bitmap.set_all();
        assert_eq!(bitmap.count(), 131);
        // The bits past page 130 in the last word stay clear.
        assert_eq!(bitmap.words()[2].load(Relaxed), 0b111);
    }

    #[test]
    fn clear_all_clears_every_page() {
        let bitmap = bitmap(500);
        bitmap.set_all();
        bitmap.clear_all();
        assert!(bitmap.is_clean());
    }

    #[test]
    fn or_from_adds_the_other_bitmaps_pages() {
        let ours = bitmap(200);
        let theirs = bitmap(200);
        ours.mark_page(3).unwrap();
        theirs.mark_pages(100, 3).unwrap();
        ours.or_from(&theirs).unwrap();
        assert_eq!(dirty_pages(&ours), [3, 100, 101, 102]);
        assert_eq!(theirs.count(), 3);
    }

    #[test]
    fn or_from_a_different_page_size_is_an_error() {
        let ours = bitmap(200);
        let theirs = DirtyBitmap::new(200, PageSize::SIZE_2M).unwrap();
        theirs.set_all();
        assert_eq!(
            ours.or_from(&theirs),
            Err(DirtyError::PageSizeMismatch {
                ours: PageSize::SIZE_4K,
                theirs: PageSize::SIZE_2M
            })
        );
        assert!(ours.is_clean());
    }

    #[test]
    fn or_from_a_different_page_count_is_an_error() {
        let ours = bitmap(200);
        let theirs = bitmap(201);
        assert_eq!(
            ours.or_from(&theirs),
            Err(DirtyError::PageCountMismatch {
                ours: 200,
                theirs: 201
            })
        );
    }

    #[test]
    fn or_from_itself_changes_nothing() {
        let bitmap = bitmap(200);
        bitmap.mark_pages(10, 20).unwrap();
        bitmap.or_from(&bitmap).unwrap();
        assert_eq!(bitmap.count(), 20);
    }

    #[test]
    fn debug_shows_the_shape_not_the_bits() {
        let text = format!("{:?}", DirtyBitmap::new(100, PageSize::SIZE_4K).unwrap());
        assert!(text.contains("pages: 100"), "{text}");
        assert!(text.contains("words: 2"), "{text}");
    }
}
