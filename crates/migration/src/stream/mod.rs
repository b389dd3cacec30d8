//! The migration stream: a versioned, checksummed, size-bounded sequence of typed sections.
//!
//! ```text
//!  stream   = header section* end
//!  header   = "VFMIGSTR" major:u16 minor:u16 crc32c:u32            (16 bytes)
//!  section  = type:u16 flags:u16 length:u32 payload crc32c:u32     (12 + length bytes)
//!             crc32c over type, flags, length and payload
//! ```
//!
//! All integers are little-endian. See [`header`], [`frame`], [`kind`] and the module of each payload
//! ([`config`], [`ram`], [`device`]) for their layouts, and the crate documentation for the
//! whole picture.
//!
//! * [`StreamWriter`] writes a stream: [`StreamWriter::write_config`] first, then RAM
//!   ([`StreamWriter::write_ram`] reads guest memory and elides zero pages), device chunks,
//!   iteration markers and device configs in any order the rules below allow, then
//!   [`StreamWriter::finish`].
//! * [`StreamReader`] reads one: [`StreamReader::next_section`] returns each verified
//!   [`Section`], borrowing the reader's buffer, until [`Section::End`].
//!
//! # Order
//!
//! Checked the same way by the writer (before it sends a section) and the reader (before it
//! returns one), so a sender bug fails at the source with the same error the receiver would
//! give ([`OrderError`]):
//!
//! 1. `Config` comes first, once.
//! 2. A device section names a device of the config; after a device's `DeviceConfig`
//!    nothing more of that device comes.
//! 3. `End` comes last, once every device of the config has sent its `DeviceConfig`, and
//!    declares how many sections and bytes came before it.
//!
//! RAM pages, chunks of different devices and iteration markers interleave freely between.

pub mod config;
pub mod device;
pub mod error;
pub mod frame;
pub mod header;
pub mod kind;
pub mod machine;
mod mirror;
mod order;
pub mod ram;
mod ram_encode;
mod reader;
mod section;
mod wire;
mod writer;

pub use config::{ConfigError, DeviceDesc, RamLayout, RegionDesc, StreamConfig};
pub use device::{DeviceChunk, DeviceConfig, End, Iteration, Phase};
pub use error::{
    MemoryError, OrderError, PayloadError, ReadError, SectionPos, StreamPart, WriteError,
};
pub use frame::{FLAG_OPTIONAL, encode_frame};
pub use header::{CURRENT_VERSION, HeaderError, MAGIC, StreamHeader, StreamVersion};
pub use kind::SectionKind;
pub use machine::{MAX_MACHINE, MachineState};
pub use ram::{
    MAX_DATA_PAGES, MAX_RUNS, RUN_ZERO, RamPages, RamRun, RamRuns, RamSectionError,
    ReadGuestMemory, RunEntry, WriteGuestMemory, is_zero_page,
};
pub use ram_encode::{BATCH_PAGES, DEFAULT_SECTION_PAGES, EncodeError, RamEncoder, RamStats};
pub use reader::{INITIAL_BUFFER, READ_BUFFER, StreamReader};
pub use section::Section;
pub use writer::{StreamWriter, WRITE_BUFFER};
