//! Small types that carry meaning: page runs, device ids. Guest physical addresses
//! ([`Gpa`]) are `vfmig_memory`'s.

use std::fmt;

use serde::{Deserialize, Serialize};
use vfmig_dirty::PageSize;
use vfmig_memory::Gpa;

/// The page size of the stream: every RAM region, run and page is counted in 4 KiB pages.
/// The sender's dirty pages are container pages ([`vfmig_iommu::CONTAINER_PAGE_SIZE`]), so the
/// two are the same size (checked below).
pub const STREAM_PAGE_SIZE: PageSize = PageSize::SIZE_4K;

const _: () = assert!(STREAM_PAGE_SIZE.bytes() == vfmig_iommu::CONTAINER_PAGE_SIZE.bytes());

/// `pages` pages of guest RAM from `gpa` on: what a sender hands to
/// [`StreamWriter::write_ram`](crate::stream::StreamWriter::write_ram), e.g. one run of a
/// dirty bitmap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageRun {
    /// The first byte of the first page; page-aligned.
    pub gpa: Gpa,
    /// The number of pages.
    pub pages: u64,
}

impl PageRun {
    /// `pages` pages from `gpa` on.
    pub const fn new(gpa: Gpa, pages: u64) -> PageRun {
        PageRun { gpa, pages }
    }

    /// The length in bytes, or `None` if it does not fit in a `u64`.
    pub const fn bytes(&self) -> Option<u64> {
        self.pages.checked_mul(STREAM_PAGE_SIZE.bytes())
    }

    /// One past the last byte, or `None` on overflow.
    pub const fn end(&self) -> Option<Gpa> {
        match self.bytes() {
            Some(bytes) => self.gpa.checked_add(bytes),
            None => None,
        }
    }
}

/// A device of the VM, as named by the [`StreamConfig`](crate::stream::StreamConfig) and by every
/// device section of the stream. The VMM chooses the numbers; they are unique within a stream.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct DeviceIndex(pub u32);

impl fmt::Display for DeviceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_run_end_detects_overflow() {
        assert_eq!(PageRun::new(Gpa(0x1000), 2).end(), Some(Gpa(0x3000)));
        assert_eq!(PageRun::new(Gpa(u64::MAX - 0xfff), 1).end(), None);
        assert_eq!(PageRun::new(Gpa(0), u64::MAX).bytes(), None);
    }
}
