//! The `RamPages` section: a table of runs, then the data of the runs that are not zero.
//!
//! ```text
//!  RamHeader (8)      runs u32 | reserved u32 = 0
//!  runs × RunEntry    gpa u64 | pages u32 | flags u32        flags: bit 0 = ZERO
//!  data               the pages of every run without ZERO, in table order
//! ```
//!
//! A run flagged `ZERO` has no data: the receiver zeroes its pages (the destination's RAM
//! is not assumed to be zero, since a page may have been sent with data in an earlier
//! iteration). Every run is page-aligned, non-empty and lies inside one RAM region of the
//! [`StreamConfig`](crate::stream::StreamConfig); the data is exactly the sum of the data runs'
//! pages. A [`RamPages`] exists only once all of this was checked, so
//! [`RamPages::apply`] can write without failing on the peer's account.
//!
//! Caps: 8 MiB of data ([`MAX_DATA_PAGES`] pages) and [`MAX_RUNS`] table entries per
//! section, enough for the worst case of alternating zero and data pages. The sender's side,
//! the encoder, is in [`RamEncoder`](crate::stream::RamEncoder).

use std::io;
use std::iter::FusedIterator;

use vfmig_memory::Gpa;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::stream::config::RamLayout;
pub use crate::stream::error::RamSectionError;
use crate::stream::error::{MemoryError, PayloadError};

use crate::stream::wire::{Cursor, reserved_zero, u64_from, usize_from, usize_from_u64};
use crate::types::STREAM_PAGE_SIZE;

/// The most pages of data one section carries: 8 MiB.
pub const MAX_DATA_PAGES: usize = 2048;

/// The most table entries one section carries.
pub const MAX_RUNS: usize = 8192;

/// Bytes of the header before the table.
pub const RAM_HEADER_LEN: usize = 8;

/// The flag of a run whose pages are all zero and have no data.
pub const RUN_ZERO: u32 = 1;

/// The cap on a `RamPages` payload: header, a full table and 8 MiB of data.
#[allow(clippy::cast_possible_truncation)] // a constant that fits, checked below
pub const MAX_RAM_PAYLOAD: u32 = (RAM_HEADER_LEN
    + MAX_RUNS * size_of::<RunEntry>()
    + MAX_DATA_PAGES * STREAM_PAGE_SIZE.bytes_usize()) as u32;

const _: () = assert!(
    (RAM_HEADER_LEN
        + MAX_RUNS * size_of::<RunEntry>()
        + MAX_DATA_PAGES * STREAM_PAGE_SIZE.bytes_usize())
        <= u32::MAX as usize
);

/// The header of a `RamPages` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RamHeader {
    pub(crate) runs: U32,
    pub(crate) reserved: U32,
}

/// One entry of the table, as it is on the wire.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RunEntry {
    /// The first byte of the run.
    pub gpa: U64,
    /// Pages in the run.
    pub pages: U32,
    /// [`RUN_ZERO`] or 0.
    pub flags: U32,
}

const _: () = assert!(size_of::<RamHeader>() == RAM_HEADER_LEN);
const _: () = assert!(size_of::<RunEntry>() == 16);

/// Reads guest memory for the sender. Implemented for closures
/// `Fn(Gpa, &mut [u8]) -> io::Result<()>`.
pub trait ReadGuestMemory {
    /// Copies `buf.len()` bytes of guest memory from `gpa` on into `buf`. The guest may be
    /// running: the copy is what is checksummed and sent, so later guest writes cannot make
    /// the data and its checksum disagree.
    ///
    /// # Errors
    /// Any; it aborts the write of the section and is returned with the range.
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> io::Result<()>;
}

impl<F> ReadGuestMemory for F
where
    F: Fn(Gpa, &mut [u8]) -> io::Result<()>,
{
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> io::Result<()> {
        self(gpa, buf)
    }
}

/// Writes guest memory for the receiver. Implemented for closures
/// `FnMut(Gpa, &[u8]) -> io::Result<()>`.
pub trait WriteGuestMemory {
    /// Copies `data` into guest memory from `gpa` on.
    ///
    /// # Errors
    /// Any; it stops [`RamPages::apply`] and is returned with the range.
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> io::Result<()>;

    /// Sets `len` bytes of guest memory from `gpa` on to zero. The provided body writes
    /// zero pages through [`write`](Self::write); a memory that can discard pages (e.g.
    /// `fallocate(PUNCH_HOLE)` on a memfd) can do better.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    fn write_zeroes(&mut self, gpa: Gpa, len: u64) -> io::Result<()> {
        static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(u64_from(ZEROES.len()));
            let at = gpa.checked_add(done).ok_or(io::ErrorKind::InvalidInput)?;
            self.write(at, ZEROES.get(..usize_from_u64(chunk)).unwrap_or(&ZEROES))?;
            done += chunk;
        }
        Ok(())
    }
}

impl<F> WriteGuestMemory for F
where
    F: FnMut(Gpa, &[u8]) -> io::Result<()>,
{
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> io::Result<()> {
        self(gpa, data)
    }
}

/// Whether a page (or any buffer) is all zero. Reads 64-byte blocks of eight `u64` words
/// and stops at the first block with a bit set, so a typical non-zero page costs one block.
pub fn is_zero_page(page: &[u8]) -> bool {
    let (words, tail) = page.as_chunks::<8>();
    tail.iter().all(|&byte| byte == 0)
        && words.chunks(8).all(|block| {
            block
                .iter()
                .fold(0u64, |acc, word| acc | u64::from_ne_bytes(*word))
                == 0
        })
}

/// One run of a [`RamPages`] section.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RamRun<'a> {
    /// The first byte.
    pub gpa: Gpa,
    /// Pages in the run.
    pub pages: u64,
    /// The pages' bytes, or `None` for a zero run.
    pub data: Option<&'a [u8]>,
}

/// A `RamPages` section, validated: every run inside the RAM layout it was checked against,
/// data exactly as long as the data runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RamPages<'a> {
    runs: &'a [RunEntry],
    data: &'a [u8],
    data_pages: u64,
    zero_pages: u64,
}

impl<'a> RamPages<'a> {
    /// Decodes a `RamPages` payload and checks every run against `layout`.
    ///
    /// # Errors
    /// [`PayloadError`]: a short or malformed table ([`PayloadError::Ram`] says which run),
    /// a run outside `layout`, or data of the wrong length.
    pub fn decode(payload: &'a [u8], layout: &RamLayout) -> Result<RamPages<'a>, PayloadError> {
        let mut cursor = Cursor::new(payload);
        let header = cursor.read::<RamHeader>()?;
        reserved_zero("ram-pages reserved", header.reserved.get().into())?;
        let count = usize_from(header.runs.get());
        if count > MAX_RUNS {
            return Err(RamSectionError::TooManyRuns {
                runs: header.runs.get(),
                max: MAX_RUNS,
            }
            .into());
        }
        let runs = cursor.read_slice::<RunEntry>(count)?;
        let data = cursor.rest();
        Ok(RamPages::from_parts(runs, data, layout)?)
    }

    /// Checks a table and its data against `layout`.
    pub(crate) fn from_parts(
        runs: &'a [RunEntry],
        data: &'a [u8],
        layout: &RamLayout,
    ) -> Result<RamPages<'a>, RamSectionError> {
        let mut data_pages = 0u64;
        let mut zero_pages = 0u64;
        for entry in runs {
            let gpa = Gpa(entry.gpa.get());
            let pages = u64::from(entry.pages.get());
            let flags = entry.flags.get();
            if flags & !RUN_ZERO != 0 {
                return Err(RamSectionError::RunFlags { gpa, flags });
            }
            if pages == 0 || !gpa.is_aligned(STREAM_PAGE_SIZE.bytes()) {
                return Err(RamSectionError::BadRun { gpa, pages });
            }
            let bytes = pages.checked_mul(STREAM_PAGE_SIZE.bytes());
            if bytes
                .and_then(|bytes| layout.region_of(gpa, bytes))
                .is_none()
            {
                return Err(RamSectionError::OutsideRam { gpa, pages });
            }
            // Sums of u32 page counts over at most MAX_RUNS entries: no overflow.
            if flags & RUN_ZERO != 0 {
                zero_pages = zero_pages.saturating_add(pages);
            } else {
                data_pages = data_pages.saturating_add(pages);
            }
        }
        let data_bytes = u64_from(data.len());
        if data_pages.checked_mul(STREAM_PAGE_SIZE.bytes()) != Some(data_bytes) {
            return Err(RamSectionError::DataLength {
                declared_pages: data_pages,
                data_bytes,
            });
        }
        Ok(RamPages {
            runs,
            data,
            data_pages,
            zero_pages,
        })
    }

    /// The runs, in table order.
    pub fn runs(&self) -> RamRuns<'a> {
        RamRuns {
            entries: self.runs.iter(),
            data: self.data,
        }
    }

    /// The table entries as on the wire.
    pub fn entries(&self) -> &'a [RunEntry] {
        self.runs
    }

    /// The data of all data runs, in table order.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Pages sent with data.
    pub fn data_pages(&self) -> u64 {
        self.data_pages
    }

    /// Pages sent as zero runs.
    pub fn zero_pages(&self) -> u64 {
        self.zero_pages
    }

    /// Bytes of payload this section has on the wire.
    pub fn payload_len(&self) -> usize {
        RAM_HEADER_LEN + self.runs.as_bytes().len() + self.data.len()
    }

    /// The payload header for this table.
    pub(crate) fn header(&self) -> RamHeader {
        RamHeader {
            runs: U32::new(u32::try_from(self.runs.len()).unwrap_or(u32::MAX)),
            reserved: U32::new(0),
        }
    }

    /// Writes every run into guest memory, data runs with [`WriteGuestMemory::write`] and
    /// zero runs with [`WriteGuestMemory::write_zeroes`], in table order.
    ///
    /// # Errors
    /// The first [`MemoryError`] the memory returns; runs before it were written.
    pub fn apply<M: WriteGuestMemory + ?Sized>(&self, mem: &mut M) -> Result<(), MemoryError> {
        for run in self.runs() {
            let len = run.pages.saturating_mul(STREAM_PAGE_SIZE.bytes());
            let result = match run.data {
                Some(data) => mem.write(run.gpa, data),
                None => mem.write_zeroes(run.gpa, len),
            };
            result.map_err(|source| MemoryError {
                write: true,
                gpa: run.gpa,
                len,
                source,
            })?;
        }
        Ok(())
    }
}

/// The runs of a [`RamPages`], from [`RamPages::runs`].
#[derive(Clone, Debug)]
pub struct RamRuns<'a> {
    entries: std::slice::Iter<'a, RunEntry>,
    data: &'a [u8],
}

impl<'a> Iterator for RamRuns<'a> {
    type Item = RamRun<'a>;

    fn next(&mut self) -> Option<RamRun<'a>> {
        let entry = self.entries.next()?;
        let gpa = Gpa(entry.gpa.get());
        let pages = u64::from(entry.pages.get());
        let data = if entry.flags.get() & RUN_ZERO != 0 {
            None
        } else {
            // Validated: the data holds exactly the data runs' pages.
            let len = usize_from_u64(pages.saturating_mul(STREAM_PAGE_SIZE.bytes()));
            let (data, rest) = self.data.split_at_checked(len)?;
            self.data = rest;
            Some(data)
        };
        Some(RamRun { gpa, pages, data })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl FusedIterator for RamRuns<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_detection_finds_any_set_byte() {
        let mut page = vec![0u8; STREAM_PAGE_SIZE.bytes_usize()];
        assert!(is_zero_page(&page));
        for at in [0, 7, 63, 64, 2049, STREAM_PAGE_SIZE.bytes_usize() - 1] {
            page[at] = 0x80;
            assert!(!is_zero_page(&page), "byte {at}");
            page[at] = 0;
        }
        assert!(!is_zero_page(&[0, 0, 1]));
    }

    #[test]
    fn default_write_zeroes_covers_the_whole_range() {
        let mut written = Vec::new();
        let mut mem = |gpa: Gpa, data: &[u8]| {
            assert!(data.iter().all(|&b| b == 0));
            written.push((gpa.raw(), data.len()));
            Ok(())
        };
        mem.write_zeroes(Gpa(0x1000), 0x1_1000).unwrap();
        assert_eq!(written, vec![(0x1000, 0x1_0000), (0x1_1000, 0x1000)]);
    }
}
