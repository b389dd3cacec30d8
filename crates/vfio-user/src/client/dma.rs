//! DMA_MAP and DMA_UNMAP. The client owns the layout: a mapping whose dirty bitmap would not
//! fit one request is split into several server mappings up front, and unmapping a range of
//! whole mappings unmaps each of their server mappings (one request each, as libvfio-user
//! requires an exact region).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use vfmig_abi::uapi::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
};
use vfmig_dirty::bitmap_bytes;
use vfmig_iommu::{CONTAINER_PAGE_SIZE, Prot};
use vfmig_memory::Iova;

use super::error::ClientError;
use super::mappings::Covered;
use super::memory::ClientMemory;
use super::stats::Counters;
use super::{Client, lock};
use crate::message::{Bitmap, Command, DmaMap, DmaUnmap, DmaUnmapRequest, Reply, Request};
use vfmig_dirty::words::or_bytes_at;

/// `argsz` of a DMA_UNMAP without bitmap, and the bytes echoed before a bitmap.
const UNMAP_ARGSZ: u32 = 24;
/// Bytes of reply payload before an unmap's bitmap: the echo and the bitmap header.
const UNMAP_BITMAP_PREFIX: u64 = 40;

fn page_aligned(what: &'static str, value: u64) -> Result<(), ClientError> {
    if value & (CONTAINER_PAGE_SIZE.bytes() - 1) == 0 {
        Ok(())
    } else {
        Err(ClientError::invalid(what, value))
    }
}

/// Checks a range `[iova, iova + size)` of whole pages and returns its end.
pub(super) fn check_range(iova: Iova, size: u64) -> Result<u64, ClientError> {
    page_aligned("iova not page-aligned", iova.raw())?;
    page_aligned("size not page-aligned", size)?;
    if size == 0 {
        return Err(ClientError::invalid("empty range at", iova.raw()));
    }
    iova.raw()
        .checked_add(size)
        .ok_or(ClientError::invalid("range wraps at", iova.raw()))
}

/// `[iova, iova + size)` cut into pieces of at most `max` bytes.
fn split(iova: u64, size: u64, max: u64) -> Vec<(u64, u64)> {
    let max = max.max(CONTAINER_PAGE_SIZE.bytes());
    let mut pieces = Vec::with_capacity(usize::try_from(size.div_ceil(max)).unwrap_or(1));
    let mut at = 0;
    while at < size {
        let len = (size - at).min(max);
        pieces.push((iova + at, len));
        at += len;
    }
    pieces
}

fn map_flags(prot: Prot) -> u32 {
    let mut flags = 0;
    if prot.read {
        flags |= VFIO_DMA_MAP_FLAG_READ;
    }
    if prot.write {
        flags |= VFIO_DMA_MAP_FLAG_WRITE;
    }
    flags
}

impl Client {
    /// `VFIO_USER_DMA_MAP` of `[iova, iova + size)` with `prot` (what the device may do),
    /// backed by `fd` at `offset`, or without an fd: the server then reaches it through
    /// DMA_READ / DMA_WRITE, served from [`super::ClientConfig::memory`].
    ///
    /// Split into several server mappings if its bitmap would exceed
    /// [`Client::bitmap_capacity`]. Refused before anything is sent: a range not of whole
    /// pages, an overlap with a mapping of ours (EEXIST), no client memory for an fd-less
    /// mapping. If the server refuses a piece, the pieces already mapped are unmapped.
    pub fn dma_map(
        &self,
        iova: Iova,
        size: u64,
        prot: Prot,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), ClientError> {
        let memory = match fd {
            Some(_) => None,
            None => Some(
                self.shared
                    .config
                    .memory
                    .clone()
                    .ok_or(ClientError::NoMemory { iova })?,
            ),
        };
        self.map(iova, size, prot, fd, memory)
    }

    /// [`Client::dma_map`] without an fd, the server's DMA to it served from `memory`.
    pub fn dma_map_with_memory(
        &self,
        iova: Iova,
        size: u64,
        prot: Prot,
        memory: Arc<dyn ClientMemory>,
    ) -> Result<(), ClientError> {
        self.map(iova, size, prot, None, Some(memory))
    }

    fn map(
        &self,
        iova: Iova,
        size: u64,
        prot: Prot,
        fd: Option<(BorrowedFd<'_>, u64)>,
        memory: Option<Arc<dyn ClientMemory>>,
    ) -> Result<(), ClientError> {
        check_range(iova, size)?;
        if let Some((_, offset)) = fd {
            page_aligned("fd offset not page-aligned", offset)?;
        }
        let _layout = lock(&self.shared.layout);
        // Recorded first: the server may DMA to a piece as soon as it is mapped.
        self.shared.table().insert(iova.raw(), size, prot, memory)?;
        let max_piece = self.shared.bitmap_cap.saturating_mul(8) << CONTAINER_PAGE_SIZE.shift();
        let mut mapped = Vec::new();
        for (piece, len) in split(iova.raw(), size, max_piece) {
            let offset = fd.map_or(0, |(_, offset)| offset.saturating_add(piece - iova.raw()));
            let fds: Vec<BorrowedFd<'_>> = fd.map(|(fd, _)| fd).into_iter().collect();
            if let Err(err) = self.map_piece(DmaMap::new(map_flags(prot), offset, piece, len), &fds)
            {
                for &(piece, len) in &mapped {
                    if let Err(undo) = self.unmap_piece(piece, len) {
                        tracing::warn!(%undo, piece, "undoing a partial DMA_MAP failed");
                    }
                }
                self.shared.table().remove(iova.raw());
                return Err(err);
            }
            mapped.push((piece, len));
        }
        if let Some(mapping) = self.shared.table().get_mut(iova.raw()) {
            mapping.pieces = mapped;
        }
        Ok(())
    }

    fn map_piece(&self, map: DmaMap, fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        let command = Command::DmaMap;
        let received = self.shared.call(&Request::DmaMap(map), fds)?;
        match self.shared.reply(command, &received)? {
            Reply::DmaMap => Ok(()),
            _ => Err(ClientError::unexpected(command, "not a DMA_MAP reply")),
        }
    }

    fn unmap_piece(&self, addr: u64, size: u64) -> Result<(), ClientError> {
        let command = Command::DmaUnmap;
        let unmap = DmaUnmap {
            argsz: UNMAP_ARGSZ,
            flags: 0,
            addr,
            size,
        };
        let request = Request::DmaUnmap(DmaUnmapRequest {
            unmap,
            bitmap: None,
        });
        let received = self.shared.call(&request, &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DmaUnmap(reply) if reply.unmap == unmap => Ok(()),
            _ => Err(ClientError::unexpected(command, "not the unmap echoed")),
        }
    }

    /// Unmaps one server mapping and ORs its dirty bitmap into `out` at bit `at`.
    fn unmap_piece_with_bitmap(
        &self,
        addr: u64,
        size: u64,
        out: &mut [u64],
        at: u64,
    ) -> Result<(), ClientError> {
        let command = Command::DmaUnmap;
        let pages = size >> CONTAINER_PAGE_SIZE.shift();
        let bitmap = Bitmap {
            pgsize: CONTAINER_PAGE_SIZE,
            size: bitmap_bytes(pages),
        };
        let argsz = u32::try_from(UNMAP_BITMAP_PREFIX.saturating_add(bitmap.size))
            .map_err(|_| ClientError::invalid("unmap bitmap too large for", size))?;
        let unmap = DmaUnmap {
            argsz,
            flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            addr,
            size,
        };
        let request = Request::DmaUnmap(DmaUnmapRequest {
            unmap,
            bitmap: Some(bitmap),
        });
        Counters::bump(&self.shared.counters.bitmap_requests);
        let received = self.shared.call(&request, &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DmaUnmap(reply) if reply.unmap == unmap => match reply.bitmap {
                Some(bits) if bits.header == bitmap => {
                    or_bytes_at(out, at, &bits.bits, pages);
                    Ok(())
                }
                _ => Err(ClientError::unexpected(command, "not the bitmap asked for")),
            },
            _ => Err(ClientError::unexpected(command, "not the unmap echoed")),
        }
    }

    /// `VFIO_USER_DMA_UNMAP` of every mapping in `[iova, iova + size)`; each must lie wholly
    /// inside it (holes are allowed). With `with_bitmap`, returns the dirty bitmap of the range
    /// (bit 0 = `iova`): the server's bits of each mapping made with an fd, and the pages it
    /// wrote through DMA_WRITE into the others, as we recorded them (those are unmapped
    /// without asking the server for a bitmap, which it does not keep); tracking must be on
    /// (EINVAL).
    pub fn dma_unmap(
        &self,
        iova: Iova,
        size: u64,
        with_bitmap: bool,
    ) -> Result<Option<Vec<u64>>, ClientError> {
        let end = check_range(iova, size)?;
        let _layout = lock(&self.shared.layout);
        let covered = {
            let table = self.shared.table();
            // As the server would answer for a mapping with an fd; one without never asks it.
            if with_bitmap && !table.tracking() {
                return Err(ClientError::invalid(
                    "dirty tracking is off; unmap with bitmap at",
                    iova.raw(),
                ));
            }
            table.covered(iova.raw(), end)?
        };
        let words = bitmap_bytes(size >> CONTAINER_PAGE_SIZE.shift()) / 8;
        let mut out = with_bitmap
            .then(|| usize::try_from(words).map(|words| vec![0u64; words]))
            .transpose()
            .map_err(|_| ClientError::invalid("bitmap too large for", size))?;
        for mapping in covered {
            self.unmap_mapping(&mapping, iova.raw(), out.as_deref_mut())?;
        }
        Ok(out)
    }

    fn unmap_mapping(
        &self,
        mapping: &Covered,
        base: u64,
        mut out: Option<&mut [u64]>,
    ) -> Result<(), ClientError> {
        let shift = CONTAINER_PAGE_SIZE.shift();
        for &(piece, len) in &mapping.pieces {
            // The server keeps no bitmap of a mapping without an fd: never ask for one.
            match out.as_deref_mut().filter(|_| mapping.server_tracked) {
                Some(out) => {
                    self.unmap_piece_with_bitmap(piece, len, out, (piece - base) >> shift)?
                }
                None => self.unmap_piece(piece, len)?,
            }
            if let Some(m) = self.shared.table().get_mut(mapping.iova) {
                m.pieces.retain(|&(p, _)| p != piece);
            }
        }
        if let (Some(out), Some(written)) = (out, &mapping.written) {
            self.shared
                .counters
                .recorded_pages
                .fetch_add(written.count(), std::sync::atomic::Ordering::Relaxed);
            if let Err(err) =
                written.read_and_clear(0, written.pages(), out, (mapping.iova - base) >> shift)
            {
                tracing::warn!(%err, "reporting pages written by DMA_WRITE failed");
            }
        }
        self.shared.table().remove(mapping.iova);
        Ok(())
    }

    /// `VFIO_USER_DMA_UNMAP` with `VFIO_DMA_UNMAP_FLAG_ALL`: every mapping goes.
    pub fn dma_unmap_all(&self) -> Result<(), ClientError> {
        let command = Command::DmaUnmap;
        let _layout = lock(&self.shared.layout);
        let unmap = DmaUnmap {
            argsz: UNMAP_ARGSZ,
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            addr: 0,
            size: 0,
        };
        let request = Request::DmaUnmap(DmaUnmapRequest {
            unmap,
            bitmap: None,
        });
        let received = self.shared.call(&request, &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DmaUnmap(reply) if reply.unmap == unmap => {
                self.shared.table().clear();
                Ok(())
            }
            _ => Err(ClientError::unexpected(command, "not the unmap echoed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_into_pieces_of_at_most_max() {
        assert_eq!(
            split(0x1000, 0x5000, 0x2000),
            [(0x1000, 0x2000), (0x3000, 0x2000), (0x5000, 0x1000)]
        );
        assert_eq!(split(0, 0x1000, u64::MAX), [(0, 0x1000)]);
    }

    #[test]
    fn ranges_must_be_whole_pages() {
        assert!(check_range(Iova(0x1000), 0x1000).is_ok());
        for (iova, size) in [(1, 0x1000), (0, 0x800), (0, 0), (!0xfff, 0x2000)] {
            let err = check_range(Iova(iova), size).unwrap_err();
            assert_eq!(err.errno(), crate::errno::Errno::EINVAL);
        }
    }
}
