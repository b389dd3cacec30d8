//! [`StreamReader`]: the receiver's half of the stream.
//!
//! The reader owns one buffer, a ring ([`Mirror`]: a memfd mapped twice, back to back), and
//! reads into all of its free space at once, so each `read` takes everything the transport
//! has (like a plain copy into a large buffer), not one section at a time: on loopback TCP,
//! reading a section at a time costs a syscall and an acknowledgement per piece, which made
//! the receiver the bottleneck. Sections are returned in place, as slices of the ring; a
//! section that wraps around the ring's end is still contiguous in the second view, so no
//! byte is ever moved to make a section whole (a linear buffer moved the start of the next
//! section to its front every few sections).

use std::io::{self, Read};

use zerocopy::FromBytes;

use crate::crc::crc32c;
use crate::stream::config::StreamConfig;
use crate::stream::device::{DeviceChunk, DeviceConfig, End, Iteration};
use crate::stream::error::{OrderError, PayloadError, ReadError, SectionPos, StreamPart};
use crate::stream::frame::{
    FLAG_OPTIONAL, FRAME_HEADER_LEN, FRAME_TRAILER_LEN, FrameHeader, KNOWN_FLAGS,
    MAX_OPTIONAL_PAYLOAD,
};
use crate::stream::header::{StreamHeader, StreamVersion};
use crate::stream::kind::SectionKind;
use crate::stream::machine::MachineState;
use crate::stream::mirror::Mirror;
use crate::stream::order::{Order, Step};
use crate::stream::ram::RamPages;
use crate::stream::section::Section;
use crate::stream::wire::{u64_from, usize_from, usize_from_u64};
use vfmig_memory::host_page_size;

/// The reader's buffer once the stream carries bulk data, and so the most it reads ahead of
/// the section it needs: two 1 MiB RAM sections, the size of a core's L2 cache on the
/// development machine, so a section is usually still cached when its checksum is checked
/// (4 MiB measured no better). Larger sections grow it, to at most the largest cap (rounded
/// up to the page size).
pub const READ_BUFFER: usize = 2 << 20;

/// The reader's buffer when it starts: enough for the config and small sections.
pub const INITIAL_BUFFER: usize = 64 << 10;

/// A verified frame: its payload is the `len` bytes at stream offset `payload`.
#[derive(Clone, Copy, Debug)]
struct Frame {
    kind: SectionKind,
    payload: u64,
    len: usize,
    pos: SectionPos,
}

/// Reads a migration stream from `R`: the stream header when created, then one verified
/// section per [`next_section`](Self::next_section), until `End`.
///
/// A section is returned only once all of it was read, its checksum matched, its payload
/// decoded, and it was valid where it is in the stream: a receiver may act on every section
/// it is given. The reader's buffer starts at [`INITIAL_BUFFER`] and grows only when it is
/// full of received bytes: to [`READ_BUFFER`], then by doubling for a section larger than
/// that, to at most the largest section cap (16 MiB and a little, rounded up to the page
/// size). A peer that declares a 16 MiB section and sends 10 bytes makes the reader allocate
/// nothing more ([`buffer_capacity`](Self::buffer_capacity)).
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    inner: R,
    version: StreamVersion,
    /// The buffer: stream offset `p` is at `p % capacity`. None until the first read.
    ring: Option<Mirror>,
    /// Stream bytes received: those in `[consumed, received)` are held, not consumed yet.
    received: u64,
    /// Stream bytes consumed (returned as sections, or skipped).
    consumed: u64,
    sections: u64,
    skipped: u64,
    order: Order,
    broken: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the stream header.
    ///
    /// # Errors
    /// [`ReadError::Header`]: not a vfmig stream, a corrupted header, or a major version
    /// this reader does not know; [`ReadError::Truncated`]; [`ReadError::Io`].
    pub fn new(inner: R) -> Result<StreamReader<R>, ReadError> {
        let mut reader = StreamReader {
            inner,
            version: StreamVersion { major: 0, minor: 0 },
            ring: None,
            received: 0,
            consumed: 0,
            sections: 0,
            skipped: 0,
            order: Order::default(),
            broken: false,
        };
        let len = size_of::<StreamHeader>();
        reader.fill(len, StreamPart::StreamHeader, None)?;
        let at = reader.take(len);
        let header = StreamHeader::read_from_bytes(reader.bytes(at, len)).map_err(|_| {
            ReadError::Truncated {
                offset: 0,
                part: StreamPart::StreamHeader,
                section: None,
            }
        })?;
        reader.version = header.validate()?;
        Ok(reader)
    }

    /// The version of the stream (its minor may be newer than this reader's).
    pub fn version(&self) -> StreamVersion {
        self.version
    }

    /// Bytes consumed so far (the stream header and every section returned or skipped).
    pub fn bytes_read(&self) -> u64 {
        self.consumed
    }

    /// Sections read so far, skipped ones included.
    pub fn sections_read(&self) -> u64 {
        self.sections
    }

    /// Sections of unknown types, flagged optional, that were verified and skipped.
    pub fn sections_skipped(&self) -> u64 {
        self.skipped
    }

    /// The config, once its section was read.
    pub fn config(&self) -> Option<&StreamConfig> {
        self.order.config()
    }

    /// Whether `End` was read.
    pub fn is_finished(&self) -> bool {
        self.order.ended()
    }

    /// The transport.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The transport, e.g. to change its timeouts. Bytes read from it directly are lost to
    /// the stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The transport, and the bytes received from it but not consumed (none if the peer
    /// sent nothing after `End`).
    pub fn into_inner(self) -> (R, Vec<u8>) {
        let left = self.bytes(self.consumed, self.held()).to_vec();
        (self.inner, left)
    }

    /// The size of the reader's buffer now (0 before the first read).
    pub fn buffer_capacity(&self) -> usize {
        self.ring.as_ref().map_or(0, Mirror::capacity)
    }

    /// Reads the next section. After `End`, refuses with [`OrderError::AfterEnd`] without
    /// reading. After any other error, refuses with [`ReadError::Broken`].
    ///
    /// # Errors
    /// [`ReadError`]: the section that failed (index, type, offset) and why.
    pub fn next_section(&mut self) -> Result<Section<'_>, ReadError> {
        if self.broken {
            return Err(ReadError::Broken);
        }
        if self.order.ended() {
            return Err(ReadError::Order {
                pos: SectionPos {
                    index: self.sections,
                    kind: 0,
                    offset: self.consumed,
                },
                source: OrderError::AfterEnd,
            });
        }
        // Any error leaves the stream unusable: a decoding error leaves the reader at a
        // section boundary, but the stream is wrong all the same.
        self.broken = true;
        let frame = self.read_frame()?;
        let payload = self
            .ring
            .as_ref()
            .map(|ring| ring.slice(frame.payload, frame.len))
            .ok_or(ReadError::Broken)?;
        let section = decode(frame, payload, &mut self.order)?;
        self.broken = false;
        Ok(section)
    }

    /// Reads frames until one of a known type, verified; skips optional unknown ones.
    /// Consumes the frame; its payload stays in the buffer until the next call.
    fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            let offset = self.consumed;
            let index = self.sections;
            self.fill(FRAME_HEADER_LEN, StreamPart::FrameHeader, None)?;
            let header = FrameHeader::read_from_bytes(self.bytes(offset, FRAME_HEADER_LEN))
                .map_err(|_| ReadError::Broken)?;
            let pos = SectionPos {
                index,
                kind: header.kind.get(),
                offset,
            };
            let flags = header.flags.get();
            if flags & !KNOWN_FLAGS != 0 {
                return Err(ReadError::Flags { pos, flags });
            }
            let kind = SectionKind::from_wire(pos.kind);
            // Only a type this version does not know may be optional: one that it knows is
            // required, so a stream has a single encoding of each section.
            if kind.is_some() && flags & FLAG_OPTIONAL != 0 {
                return Err(ReadError::Flags { pos, flags });
            }
            let max = match kind {
                Some(kind) => kind.max_payload(),
                None if flags & FLAG_OPTIONAL != 0 => MAX_OPTIONAL_PAYLOAD,
                None => return Err(ReadError::UnknownKind { pos }),
            };
            let len = header.len.get();
            if len > max {
                return Err(ReadError::TooLong { pos, len, max });
            }
            let len = usize_from(len);
            // Caps are far below usize::MAX: these sums do not overflow.
            let frame_len = FRAME_HEADER_LEN + len + FRAME_TRAILER_LEN;
            self.fill(
                frame_len - FRAME_TRAILER_LEN,
                StreamPart::Payload,
                Some(pos),
            )?;
            self.fill(frame_len, StreamPart::Checksum, Some(pos))?;
            let at = self.take(frame_len);
            let frame = self.bytes(at, frame_len);
            let (covered, trailer) = frame
                .split_at_checked(frame_len - FRAME_TRAILER_LEN)
                .ok_or(ReadError::Broken)?;
            let computed = crc32c(covered);
            let found = trailer
                .first_chunk::<4>()
                .map_or(!computed, |bytes| u32::from_le_bytes(*bytes));
            if found != computed {
                return Err(ReadError::Checksum {
                    pos,
                    found,
                    computed,
                });
            }
            self.sections += 1;
            match kind {
                Some(kind) => {
                    return Ok(Frame {
                        kind,
                        payload: at + u64_from(FRAME_HEADER_LEN),
                        len,
                        pos,
                    });
                }
                None => {
                    self.skipped += 1;
                    tracing::debug!(%pos, len, "skipped optional section of unknown type");
                }
            }
        }
    }

    /// Bytes received and not consumed.
    fn held(&self) -> usize {
        usize_from_u64(self.received - self.consumed)
    }

    /// The `len` bytes at stream offset `at`, which are held or were just consumed (and not
    /// overwritten by a read since); empty before the first read.
    fn bytes(&self, at: u64, len: usize) -> &[u8] {
        self.ring.as_ref().map_or(&[], |ring| ring.slice(at, len))
    }

    /// Consumes the next `len` bytes, which [`fill`](Self::fill) made present; returns their
    /// stream offset. They stay in the buffer until the next read.
    fn take(&mut self, len: usize) -> u64 {
        let at = self.consumed;
        self.consumed += u64_from(len.min(self.held()));
        at
    }

    /// Reads until at least `len` bytes are held; the end of the stream is
    /// [`ReadError::Truncated`]. Each read asks for all the free space of the buffer, which
    /// grows ([`grow`](Self::grow)) only once it is full of received bytes and `len` is more.
    fn fill(
        &mut self,
        len: usize,
        part: StreamPart,
        section: Option<SectionPos>,
    ) -> Result<(), ReadError> {
        while self.held() < len {
            let offset = self.received;
            if self.held() == self.buffer_capacity() {
                self.grow(len)
                    .map_err(|source| ReadError::Io { offset, source })?;
            }
            let free = self.buffer_capacity() - self.held();
            let Some(ring) = self.ring.as_mut() else {
                return Err(ReadError::Broken);
            };
            match self.inner.read(ring.slice_mut(offset, free)) {
                Ok(0) => {
                    return Err(ReadError::Truncated {
                        offset,
                        part,
                        section,
                    });
                }
                Ok(n) => self.received += u64_from(n.min(free)),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ReadError::Io { offset, source }),
            }
        }
        Ok(())
    }

    /// Replaces the buffer, full of held bytes, with a larger one holding the same bytes:
    /// [`INITIAL_BUFFER`] first, then [`READ_BUFFER`], then twice the size, never more than
    /// `len` rounded up to the page size.
    fn grow(&mut self, len: usize) -> io::Result<()> {
        let capacity = self.buffer_capacity();
        let target = if capacity < INITIAL_BUFFER {
            INITIAL_BUFFER
        } else if capacity < READ_BUFFER {
            READ_BUFFER
        } else {
            len.next_multiple_of(host_page_size())
                .min(capacity.saturating_mul(2))
        };
        let mut grown = Mirror::new(target)?;
        let held = self.held();
        grown
            .slice_mut(self.consumed, held)
            .copy_from_slice(self.bytes(self.consumed, held));
        self.ring = Some(grown);
        Ok(())
    }
}

/// Decodes a verified frame's payload and checks its place in the stream.
fn decode<'a>(
    frame: Frame,
    payload: &'a [u8],
    order: &'a mut Order,
) -> Result<Section<'a>, ReadError> {
    let pos = frame.pos;
    let malformed = |source: PayloadError| ReadError::Malformed { pos, source };
    let misplaced = |source: OrderError| ReadError::Order { pos, source };
    let section = match frame.kind {
        SectionKind::Config => {
            order.check(Step::Config).map_err(misplaced)?;
            let config = StreamConfig::decode(payload).map_err(malformed)?;
            return Ok(Section::Config(
                order.accept_config(config).map_err(misplaced)?,
            ));
        }
        SectionKind::RamPages => {
            order.accept(Step::RamPages).map_err(misplaced)?;
            let Some(config) = order.config() else {
                return Err(misplaced(OrderError::ConfigNotFirst {
                    kind: SectionKind::RamPages,
                }));
            };
            Section::RamPages(RamPages::decode(payload, config.ram()).map_err(malformed)?)
        }
        SectionKind::DeviceChunk => {
            let chunk = DeviceChunk::decode(payload).map_err(malformed)?;
            order
                .accept(Step::DeviceChunk(chunk.device))
                .map_err(misplaced)?;
            Section::DeviceChunk(chunk)
        }
        SectionKind::DeviceConfig => {
            let config = DeviceConfig::decode(payload).map_err(malformed)?;
            order
                .accept(Step::DeviceConfig(config.device))
                .map_err(misplaced)?;
            Section::DeviceConfig(config)
        }
        SectionKind::Machine => {
            let machine = MachineState::decode(payload).map_err(malformed)?;
            order.accept(Step::Machine).map_err(misplaced)?;
            Section::Machine(machine)
        }
        SectionKind::Iteration => {
            let iteration = Iteration::decode(payload).map_err(malformed)?;
            order.accept(Step::Iteration).map_err(misplaced)?;
            Section::Iteration(iteration)
        }
        SectionKind::End => {
            let end = End::decode(payload).map_err(malformed)?;
            let mismatch = |what, declared, actual| OrderError::EndMismatch {
                what,
                declared,
                actual,
            };
            if end.sections != pos.index {
                return Err(misplaced(mismatch("sections", end.sections, pos.index)));
            }
            if end.bytes != pos.offset {
                return Err(misplaced(mismatch("bytes", end.bytes, pos.offset)));
            }
            order.accept(Step::End).map_err(misplaced)?;
            Section::End(end)
        }
    };
    Ok(section)
}
