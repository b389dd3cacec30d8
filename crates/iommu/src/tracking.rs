//! Dirty page tracking: `VFIO_IOMMU_DIRTY_PAGES` START / STOP / GET_BITMAP, with every check of
//! the 5.10 kernel in its order, and the reporting shared with unmap-with-bitmap.
//!
//! Semantics of a GET, per mapping in the range:
//!
//! 1. if any attached device is `AllMapped`, every page of the mapping is reported;
//! 2. otherwise the mapping's bitmap is read and cleared into the caller's buffer at the
//!    mapping's bit offset (ORed in, so mappings land side by side in one buffer);
//! 3. then every page still pinned is set again: pinned pages are reported on every GET for as
//!    long as they stay pinned, pages written with `write` / `mark_dirty` and pages unpinned
//!    since are reported once.
//!
//! The reporting of one mapping, shared with unmap-with-bitmap, is in `report.rs`.

use vfmig_abi::uapi::{
    DIRTY_PAGES_GET_BITMAP_ARGSZ, DIRTY_PAGES_MINSZ, VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_START, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
};
use vfmig_memory::Iova;

use crate::container::Container;
use crate::error::{IommuError, Result};
use crate::mapping::{Mapping, check_aligned, range_end};
use crate::report::{
    BitmapRequest, check_bitmap_size, check_page_size, check_tracked, report_mapping,
};

/// A GET_BITMAP range (`struct vfio_iommu_type1_dirty_bitmap_get` without the user pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetBitmapRange {
    /// First IOVA; bit 0 of the buffer.
    pub iova: u64,
    /// Bytes covered.
    pub size: u64,
    /// The bitmap.
    pub bitmap: BitmapRequest,
}

/// What a DIRTY_PAGES call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyPagesDone {
    /// Tracking is on (it may have been already).
    Started,
    /// Tracking is off (it may have been already).
    Stopped,
    /// The buffer holds the bitmap.
    Bitmap,
}

impl Container {
    /// `VFIO_IOMMU_DIRTY_PAGES` as the ioctl sees it: `argsz` and `flags` of
    /// `struct vfio_iommu_type1_dirty_bitmap`, the GET range when `argsz` carries one, and the
    /// buffer for the bitmap.
    ///
    /// Checks in the kernel's order: `argsz < 8` or unknown flags (EINVAL); not exactly one
    /// operation (EINVAL); for GET, `argsz - 8 < 40` (EINVAL), then
    /// [`Container::get_dirty_bitmap`]'s checks. (The kernel's first check, EACCES for a type1
    /// v1 container, cannot fire: this container is always v2.)
    pub fn dirty_pages(
        &self,
        argsz: u32,
        flags: u32,
        range: Option<&GetBitmapRange>,
        out: &mut [u64],
    ) -> Result<DirtyPagesDone> {
        let known = VFIO_IOMMU_DIRTY_PAGES_FLAG_START
            | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
            | VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
        if argsz < DIRTY_PAGES_MINSZ {
            return Err(IommuError::ArgszTooSmall {
                argsz,
                min: DIRTY_PAGES_MINSZ,
            });
        }
        if flags & !known != 0 {
            return Err(IommuError::UnknownFlags { flags, known });
        }
        match flags {
            VFIO_IOMMU_DIRTY_PAGES_FLAG_START => {
                self.start_dirty_tracking()?;
                Ok(DirtyPagesDone::Started)
            }
            VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP => {
                self.stop_dirty_tracking();
                Ok(DirtyPagesDone::Stopped)
            }
            VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP => {
                let range = range
                    .filter(|_| argsz >= DIRTY_PAGES_GET_BITMAP_ARGSZ)
                    .ok_or(IommuError::ArgszTooSmall {
                        argsz,
                        min: DIRTY_PAGES_GET_BITMAP_ARGSZ,
                    })?;
                self.get_dirty_bitmap(range, out)?;
                Ok(DirtyPagesDone::Bitmap)
            }
            _ => Err(IommuError::NotOneDirtyOperation { flags }),
        }
    }

    /// START: gives every fd-backed mapping a zeroed bitmap with its pinned pages set (a
    /// mapping without an fd gets none, and costs no budget). Idempotent.
    ///
    /// Every such mapping is checked, in IOVA order, before any bitmap is allocated: more pages than
    /// one bitmap may cover is EINVAL; the bitmaps together over
    /// [`crate::ContainerConfig::max_bitmap_bytes`] is ENOMEM
    /// ([`IommuError::BitmapBudget`], naming the first mapping that does not fit). Then nothing
    /// changes: tracking stays off.
    pub fn start_dirty_tracking(&self) -> Result<()> {
        let mut state = self.state_mut();
        if state.tracking {
            return Ok(());
        }
        debug_assert_eq!(state.bitmap_bytes, 0);
        let limit = self.max_bitmap_bytes();
        let mut charged = 0;
        for m in state.mappings.values() {
            charged = m.charge_bitmap(charged, limit)?;
        }
        let bitmaps = state
            .mappings
            .values()
            .map(Mapping::new_bitmap)
            .collect::<Result<Vec<_>>>()?;
        for (m, bitmap) in state.mappings.values_mut().zip(bitmaps) {
            m.bitmap = bitmap;
            m.populate_pinned();
        }
        state.tracking = true;
        state.bitmap_bytes = charged;
        tracing::debug!(
            mappings = state.mappings.len(),
            bitmap_bytes = charged,
            "dirty tracking started"
        );
        Ok(())
    }

    /// STOP: frees every bitmap. Idempotent.
    pub fn stop_dirty_tracking(&self) {
        let mut state = self.state_mut();
        if !state.tracking {
            return;
        }
        state.tracking = false;
        for m in state.mappings.values_mut() {
            m.bitmap = None;
        }
        state.bitmap_bytes = 0;
        tracing::debug!("dirty tracking stopped");
    }

    /// True while tracking is on.
    pub fn is_tracking(&self) -> bool {
        self.state().tracking
    }

    /// GET_BITMAP: ORs the dirty pages of every mapping in `[range.iova, range.iova +
    /// range.size)` into `out` (bit 0 = `range.iova`) and clears them, except pinned pages.
    /// Several whole mappings may be fetched at once, holes are allowed, a mapping must not be
    /// cut.
    ///
    /// Checks in the kernel's order (all EINVAL): wrap; the buffer smaller than `bitmap.size`;
    /// the bitmap size for the pages (none, none given, over 256 MiB, too small); a page size
    /// other than the container's; iova or size unaligned or size 0; tracking off; a mapping
    /// bisected; a mapping without an fd in the range ([`IommuError::Untracked`]), checked
    /// before any bit is read, so a refused GET clears nothing.
    pub fn get_dirty_bitmap(&self, range: &GetBitmapRange, out: &mut [u64]) -> Result<()> {
        let end = range_end(range.iova, range.size)?;
        check_bitmap_size(range.size, &range.bitmap, out)?;
        let _sync = self.sync_lock();
        let state = self.state();
        check_page_size(range.bitmap.pgsize)?;
        check_aligned("bitmap iova", range.iova)?;
        if range.size == 0 {
            return Err(IommuError::ZeroSize {
                what: "bitmap range",
            });
        }
        check_aligned("bitmap range size", range.size)?;
        if !state.tracking {
            return Err(IommuError::TrackingOff);
        }
        state.check_not_bisected(range.iova, end)?;
        check_tracked(state.starting_in(range.iova, end))?;
        let precise = state.precise();
        for m in state.starting_in(range.iova, end) {
            report_mapping(m, range.iova, precise, out)?;
        }
        Ok(())
    }

    /// Pages that GET would report for `[iova, iova + size)` now, without clearing them; for
    /// estimates and tests. Needs tracking on; the same range rules as GET, except that
    /// mappings without an fd count for nothing instead of failing it.
    pub fn count_dirty(&self, iova: Iova, size: u64) -> Result<u64> {
        let end = range_end(iova.0, size)?;
        let state = self.state();
        if !state.tracking {
            return Err(IommuError::TrackingOff);
        }
        let precise = state.precise();
        let mut n = 0;
        for m in state.starting_in(iova.0, end).filter(|m| m.tracked()) {
            n += match (&m.bitmap, precise) {
                (_, false) => m.pages(),
                (Some(b), true) => b.count(),
                (None, true) => 0,
            };
        }
        Ok(n)
    }
}
