//! Section framing: the 8-byte frame header, the per-type length caps, the CRC trailer.
//!
//! ```text
//!  0      2       4        8                8+len      12+len
//!  +------+-------+--------+-----------------+----------+
//!  | type | flags | length | payload         | crc32c   |
//!  +------+-------+--------+-----------------+----------+
//!  \______________ covered by the crc ______/
//! ```
//!
//! `length` is the payload's, without header and trailer. It is checked against the cap of
//! `type` ([`SectionKind::max_payload`]) before a byte of payload is read, so a peer can make
//! a reader allocate at most the cap of the largest type, 16 MiB and a little.

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::crc::{crc32c, crc32c_append};
use crate::stream::config::MAX_CONFIG_PAYLOAD;
use crate::stream::device::{DEVICE_CHUNK_HEADER_LEN, DEVICE_CONFIG_HEADER_LEN};
use crate::stream::device::{MARKER_PAYLOAD_LEN, MAX_DEVICE_CHUNK, MAX_DEVICE_CONFIG};
use crate::stream::kind::SectionKind;
use crate::stream::machine::{MACHINE_HEADER_LEN, MAX_MACHINE};
use crate::stream::ram::MAX_RAM_PAYLOAD;

/// Flag of a section that a reader which does not know its type skips (after checking its
/// checksum) instead of refusing the stream. Only a newer minor version sends unknown types,
/// and only ones that an older reader can do without.
pub const FLAG_OPTIONAL: u16 = 1 << 15;

/// The flags this version defines; a section with any other flag set is refused.
pub const KNOWN_FLAGS: u16 = FLAG_OPTIONAL;

/// The cap on a section of an unknown type flagged [`FLAG_OPTIONAL`], which the reader reads
/// only to verify and drop.
pub const MAX_OPTIONAL_PAYLOAD: u32 = 1 << 20;

/// Bytes of the frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// Bytes of the CRC trailer.
pub const FRAME_TRAILER_LEN: usize = 4;

/// Bytes a section adds to the stream besides its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + FRAME_TRAILER_LEN;

impl SectionKind {
    /// The largest payload a section of this kind may have:
    ///
    /// | kind | cap | why |
    /// |---|---|---|
    /// | `Config` | 1 MiB | layout, not data |
    /// | `RamPages` | 8 MiB of pages + 8 + 16 × 8192 bytes of table | room for fewer, larger sections than the encoder's 1 MiB default; small enough to stay in cache between checksum and apply |
    /// | `DeviceChunk` | 16 MiB + 16 | one transaction of a device's data area; devices size it, the sender reads at most this much at once |
    /// | `DeviceConfig` | 1 MiB + 8 | configuration space and small state, not data |
    /// | `Iteration`, `End` | 16 | fixed layout |
    pub const fn max_payload(self) -> u32 {
        match self {
            SectionKind::Config => MAX_CONFIG_PAYLOAD,
            SectionKind::RamPages => MAX_RAM_PAYLOAD,
            SectionKind::DeviceChunk => MAX_DEVICE_CHUNK + DEVICE_CHUNK_HEADER_LEN,
            SectionKind::DeviceConfig => MAX_DEVICE_CONFIG + DEVICE_CONFIG_HEADER_LEN,
            SectionKind::Iteration | SectionKind::End => MARKER_PAYLOAD_LEN,
            SectionKind::Machine => MAX_MACHINE + MACHINE_HEADER_LEN,
        }
    }
}

/// The largest payload of any known section kind: what a reader's buffer can grow to.
pub const MAX_PAYLOAD: u32 = {
    let mut max = MAX_OPTIONAL_PAYLOAD;
    let mut i = 0;
    while i < SectionKind::ALL.len() {
        let cap = SectionKind::ALL[i].max_payload();
        if cap > max {
            max = cap;
        }
        i += 1;
    }
    max
};

/// The frame header of a section, as it is on the wire.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    /// The [`SectionKind`] wire value (or an unknown one).
    pub kind: U16,
    /// Flags: [`FLAG_OPTIONAL`]; other bits are reserved and must be 0.
    pub flags: U16,
    /// Bytes of payload.
    pub len: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_LEN);

impl FrameHeader {
    /// A header for a payload of `len` bytes.
    pub fn new(kind: u16, flags: u16, len: u32) -> FrameHeader {
        FrameHeader {
            kind: U16::new(kind),
            flags: U16::new(flags),
            len: U32::new(len),
        }
    }

    /// The checksum of this header followed by `payload`, given in parts.
    pub fn checksum(&self, payload: &[&[u8]]) -> u32 {
        payload.iter().fold(crc32c(self.as_bytes()), |crc, part| {
            crc32c_append(crc, part)
        })
    }
}

/// One whole frame (header, payload, trailer) as bytes: for tests, fuzz seeds and hand-made
/// streams. A writer does not need it.
///
/// # Panics
/// Never; a payload longer than `u32::MAX` gets a length field of `u32::MAX`, which every
/// reader refuses.
pub fn encode_frame(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let header = FrameHeader::new(kind, flags, len);
    let crc = header.checksum(&[payload]);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len() + FRAME_TRAILER_LEN);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_wire_values() {
        for kind in SectionKind::ALL {
            assert_eq!(SectionKind::from_wire(kind.to_wire()), Some(kind));
        }
        assert_eq!(SectionKind::from_wire(0), None);
        assert_eq!(SectionKind::from_wire(8), None);
    }

    #[test]
    fn largest_cap_is_the_device_chunk() {
        assert_eq!(MAX_PAYLOAD, SectionKind::DeviceChunk.max_payload());
        assert_eq!(MAX_PAYLOAD, (16 << 20) + 16);
    }
}
