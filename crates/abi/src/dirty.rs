//! Dirty bitmap limits of `vfio_iommu_type1`.
//!
//! A user bitmap has one bit per page, LSB-first inside little-endian `u64` words, and is
//! always a whole number of words: `DIRTY_BITMAP_BYTES(n) = ALIGN(n, 64) / 8`, computed by
//! `vfmig_dirty::bitmap_bytes` (the one place bitmap sizes are computed). The page limit
//! comes from the kernel's `bitmap_set()` taking an `int`; the byte limit follows from it.

/// `DIRTY_BITMAP_PAGES_MAX`: the most pages one request (or one mapping) may cover, `INT_MAX`.
pub const DIRTY_BITMAP_PAGES_MAX: u64 = i32::MAX as u64;

/// `DIRTY_BITMAP_SIZE_MAX`: `DIRTY_BITMAP_BYTES(INT_MAX)`, 256 MiB. With 4 KiB pages one request
/// covers at most 8 TiB. `tests/c_layout.rs` checks it against the kernel's macro.
pub const DIRTY_BITMAP_SIZE_MAX: u64 = 256 << 20;
