//! The client's own record of its DMA mappings: where each lies, how it was split into server
//! mappings, what serves its DMA if it has no fd, and which pages the server wrote into it
//! through DMA_WRITE while dirty tracking is on.
//!
//! The table is locked only for short bookkeeping, never across a round trip: the reader
//! thread looks mappings up to serve DMA while other threads wait for replies.

use std::collections::BTreeMap;
use std::sync::Arc;

use vfmig_dirty::DirtyBitmap;
use vfmig_iommu::{CONTAINER_PAGE_SIZE, Prot};
use vfmig_memory::Iova;

use super::error::ClientError;
use super::memory::ClientMemory;
use crate::errno::Errno;

/// One mapping the client made.
pub(super) struct ClientMapping {
    /// Bytes.
    pub(super) size: u64,
    /// What the device may do.
    pub(super) prot: Prot,
    /// The server mappings it was split into, `(iova, size)` in IOVA order; they cover the
    /// mapping once it is made.
    pub(super) pieces: Vec<(u64, u64)>,
    /// Serves DMA for a mapping without an fd.
    pub(super) memory: Option<Arc<dyn ClientMemory>>,
    /// Pages the server wrote through DMA_WRITE since the last report (fd-less mappings, while
    /// tracking).
    pub(super) written: Option<Arc<DirtyBitmap>>,
}

impl ClientMapping {
    fn recorder(&self) -> Option<Arc<DirtyBitmap>> {
        let pages = self.size >> CONTAINER_PAGE_SIZE.shift();
        self.memory
            .as_ref()
            .and_then(|_| DirtyBitmap::new(pages, CONTAINER_PAGE_SIZE).ok())
            .map(Arc::new)
    }
}

/// Where a DMA_READ / DMA_WRITE lands.
pub(super) struct DmaTarget {
    pub(super) memory: Arc<dyn ClientMemory>,
    /// Offset of the access in its mapping.
    pub(super) offset: u64,
    pub(super) written: Option<Arc<DirtyBitmap>>,
}

/// What a report (GET, or unmap with bitmap) covers: one mapping's server pieces, and its
/// own record of written pages.
pub(super) struct Covered {
    pub(super) iova: u64,
    pub(super) pieces: Vec<(u64, u64)>,
    /// The server keeps a dirty bitmap for it: it was mapped with an fd. A mapping without one
    /// is never named in a GET or an unmap with bitmap (the server answers EINVAL); its
    /// `written` record is the whole report.
    pub(super) server_tracked: bool,
    pub(super) written: Option<Arc<DirtyBitmap>>,
}

/// Every mapping, by first IOVA, and whether dirty tracking is on.
#[derive(Default)]
pub(super) struct MappingTable {
    map: BTreeMap<u64, ClientMapping>,
    tracking: bool,
}

impl MappingTable {
    fn containing(&self, iova: u64) -> Option<(u64, &ClientMapping)> {
        self.map
            .range(..=iova)
            .next_back()
            .filter(|(start, m)| iova - *start < m.size)
            .map(|(start, m)| (*start, m))
    }

    /// Records a new mapping of `[iova, iova + size)`, refusing an overlap (EEXIST).
    pub(super) fn insert(
        &mut self,
        iova: u64,
        size: u64,
        prot: Prot,
        memory: Option<Arc<dyn ClientMemory>>,
    ) -> Result<(), ClientError> {
        let end = iova.saturating_add(size);
        let before = self.map.range(..end).next_back();
        if before.is_some_and(|(start, m)| start.saturating_add(m.size) > iova) {
            return Err(ClientError::Overlap {
                iova: Iova(iova),
                size,
            });
        }
        let mut mapping = ClientMapping {
            size,
            prot,
            pieces: Vec::new(),
            memory,
            written: None,
        };
        if self.tracking {
            mapping.written = mapping.recorder();
        }
        self.map.insert(iova, mapping);
        Ok(())
    }

    /// The mapping at `iova`.
    pub(super) fn get_mut(&mut self, iova: u64) -> Option<&mut ClientMapping> {
        self.map.get_mut(&iova)
    }

    /// Forgets the mapping at `iova`.
    pub(super) fn remove(&mut self, iova: u64) -> Option<ClientMapping> {
        self.map.remove(&iova)
    }

    /// Forgets every mapping.
    pub(super) fn clear(&mut self) {
        self.map.clear();
    }

    /// Whether dirty tracking is on.
    pub(super) fn tracking(&self) -> bool {
        self.tracking
    }

    /// Starts recording the pages written into fd-less mappings. Returns whether it was on.
    pub(super) fn start_recording(&mut self) -> bool {
        let was = self.tracking;
        if !was {
            for mapping in self.map.values_mut() {
                mapping.written = mapping.recorder();
            }
            self.tracking = true;
        }
        was
    }

    /// Stops recording and forgets what was recorded.
    pub(super) fn stop_recording(&mut self) {
        self.tracking = false;
        for mapping in self.map.values_mut() {
            mapping.written = None;
        }
    }

    /// The mappings in `[iova, end)`, which must each lie wholly inside it (EINVAL for one cut
    /// by either end); holes are allowed.
    pub(super) fn covered(&self, iova: u64, end: u64) -> Result<Vec<Covered>, ClientError> {
        for edge in [iova, end.wrapping_sub(1)] {
            if let Some((start, m)) = self.containing(edge)
                && (start < iova || start.saturating_add(m.size) > end)
            {
                return Err(ClientError::invalid(
                    "the range cuts through a mapping at",
                    start,
                ));
            }
        }
        Ok(self
            .map
            .range(iova..end)
            .map(|(start, m)| Covered {
                iova: *start,
                pieces: m.pieces.clone(),
                server_tracked: m.memory.is_none(),
                written: m.written.clone(),
            })
            .collect())
    }

    /// Where the server's DMA of `count` bytes at `addr` lands: inside one fd-less mapping that
    /// allows `need` (EFAULT if none, EPERM against its protection).
    pub(super) fn dma_target(&self, addr: u64, count: u64, need: Prot) -> Result<DmaTarget, Errno> {
        let (start, mapping) = self.containing(addr).ok_or(Errno::EFAULT)?;
        let offset = addr - start;
        if count > mapping.size - offset {
            return Err(Errno::EFAULT);
        }
        if !mapping.prot.allows(need) {
            return Err(Errno::EPERM);
        }
        let memory = mapping.memory.clone().ok_or(Errno::EFAULT)?;
        Ok(DmaTarget {
            memory,
            offset,
            written: mapping.written.clone(),
        })
    }
}
