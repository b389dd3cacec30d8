//! Dirty bitmap sizing, as `vfio_iommu_type1` computes and bounds it.
//!
//! A user bitmap has one bit per page, LSB-first inside little-endian `u64` words, and is
//! always a whole number of words: `DIRTY_BITMAP_BYTES(n) = ALIGN(n, 64) / 8`. The page limit
//! comes from the kernel's `bitmap_set()` taking an `int`; the byte limit follows from it.

/// `DIRTY_BITMAP_PAGES_MAX`: the most pages one request (or one mapping) may cover, `INT_MAX`.
pub const DIRTY_BITMAP_PAGES_MAX: u64 = i32::MAX as u64;

/// `DIRTY_BITMAP_SIZE_MAX`: `DIRTY_BITMAP_BYTES(INT_MAX)`, 256 MiB. With 4 KiB pages one request
/// covers at most 8 TiB.
pub const DIRTY_BITMAP_SIZE_MAX: u64 = dirty_bitmap_bytes(DIRTY_BITMAP_PAGES_MAX);

/// `DIRTY_BITMAP_BYTES(n)`: the bytes of a bitmap for `pages` pages, rounded up to whole `u64`
/// words. Saturates instead of wrapping for `pages` within 63 of `u64::MAX` (no such bitmap can
/// exist; the saturated value is larger than every limit and is refused by callers).
pub const fn dirty_bitmap_bytes(pages: u64) -> u64 {
    match pages.checked_add(63) {
        Some(rounded) => rounded / 64 * 8,
        None => u64::MAX / 64 * 8,
    }
}

const _: () = assert!(DIRTY_BITMAP_SIZE_MAX == 256 << 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bytes_round_up_to_whole_words() {
        assert_eq!(dirty_bitmap_bytes(0), 0);
        assert_eq!(dirty_bitmap_bytes(1), 8);
        assert_eq!(dirty_bitmap_bytes(64), 8);
        assert_eq!(dirty_bitmap_bytes(65), 16);
    }

    #[test]
    fn size_max_is_256_mib() {
        assert_eq!(DIRTY_BITMAP_SIZE_MAX, 268_435_456);
    }

    #[test]
    fn bitmap_bytes_saturates_instead_of_wrapping() {
        assert!(dirty_bitmap_bytes(u64::MAX) > DIRTY_BITMAP_SIZE_MAX);
    }
}
