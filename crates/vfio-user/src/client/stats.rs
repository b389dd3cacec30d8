//! [`ClientStats`]: what a client did that a VMM may want to show or a test to check.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counts of a client's traffic that matter to dirty tracking, from its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientStats {
    /// Requests that asked the server for a dirty bitmap: GET_BITMAPs and unmaps with bitmap.
    /// None is ever sent for a mapping made without an fd.
    pub bitmap_requests: u64,
    /// DMA_READs the server sent us (into mappings without an fd).
    pub dma_reads: u64,
    /// DMA_WRITEs the server sent us.
    pub dma_writes: u64,
    /// Pages reported dirty from our own record of DMA_WRITEs (a GET or an unmap with bitmap
    /// of a mapping without an fd), in place of a bitmap the server does not keep. A page
    /// written again while it is being reported may be reported without being counted.
    pub recorded_pages: u64,
}

/// The live counters behind [`ClientStats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) bitmap_requests: AtomicU64,
    pub(super) dma_reads: AtomicU64,
    pub(super) dma_writes: AtomicU64,
    pub(super) recorded_pages: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The counts now.
    pub(super) fn snapshot(&self) -> ClientStats {
        ClientStats {
            bitmap_requests: self.bitmap_requests.load(Relaxed),
            dma_reads: self.dma_reads.load(Relaxed),
            dma_writes: self.dma_writes.load(Relaxed),
            recorded_pages: self.recorded_pages.load(Relaxed),
        }
    }
}
