//! The type of a section: its wire number and its name. The cap on each type's payload is
//! with the framing ([`SectionKind::max_payload`], in `frame.rs`), which gathers the caps
//! the section modules define.

use std::fmt;

/// The type of a section. Numbers are wire values and never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
pub enum SectionKind {
    /// The VM layout: RAM regions and devices. Always the first section.
    Config = 1,
    /// A table of RAM runs and the data of the non-zero ones.
    RamPages = 2,
    /// One chunk of a device's migration data, exactly as the device produced it.
    DeviceChunk = 3,
    /// A device's configuration, after its last data chunk.
    DeviceConfig = 4,
    /// The start of a pre-copy iteration (statistics only).
    Iteration = 5,
    /// The end of the stream, with counts that detect truncation.
    End = 6,
    /// The guest's CPUs and interrupt controllers, once, before any device's configuration.
    Machine = 7,
}

impl SectionKind {
    /// Every kind, in wire order.
    pub const ALL: [SectionKind; 7] = [
        SectionKind::Config,
        SectionKind::RamPages,
        SectionKind::DeviceChunk,
        SectionKind::DeviceConfig,
        SectionKind::Iteration,
        SectionKind::End,
        SectionKind::Machine,
    ];

    /// The kind of a wire value, if this version knows it.
    pub fn from_wire(value: u16) -> Option<SectionKind> {
        SectionKind::ALL
            .into_iter()
            .find(|kind| kind.to_wire() == value)
    }

    /// The wire value.
    pub const fn to_wire(self) -> u16 {
        self as u16
    }

    /// A short lower-case name, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            SectionKind::Config => "config",
            SectionKind::RamPages => "ram-pages",
            SectionKind::DeviceChunk => "device-chunk",
            SectionKind::DeviceConfig => "device-config",
            SectionKind::Iteration => "iteration",
            SectionKind::End => "end",
            SectionKind::Machine => "machine",
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
