//! The device sections (`DeviceChunk`, `DeviceConfig`) and the two fixed-size markers
//! (`Iteration`, `End`).
//!
//! ```text
//!  DeviceChunk    device u32 | phase u16 | reserved u16 = 0 | iteration u64 | data ...
//!  DeviceConfig   device u32 | reserved u32 = 0 | config ...
//!  Iteration      number u64 | pages u64
//!  End            sections u64 | bytes u64
//! ```
//!
//! A device chunk is one transaction of the device's migration data (one `data_size` read
//! on the source), carried whole: the destination writes it back as one transaction of the
//! same size, so the stream never merges or splits chunks. A device's `DeviceConfig` comes
//! after its last chunk, as in QEMU: configuration that depends on the restored state (e.g.
//! MSI-X routing) is applied last.

use std::fmt;

use serde::{Deserialize, Serialize};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::stream::error::PayloadError;
use crate::stream::kind::SectionKind;
use crate::stream::wire::{Cursor, reserved_zero};
use crate::types::DeviceIndex;

/// The largest device chunk: 16 MiB, more than any device data area the sender reads from.
pub const MAX_DEVICE_CHUNK: u32 = 16 << 20;

/// The largest device configuration: 1 MiB.
pub const MAX_DEVICE_CONFIG: u32 = 1 << 20;

/// Bytes of the `DeviceChunk` header.
pub const DEVICE_CHUNK_HEADER_LEN: u32 = 16;

/// Bytes of the `DeviceConfig` header.
pub const DEVICE_CONFIG_HEADER_LEN: u32 = 8;

/// Bytes of an `Iteration` or `End` payload.
pub const MARKER_PAYLOAD_LEN: u32 = 16;

/// When a device chunk was produced.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Phase {
    /// While the VM ran (device state `PRE_COPY`).
    PreCopy,
    /// After the VM stopped (device state `STOP_COPY`).
    StopCopy,
}

impl Phase {
    const fn to_wire(self) -> u16 {
        match self {
            Phase::PreCopy => 0,
            Phase::StopCopy => 1,
        }
    }

    fn from_wire(value: u16) -> Result<Phase, PayloadError> {
        match value {
            0 => Ok(Phase::PreCopy),
            1 => Ok(Phase::StopCopy),
            _ => Err(PayloadError::UnknownPhase { value }),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::PreCopy => "pre-copy",
            Phase::StopCopy => "stop-copy",
        })
    }
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DeviceChunkHeader {
    device: U32,
    phase: U16,
    reserved: U16,
    iteration: U64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DeviceConfigHeader {
    device: U32,
    reserved: U32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MarkerWire {
    first: U64,
    second: U64,
}

const _: () = assert!(size_of::<DeviceChunkHeader>() == DEVICE_CHUNK_HEADER_LEN as usize);
const _: () = assert!(size_of::<DeviceConfigHeader>() == DEVICE_CONFIG_HEADER_LEN as usize);
const _: () = assert!(size_of::<MarkerWire>() == MARKER_PAYLOAD_LEN as usize);

/// One chunk of a device's migration data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceChunk<'a> {
    /// The device.
    pub device: DeviceIndex,
    /// When the device produced it.
    pub phase: Phase,
    /// The sender's iteration number when it was read.
    pub iteration: u64,
    /// The bytes, exactly as the device produced them; at most [`MAX_DEVICE_CHUNK`].
    pub data: &'a [u8],
}

impl<'a> DeviceChunk<'a> {
    pub(crate) fn header(&self) -> DeviceChunkHeader {
        DeviceChunkHeader {
            device: U32::new(self.device.0),
            phase: U16::new(self.phase.to_wire()),
            reserved: U16::new(0),
            iteration: U64::new(self.iteration),
        }
    }

    /// Decodes a `DeviceChunk` payload.
    ///
    /// # Errors
    /// [`PayloadError`] for a short header, a reserved field set or an unknown phase.
    pub fn decode(payload: &'a [u8]) -> Result<DeviceChunk<'a>, PayloadError> {
        let mut cursor = Cursor::new(payload);
        let header = cursor.read::<DeviceChunkHeader>()?;
        reserved_zero("device-chunk reserved", header.reserved.get().into())?;
        Ok(DeviceChunk {
            device: DeviceIndex(header.device.get()),
            phase: Phase::from_wire(header.phase.get())?,
            iteration: header.iteration.get(),
            data: cursor.rest(),
        })
    }
}

/// A device's configuration, its last section.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceConfig<'a> {
    /// The device.
    pub device: DeviceIndex,
    /// The bytes, opaque to the stream; at most [`MAX_DEVICE_CONFIG`].
    pub data: &'a [u8],
}

impl<'a> DeviceConfig<'a> {
    pub(crate) fn header(&self) -> DeviceConfigHeader {
        DeviceConfigHeader {
            device: U32::new(self.device.0),
            reserved: U32::new(0),
        }
    }

    /// Decodes a `DeviceConfig` payload.
    ///
    /// # Errors
    /// [`PayloadError`] for a short header or a reserved field set.
    pub fn decode(payload: &'a [u8]) -> Result<DeviceConfig<'a>, PayloadError> {
        let mut cursor = Cursor::new(payload);
        let header = cursor.read::<DeviceConfigHeader>()?;
        reserved_zero("device-config reserved", header.reserved.get().into())?;
        Ok(DeviceConfig {
            device: DeviceIndex(header.device.get()),
            data: cursor.rest(),
        })
    }
}

/// The start of a pre-copy iteration; for the receiver's statistics only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Iteration {
    /// The iteration number, from 0.
    pub number: u64,
    /// The pages the sender found dirty for this iteration.
    pub pages: u64,
}

/// The end of the stream. The reader checks both counts against what it read, so a stream
/// cut at a section boundary, or one that lost a section, is refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct End {
    /// Sections before this one.
    pub sections: u64,
    /// Bytes of the stream before this section, stream header included.
    pub bytes: u64,
}

fn decode_marker(kind: SectionKind, payload: &[u8]) -> Result<(u64, u64), PayloadError> {
    let wire = MarkerWire::ref_from_bytes(payload).map_err(|_| PayloadError::Length {
        kind,
        expected: size_of::<MarkerWire>(),
        found: payload.len(),
    })?;
    Ok((wire.first.get(), wire.second.get()))
}

fn encode_marker(first: u64, second: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(
        MarkerWire {
            first: U64::new(first),
            second: U64::new(second),
        }
        .as_bytes(),
    );
    out
}

impl Iteration {
    /// Decodes an `Iteration` payload.
    ///
    /// # Errors
    /// [`PayloadError::Length`] unless it is 16 bytes.
    pub fn decode(payload: &[u8]) -> Result<Iteration, PayloadError> {
        let (number, pages) = decode_marker(SectionKind::Iteration, payload)?;
        Ok(Iteration { number, pages })
    }

    /// The payload.
    pub fn encode(&self) -> [u8; 16] {
        encode_marker(self.number, self.pages)
    }
}

impl End {
    /// Decodes an `End` payload.
    ///
    /// # Errors
    /// [`PayloadError::Length`] unless it is 16 bytes.
    pub fn decode(payload: &[u8]) -> Result<End, PayloadError> {
        let (sections, bytes) = decode_marker(SectionKind::End, payload)?;
        Ok(End { sections, bytes })
    }

    /// The payload.
    pub fn encode(&self) -> [u8; 16] {
        encode_marker(self.sections, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trips_with_its_data_untouched() {
        let chunk = DeviceChunk {
            device: DeviceIndex(3),
            phase: Phase::StopCopy,
            iteration: 9,
            data: &[1, 2, 3],
        };
        let mut payload = chunk.header().as_bytes().to_vec();
        payload.extend_from_slice(chunk.data);
        assert_eq!(DeviceChunk::decode(&payload), Ok(chunk));
    }

    #[test]
    fn unknown_phase_is_refused() {
        let mut payload = [0u8; 16];
        payload[4] = 2;
        assert_eq!(
            DeviceChunk::decode(&payload),
            Err(PayloadError::UnknownPhase { value: 2 })
        );
    }

    #[test]
    fn markers_must_be_sixteen_bytes() {
        let end = End {
            sections: 4,
            bytes: 100,
        };
        assert_eq!(End::decode(&end.encode()), Ok(end));
        assert!(matches!(
            End::decode(&[0; 15]),
            Err(PayloadError::Length { found: 15, .. })
        ));
        assert!(Iteration::decode(&[0; 17]).is_err());
    }
}
