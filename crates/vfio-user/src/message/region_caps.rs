//! Region-info capability chains (`vfio_info_cap_header` and what follows it in a
//! `DEVICE_GET_REGION_INFO` reply): parser and builder. The capabilities JSON of VERSION is
//! in `version_caps.rs`.
//!
//! A chain hangs off a `DEVICE_GET_REGION_INFO` reply: `cap_offset` points at the first
//! `struct vfio_info_cap_header {u16 id; u16 version; u32 next}`, each `next` at the following
//! one, `0` ends it; every offset counts from the start of the 32-byte region info.
//!
//! ```text
//! region 9 argsz 80 flags 0xf cap_offset 32        (a libvfio-user reply, decoded)
//!   @32 id 2 TYPE        ver 1 next 48  type 3 subtype 1
//!   @48 id 1 SPARSE_MMAP ver 1 next 0   nr_areas 1 reserved 0 {offset 0x1000, size 0x4000}
//! ```
//!
//! The parser trusts nothing: every capability must lie inside the reply, every `next` must
//! point past the end of the capability before it (so a chain only goes forward, cannot loop,
//! and has at most `len / 8` links), and `nr_areas` is bounded by the bytes present before
//! anything is allocated. Capabilities of an unknown id or version are kept as
//! [`RegionCap::Unknown`] and skipped, as VFIO clients skip them.

use vfmig_abi::uapi::{
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_CAP_VERSION,
    vfio_info_cap_header, vfio_region_info_cap_sparse_mmap, vfio_region_info_cap_type,
    vfio_region_sparse_mmap_area,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::MessageError;

/// `struct vfio_info_cap_header`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct CapHeader {
    /// Capability id.
    pub id: u16,
    /// Capability version.
    pub version: u16,
    /// Offset of the next capability from the start of the region info; 0 ends the chain.
    pub next: u32,
}

/// `struct vfio_region_info_cap_sparse_mmap` without its areas.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SparseMmapCap {
    /// id 1, version 1.
    pub header: CapHeader,
    /// Number of areas that follow.
    pub nr_areas: u32,
    /// Explicit padding, zero.
    pub reserved: u32,
}

/// `struct vfio_region_sparse_mmap_area`: a part of the region that may be mmapped.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SparseMmapArea {
    /// Offset in the region; the mmap offset is the region's `offset` plus this.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// `struct vfio_region_info_cap_type`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct RegionTypeCap {
    /// id 2, version 1.
    pub header: CapHeader,
    /// Region type (3: migration).
    pub type_: u32,
    /// Region subtype (1: migration).
    pub subtype: u32,
}

const _: () = {
    assert!(size_of::<CapHeader>() == 8);
    assert!(size_of::<CapHeader>() == size_of::<vfio_info_cap_header>());
    assert!(size_of::<SparseMmapCap>() == 16);
    assert!(size_of::<SparseMmapCap>() == size_of::<vfio_region_info_cap_sparse_mmap>());
    assert!(size_of::<SparseMmapArea>() == 16);
    assert!(size_of::<SparseMmapArea>() == size_of::<vfio_region_sparse_mmap_area>());
    assert!(size_of::<RegionTypeCap>() == 16);
    assert!(size_of::<RegionTypeCap>() == size_of::<vfio_region_info_cap_type>());
};

/// A kernel capability id (a `u32` constant in the bindings) as the `u16` of the header;
/// fails to compile if it does not fit.
const fn cap_id(id: u32) -> u16 {
    let [lo, hi, b2, b3] = id.to_le_bytes();
    assert!(b2 == 0 && b3 == 0, "capability id does not fit in u16");
    u16::from_le_bytes([lo, hi])
}

const SPARSE_MMAP_ID: u16 = cap_id(VFIO_REGION_INFO_CAP_SPARSE_MMAP);
const TYPE_ID: u16 = cap_id(VFIO_REGION_INFO_CAP_TYPE);

/// One region-info capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionCap {
    /// Parts of the region that may be mmapped from the reply's fd.
    SparseMmap(Vec<SparseMmapArea>),
    /// A device-specific region type.
    Type {
        /// Type (3: migration).
        type_: u32,
        /// Subtype (1: migration).
        subtype: u32,
    },
    /// A capability of an id or version we do not read, skipped.
    Unknown {
        /// Its id.
        id: u16,
        /// Its version.
        version: u16,
    },
}

impl RegionCap {
    /// Bytes of this capability on the wire.
    pub fn wire_len(&self) -> u64 {
        match self {
            Self::SparseMmap(areas) => (size_of::<SparseMmapCap>() as u64).saturating_add(
                (areas.len() as u64).saturating_mul(size_of::<SparseMmapArea>() as u64),
            ),
            Self::Type { .. } => size_of::<RegionTypeCap>() as u64,
            Self::Unknown { .. } => size_of::<CapHeader>() as u64,
        }
    }

    fn append(&self, next: u32, out: &mut Vec<u8>) -> Result<(), MessageError> {
        let version = VFIO_REGION_INFO_CAP_VERSION;
        match self {
            Self::SparseMmap(areas) => {
                let nr_areas =
                    u32::try_from(areas.len()).map_err(|_| MessageError::EncodeTooLarge {
                        body_len: usize::MAX,
                    })?;
                let header = CapHeader {
                    id: SPARSE_MMAP_ID,
                    version,
                    next,
                };
                out.extend_from_slice(
                    SparseMmapCap {
                        header,
                        nr_areas,
                        reserved: 0,
                    }
                    .as_bytes(),
                );
                for area in areas {
                    out.extend_from_slice(area.as_bytes());
                }
            }
            Self::Type { type_, subtype } => {
                let header = CapHeader {
                    id: TYPE_ID,
                    version,
                    next,
                };
                let cap = RegionTypeCap {
                    header,
                    type_: *type_,
                    subtype: *subtype,
                };
                out.extend_from_slice(cap.as_bytes());
            }
            Self::Unknown { id, version } => {
                out.extend_from_slice(
                    CapHeader {
                        id: *id,
                        version: *version,
                        next,
                    }
                    .as_bytes(),
                );
            }
        }
        Ok(())
    }
}

fn out_of_bounds(offset: u64, need: u64, len: usize) -> MessageError {
    MessageError::CapOutOfBounds { offset, need, len }
}

/// Parses the chain that starts at `first` in `reply` (the whole reply payload; offsets count
/// from its start). No capability may start below `min_offset` (the end of the region info).
pub fn parse_caps(
    reply: &[u8],
    first: u32,
    min_offset: u32,
) -> Result<Vec<RegionCap>, MessageError> {
    // Offsets are u32 and lengths at most 16 + 2^32 * 16 bytes, so the u64 sums below cannot
    // overflow.
    let mut caps = Vec::new();
    let mut offset = first;
    let mut min = u64::from(min_offset);
    while offset != 0 {
        if u64::from(offset) < min {
            return Err(MessageError::CapNotForward { offset, min });
        }
        let at = u64::from(offset);
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| reply.get(start..))
            .ok_or_else(|| out_of_bounds(at, at.saturating_add(8), reply.len()))?;
        let fits = |len: u64| {
            if (bytes.len() as u64) < len {
                Err(out_of_bounds(at, at.saturating_add(len), reply.len()))
            } else {
                Ok(())
            }
        };
        let (header, _) = CapHeader::read_from_prefix(bytes)
            .map_err(|_| out_of_bounds(at, at + 8, reply.len()))?;
        let (cap, len) = match (header.id, header.version) {
            (SPARSE_MMAP_ID, VFIO_REGION_INFO_CAP_VERSION) => {
                let (sparse, areas) = SparseMmapCap::read_from_prefix(bytes)
                    .map_err(|_| out_of_bounds(at, at + 16, reply.len()))?;
                let areas_len = u64::from(sparse.nr_areas) * size_of::<SparseMmapArea>() as u64;
                let len = size_of::<SparseMmapCap>() as u64 + areas_len;
                fits(len)?;
                let areas = areas
                    .chunks_exact(size_of::<SparseMmapArea>())
                    .take(sparse.nr_areas as usize)
                    .filter_map(|chunk| SparseMmapArea::read_from_bytes(chunk).ok())
                    .collect();
                (RegionCap::SparseMmap(areas), len)
            }
            (TYPE_ID, VFIO_REGION_INFO_CAP_VERSION) => {
                let (cap, _) = RegionTypeCap::read_from_prefix(bytes)
                    .map_err(|_| out_of_bounds(at, at + 16, reply.len()))?;
                (
                    RegionCap::Type {
                        type_: cap.type_,
                        subtype: cap.subtype,
                    },
                    16,
                )
            }
            (id, version) => (RegionCap::Unknown { id, version }, 8),
        };
        caps.push(cap);
        min = at + len;
        offset = header.next;
    }
    Ok(caps)
}

/// Lays out `caps` one after the other starting at offset `base`, `next` linking each to the
/// following one and the last `0`.
pub fn encode_caps(caps: &[RegionCap], base: u32) -> Result<Vec<u8>, MessageError> {
    let total = caps
        .iter()
        .map(RegionCap::wire_len)
        .fold(0u64, u64::saturating_add);
    let too_large = || MessageError::EncodeTooLarge {
        body_len: usize::try_from(total).unwrap_or(usize::MAX),
    };
    if u64::from(base).saturating_add(total) > u64::from(u32::MAX) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(usize::try_from(total).map_err(|_| too_large())?);
    let mut offset = u64::from(base);
    for (i, cap) in caps.iter().enumerate() {
        offset = offset.saturating_add(cap.wire_len());
        let next = if i + 1 == caps.len() {
            0
        } else {
            u32::try_from(offset).map_err(|_| too_large())?
        };
        cap.append(next, &mut out)?;
    }
    Ok(out)
}

/// Builds the capability chain of a region-info reply.
///
/// ```
/// # use vfmig_vfio_user::message::{RegionCapsBuilder, SparseMmapArea};
/// let caps = RegionCapsBuilder::new()
///     .region_type(3, 1)
///     .sparse_mmap(vec![SparseMmapArea { offset: 0x1000, size: 0x4000 }])
///     .build();
/// assert_eq!(caps.len(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct RegionCapsBuilder {
    caps: Vec<RegionCap>,
}

impl RegionCapsBuilder {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a region type capability.
    #[must_use]
    pub fn region_type(mut self, type_: u32, subtype: u32) -> Self {
        self.caps.push(RegionCap::Type { type_, subtype });
        self
    }

    /// Adds a sparse mmap capability.
    #[must_use]
    pub fn sparse_mmap(mut self, areas: Vec<SparseMmapArea>) -> Self {
        self.caps.push(RegionCap::SparseMmap(areas));
        self
    }

    /// The capabilities, in chain order, for [`crate::message::RegionInfoReply::for_request`].
    pub fn build(self) -> Vec<RegionCap> {
        self.caps
    }

    /// The chain's bytes, starting at offset `base` from the region info.
    pub fn to_bytes(&self, base: u32) -> Result<Vec<u8>, MessageError> {
        encode_caps(&self.caps, base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_with(chain: &[u8]) -> Vec<u8> {
        let mut reply = vec![0; 32];
        reply.extend_from_slice(chain);
        reply
    }

    #[test]
    fn migration_region_chain_from_the_wire_parses() {
        let chain = RegionCapsBuilder::new()
            .region_type(3, 1)
            .sparse_mmap(vec![SparseMmapArea {
                offset: 0x1000,
                size: 0x4000,
            }])
            .to_bytes(32)
            .unwrap();
        assert_eq!(chain.len(), 48);
        // The type cap's next is 48, the sparse cap's 0.
        assert_eq!(&chain[4..8], &48u32.to_le_bytes());
        assert_eq!(&chain[20..24], &0u32.to_le_bytes());
        let caps = parse_caps(&reply_with(&chain), 32, 32).unwrap();
        assert_eq!(
            caps,
            vec![
                RegionCap::Type {
                    type_: 3,
                    subtype: 1
                },
                RegionCap::SparseMmap(vec![SparseMmapArea {
                    offset: 0x1000,
                    size: 0x4000
                }]),
            ]
        );
    }

    #[test]
    fn next_pointing_backwards_is_einval() {
        let mut chain = RegionCapsBuilder::new()
            .region_type(3, 1)
            .to_bytes(32)
            .unwrap();
        chain[4..8].copy_from_slice(&32u32.to_le_bytes()); // next = itself: a loop
        let err = parse_caps(&reply_with(&chain), 32, 32).unwrap_err();
        assert!(matches!(
            err,
            MessageError::CapNotForward {
                offset: 32,
                min: 48
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn next_into_the_previous_cap_is_einval() {
        let mut chain = RegionCapsBuilder::new()
            .region_type(3, 1)
            .region_type(3, 1)
            .to_bytes(32)
            .unwrap();
        chain[4..8].copy_from_slice(&40u32.to_le_bytes());
        assert!(matches!(
            parse_caps(&reply_with(&chain), 32, 32),
            Err(MessageError::CapNotForward {
                offset: 40,
                min: 48
            })
        ));
    }

    #[test]
    fn first_cap_inside_the_region_info_is_einval() {
        let chain = RegionCapsBuilder::new()
            .region_type(3, 1)
            .to_bytes(32)
            .unwrap();
        assert!(matches!(
            parse_caps(&reply_with(&chain), 8, 32),
            Err(MessageError::CapNotForward { offset: 8, min: 32 })
        ));
    }

    #[test]
    fn next_beyond_the_reply_is_einval() {
        let mut chain = RegionCapsBuilder::new()
            .region_type(3, 1)
            .to_bytes(32)
            .unwrap();
        chain[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = parse_caps(&reply_with(&chain), 32, 32).unwrap_err();
        assert!(matches!(
            err,
            MessageError::CapOutOfBounds {
                offset: 0xffff_ffff,
                ..
            }
        ));
    }

    #[test]
    fn nr_areas_beyond_the_reply_is_einval() {
        let mut chain = RegionCapsBuilder::new()
            .sparse_mmap(vec![SparseMmapArea {
                offset: 0,
                size: 0x1000,
            }])
            .to_bytes(32)
            .unwrap();
        chain[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = parse_caps(&reply_with(&chain), 32, 32).unwrap_err();
        assert!(matches!(
            err,
            MessageError::CapOutOfBounds { offset: 32, .. }
        ));
    }

    #[test]
    fn unknown_caps_are_skipped() {
        let chain = encode_caps(
            &[
                RegionCap::Unknown { id: 9, version: 1 },
                RegionCap::Type {
                    type_: 3,
                    subtype: 1,
                },
            ],
            32,
        )
        .unwrap();
        let caps = parse_caps(&reply_with(&chain), 32, 32).unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(
            caps[1],
            RegionCap::Type {
                type_: 3,
                subtype: 1
            }
        );
    }

    #[test]
    fn known_id_with_another_version_is_unknown() {
        let mut chain = RegionCapsBuilder::new()
            .region_type(3, 1)
            .to_bytes(32)
            .unwrap();
        chain[2..4].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            parse_caps(&reply_with(&chain), 32, 32).unwrap(),
            vec![RegionCap::Unknown { id: 2, version: 2 }]
        );
    }
}
