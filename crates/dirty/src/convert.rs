//! Converting a bitmap to another page size.
//!
//! The kernel reports dirty pages at the IOMMU's smallest page size, a device may track
//! them in 2 MiB granules, and the migration copies whatever the VMM tracks; the bitmaps
//! must be brought to one page size before they are merged.
//!
//! A target page is dirty exactly when it overlaps a dirty source page:
//! - **to a larger size** (4 KiB → 2 MiB, ratio 512), any dirty small page dirties the large
//!   page holding it, and the last large page may cover memory past the source's end;
//! - **to a smaller size** (2 MiB → 4 KiB), each dirty large page becomes 512 dirty small
//!   pages.
//!
//! Both directions walk the source's dirty [runs](crate::DirtyRun) and set the matching
//! target range, so the cost follows the number of runs, not of pages, and any
//! power-of-two ratio works the same way.

use crate::bitmap::check_page_count;
use crate::bits::word_count;
use crate::words::set_range;
use crate::{DirtyBitmap, DirtyError, PageSize};

impl DirtyBitmap {
    /// A new bitmap of page size `to` covering the same memory: `ceil(bytes_covered / to)`
    /// pages, a page dirty when it overlaps a page dirty here. This bitmap is read as
    /// [`DirtyBitmap::peek`] reads, and left as it is.
    ///
    /// # Errors
    /// [`DirtyError::TooManyPages`] if the new bitmap would have more than
    /// [`MAX_PAGES`](crate::MAX_PAGES) pages.
    pub fn to_page_size(&self, to: PageSize) -> Result<DirtyBitmap, DirtyError> {
        let pages = self.bytes_covered().div_ceil(to.bytes());
        self.to_page_size_with_pages(to, pages)
    }

    /// Like [`DirtyBitmap::to_page_size`], but the new bitmap has exactly `pages` pages:
    /// for example the 768 4 KiB pages of a 3 MiB mapping whose device reports two 2 MiB
    /// granules. Pages of the new bitmap past the memory this one covers stay clean, and
    /// dirty memory past the end of the new bitmap is not represented in it.
    ///
    /// # Errors
    /// [`DirtyError::TooManyPages`] if `pages` is more than a bitmap of page size `to` can
    /// have.
    pub fn to_page_size_with_pages(
        &self,
        to: PageSize,
        pages: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        check_page_count(pages, to)?;
        let mut words = vec![0u64; word_count(pages)];
        let from = self.page_size().shift();
        if to.shift() >= from {
            let ratio_shift = to.shift() - from;
            for run in self.runs() {
                let first = run.first >> ratio_shift;
                if first >= pages {
                    break;
                }
                // run.pages > 0, so run.end() - 1 is the run's last page.
                let end = (((run.end() - 1) >> ratio_shift) + 1).min(pages);
                set_range(&mut words, first, end - first);
            }
        } else {
            let ratio = 1u64 << (from - to.shift());
            for run in self.runs() {
                let Some(first) = run.first.checked_mul(ratio).filter(|&first| first < pages)
                else {
                    break;
                };
                let end = run.end().saturating_mul(ratio).min(pages);
                set_range(&mut words, first, end - first);
            }
        }
        DirtyBitmap::from_words(words, pages, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DirtyRun;

    fn small(pages: u64) -> DirtyBitmap {
        DirtyBitmap::new(pages, PageSize::SIZE_4K).unwrap()
    }

    fn runs(bitmap: &DirtyBitmap) -> Vec<(u64, u64)> {
        bitmap
            .runs()
            .map(|DirtyRun { first, pages }| (first, pages))
            .collect()
    }

    #[test]
    fn small_to_large_dirties_the_large_page_of_any_dirty_small_page() {
        let bitmap = small(4 * 512);
        bitmap.mark_page(511).unwrap();
        bitmap.mark_page(3 * 512).unwrap();
        let large = bitmap.to_page_size(PageSize::SIZE_2M).unwrap();
        assert_eq!(large.pages(), 4);
        assert_eq!(large.page_size(), PageSize::SIZE_2M);
        assert_eq!(runs(&large), [(0, 1), (3, 1)]);
    }

    #[test]
    fn small_to_large_rounds_the_page_count_up() {
        let bitmap = small(512 + 1);
        bitmap.mark_page(512).unwrap();
        let large = bitmap.to_page_size(PageSize::SIZE_2M).unwrap();
        assert_eq!(large.pages(), 2);
        assert_eq!(runs(&large), [(1, 1)]);
    }

    #[test]
    fn small_to_large_merges_a_run_across_large_pages() {
        let bitmap = small(8 * 512);
        bitmap.mark_pages(511, 2 * 512 + 2).unwrap();
        assert_eq!(
            runs(&bitmap.to_page_size(PageSize::SIZE_2M).unwrap()),
            [(0, 4)]
        );
    }

    #[test]
    fn large_to_small_expands_each_bit_to_512() {
        let large = DirtyBitmap::new(3, PageSize::SIZE_2M).unwrap();
        large.mark_page(1).unwrap();
        let small = large.to_page_size(PageSize::SIZE_4K).unwrap();
        assert_eq!(small.pages(), 3 * 512);
        assert_eq!(runs(&small), [(512, 512)]);
    }

    #[test]
    fn large_to_small_sets_no_bit_past_the_last_page() {
        let large = DirtyBitmap::new(3, PageSize::SIZE_2M).unwrap();
        large.set_all();
        let small = large
            .to_page_size_with_pages(PageSize::SIZE_4K, 1000)
            .unwrap();
        assert_eq!(small.pages(), 1000);
        assert_eq!(small.count(), 1000);
        assert_eq!(runs(&small), [(0, 1000)]);
    }

    #[test]
    fn target_pages_past_the_covered_memory_stay_clean() {
        let large = DirtyBitmap::new(2, PageSize::SIZE_2M).unwrap();
        large.set_all();
        let small = large
            .to_page_size_with_pages(PageSize::SIZE_4K, 2000)
            .unwrap();
        assert_eq!(runs(&small), [(0, 1024)]);
    }

    #[test]
    fn conversion_between_any_power_of_two_ratio() {
        // 4 KiB to 8 KiB: ratio 2, several target bits per source word.
        let bitmap = small(130);
        for page in [0, 1, 5, 64, 127, 129] {
            bitmap.mark_page(page).unwrap();
        }
        let double = bitmap.to_page_size(PageSize::new(8192).unwrap()).unwrap();
        assert_eq!(double.pages(), 65);
        assert_eq!(runs(&double), [(0, 1), (2, 1), (32, 1), (63, 2)]);
        let back = double.to_page_size(PageSize::SIZE_4K).unwrap();
        assert_eq!(runs(&back), [(0, 2), (4, 2), (64, 2), (126, 4)]);
    }

    #[test]
    fn conversion_to_the_same_size_copies() {
        let bitmap = small(300);
        bitmap.mark_pages(7, 200).unwrap();
        let copy = bitmap.to_page_size(PageSize::SIZE_4K).unwrap();
        assert_eq!(runs(&copy), [(7, 200)]);
        assert_eq!(bitmap.count(), 200);
    }

    #[test]
    fn conversion_to_too_many_pages_is_an_error() {
        let huge = DirtyBitmap::new(4, PageSize::SIZE_1G).unwrap();
        huge.set_all();
        // 4 GiB in 4 KiB pages is fine; 1 << 40 pages is not.
        assert_eq!(
            huge.to_page_size(PageSize::SIZE_4K).unwrap().count(),
            4 << 18
        );
        assert!(matches!(
            huge.to_page_size_with_pages(PageSize::SIZE_4K, 1 << 40),
            Err(DirtyError::TooManyPages { .. })
        ));
    }

    #[test]
    fn conversion_with_a_huge_ratio_does_not_overflow() {
        let giant = DirtyBitmap::new(2, PageSize::new(1 << 60).unwrap()).unwrap();
        giant.set_all();
        assert!(giant.to_page_size(PageSize::SIZE_4K).is_err());
        let small = giant
            .to_page_size_with_pages(PageSize::SIZE_4K, 100)
            .unwrap();
        assert_eq!(small.count(), 100);
    }
}
