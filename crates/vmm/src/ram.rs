//! Guest RAM: memfd-backed regions mapped into the VMM and shared with device processes (they
//! map the same fds through DMA_MAP), with a dirty log of the pages the VMM itself writes.
//!
//! Every write through [`GuestRam::write`] marks its pages in the region's [`DirtyBitmap`];
//! the migration engine takes them with [`GuestRam::take_dirty`]. A KVM vCPU would add the
//! kernel's dirty log as another source; devices report theirs through their containers.
//!
//! Each region is a `vfmig_memory::SharedMemory` (a memfd and its mapping here): what a KVM
//! memslot needs of it is [`RamRegion::gpa`], [`RamRegion::size`], the host address of
//! [`RamRegion::mapping`] and [`RamRegion::fd`]. Its memfd is sealed to its length, so a
//! device process that maps it copies guest memory with plain loads and stores (the container's
//! direct path) and never needs to fear a page vanishing under it.

use std::ffi::CString;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use vfmig_dirty::{DirtyBitmap, DirtyError};
use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_memory::{Mmap, SharedMemory};

// Guest RAM is counted and dirty-logged in container pages (`CONTAINER_PAGE_SIZE`): every
// device maps it through a container, and the migration ORs the containers' bitmaps into
// the log word for word.

/// One contiguous region of guest-physical memory.
pub struct RamRegion {
    gpa: u64,
    memory: Arc<SharedMemory>,
    dirty: DirtyBitmap,
}

impl RamRegion {
    /// First guest-physical address.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.memory.len() as u64
    }

    /// Pages.
    pub fn pages(&self) -> u64 {
        self.size() / CONTAINER_PAGE_SIZE.bytes()
    }

    /// Where the region is mapped in this process (a KVM memslot maps the guest onto it).
    pub fn host_address(&self) -> u64 {
        self.memory.mapping().as_mut_ptr() as u64
    }

    /// The memfd, for DMA_MAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memory.fd()
    }

    /// The region's mapping in this process (its host address and length).
    pub fn mapping(&self) -> &Mmap {
        self.memory.mapping()
    }

    /// The dirty log of VMM writes.
    pub fn dirty(&self) -> &DirtyBitmap {
        &self.dirty
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.gpa + self.size())
    }
}

/// Why a guest RAM access failed.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// No region holds the whole range.
    #[error("guest range {gpa:#x} + {len:#x} is not RAM")]
    NotRam {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A region's layout is invalid (unaligned, overlapping, empty).
    #[error("invalid RAM layout: {0}")]
    Layout(String),
    /// Creating or mapping a memfd failed.
    #[error("guest RAM: {0}")]
    Io(#[from] io::Error),
    /// The dirty log refused a range.
    #[error("dirty log: {0}")]
    Dirty(#[from] DirtyError),
}

/// All guest RAM of a VM.
pub struct GuestRam {
    regions: Vec<RamRegion>,
    /// Every page is resident ([`GuestRam::populate`] ran to its end).
    populated: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.regions.iter().map(|r| (r.gpa, r.size())))
            .finish()
    }
}

impl GuestRam {
    /// RAM with the given `(gpa, size)` regions, page-aligned, sorted, not overlapping. Each is a
    /// sparse memfd: untouched pages cost nothing.
    pub fn new(layout: &[(u64, u64)]) -> Result<Self, RamError> {
        let mut regions = Vec::with_capacity(layout.len());
        let mut end = 0u64;
        for (i, &(gpa, size)) in layout.iter().enumerate() {
            if size == 0
                || gpa % CONTAINER_PAGE_SIZE.bytes() != 0
                || size % CONTAINER_PAGE_SIZE.bytes() != 0
                || gpa < end
            {
                return Err(RamError::Layout(format!(
                    "region {i} at {gpa:#x} + {size:#x}"
                )));
            }
            end = gpa
                .checked_add(size)
                .ok_or_else(|| RamError::Layout(format!("region {i} wraps")))?;
            let len = usize::try_from(size)
                .map_err(|_| RamError::Layout(format!("region {i} too large")))?;
            let name = CString::new(format!("vfmig-ram-{i}"))
                .map_err(|e| RamError::Layout(e.to_string()))?;
            let memory = Arc::new(SharedMemory::new(&name, len)?);
            let dirty = DirtyBitmap::new(size / CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE)?;
            regions.push(RamRegion { gpa, memory, dirty });
        }
        Ok(GuestRam {
            regions,
            populated: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The regions, in address order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// `(gpa, size)` of every region.
    pub fn layout(&self) -> Vec<(u64, u64)> {
        self.regions.iter().map(|r| (r.gpa, r.size())).collect()
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(RamRegion::size).sum()
    }

    fn region(&self, gpa: u64, len: u64) -> Result<&RamRegion, RamError> {
        self.regions
            .iter()
            .find(|r| r.contains(gpa, len))
            .ok_or(RamError::NotRam { gpa, len })
    }

    /// Reads guest memory (within one region).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        let r = self.region(gpa, buf.len() as u64)?;
        Ok(r.memory.read(gpa - r.gpa, buf)?)
    }

    /// Writes guest memory (within one region) and marks its pages dirty.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        let r = self.region(gpa, data.len() as u64)?;
        r.memory.write(gpa - r.gpa, data)?;
        r.dirty.mark_bytes(gpa - r.gpa, data.len() as u64)?;
        Ok(())
    }

    /// Writes guest memory (within one region) for a device reached by DMA messages, without
    /// marking the VMM's dirty log: the device's own dirty report carries the page (see
    /// `ram_dma`).
    pub fn write_for_device(&self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        let r = self.region(gpa, data.len() as u64)?;
        Ok(r.memory.write(gpa - r.gpa, data)?)
    }

    /// Reads guest memory for the migration sender ([`SharedMemory::read_sparse`]): a page
    /// the guest never wrote reads as zeros without being allocated.
    pub fn read_for_migration(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        let r = self.region(gpa, buf.len() as u64)?;
        Ok(r.memory.read_sparse(gpa - r.gpa, buf)?)
    }

    /// Makes `[gpa, gpa + len)` zero (within one region), for the migration receiver; not
    /// marked dirty. Resident RAM ([`GuestRam::populate`]) is cleared in place; otherwise the
    /// pages are freed, so zero pages cost nothing.
    pub fn zero_untracked(&self, gpa: u64, len: u64) -> Result<(), RamError> {
        let r = self.region(gpa, len)?;
        if !self.populated.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(r.memory.zero(gpa - r.gpa, len)?);
        }
        static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(ZEROES.len(), |n| n.min(ZEROES.len()));
            r.memory.write_streaming(gpa - r.gpa + done, &ZEROES[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Faults every page of guest RAM in, so a migration's writes find them resident: a
    /// destination does it while it waits for the stream.
    pub fn populate(&self) -> Result<(), RamError> {
        for r in &self.regions {
            r.memory.populate()?;
        }
        self.populated
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Writes guest memory without marking it dirty, with non-temporal stores
    /// ([`SharedMemory::write_streaming`]): for the migration receiver, which fills RAM that
    /// is not running yet and will not read it soon.
    pub fn write_untracked(&self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        let r = self.region(gpa, data.len() as u64)?;
        Ok(r.memory.write_streaming(gpa - r.gpa, data)?)
    }

    /// ORs the VMM's dirty pages of region `index` into `out` (bit 0 = the region's first page)
    /// and clears them.
    pub fn take_dirty(&self, index: usize, out: &mut [u64]) -> Result<(), RamError> {
        let r = self
            .regions
            .get(index)
            .ok_or(RamError::NotRam { gpa: 0, len: 0 })?;
        Ok(r.dirty.read_and_clear(0, r.pages(), out, 0)?)
    }

    /// Marks dirty the pages whose bits are set in `bits` (bit k = the page at `gpa + k * 4096`),
    /// within one region; returns how many bits were set.
    pub fn mark_dirty_bits(&self, gpa: u64, bits: &[u64]) -> Result<u64, RamError> {
        let pages = bits.len() as u64 * 64;
        let r = self.region(gpa, CONTAINER_PAGE_SIZE.bytes())?;
        let first = (gpa - r.gpa) / CONTAINER_PAGE_SIZE.bytes();
        let mut n = 0;
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let page = w as u64 * 64 + u64::from(word.trailing_zeros());
                word &= word - 1;
                if page < pages {
                    r.dirty.mark_page(first + page)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Marks `[gpa, gpa + len)` dirty (within one region).
    pub fn mark_dirty_range(&self, gpa: u64, len: u64) -> Result<(), RamError> {
        let r = self.region(gpa, len)?;
        Ok(r.dirty.mark_bytes(gpa - r.gpa, len)?)
    }

    /// Marks every page of every region dirty (the first migration round sends everything).
    pub fn mark_all_dirty(&self) {
        for r in &self.regions {
            r.dirty.set_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_mapping_shows_what_the_guest_wrote() {
        let ram = GuestRam::new(&[(0x10_0000, 4 * CONTAINER_PAGE_SIZE.bytes())]).unwrap();
        ram.write(0x10_0000 + 8, b"memslot").unwrap();
        let region = &ram.regions()[0];
        assert_eq!(region.mapping().len() as u64, region.size());
        let mut got = [0; 7];
        region.mapping().read(8, &mut got).unwrap();
        assert_eq!(&got, b"memslot");
    }
}
