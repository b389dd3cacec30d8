//! [`StreamWriter`]: the sender's half of the stream.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use vfmig_memory::Gpa;
use zerocopy::IntoBytes;

use crate::stream::config::StreamConfig;
use crate::stream::device::{
    DeviceChunk, DeviceConfig, End, Iteration, MAX_DEVICE_CHUNK, MAX_DEVICE_CONFIG,
};
use crate::stream::error::{OrderError, WriteError};
use crate::stream::frame::{FRAME_OVERHEAD, FrameHeader};
use crate::stream::header::{CURRENT_VERSION, StreamHeader};
use crate::stream::kind::SectionKind;
use crate::stream::machine::{MAX_MACHINE, MachineState};
use crate::stream::order::{Order, Step};
use crate::stream::ram::{RamPages, ReadGuestMemory};
use crate::stream::ram_encode::{DEFAULT_SECTION_PAGES, EncodeError, RamEncoder, RamStats};
use crate::stream::section::Section;
use crate::stream::wire::{len_u32, u64_from};

use crate::types::{PageRun, STREAM_PAGE_SIZE};

/// Small sections are gathered up to this many bytes before they are written. A larger
/// section goes out in one vectored `write` together with what was gathered, its payload
/// straight from where it is (the RAM encoder's buffer, the device's chunk): one syscall
/// and, with `TCP_NODELAY`, no tiny segment for a frame header.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// The transport, the small sections not sent yet, the byte count, and whether a failed
/// write left a partial section.
#[derive(Debug)]
struct Sink<W: Write> {
    out: W,
    pending: Vec<u8>,
    offset: u64,
    sections: u64,
    broken: bool,
}

impl<W: Write> Sink<W> {
    fn io_error(&mut self, source: io::Error) -> WriteError {
        self.broken = true;
        WriteError::Io {
            offset: self.offset,
            source,
        }
    }

    /// Writes one frame whose payload is `parts`, in order.
    fn frame(&mut self, kind: SectionKind, parts: &[&[u8]]) -> Result<(), WriteError> {
        let frame = Frame::new(kind, parts)?;
        self.write_frame(&frame, parts)
    }

    /// Writes a frame made by [`Frame::new`] from `parts`.
    fn write_frame(&mut self, frame: &Frame, parts: &[&[u8]]) -> Result<(), WriteError> {
        if self.broken {
            return Err(WriteError::Broken);
        }
        let (header, crc, len) = (&frame.header, frame.crc, frame.len);
        let total = len + FRAME_OVERHEAD;
        if self.pending.len() + total <= WRITE_BUFFER {
            self.pending.extend_from_slice(header.as_bytes());
            for part in parts {
                self.pending.extend_from_slice(part);
            }
            self.pending.extend_from_slice(&crc);
        } else {
            // At most pending, header, three parts, checksum.
            let mut slices = [IoSlice::new(&[]); 6];
            let all = [&self.pending[..], header.as_bytes()]
                .into_iter()
                .chain(parts.iter().copied())
                .chain([&crc[..]]);
            for (slice, bytes) in slices.iter_mut().zip(all) {
                *slice = IoSlice::new(bytes);
            }
            if let Err(source) = write_all_vectored(&mut self.out, &mut slices) {
                return Err(self.io_error(source));
            }
            self.pending.clear();
        }
        self.offset += u64_from(total);
        self.sections += 1;
        Ok(())
    }

    /// Writes what was gathered and flushes the transport.
    fn flush(&mut self) -> Result<(), WriteError> {
        if let Err(source) = self.out.write_all(&self.pending) {
            return Err(self.io_error(source));
        }
        self.pending.clear();
        self.out.flush().map_err(|source| self.io_error(source))
    }
}

/// A frame's header and checksum, computed before the sink is needed: the parallel RAM
/// writer checksums a section on its own thread and holds the sink only to write it.
struct Frame {
    header: FrameHeader,
    crc: [u8; 4],
    len: usize,
}

impl Frame {
    /// The frame of `kind` whose payload is `parts`.
    fn new(kind: SectionKind, parts: &[&[u8]]) -> Result<Frame, WriteError> {
        let len = parts.iter().map(|part| part.len()).sum::<usize>();
        let max = kind.max_payload();
        let Some(len32) = len_u32(len).filter(|&len| len <= max) else {
            return Err(WriteError::TooLong {
                kind,
                len: u64_from(len),
                max,
            });
        };
        let header = FrameHeader::new(kind.to_wire(), 0, len32);
        let crc = header.checksum(parts).to_le_bytes();
        Ok(Frame { header, crc, len })
    }
}

/// `Write::write_all` for a list of buffers (`write_all_vectored` is not stable yet).
fn write_all_vectored<W: Write>(out: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes a migration stream to `W`: the stream header when created, then one section per
/// call, checked against the order rules before anything is written, then `End` from
/// [`finish`](Self::finish).
///
/// Small sections are gathered ([`WRITE_BUFFER`]); call [`flush`](Self::flush) when the
/// receiver must see everything so far (e.g. before waiting for it). A failed write leaves a partial
/// section on the transport: every later call returns [`WriteError::Broken`].
///
/// To cancel, shut the transport down (e.g.
/// [`StreamConnection::shutdown`](crate::transport::StreamConnection::shutdown) through
/// [`get_ref`](Self::get_ref)): the receiver sees the stream end without `End` and refuses it.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    sink: Sink<W>,
    order: Order,
    ram: Option<RamEncoder>,
    ram_section_pages: Option<usize>,
    /// Where the pages of each `RamPages` section written are added, if anywhere.
    page_counter: Option<Arc<AtomicU64>>,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream of the [current version](CURRENT_VERSION) on `inner`.
    ///
    /// # Errors
    /// [`WriteError::Io`] if the header cannot be buffered.
    pub fn new(inner: W) -> Result<StreamWriter<W>, WriteError> {
        let mut pending = Vec::with_capacity(WRITE_BUFFER);
        pending.extend_from_slice(StreamHeader::new(CURRENT_VERSION).as_bytes());
        let sink = Sink {
            out: inner,
            offset: u64_from(pending.len()),
            pending,
            sections: 0,
            broken: false,
        };
        Ok(StreamWriter {
            sink,
            order: Order::default(),
            ram: None,
            ram_section_pages: None,
            page_counter: None,
        })
    }

    /// Limits the data of each `RamPages` section to `pages` pages (clamped to
    /// [`BATCH_PAGES`](crate::stream::BATCH_PAGES)`..=`[`MAX_DATA_PAGES`](crate::stream::MAX_DATA_PAGES)).
    /// Smaller sections reach the receiver sooner; larger ones amortise framing. The
    /// default is [`DEFAULT_SECTION_PAGES`](crate::stream::DEFAULT_SECTION_PAGES), 1 MiB.
    pub fn set_ram_section_pages(&mut self, pages: usize) {
        self.ram_section_pages = Some(pages);
        self.ram = None;
    }

    /// Adds the pages (data and zero) of every `RamPages` section to `counter` once the
    /// section is written, so another thread can follow a long [`write_ram`](Self::write_ram).
    pub fn count_pages_into(&mut self, counter: Arc<AtomicU64>) {
        self.page_counter = Some(counter);
    }

    /// Bytes written so far (buffered ones included), stream header included.
    pub fn bytes_written(&self) -> u64 {
        self.sink.offset
    }

    /// Sections written so far.
    pub fn sections_written(&self) -> u64 {
        self.sink.sections
    }

    /// The config, once written.
    pub fn config(&self) -> Option<&StreamConfig> {
        self.order.config()
    }

    /// The transport.
    pub fn get_ref(&self) -> &W {
        &self.sink.out
    }

    /// The transport. Writing to it directly corrupts the stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.sink.out
    }

    /// Sends everything buffered.
    ///
    /// # Errors
    /// [`WriteError::Io`].
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.sink.flush()
    }

    /// Writes the `Config` section; it must be the first.
    ///
    /// # Errors
    /// [`WriteError::Order`] if a config was written already; [`WriteError::Io`].
    pub fn write_config(&mut self, config: &StreamConfig) -> Result<(), WriteError> {
        self.order.check(Step::Config)?;
        let payload = config.encode();
        self.sink.frame(SectionKind::Config, &[&payload])?;
        self.order.accept_config(config.clone())?;
        Ok(())
    }

    /// Reads `runs` of pages from `mem` and writes them as `RamPages` sections of at most
    /// 1 MiB of data each (see [`set_ram_section_pages`](Self::set_ram_section_pages)), zero
    /// pages elided. Every run must lie inside one RAM region of the
    /// config.
    ///
    /// # Errors
    /// [`WriteError::Order`] before the config or after the end; [`WriteError::Ram`] for a
    /// run that is empty, unaligned or outside RAM (sections of earlier runs were written);
    /// [`WriteError::Memory`] if `mem` fails; [`WriteError::Io`].
    pub fn write_ram<M, I>(&mut self, runs: I, mem: &M) -> Result<RamStats, WriteError>
    where
        M: ReadGuestMemory + ?Sized,
        I: IntoIterator<Item = PageRun>,
    {
        self.order.check(Step::RamPages)?;
        let Some(config) = self.order.config() else {
            return Err(OrderError::ConfigNotFirst {
                kind: SectionKind::RamPages,
            }
            .into());
        };
        let section_pages = self.ram_section_pages;
        let encoder = self.ram.get_or_insert_with(|| match section_pages {
            Some(pages) => RamEncoder::with_section_pages(pages),
            None => RamEncoder::new(),
        });
        let sink = &mut self.sink;
        let counter = self.page_counter.as_deref();
        let start = sink.offset;
        let result = encoder.encode(config.ram(), runs, mem, |pages| {
            write_ram_frame(sink, pages)?;
            count_pages(counter, pages);
            Ok(())
        });
        let mut stats = result.map_err(WriteError::from)?;
        stats.bytes = sink.offset - start;
        Ok(stats)
    }

    /// [`write_ram`](Self::write_ram) on `workers` threads. Each takes the next piece of
    /// `runs` (one section's worth of pages), reads, scans and checksums it into a section of
    /// its own, and writes that section whole while holding the transport; so one thread's
    /// copy out of guest memory overlaps another's socket write, and each section stays in
    /// the cache of the core that made it. The RAM sections of one call may reach the stream
    /// in any order (each page is in one of them), between the sections written before and
    /// after the call. One worker is [`write_ram`](Self::write_ram).
    ///
    /// # Errors
    /// As [`write_ram`](Self::write_ram); the first error stops every worker, and sections
    /// of other pieces may have been written.
    pub fn write_ram_parallel<M>(
        &mut self,
        runs: &[PageRun],
        mem: &M,
        workers: usize,
    ) -> Result<RamStats, WriteError>
    where
        M: ReadGuestMemory + Sync + ?Sized,
        W: Send,
    {
        if workers <= 1 {
            return self.write_ram(runs.iter().copied(), mem);
        }
        self.order.check(Step::RamPages)?;
        let Some(config) = self.order.config() else {
            return Err(OrderError::ConfigNotFirst {
                kind: SectionKind::RamPages,
            }
            .into());
        };
        let section_pages = self.ram_section_pages.unwrap_or(DEFAULT_SECTION_PAGES);
        let start = self.sink.offset;
        let pieces = Mutex::new(Pieces::new(runs, section_pages));
        let sink = Mutex::new(&mut self.sink);
        let counter = self.page_counter.as_deref();
        let failed = AtomicBool::new(false);
        let work = || -> Result<RamStats, WriteError> {
            let mut encoder = RamEncoder::with_section_pages(section_pages);
            let mut stats = RamStats::default();
            let mut piece = Vec::new();
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(stats);
                }
                piece.clear();
                lock(&pieces).next_into(&mut piece);
                if piece.is_empty() {
                    return Ok(stats);
                }
                let result = encoder.encode(config.ram(), piece.iter().copied(), mem, |pages| {
                    let header = pages.header();
                    let parts = [header.as_bytes(), pages.entries().as_bytes(), pages.data()];
                    let frame = Frame::new(SectionKind::RamPages, &parts)?;
                    lock(&sink).write_frame(&frame, &parts)?;
                    count_pages(counter, pages);
                    Ok(())
                });
                match result {
                    Ok(piece_stats) => stats.add(&piece_stats),
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(err.into());
                    }
                }
            }
        };
        let results: Vec<_> = thread::scope(|scope| {
            // Named for profilers. A helper that cannot be started leaves its pieces to the
            // others, which take pieces until none is left.
            let helpers: Vec<_> = (1..workers)
                .filter_map(|_| {
                    thread::Builder::new()
                        .name("send-ram".into())
                        .spawn_scoped(scope, work)
                        .ok()
                })
                .collect();
            let mut results = vec![work()];
            for helper in helpers {
                results.push(helper.join().unwrap_or(Err(WriteError::Broken)));
            }
            results
        });
        let mut stats = RamStats::default();
        for result in results {
            stats.add(&result?);
        }
        stats.bytes = self.sink.offset - start;
        Ok(stats)
    }

    /// Writes one prepared `RamPages` section (e.g. one received from another stream), after
    /// checking its runs against this stream's config.
    ///
    /// # Errors
    /// As [`write_ram`](Self::write_ram).
    pub fn write_ram_pages(&mut self, pages: &RamPages<'_>) -> Result<(), WriteError> {
        self.order.check(Step::RamPages)?;
        let Some(config) = self.order.config() else {
            return Err(OrderError::ConfigNotFirst {
                kind: SectionKind::RamPages,
            }
            .into());
        };
        let pages = RamPages::from_parts(pages.entries(), pages.data(), config.ram())?;
        write_ram_frame(&mut self.sink, &pages)
    }

    /// Writes one chunk of a device's migration data, as one section.
    ///
    /// # Errors
    /// [`WriteError::TooLong`] above 16 MiB of data; [`WriteError::Order`] for a device not
    /// in the config, or after its `DeviceConfig`; [`WriteError::Io`].
    pub fn write_device_chunk(&mut self, chunk: &DeviceChunk<'_>) -> Result<(), WriteError> {
        check_len(SectionKind::DeviceChunk, chunk.data.len(), MAX_DEVICE_CHUNK)?;
        let step = Step::DeviceChunk(chunk.device);
        self.order.check(step)?;
        let header = chunk.header();
        self.sink
            .frame(SectionKind::DeviceChunk, &[header.as_bytes(), chunk.data])?;
        self.order.accept(step)?;
        Ok(())
    }

    /// Writes a device's configuration: its last section.
    ///
    /// # Errors
    /// [`WriteError::TooLong`] above 1 MiB; [`WriteError::Order`] for a device not in the
    /// config, or one whose config was written; [`WriteError::Io`].
    pub fn write_device_config(&mut self, config: &DeviceConfig<'_>) -> Result<(), WriteError> {
        check_len(
            SectionKind::DeviceConfig,
            config.data.len(),
            MAX_DEVICE_CONFIG,
        )?;
        let step = Step::DeviceConfig(config.device);
        self.order.check(step)?;
        let header = config.header();
        self.sink
            .frame(SectionKind::DeviceConfig, &[header.as_bytes(), config.data])?;
        self.order.accept(step)?;
        Ok(())
    }

    /// Writes the guest machine's section: once, before any device's configuration.
    ///
    /// # Errors
    /// [`WriteError::TooLong`] above [`MAX_MACHINE`]; [`WriteError::Order`] for a second
    /// one or one after a `DeviceConfig`; [`WriteError::Io`].
    pub fn write_machine(&mut self, machine: &MachineState<'_>) -> Result<(), WriteError> {
        let len = machine.program.len().saturating_add(machine.state.len());
        check_len(SectionKind::Machine, len, MAX_MACHINE)?;
        self.order.check(Step::Machine)?;
        let header = machine.header().ok_or(WriteError::TooLong {
            kind: SectionKind::Machine,
            len: u64_from(len),
            max: MAX_MACHINE,
        })?;
        self.sink.frame(
            SectionKind::Machine,
            &[header.as_bytes(), machine.program, machine.state],
        )?;
        self.order.accept(Step::Machine)?;
        Ok(())
    }

    /// Writes an iteration marker.
    ///
    /// # Errors
    /// [`WriteError::Order`] before the config or after the end; [`WriteError::Io`].
    pub fn write_iteration(&mut self, iteration: Iteration) -> Result<(), WriteError> {
        self.order.check(Step::Iteration)?;
        self.sink
            .frame(SectionKind::Iteration, &[&iteration.encode()])?;
        self.order.accept(Step::Iteration)?;
        Ok(())
    }

    /// Writes any section. `End` is written as [`finish`](Self::finish) writes it: the
    /// counts in the given one are ignored, the writer's own are sent.
    ///
    /// # Errors
    /// As the method for that section.
    pub fn write_section(&mut self, section: &Section<'_>) -> Result<(), WriteError> {
        match section {
            Section::Config(config) => self.write_config(config),
            Section::RamPages(pages) => self.write_ram_pages(pages),
            Section::DeviceChunk(chunk) => self.write_device_chunk(chunk),
            Section::DeviceConfig(config) => self.write_device_config(config),
            Section::Machine(machine) => self.write_machine(machine),
            Section::Iteration(iteration) => self.write_iteration(*iteration),
            Section::End(_) => self.finish().map(|_| ()),
        }
    }

    /// Writes `End` (with the section and byte counts so far) and flushes. Returns what it
    /// wrote. Every later write is refused.
    ///
    /// # Errors
    /// [`WriteError::Order`] if a device of the config has no `DeviceConfig` yet, or the
    /// stream was finished; [`WriteError::Io`].
    pub fn finish(&mut self) -> Result<End, WriteError> {
        self.order.check(Step::End)?;
        let end = End {
            sections: self.sink.sections,
            bytes: self.sink.offset,
        };
        self.sink.frame(SectionKind::End, &[&end.encode()])?;
        self.order.accept(Step::End)?;
        self.flush()?;
        Ok(end)
    }

    /// The transport, after flushing what is buffered.
    ///
    /// # Errors
    /// [`WriteError::Io`] if the flush fails.
    pub fn into_inner(mut self) -> Result<W, WriteError> {
        self.sink.flush()?;
        Ok(self.sink.out)
    }
}

impl From<EncodeError<WriteError>> for WriteError {
    fn from(err: EncodeError<WriteError>) -> WriteError {
        match err {
            EncodeError::Ram(err) => WriteError::Ram(err),
            EncodeError::Memory(err) => WriteError::Memory(err),
            EncodeError::Sink(err) => err,
        }
    }
}

/// Locks `mutex`, whatever a panicking holder left.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `runs` cut into pieces of at most `pages` pages, in order: the work of the parallel RAM
/// writer's threads.
struct Pieces<'a> {
    runs: &'a [PageRun],
    /// Pages of `runs[0]` already handed out.
    taken: u64,
    pages: u64,
}

impl<'a> Pieces<'a> {
    fn new(runs: &'a [PageRun], pages: usize) -> Pieces<'a> {
        Pieces {
            runs,
            taken: 0,
            pages: u64_from(pages.max(1)),
        }
    }

    /// The next piece into `out` (left empty at the end).
    fn next_into(&mut self, out: &mut Vec<PageRun>) {
        let mut left = self.pages;
        while left > 0 {
            let Some((run, rest)) = self.runs.split_first() else {
                return;
            };
            let pages = (run.pages - self.taken).min(left);
            // A run is page-aligned and inside RAM (or the encoder refuses it): no overflow.
            let gpa = Gpa(run
                .gpa
                .raw()
                .wrapping_add(self.taken.wrapping_mul(STREAM_PAGE_SIZE.bytes())));
            out.push(PageRun::new(gpa, pages));
            left -= pages;
            self.taken += pages;
            if self.taken >= run.pages {
                self.runs = rest;
                self.taken = 0;
            }
        }
    }
}

fn check_len(kind: SectionKind, len: usize, max: u32) -> Result<(), WriteError> {
    if len_u32(len).is_some_and(|len| len <= max) {
        Ok(())
    } else {
        Err(WriteError::TooLong {
            kind,
            len: u64_from(len),
            max,
        })
    }
}

fn count_pages(counter: Option<&AtomicU64>, pages: &RamPages<'_>) {
    if let Some(counter) = counter {
        counter.fetch_add(pages.data_pages() + pages.zero_pages(), Ordering::Relaxed);
    }
}

fn write_ram_frame<W: Write>(sink: &mut Sink<W>, pages: &RamPages<'_>) -> Result<(), WriteError> {
    let header = pages.header();
    sink.frame(
        SectionKind::RamPages,
        &[header.as_bytes(), pages.entries().as_bytes(), pages.data()],
    )
}
