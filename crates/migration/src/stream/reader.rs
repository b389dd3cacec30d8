//! [`StreamReader`]: the receiver's half of the stream.
//!
//! The reader owns one buffer and reads into all of its free tail at once, so each `read`
//! takes everything the transport has (like a plain copy into a large buffer), not one
//! section at a time: on loopback TCP, reading a section at a time costs a syscall and an
//! acknowledgement per piece, which made the receiver the bottleneck. Sections are returned
//! in place, as slices of that buffer; when the next section does not fit behind the
//! current position, the bytes already received of it move to the front (less than one
//! section, every few sections).

use std::io::{self, Read};

use zerocopy::FromBytes;

use crate::crc::crc32c;
use crate::stream::config::VmConfig;
use crate::stream::device::{DeviceChunk, DeviceConfig, End, Iteration};
use crate::stream::error::{OrderError, PayloadError, ReadError, SectionPos, StreamPart};
use crate::stream::frame::{
    FLAG_OPTIONAL, FRAME_HEADER_LEN, FRAME_TRAILER_LEN, FrameHeader, KNOWN_FLAGS,
    MAX_OPTIONAL_PAYLOAD, SectionKind,
};
use crate::stream::header::{StreamHeader, Version};
use crate::stream::order::{Order, Step};
use crate::stream::ram::RamPages;
use crate::stream::section::Section;
use crate::stream::wire::{u64_from, usize_from};

/// The reader's buffer once the stream carries bulk data, and so the most it reads ahead of
/// the section it needs: four 1 MiB RAM sections. Larger sections grow it, to at most the
/// largest cap.
pub const READ_BUFFER: usize = 4 << 20;

/// The reader's buffer when it starts: enough for the config and small sections.
pub const INITIAL_BUFFER: usize = 64 << 10;

/// A verified frame: its payload is `buf[payload.0..payload.1]`.
#[derive(Clone, Copy, Debug)]
struct Frame {
    kind: SectionKind,
    payload: (usize, usize),
    pos: SectionPos,
}

/// Reads a migration stream from `R`: the stream header when created, then one verified
/// section per [`next_section`](Self::next_section), until `End`.
///
/// A section is returned only once all of it was read, its checksum matched, its payload
/// decoded, and it was valid where it is in the stream: a receiver may act on every section
/// it is given. The reader's buffer starts at [`INITIAL_BUFFER`] and grows only when it is
/// full of received bytes: to [`READ_BUFFER`], then by doubling for a section larger than
/// that, to at most the largest section cap (16 MiB and a little). A peer that declares a
/// 16 MiB section and sends 10 bytes makes the reader allocate nothing more.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    inner: R,
    version: Version,
    /// Received bytes: `buf[start..end]` are not consumed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream bytes before `buf[start]`.
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
            version: Version { major: 0, minor: 0 },
            buf: Vec::new(),
            start: 0,
            end: 0,
            consumed: 0,
            sections: 0,
            skipped: 0,
            order: Order::default(),
            broken: false,
        };
        let len = size_of::<StreamHeader>();
        reader.fill(len, StreamPart::StreamHeader, None)?;
        let bytes = reader.take(len);
        let header = StreamHeader::read_from_bytes(bytes).map_err(|_| ReadError::Truncated {
            offset: 0,
            part: StreamPart::StreamHeader,
            section: None,
        })?;
        reader.version = header.validate()?;
        Ok(reader)
    }

    /// The version of the stream (its minor may be newer than this reader's).
    pub fn version(&self) -> Version {
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
    pub fn config(&self) -> Option<&VmConfig> {
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

    /// The transport, and the bytes received from it but not consumed (none if the peer
    /// sent nothing after `End`).
    pub fn into_inner(self) -> (R, Vec<u8>) {
        let left = self
            .buf
            .get(self.start..self.end)
            .unwrap_or_default()
            .to_vec();
        (self.inner, left)
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
            .buf
            .get(frame.payload.0..frame.payload.1)
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
            let header = self
                .buf
                .get(self.start..self.start + FRAME_HEADER_LEN)
                .and_then(|bytes| FrameHeader::read_from_bytes(bytes).ok())
                .ok_or(ReadError::Broken)?;
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
            let start = self.start;
            let frame = self.take(frame_len);
            let (covered, trailer) = frame.split_at(frame_len - FRAME_TRAILER_LEN);
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
            let payload_start = start + FRAME_HEADER_LEN;
            match kind {
                Some(kind) => {
                    return Ok(Frame {
                        kind,
                        payload: (payload_start, payload_start + len),
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

    /// Consumes the next `len` bytes, which [`fill`](Self::fill) made present, and returns
    /// them.
    fn take(&mut self, len: usize) -> &[u8] {
        let start = self.start;
        self.start = (start + len).min(self.end);
        self.consumed += u64_from(self.start - start);
        self.buf.get(start..self.start).unwrap_or_default()
    }

    /// Reads until `buf[start..]` holds at least `len` bytes; the end of the stream is
    /// [`ReadError::Truncated`]. Each read asks for all the free space behind what is held.
    fn fill(
        &mut self,
        len: usize,
        part: StreamPart,
        section: Option<SectionPos>,
    ) -> Result<(), ReadError> {
        while self.end - self.start < len {
            if self.start + len > self.buf.len() {
                self.make_room(len);
            }
            let Some(space) = self.buf.get_mut(self.end..) else {
                return Err(ReadError::Broken);
            };
            match self.inner.read(space) {
                Ok(0) => {
                    return Err(ReadError::Truncated {
                        offset: self.consumed + u64_from(self.end - self.start),
                        part,
                        section,
                    });
                }
                Ok(n) => self.end = (self.end + n).min(self.buf.len()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ReadError::Io {
                        offset: self.consumed + u64_from(self.end - self.start),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Makes room for `len` bytes from `start` on, with free space behind what is held:
    /// moves the held bytes to the front, and if the buffer is then full of received bytes,
    /// grows it: from [`INITIAL_BUFFER`] to [`READ_BUFFER`], then by doubling, never past
    /// `len`. So the buffer grows only once it is full of bytes the peer sent. A fresh
    /// zeroed allocation (`calloc`, pages mapped lazily) is cheaper than `Vec::resize`'s
    /// fill.
    fn make_room(&mut self, len: usize) {
        let held = self.end - self.start;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = held;
        }
        if self.end == self.buf.len() {
            let target = if self.buf.len() < INITIAL_BUFFER {
                INITIAL_BUFFER
            } else if self.buf.len() < READ_BUFFER {
                READ_BUFFER
            } else {
                len.min(self.buf.len().saturating_mul(2))
            };
            let mut grown = vec![0u8; target];
            if let (Some(to), Some(from)) = (grown.get_mut(..held), self.buf.get(..held)) {
                to.copy_from_slice(from);
            }
            self.buf = grown;
        }
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
            let config = VmConfig::decode(payload).map_err(malformed)?;
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
