//! One DMA mapping: a range of IOVA, its protection, its memory, and — while tracking is on —
//! its dirty bitmap. The kernel's `struct vfio_dma`. With it, the range checks every
//! operation on mappings makes (page alignment, no wrap), in the kernel's errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vfmig_abi::dirty::DIRTY_BITMAP_PAGES_MAX;
use vfmig_dirty::DirtyBitmap;
use vfmig_memory::Iova;

use crate::error::{IommuError, Result};
use crate::host::{AccessPath, HostMemory, RemoteMemory};
use crate::types::{CONTAINER_PAGE_SIZE, Prot};

/// The memory of a mapping.
pub(crate) enum Memory {
    /// Mapped into this process; shared with the pins of it, which keep it mapped.
    Host(Arc<HostMemory>),
    /// Reached through the peer.
    Remote(Arc<dyn RemoteMemory>),
}

/// A DMA mapping.
pub(crate) struct Mapping {
    /// First IOVA.
    pub(crate) iova: u64,
    /// Size in bytes, a multiple of the container page size.
    pub(crate) size: u64,
    /// What the device may do.
    pub(crate) prot: Prot,
    /// Where the bytes are.
    pub(crate) memory: Memory,
    /// One bit per container page while tracking is on (fd-backed mappings only); `None`
    /// otherwise.
    pub(crate) bitmap: Option<DirtyBitmap>,
    /// Pin counts by page index in the mapping; a page is pinned while its count is non-zero.
    /// The kernel's `pfn_list`.
    pins: Mutex<BTreeMap<u64, u32>>,
}

impl Mapping {
    pub(crate) fn new(iova: u64, size: u64, prot: Prot, memory: Memory) -> Self {
        Mapping {
            iova,
            size,
            prot,
            memory,
            bitmap: None,
            pins: Mutex::new(BTreeMap::new()),
        }
    }

    /// How device accesses reach the memory.
    pub(crate) fn path(&self) -> AccessPath {
        match &self.memory {
            Memory::Host(host) => host.path(),
            Memory::Remote(_) => AccessPath::Remote,
        }
    }

    /// One past the last IOVA. Cannot overflow: mappings are checked not to wrap.
    pub(crate) fn end(&self) -> u64 {
        self.iova + self.size
    }

    /// Pages in the mapping.
    pub(crate) fn pages(&self) -> u64 {
        self.size >> CONTAINER_PAGE_SIZE.shift()
    }

    /// Bytes of this mapping's dirty bitmap, as the kernel sizes it (`DIRTY_BITMAP_BYTES`, whole
    /// `u64` words): what it is charged against [`crate::ContainerConfig::max_bitmap_bytes`].
    pub(crate) fn bitmap_bytes(&self) -> u64 {
        vfmig_dirty::bitmap_bytes(self.pages())
    }

    /// Whether this mapping gets a dirty bitmap while tracking is on: only memory mapped here
    /// from an fd. A mapping without one is reached through its peer, which owns that memory
    /// and records what was written to it (as libvfio-user leaves it to its client); it is
    /// neither tracked nor charged, and a GET or unmap-with-bitmap naming it is EINVAL.
    pub(crate) fn tracked(&self) -> bool {
        matches!(self.memory, Memory::Host(_))
    }

    /// Checks, allocating nothing, that this mapping may get a dirty bitmap while `in_use`
    /// bytes of bitmaps are charged already: no more pages than one bitmap may cover (EINVAL),
    /// then no more than `limit` bytes in all (ENOMEM). Returns the bytes charged with it (an
    /// untracked mapping adds nothing).
    pub(crate) fn charge_bitmap(&self, in_use: u64, limit: u64) -> Result<u64> {
        if !self.tracked() {
            return Ok(in_use);
        }
        if self.pages() > DIRTY_BITMAP_PAGES_MAX {
            return Err(IommuError::TooManyPages {
                iova: self.start(),
                pages: self.pages(),
            });
        }
        let bytes = self.bitmap_bytes();
        in_use
            .checked_add(bytes)
            .filter(|&total| total <= limit)
            .ok_or(IommuError::BitmapBudget {
                iova: self.start(),
                bytes,
                in_use,
                limit,
            })
    }

    /// A zeroed bitmap for this mapping once [`Mapping::charge_bitmap`] accepted it; none for
    /// an untracked one.
    pub(crate) fn new_bitmap(&self) -> Result<Option<DirtyBitmap>> {
        if !self.tracked() {
            return Ok(None);
        }
        Ok(Some(DirtyBitmap::new(self.pages(), CONTAINER_PAGE_SIZE)?))
    }

    /// True if `iova` lies inside.
    pub(crate) fn contains(&self, iova: u64) -> bool {
        iova >= self.iova && iova < self.end()
    }

    pub(crate) fn start(&self) -> Iova {
        Iova(self.iova)
    }

    /// The pin counts. A poisoned lock is taken over: the map is always left consistent.
    pub(crate) fn pins(&self) -> MutexGuard<'_, BTreeMap<u64, u32>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if any page is pinned.
    pub(crate) fn has_pins(&self) -> bool {
        !self.pins().is_empty()
    }

    /// Sets the bit of every pinned page (the kernel's `vfio_dma_populate_bitmap`).
    pub(crate) fn populate_pinned(&self) {
        if let Some(bitmap) = &self.bitmap {
            for &page in self.pins().keys() {
                let marked = bitmap.mark_page(page);
                debug_assert!(
                    marked.is_ok(),
                    "pinned page {page} lies outside its mapping"
                );
            }
        }
    }
}

/// Page-alignment check with the error the kernel gives.
pub(crate) fn check_aligned(what: &'static str, value: u64) -> Result<()> {
    let page_size = CONTAINER_PAGE_SIZE.bytes();
    if value & (page_size - 1) != 0 {
        return Err(IommuError::Unaligned {
            what,
            value,
            page_size,
        });
    }
    Ok(())
}

/// The end of `[iova, iova + size)`, refusing wrap (a range may end exactly at 2^64 only in
/// the kernel's `iova + size - 1` sense, which u64 cannot express as an end: refused too).
pub(crate) fn range_end(iova: u64, size: u64) -> Result<u64> {
    iova.checked_add(size).ok_or(IommuError::Wraps {
        iova: Iova(iova),
        size,
    })
}
