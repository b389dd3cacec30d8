//! [`Section`]: one decoded, checksum-verified section, borrowing the reader's buffer.

use crate::stream::config::StreamConfig;
use crate::stream::device::{DeviceChunk, DeviceConfig, End, Iteration};
use crate::stream::kind::SectionKind;
use crate::stream::machine::MachineState;
use crate::stream::ram::RamPages;

/// A section of the stream. The reader returns it borrowing its buffer (no copy, no
/// allocation per section); the writer takes it by reference.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section<'a> {
    /// The VM layout; always the first section.
    Config(&'a StreamConfig),
    /// RAM runs and their data, checked against the config's layout.
    RamPages(RamPages<'a>),
    /// One chunk of a device's migration data.
    DeviceChunk(DeviceChunk<'a>),
    /// A device's configuration; its last section.
    DeviceConfig(DeviceConfig<'a>),
    /// The start of a pre-copy iteration.
    Iteration(Iteration),
    /// The end of the stream.
    End(End),
    /// The guest's CPUs and interrupt controllers.
    Machine(MachineState<'a>),
}

impl Section<'_> {
    /// The section's type.
    pub fn kind(&self) -> SectionKind {
        match self {
            Section::Config(_) => SectionKind::Config,
            Section::RamPages(_) => SectionKind::RamPages,
            Section::DeviceChunk(_) => SectionKind::DeviceChunk,
            Section::DeviceConfig(_) => SectionKind::DeviceConfig,
            Section::Iteration(_) => SectionKind::Iteration,
            Section::End(_) => SectionKind::End,
            Section::Machine(_) => SectionKind::Machine,
        }
    }
}
