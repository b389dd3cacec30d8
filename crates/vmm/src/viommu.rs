//! The seeds' vIOMMU path, emulated: the guest now and then remaps a DMA window (as a guest
//! with an IOMMU unmaps and maps IOVAs while devices run). While a migration tracks device
//! dirty pages, the VMM unmaps the window with GET_DIRTY_BITMAP — the device may have written
//! it since the last sync — and carries those bits into its own RAM dirty log, which the next
//! sync takes. Without the bitmap the pages the device wrote there would be lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vfmig_memory::Iova;

use crate::devices::{AttachError, AttachedDevice};
use crate::ram::GuestRam;

/// The remapped window: 1 MiB at 1 MiB, where the dma-engines' DMA buffers live.
pub const WINDOW: (u64, u64) = (0x10_0000, 0x10_0000);

/// The vIOMMU state of a VM.
#[derive(Debug, Default)]
pub struct Viommu {
    tracking: AtomicBool,
    remaps: AtomicU64,
    carried_pages: AtomicU64,
    fallbacks: AtomicU64,
}

/// What the vIOMMU did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViommuCounters {
    /// Window remaps.
    pub remaps: u64,
    /// Dirty pages carried from unmap bitmaps into the RAM log.
    pub carried_pages: u64,
    /// Remaps while tracking whose unmap could not return a bitmap (the device's tracking was
    /// not on yet): the whole window was marked dirty instead.
    pub fallbacks: u64,
}

impl Viommu {
    /// A vIOMMU with tracking off.
    pub fn new() -> Self {
        Viommu::default()
    }

    /// Whether device dirty tracking is on (set by the migration sender).
    pub fn set_tracking(&self, on: bool) {
        self.tracking.store(on, Ordering::Release);
    }

    /// The counters.
    pub fn counters(&self) -> ViommuCounters {
        ViommuCounters {
            remaps: self.remaps.load(Ordering::Relaxed),
            carried_pages: self.carried_pages.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Unmaps the window from `dev` (with its dirty bitmap while tracking) and maps it again.
    /// A device without dirty tracking has no bitmap to give; the migration counts all it
    /// has mapped as dirty at every sync anyway.
    pub fn remap(&self, dev: &AttachedDevice, ram: &Arc<GuestRam>) -> Result<(), AttachError> {
        let (gpa, size) = WINDOW;
        let client = dev.client();
        if self.tracking.load(Ordering::Acquire) && dev.profile().dirty_tracking {
            match client.dma_unmap(Iova(gpa), size, true) {
                Ok(bits) => {
                    let bits = bits.unwrap_or_default();
                    let n = ram
                        .mark_dirty_bits(gpa, &bits)
                        .map_err(|e| dev.ram_error(e))?;
                    self.carried_pages.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    // Tracking not started in the device yet (or stopped): no bitmap to be
                    // had, so every page of the window counts as dirty.
                    tracing::debug!(device = dev.id(), error = %e, "unmap with bitmap refused");
                    client
                        .dma_unmap(Iova(gpa), size, false)
                        .map_err(|e| dev.request("unmap the DMA window", e))?;
                    ram.mark_dirty_range(gpa, size)
                        .map_err(|e| dev.ram_error(e))?;
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            client
                .dma_unmap(Iova(gpa), size, false)
                .map_err(|e| dev.request("unmap the DMA window", e))?;
        }
        // As the rest of RAM is mapped to it: by fd, or without for a device reached by
        // messages (whose unmap bitmap above came from the client's own record).
        dev.map_range(ram, gpa, size)?;
        self.remaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
