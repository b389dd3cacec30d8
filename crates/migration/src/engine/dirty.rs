//! The dirty pages of one sync: per RAM region, a bitmap in the kernel's layout (bit k = the
//! region's page k, LSB-first in `u64` words), ORed from every source — the VMM's own writes,
//! its KVM guest's, and each device's dirty pages as its vfio-user client reports them: the
//! server's bitmap of memory mapped to it by fd, and the client's own record of the pages the
//! device wrote by DMA_WRITE messages into memory mapped without one (which its server keeps
//! no bitmap of, and the VMM's log leaves out) — and turned into runs for the stream.

use std::cell::Cell;

use vfmig_dirty::{words, words_for};
use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_memory::Gpa;
use vfmig_vmm::{GuestRam, Vm};

use crate::PageRun;

/// Dirty pages of every RAM region.
pub(crate) struct DirtySet {
    /// `(gpa, pages, bitmap words)` per region, in the order of [`GuestRam::regions`].
    regions: Vec<(u64, u64, Vec<u64>)>,
    /// [`count`](Self::count) since the bits last changed: the sender asks for it several
    /// times per sync (statistics, estimate, progress), a popcount of 64 KiB per 2 GiB each.
    counted: Cell<Option<u64>>,
}

/// The words of a bitmap of `pages` pages, as a length.
fn word_count(pages: u64) -> usize {
    usize::try_from(words_for(pages)).unwrap_or(0)
}

impl DirtySet {
    /// An empty set shaped like `ram`.
    pub(crate) fn new(ram: &GuestRam) -> Self {
        let regions = ram
            .regions()
            .iter()
            .map(|r| (r.gpa(), r.pages(), vec![0u64; word_count(r.pages())]))
            .collect();
        DirtySet {
            regions,
            counted: Cell::new(Some(0)),
        }
    }

    /// Adds the pages the VM wrote since the last call — the VMM's own writes and its KVM
    /// guest's, from KVM's dirty log — and clears them in their logs.
    pub(crate) fn take_vm_log(&mut self, vm: &Vm) -> Result<(), vfmig_vmm::VmError> {
        self.counted.set(None);
        for (i, (_, _, bits)) in self.regions.iter_mut().enumerate() {
            vm.take_dirty(i, bits)?;
        }
        Ok(())
    }

    /// Adds a device's bitmap of region `index` (bit 0 = the region's first page). Bits past
    /// the region are ignored.
    pub(crate) fn add(&mut self, index: usize, device_bits: &[u64]) {
        let Some((_, pages, bits)) = self.regions.get_mut(index) else {
            return;
        };
        self.counted.set(None);
        words::or_words(bits, device_bits);
        words::mask_tail(bits, *pages);
    }

    /// Marks every page (the first iteration sends all RAM).
    pub(crate) fn mark_all(&mut self) {
        self.counted.set(None);
        for (_, pages, bits) in &mut self.regions {
            bits.fill(u64::MAX);
            words::mask_tail(bits, *pages);
        }
    }

    /// Dirty pages.
    pub(crate) fn count(&self) -> u64 {
        if let Some(n) = self.counted.get() {
            return n;
        }
        let n = self
            .regions
            .iter()
            .flat_map(|(_, _, b)| b)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        self.counted.set(Some(n));
        n
    }

    /// `(gpa, size)` of each region.
    pub(crate) fn layout(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.regions
            .iter()
            .enumerate()
            .map(|(i, (gpa, pages, _))| (i, *gpa, pages * CONTAINER_PAGE_SIZE.bytes()))
    }

    /// Takes the dirty pages as maximal runs, leaving the set empty.
    pub(crate) fn take_runs(&mut self) -> Vec<PageRun> {
        let page = CONTAINER_PAGE_SIZE.bytes();
        let mut runs = Vec::new();
        for (gpa, pages, bits) in &mut self.regions {
            runs.extend(
                words::runs(bits, *pages)
                    .map(|run| PageRun::new(Gpa(*gpa + run.first * page), run.pages)),
            );
            bits.fill(0);
        }
        self.counted.set(Some(0));
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pages: u64, dirty: &[u64]) -> DirtySet {
        let mut bits = vec![0u64; word_count(pages)];
        for &p in dirty {
            bits[(p / 64) as usize] |= 1 << (p % 64);
        }
        DirtySet {
            regions: vec![(0x10_0000, pages, bits)],
            counted: Cell::new(None),
        }
    }

    fn runs(s: &mut DirtySet) -> Vec<(u64, u64)> {
        s.take_runs()
            .iter()
            .map(|r| {
                (
                    (r.gpa.raw() - 0x10_0000) / CONTAINER_PAGE_SIZE.bytes(),
                    r.pages,
                )
            })
            .collect()
    }

    #[test]
    fn runs_are_maximal_across_words() {
        let dirty: Vec<u64> = (60..70).chain([5, 127, 128]).collect();
        assert_eq!(
            runs(&mut set(200, &dirty)),
            vec![(5, 1), (60, 10), (127, 2)]
        );
    }

    #[test]
    fn a_full_set_is_one_run_per_region() {
        let mut s = set(130, &[]);
        s.mark_all();
        assert_eq!(s.count(), 130);
        assert_eq!(runs(&mut s), vec![(0, 130)]);
        assert_eq!(s.count(), 0, "taking runs empties the set");
    }

    #[test]
    fn the_count_follows_every_change_of_the_set() {
        let mut s = set(200, &[3]);
        assert_eq!(s.count(), 1);
        s.add(0, &[0, 0b111]);
        assert_eq!(s.count(), 4);
        s.mark_all();
        assert_eq!(s.count(), 200);
        s.take_runs();
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn device_bits_past_the_region_are_ignored() {
        let mut s = set(10, &[]);
        s.add(0, &[u64::MAX]);
        assert_eq!(s.count(), 10);
    }
}
