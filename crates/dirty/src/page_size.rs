//! [`PageSize`]: the granule one bit of a bitmap stands for.

use std::fmt;

use crate::DirtyError;

/// The smallest page size: 4 KiB, as log2.
const MIN_SHIFT: u32 = 12;

/// A page size in bytes: a power of two of at least 4 KiB.
///
/// It is kept as its log2, so every conversion between bytes and pages is a shift. The
/// VFIO type1 IOMMU reports dirty pages at the smallest page size of its `pgsize_bitmap`
/// (4 KiB on x86), and devices that track coarser report 2 MiB or larger granules;
/// [`DirtyBitmap::to_page_size`](crate::DirtyBitmap::to_page_size) converts between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize {
    shift: u32,
}

impl PageSize {
    /// 4 KiB, the base page of x86 and of most IOMMUs.
    pub const SIZE_4K: PageSize = PageSize { shift: 12 };
    /// 2 MiB, an x86 huge page.
    pub const SIZE_2M: PageSize = PageSize { shift: 21 };
    /// 1 GiB, an x86 gigantic page.
    pub const SIZE_1G: PageSize = PageSize { shift: 30 };

    /// The page size of `bytes` bytes.
    ///
    /// # Errors
    /// [`DirtyError::InvalidPageSize`] unless `bytes` is a power of two of at least 4096.
    pub const fn new(bytes: u64) -> Result<PageSize, DirtyError> {
        if bytes.is_power_of_two() && bytes.trailing_zeros() >= MIN_SHIFT {
            Ok(PageSize {
                shift: bytes.trailing_zeros(),
            })
        } else {
            Err(DirtyError::InvalidPageSize { bytes })
        }
    }

    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.shift
    }

    /// The page size in bytes as a `usize`, for buffer lengths.
    ///
    /// # Panics
    /// If the size does not fit a `usize`: only a page of 4 GiB or more on a 32-bit target.
    /// Called on a constant, that is a compile-time error.
    pub const fn bytes_usize(self) -> usize {
        assert!(
            self.shift < usize::BITS,
            "the page size does not fit a usize"
        );
        1 << self.shift
    }

    /// log2 of the page size: 12 for 4 KiB.
    pub const fn shift(self) -> u32 {
        self.shift
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 6] = [
            (60, "EiB"),
            (50, "PiB"),
            (40, "TiB"),
            (30, "GiB"),
            (20, "MiB"),
            (10, "KiB"),
        ];
        // Every page size is at least 4 KiB, so one of the units always matches.
        for (unit_shift, unit) in UNITS {
            if self.shift >= unit_shift {
                return write!(f, "{} {unit}", 1u64 << (self.shift - unit_shift));
            }
        }
        write!(f, "{} B", self.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_accepts_powers_of_two_from_4k() {
        assert_eq!(PageSize::new(4096), Ok(PageSize::SIZE_4K));
        assert_eq!(PageSize::new(2 << 20), Ok(PageSize::SIZE_2M));
        assert_eq!(PageSize::new(1 << 30), Ok(PageSize::SIZE_1G));
        assert_eq!(PageSize::new(1 << 63).map(PageSize::shift), Ok(63));
    }

    #[test]
    fn new_rejects_zero_small_and_non_powers_of_two() {
        for bytes in [0, 1, 2048, 4095, 4097, 12288, u64::MAX] {
            assert_eq!(
                PageSize::new(bytes),
                Err(DirtyError::InvalidPageSize { bytes })
            );
        }
    }

    #[test]
    fn bytes_and_shift_agree() {
        assert_eq!(PageSize::SIZE_4K.bytes(), 4096);
        assert_eq!(PageSize::SIZE_4K.shift(), 12);
        assert_eq!(PageSize::SIZE_2M.bytes(), 2 * 1024 * 1024);
        assert_eq!(PageSize::SIZE_1G.shift(), 30);
    }

    #[test]
    fn bytes_usize_is_bytes_as_a_usize() {
        assert_eq!(PageSize::SIZE_4K.bytes_usize(), 4096);
        assert_eq!(PageSize::SIZE_2M.bytes_usize(), 2 << 20);
    }

    #[test]
    fn display_uses_the_largest_whole_unit() {
        assert_eq!(PageSize::SIZE_4K.to_string(), "4 KiB");
        assert_eq!(PageSize::SIZE_2M.to_string(), "2 MiB");
        assert_eq!(
            PageSize::new(1 << 39).map(|p| p.to_string()),
            Ok("512 GiB".to_owned())
        );
        assert_eq!(
            PageSize::new(1 << 63).map(|p| p.to_string()),
            Ok("8 EiB".to_owned())
        );
    }
}
