//! The sender's side of `RamPages`: runs of dirty pages in, bounded sections out.
//!
//! The encoder reads guest memory a batch at a time (at most [`BATCH_PAGES`] pages, so the
//! batch is still in the core's cache when it is scanned), copies each batch straight into
//! the section's data buffer, and scans it page by page: a zero page is dropped from the
//! buffer and becomes part of a zero run, a non-zero page stays. Adjacent pages of the same
//! kind share one table entry. A section is emitted when its data is full (1 MiB by
//! default, 8 MiB at most) or its table could not take another batch, and at the end.

use std::fmt;

use serde::{Deserialize, Serialize};
use vfmig_memory::Gpa;
use zerocopy::byteorder::little_endian::{U32, U64};

use crate::stream::config::RamLayout;
use crate::stream::error::MemoryError;
use crate::stream::ram::{
    MAX_DATA_PAGES, MAX_RUNS, RUN_ZERO, RamPages, RamSectionError, ReadGuestMemory, RunEntry,
    is_zero_page,
};

use crate::types::{PageRun, STREAM_PAGE_SIZE};

/// The most pages read from guest memory in one call: 256 KiB, well inside a core's L2.
pub const BATCH_PAGES: usize = 64;

/// The data pages of a section from [`RamEncoder::new`]: 1 MiB. The format allows 8 MiB
/// ([`MAX_DATA_PAGES`]), but 1 MiB sections stay in the cache from the guest-memory copy
/// through the checksum to the socket, and let the receiver work on one section while the
/// next is in flight; `benches/stream.rs` measured 1 MiB fastest of 256 KiB to 8 MiB over
/// loopback TCP.
pub const DEFAULT_SECTION_PAGES: usize = 256;

/// What one [`RamEncoder::encode`] (or [`StreamWriter::write_ram`]) sent.
///
/// [`StreamWriter::write_ram`]: crate::stream::StreamWriter::write_ram
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RamStats {
    /// Pages covered, data and zero.
    pub pages: u64,
    /// Pages sent as zero runs, without data.
    pub zero_pages: u64,
    /// Sections emitted.
    pub sections: u64,
    /// Bytes of stream written for them, framing included (0 from the bare encoder).
    pub bytes: u64,
}

impl RamStats {
    /// Pages sent with data.
    pub fn data_pages(&self) -> u64 {
        self.pages.saturating_sub(self.zero_pages)
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &RamStats) {
        self.pages = self.pages.saturating_add(other.pages);
        self.zero_pages = self.zero_pages.saturating_add(other.zero_pages);
        self.sections = self.sections.saturating_add(other.sections);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

impl fmt::Display for RamStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pages ({} zero) in {} sections, {} bytes",
            self.pages, self.zero_pages, self.sections, self.bytes
        )
    }
}

/// The error of an encode: the encoder's own, or the sink's.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError<E> {
    /// A run not valid for the layout.
    #[error(transparent)]
    Ram(#[from] RamSectionError),
    /// Guest memory could not be read.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The sink refused a section.
    #[error(transparent)]
    Sink(E),
}

/// The table entry being extended.
#[derive(Clone, Copy, Debug)]
struct OpenRun {
    gpa: u64,
    pages: u32,
    zero: bool,
    /// The RAM region it lies in: an entry never crosses into an adjacent region.
    region: Gpa,
}

/// Turns runs of pages into `RamPages` sections of bounded size. Reuse one encoder: its
/// data buffer (1 MiB by default) is allocated once.
pub struct RamEncoder {
    entries: Vec<RunEntry>,
    open: Option<OpenRun>,
    /// `max_data_pages` pages; the first `data_pages` hold the section's data.
    data: Vec<u8>,
    data_pages: usize,
    max_data_pages: usize,
}

impl fmt::Debug for RamEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamEncoder")
            .field("entries", &self.entries.len())
            .field("data_pages", &self.data_pages)
            .field("max_data_pages", &self.max_data_pages)
            .finish()
    }
}

impl Default for RamEncoder {
    fn default() -> Self {
        RamEncoder::new()
    }
}

impl RamEncoder {
    /// An encoder whose sections carry at most [`DEFAULT_SECTION_PAGES`] pages of data.
    pub fn new() -> RamEncoder {
        RamEncoder::with_section_pages(DEFAULT_SECTION_PAGES)
    }

    /// An encoder whose sections carry at most `pages` pages of data, clamped to
    /// `BATCH_PAGES..=MAX_DATA_PAGES`.
    pub fn with_section_pages(pages: usize) -> RamEncoder {
        let max_data_pages = pages.clamp(BATCH_PAGES, MAX_DATA_PAGES);
        RamEncoder {
            entries: Vec::new(),
            open: None,
            data: vec![0; max_data_pages * STREAM_PAGE_SIZE.bytes_usize()],
            data_pages: 0,
            max_data_pages,
        }
    }

    /// Reads `runs` from `mem` and hands each section to `emit`, in order. Every run must be
    /// page-aligned, non-empty and inside one region of `layout` (checked before it is read).
    /// Nothing is left pending when this returns `Ok`.
    ///
    /// # Errors
    /// [`EncodeError::Ram`] for a bad run, [`EncodeError::Memory`] if `mem` fails,
    /// [`EncodeError::Sink`] if `emit` does. Sections emitted before the error stay emitted;
    /// the encoder is reset and can be reused.
    pub fn encode<M, I, E>(
        &mut self,
        layout: &RamLayout,
        runs: I,
        mem: &M,
        mut emit: impl FnMut(&RamPages<'_>) -> Result<(), E>,
    ) -> Result<RamStats, EncodeError<E>>
    where
        M: ReadGuestMemory + ?Sized,
        I: IntoIterator<Item = PageRun>,
    {
        self.reset();
        let mut stats = RamStats::default();
        let result = self.encode_runs(layout, runs, mem, &mut emit, &mut stats);
        let result = result.and_then(|()| self.emit(layout, &mut emit, &mut stats));
        self.reset();
        result.map(|()| stats)
    }

    fn reset(&mut self) {
        self.entries.clear();
        self.open = None;
        self.data_pages = 0;
    }

    fn encode_runs<M, I, E>(
        &mut self,
        layout: &RamLayout,
        runs: I,
        mem: &M,
        emit: &mut impl FnMut(&RamPages<'_>) -> Result<(), E>,
        stats: &mut RamStats,
    ) -> Result<(), EncodeError<E>>
    where
        M: ReadGuestMemory + ?Sized,
        I: IntoIterator<Item = PageRun>,
    {
        for run in runs {
            let region = check_run(layout, run)?;
            let mut gpa = run.gpa.raw();
            let mut left = run.pages;
            while left > 0 {
                // Room for the batch: data, and table entries for the worst case of every
                // page starting a new one (plus the open one).
                if self.data_pages == self.max_data_pages
                    || self.entries.len() + 2 * BATCH_PAGES + 1 > MAX_RUNS
                {
                    self.emit(layout, emit, stats)?;
                }
                let room = self.max_data_pages - self.data_pages;
                let batch = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(room)
                    .min(BATCH_PAGES);
                self.read_batch(Gpa(gpa), batch, region, mem)?;
                let batch_pages = crate::stream::wire::u64_from(batch);
                stats.pages += batch_pages;
                // Checked by `check_run`: the run's end fits in a u64.
                gpa += batch_pages * STREAM_PAGE_SIZE.bytes();
                left -= batch_pages;
            }
        }
        Ok(())
    }

    /// Reads `batch` pages at `gpa` behind the data already in the buffer, then keeps the
    /// non-zero ones (moved down over dropped zero pages) and records every page's run.
    fn read_batch<M, E>(
        &mut self,
        gpa: Gpa,
        batch: usize,
        region: Gpa,
        mem: &M,
    ) -> Result<(), EncodeError<E>>
    where
        M: ReadGuestMemory + ?Sized,
    {
        let start = self.data_pages * STREAM_PAGE_SIZE.bytes_usize();
        let len = batch * STREAM_PAGE_SIZE.bytes_usize();
        let buf = self
            .data
            .get_mut(start..start + len)
            .ok_or(RamSectionError::BadRun {
                gpa,
                pages: crate::stream::wire::u64_from(batch),
            })?;
        mem.read(gpa, buf).map_err(|source| MemoryError {
            write: false,
            gpa,
            len: crate::stream::wire::u64_from(len),
            source,
        })?;
        let mut kept = self.data_pages;
        for index in 0..batch {
            let from = start + index * STREAM_PAGE_SIZE.bytes_usize();
            let page_gpa =
                gpa.raw() + crate::stream::wire::u64_from(index) * STREAM_PAGE_SIZE.bytes();
            let zero = self
                .data
                .get(from..from + STREAM_PAGE_SIZE.bytes_usize())
                .is_none_or(is_zero_page);
            if !zero {
                let to = kept * STREAM_PAGE_SIZE.bytes_usize();
                if to != from {
                    self.data
                        .copy_within(from..from + STREAM_PAGE_SIZE.bytes_usize(), to);
                }
                kept += 1;
            }
            self.push_page(page_gpa, zero, region);
        }
        self.data_pages = kept;
        Ok(())
    }

    /// Adds one page to the open run, or closes it and opens another.
    fn push_page(&mut self, gpa: u64, zero: bool, region: Gpa) {
        if let Some(open) = &mut self.open {
            let contiguous = u64::from(open.pages)
                .checked_mul(STREAM_PAGE_SIZE.bytes())
                .and_then(|bytes| open.gpa.checked_add(bytes))
                == Some(gpa);
            if contiguous && open.zero == zero && open.region == region && open.pages < u32::MAX {
                open.pages += 1;
                return;
            }
        }
        self.close_open();
        self.open = Some(OpenRun {
            gpa,
            pages: 1,
            zero,
            region,
        });
    }

    fn close_open(&mut self) {
        if let Some(open) = self.open.take() {
            self.entries.push(RunEntry {
                gpa: U64::new(open.gpa),
                pages: U32::new(open.pages),
                flags: U32::new(if open.zero { RUN_ZERO } else { 0 }),
            });
        }
    }

    /// Emits the section built so far, if it has any run, and starts a new one.
    fn emit<E>(
        &mut self,
        layout: &RamLayout,
        emit: &mut impl FnMut(&RamPages<'_>) -> Result<(), E>,
        stats: &mut RamStats,
    ) -> Result<(), EncodeError<E>> {
        self.close_open();
        if self.entries.is_empty() {
            return Ok(());
        }
        let data = self
            .data
            .get(..self.data_pages * STREAM_PAGE_SIZE.bytes_usize())
            .unwrap_or_default();
        let pages = RamPages::from_parts(&self.entries, data, layout)?;
        stats.zero_pages += pages.zero_pages();
        stats.sections += 1;
        let result = emit(&pages).map_err(EncodeError::Sink);
        self.reset();
        result
    }
}

/// Checks a run the sender asked for, before any memory is read; returns the address of
/// the region that holds it.
fn check_run(layout: &RamLayout, run: PageRun) -> Result<Gpa, RamSectionError> {
    if run.pages == 0 || !run.gpa.is_aligned(STREAM_PAGE_SIZE.bytes()) {
        return Err(RamSectionError::BadRun {
            gpa: run.gpa,
            pages: run.pages,
        });
    }
    match run
        .bytes()
        .and_then(|bytes| layout.region_of(run.gpa, bytes))
    {
        Some(region) => Ok(region.gpa),
        None => Err(RamSectionError::OutsideRam {
            gpa: run.gpa,
            pages: run.pages,
        }),
    }
}
