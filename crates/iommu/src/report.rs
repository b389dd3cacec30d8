//! A dirty bitmap as the caller of GET_BITMAP or unmap-with-bitmap asks for it: its geometry
//! (`BitmapRequest`), the kernel's checks of it, and the reporting of one mapping into the
//! caller's buffer. Shared by `tracking.rs` (GET_BITMAP) and `container.rs` (unmap).

use vfmig_abi::dirty::DIRTY_BITMAP_SIZE_MAX;
use vfmig_dirty::{PageSize, bitmap_bytes, words};

use crate::error::{IommuError, Result};
use crate::mapping::Mapping;
use crate::types::CONTAINER_PAGE_SIZE;

/// The bitmap half of a GET_BITMAP or unmap-with-bitmap request (`struct vfio_bitmap` without
/// its user pointer: the buffer is passed separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapRequest {
    /// Page size of one bit; must be the container page size. Typed: a page size that is not
    /// a power of two of at least 4 KiB (the kernel's `__ffs` of 0 included) is refused where
    /// the request is decoded.
    pub pgsize: PageSize,
    /// Size of the caller's bitmap in bytes.
    pub size: u64,
}

/// The kernel's `verify_bitmap_size` for a range of `size` bytes, then its `access_ok` on the
/// buffer.
pub(crate) fn check_bitmap_size(size: u64, b: &BitmapRequest, out: &[u64]) -> Result<()> {
    let buffer = (out.len() as u64).saturating_mul(8);
    if buffer < b.size {
        return Err(IommuError::BitmapBuffer {
            declared: b.size,
            buffer,
        });
    }
    let pages = size >> b.pgsize.shift();
    if pages == 0 || b.size == 0 || b.size > DIRTY_BITMAP_SIZE_MAX || b.size < bitmap_bytes(pages) {
        return Err(IommuError::BitmapSize {
            pages,
            bitmap_size: b.size,
        });
    }
    Ok(())
}

/// Fails with [`IommuError::Untracked`] for the first of `mappings` without an fd: a GET or
/// unmap-with-bitmap over it is refused before any bitmap is read and cleared.
pub(crate) fn check_tracked<'a>(mut mappings: impl Iterator<Item = &'a Mapping>) -> Result<()> {
    match mappings.find(|m| !m.tracked()) {
        Some(m) => Err(IommuError::Untracked { mapping: m.start() }),
        None => Ok(()),
    }
}

/// ORs mapping `m`'s dirty pages into `out` at its bit offset from `base`, clears them, and
/// sets pinned pages again. `precise` false: every page is reported (an `AllMapped` device).
pub(crate) fn report_mapping(m: &Mapping, base: u64, precise: bool, out: &mut [u64]) -> Result<()> {
    let Some(bitmap) = &m.bitmap else {
        return Err(IommuError::TrackingOff);
    };
    let bit_offset = (m.iova - base) >> CONTAINER_PAGE_SIZE.shift();
    if precise {
        bitmap.read_and_clear(0, m.pages(), out, bit_offset)?;
    } else {
        // Every page is reported: no need to read the bitmap, only to empty it.
        bitmap.clear_all();
        words::set_range(out, bit_offset, m.pages());
    }
    m.populate_pinned();
    Ok(())
}

/// The page size check of GET_BITMAP and unmap-with-bitmap: only the container page size.
pub(crate) fn check_page_size(pgsize: PageSize) -> Result<()> {
    if pgsize == CONTAINER_PAGE_SIZE {
        Ok(())
    } else {
        Err(IommuError::PageSizeMismatch {
            requested: pgsize,
            container: CONTAINER_PAGE_SIZE,
        })
    }
}
