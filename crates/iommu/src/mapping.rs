//! One DMA mapping: a range of IOVA, its protection, its memory, and — while tracking is on —
//! its dirty bitmap. The kernel's `struct vfio_dma`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vfmig_abi::dirty::dirty_bitmap_bytes;
use vfmig_dirty::DirtyBitmap;
use vfmig_memory::{Iova, Mmap};

use crate::host::RemoteMemory;
use crate::types::{CONTAINER_PAGE_SIZE, Prot};

/// The memory of a mapping.
pub(crate) enum Memory {
    /// Mapped into this process.
    Host(Mmap),
    /// Reached through the peer.
    Remote(Arc<dyn RemoteMemory>),
}

/// Which mapping this is, among every mapping a container ever made: never reused, so a
/// mapping unmapped and replaced by another at the same IOVA is told apart from it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct MappingId(pub(crate) u64);

/// A DMA mapping.
pub(crate) struct Mapping {
    /// Unique in the container.
    pub(crate) id: MappingId,
    /// First IOVA.
    pub(crate) iova: u64,
    /// Size in bytes, a multiple of the container page size.
    pub(crate) size: u64,
    /// What the device may do.
    pub(crate) prot: Prot,
    /// Where the bytes are.
    pub(crate) memory: Memory,
    /// One bit per container page while tracking is on; `None` otherwise.
    pub(crate) bitmap: Option<DirtyBitmap>,
    /// Pin counts by page index in the mapping; a page is pinned while its count is non-zero.
    /// The kernel's `pfn_list`.
    pins: Mutex<BTreeMap<u64, u32>>,
}

impl Mapping {
    pub(crate) fn new(id: MappingId, iova: u64, size: u64, prot: Prot, memory: Memory) -> Self {
        Mapping {
            id,
            iova,
            size,
            prot,
            memory,
            bitmap: None,
            pins: Mutex::new(BTreeMap::new()),
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
        dirty_bitmap_bytes(self.pages())
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
