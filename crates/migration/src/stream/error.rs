//! Errors of the stream: one enum per direction ([`ReadError`], [`WriteError`]), one for the
//! payload of a section ([`PayloadError`]) and one for the order of sections
//! ([`OrderError`]), shared by both directions. Every error of the reader names the section
//! (index, type) and the byte offset where it starts; an I/O error keeps its `io::Error`, and
//! so its errno.

use std::fmt;
use std::io;

use vfmig_memory::Gpa;

use crate::stream::header::HeaderError;
use crate::stream::kind::SectionKind;
use crate::types::{DeviceIndex, STREAM_PAGE_SIZE};

/// Where a section starts: its index (the stream's first section is 0), its type as found on
/// the wire, and the byte offset of its frame header from the start of the stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SectionPos {
    /// Sections before this one.
    pub index: u64,
    /// The type field, known or not.
    pub kind: u16,
    /// Bytes of the stream before this section.
    pub offset: u64,
}

impl fmt::Display for SectionPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match SectionKind::from_wire(self.kind) {
            Some(kind) => write!(f, "section #{} ({kind})", self.index)?,
            None => write!(f, "section #{} (unknown type {})", self.index, self.kind)?,
        }
        write!(f, " at byte {}", self.offset)
    }
}

/// What was being read when the stream ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StreamPart {
    /// The 16-byte stream header.
    StreamHeader,
    /// A section's 8-byte frame header.
    FrameHeader,
    /// A section's payload.
    Payload,
    /// A section's checksum.
    Checksum,
}

impl fmt::Display for StreamPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamPart::StreamHeader => "the stream header",
            StreamPart::FrameHeader => "a section header",
            StreamPart::Payload => "the payload",
            StreamPart::Checksum => "the checksum",
        })
    }
}

/// A section payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload ends before a field or a declared length.
    #[error("payload too short: {needed} more bytes needed, {available} left")]
    Short {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Bytes left over after the last field.
    #[error("{extra} bytes left over after the payload")]
    Trailing {
        /// Bytes left over.
        extra: usize,
    },
    /// A reserved field that is not zero.
    #[error("reserved field `{field}` is {value:#x}, must be 0")]
    Reserved {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A fixed-size payload of the wrong size.
    #[error("{kind} payload of {found} bytes, must be {expected}")]
    Length {
        /// The section kind.
        kind: SectionKind,
        /// The size of its payload.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// A device chunk phase this version does not know.
    #[error("unknown device chunk phase {value}")]
    UnknownPhase {
        /// The phase field.
        value: u16,
    },
    /// An invalid VM configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An invalid RAM pages table.
    #[error(transparent)]
    Ram(#[from] RamSectionError),
}

/// Why a VM configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// More regions than `MAX_REGIONS`.
    #[error("{count} RAM regions, at most {max} allowed")]
    TooManyRegions {
        /// The number of regions.
        count: u64,
        /// `MAX_REGIONS`.
        max: usize,
    },
    /// A region that is empty or not page-aligned in address or size.
    #[error("RAM region at {gpa} of {size:#x} bytes is empty or not page-aligned")]
    BadRegion {
        /// The region's address.
        gpa: Gpa,
        /// The region's size.
        size: u64,
    },
    /// A region whose end does not fit in 64 bits.
    #[error("RAM region at {gpa} of {size:#x} bytes wraps around the address space")]
    RegionOverflow {
        /// The region's address.
        gpa: Gpa,
        /// The region's size.
        size: u64,
    },
    /// A region that starts inside the one before it.
    #[error("RAM region at {gpa} overlaps the region before it")]
    RegionsOverlap {
        /// The later region's address.
        gpa: Gpa,
    },
    /// A region listed after one at a higher address (the encoding lists them sorted).
    #[error("RAM region at {gpa} is listed after a region above it")]
    RegionsUnsorted {
        /// The region out of place.
        gpa: Gpa,
    },
    /// More devices than `MAX_DEVICES`.
    #[error("{count} devices, at most {max} allowed")]
    TooManyDevices {
        /// The number of devices.
        count: u64,
        /// `MAX_DEVICES`.
        max: usize,
    },
    /// Two devices with the same id.
    #[error("{id} appears twice")]
    DuplicateDevice {
        /// The id.
        id: DeviceIndex,
    },
    /// A kind name that is empty or longer than `MAX_KIND_LEN`.
    #[error("{id}: kind name of {len} bytes, must be 1 to {max}")]
    BadKind {
        /// The device.
        id: DeviceIndex,
        /// The name's length.
        len: usize,
        /// `MAX_KIND_LEN`.
        max: usize,
    },
    /// A kind name that is not UTF-8.
    #[error("{id}: kind name is not UTF-8")]
    KindNotUtf8 {
        /// The device.
        id: DeviceIndex,
    },
    /// A page size other than 4 KiB.
    #[error("page size {found}, only {STREAM_PAGE_SIZE} is supported")]
    PageSize {
        /// The page size declared.
        found: u32,
    },
    /// A configuration whose encoding exceeds the section cap.
    #[error("configuration encodes to {bytes} bytes, the cap is {max}")]
    TooLarge {
        /// The encoded size.
        bytes: u64,
        /// `MAX_CONFIG_PAYLOAD`.
        max: u32,
    },
}

/// Why a RAM run or table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RamSectionError {
    /// More table entries than `MAX_RUNS`.
    #[error("{runs} runs in one section, at most {max} allowed")]
    TooManyRuns {
        /// The count in the header.
        runs: u32,
        /// `MAX_RUNS`.
        max: usize,
    },
    /// A run that is empty or not page-aligned.
    #[error("run of {pages} pages at {gpa} is empty or not page-aligned")]
    BadRun {
        /// Its address.
        gpa: Gpa,
        /// Its pages.
        pages: u64,
    },
    /// A run with flag bits other than `RUN_ZERO`.
    #[error("run at {gpa} has unknown flags {flags:#x}")]
    RunFlags {
        /// Its address.
        gpa: Gpa,
        /// Its flags.
        flags: u32,
    },
    /// A run not inside one RAM region of the configuration.
    #[error("run of {pages} pages at {gpa} is not inside one RAM region")]
    OutsideRam {
        /// Its address.
        gpa: Gpa,
        /// Its pages.
        pages: u64,
    },
    /// The data is not exactly the pages of the data runs.
    #[error("table declares {declared_pages} pages of data, payload has {data_bytes} bytes")]
    DataLength {
        /// Pages of the runs without `RUN_ZERO`.
        declared_pages: u64,
        /// Bytes of data present.
        data_bytes: u64,
    },
}

/// A section that is valid in itself but not where it is in the stream. Both the writer
/// (before it sends anything) and the reader check these rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The first section is not `Config`, or one that needs it comes before it.
    #[error("{kind} section before the config section")]
    ConfigNotFirst {
        /// The section found first.
        kind: SectionKind,
    },
    /// A second `Config`.
    #[error("second config section")]
    DuplicateConfig,
    /// A device section for a device the config does not list.
    #[error("{device} is not in the config")]
    UnknownDevice {
        /// The device named.
        device: DeviceIndex,
    },
    /// A device chunk or config after that device's config (its last section).
    #[error("{kind} section for {device} after its device-config section")]
    AfterDeviceConfig {
        /// The section found.
        kind: SectionKind,
        /// The device.
        device: DeviceIndex,
    },
    /// `End` while a device of the config has not sent its `DeviceConfig`.
    #[error("end of stream before the device-config section of {device}")]
    MissingDeviceConfig {
        /// The first device missing.
        device: DeviceIndex,
    },
    /// A second `Machine`.
    #[error("second machine section")]
    DuplicateMachine,
    /// `Machine` after a device's `DeviceConfig`.
    #[error("machine section after the device-config section of {device}")]
    MachineAfterDeviceConfig {
        /// A device whose config came first.
        device: DeviceIndex,
    },
    /// A section after `End`.
    #[error("section after the end of the stream")]
    AfterEnd,
    /// `End` declares a section count or byte count other than what came before it.
    #[error("end section declares {declared} {what}, the stream had {actual}")]
    EndMismatch {
        /// `"sections"` or `"bytes"`.
        what: &'static str,
        /// What `End` says.
        declared: u64,
        /// What the reader counted.
        actual: u64,
    },
}

/// A migration stream that cannot be read. Nothing of a section is returned unless all of
/// it was read and its checksum matched.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The transport failed.
    #[error("reading the migration stream at byte {offset}: {source}")]
    Io {
        /// Bytes read before the failure.
        offset: u64,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// A bad stream header.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The stream ended inside the header, a section, or before `End`.
    #[error("migration stream truncated at byte {offset} in {part}{}", fmt_in(.section))]
    Truncated {
        /// Bytes read.
        offset: u64,
        /// What was being read.
        part: StreamPart,
        /// The section being read, if its header was read.
        section: Option<SectionPos>,
    },
    /// A section of a type this version does not know, not flagged optional.
    #[error("{pos}: unknown section type, not flagged optional")]
    UnknownKind {
        /// The section.
        pos: SectionPos,
    },
    /// A length above the cap of the section's type; refused before reading the payload.
    #[error("{pos}: length {len} above the cap of {max} bytes")]
    TooLong {
        /// The section.
        pos: SectionPos,
        /// The length field.
        len: u32,
        /// The cap of the type.
        max: u32,
    },
    /// The checksum does not match.
    #[error("{pos}: checksum {found:#010x} does not match the computed {computed:#010x}")]
    Checksum {
        /// The section.
        pos: SectionPos,
        /// The checksum received.
        found: u32,
        /// The checksum of what was received.
        computed: u32,
    },
    /// Flag bits this version does not define, or `FLAG_OPTIONAL` on a section of a type it
    /// defines (every such type is required: a stream that marks one optional is not ours).
    #[error("{pos}: flags {flags:#06x} not allowed on this section")]
    Flags {
        /// The section.
        pos: SectionPos,
        /// The flags field.
        flags: u16,
    },
    /// A payload that does not decode.
    #[error("{pos}: {source}")]
    Malformed {
        /// The section.
        pos: SectionPos,
        /// Why.
        #[source]
        source: PayloadError,
    },
    /// An earlier error left the reader inside a section: nothing more can be read.
    #[error("an earlier error left the migration stream unreadable")]
    Broken,
    /// A section out of order.
    #[error("{pos}: {source}")]
    Order {
        /// The section.
        pos: SectionPos,
        /// Which rule it breaks.
        #[source]
        source: OrderError,
    },
}

fn fmt_in(section: &Option<SectionPos>) -> String {
    section.map_or_else(String::new, |pos| format!(" of {pos}"))
}

/// A guest memory access that failed while reading pages to send or writing received ones.
#[derive(Debug, thiserror::Error)]
#[error("{} {len:#x} bytes of guest memory at {gpa}: {source}", if *.write { "writing" } else { "reading" })]
pub struct MemoryError {
    /// Whether it was a write (receiver) or a read (sender).
    pub write: bool,
    /// Where.
    pub gpa: Gpa,
    /// How many bytes.
    pub len: u64,
    /// The error the memory reported.
    #[source]
    pub source: io::Error,
}

/// A section that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The transport failed.
    #[error("writing the migration stream at byte {offset}: {source}")]
    Io {
        /// Bytes written (or buffered) before the failure.
        offset: u64,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// A payload above the cap of its type.
    #[error("{kind} payload of {len} bytes is above the cap of {max}")]
    TooLong {
        /// The section kind.
        kind: SectionKind,
        /// The payload's length.
        len: u64,
        /// The cap of the type.
        max: u32,
    },
    /// A section out of order.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// An earlier write failed part-way: the stream is unusable.
    #[error("an earlier write failed; the migration stream is unusable")]
    Broken,
    /// A run of pages that is not valid for the VM's RAM layout.
    #[error(transparent)]
    Ram(#[from] RamSectionError),
    /// Guest memory could not be read.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}
