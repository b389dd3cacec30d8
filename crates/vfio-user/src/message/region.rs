//! Regions: `DEVICE_GET_REGION_INFO` (5), `REGION_READ` (9), `REGION_WRITE` (10).
//!
//! ```text
//! GET_REGION_INFO: struct vfio_region_info (32 B) both ways, + caps and 1 fd in a full reply
//!  0 argsz       request: most reply payload; reply: payload needed (32 + caps)
//!  4 flags       reply: READ 1 | WRITE 2 | MMAP 4 | CAPS 8
//!  8 index
//! 12 cap_offset  reply: 32 with CAPS, else 0
//! 16 size
//! 24 offset      reply: where the region starts in the fd (mmap offset base)
//!
//! REGION_READ / REGION_WRITE: struct vfio_user_region_access (16 B) + data
//!  0 offset   8 region   12 count   16 data (READ reply, WRITE request; exactly count bytes)
//! ```
//!
//! The two-call protocol: if the caps do not fit the request's `argsz`, the reply is the 32
//! bytes alone, `argsz` set to the size needed, no CAPS flag and no fd; the client asks again
//! with that `argsz`. [`RegionInfoReply::for_request`] makes that choice.

use std::borrow::Cow;

use vfmig_abi::uapi::{VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, vfio_region_info};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::region_caps::{RegionCap, SparseMmapArea, encode_caps, parse_caps};
use super::{Payload, wire};
use crate::error::MessageError;

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct RegionInfo {
    /// Request: most reply payload accepted; reply: payload needed.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*` (reply).
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability (reply, with CAPS).
    pub cap_offset: u32,
    /// Region size (reply).
    pub size: u64,
    /// Offset of the region in the reply's fd (reply).
    pub offset: u64,
}

const _: () = assert!(size_of::<RegionInfo>() == 32);
const _: () = assert!(size_of::<RegionInfo>() == size_of::<vfio_region_info>());
const _: () = assert!(
    std::mem::offset_of!(RegionInfo, offset) == std::mem::offset_of!(vfio_region_info, offset)
);

impl RegionInfo {
    /// Size of the struct, the smallest `argsz`.
    pub const SIZE: u32 = 32;

    /// The request for region `index`, accepting `argsz` bytes of reply.
    pub fn request(index: u32, argsz: u32) -> Self {
        Self {
            argsz,
            index,
            ..Self::default()
        }
    }
}

impl Payload<'_> for RegionInfo {
    const NAME: &'static str = "DEVICE_GET_REGION_INFO request";

    /// The 32-byte struct and whatever follows it: libvfio-user's client sends `argsz` bytes
    /// (the struct and zeroed room for the caps, 96 bytes for `argsz` 80), as a kernel caller
    /// passes its whole buffer.
    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let info = wire::prefix::<Self>(body, Self::NAME)?;
        wire::check_argsz(info.argsz, Self::SIZE.into(), Self::NAME)?;
        Ok(info)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        wire::check_argsz(self.argsz, Self::SIZE.into(), Self::NAME)?;
        Ok(self.as_bytes().to_vec())
    }
}

/// A GET_REGION_INFO reply: the region info and, in a full reply, its capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfoReply {
    /// The region info. With capabilities: CAPS set, `cap_offset` 32, `argsz` 32 + caps.
    pub info: RegionInfo,
    /// The capabilities, in chain order (empty in a reply too small for them).
    pub caps: Vec<RegionCap>,
}

fn caps_len(caps: &[RegionCap]) -> Result<u32, MessageError> {
    let total = caps
        .iter()
        .map(RegionCap::wire_len)
        .fold(0u64, u64::saturating_add);
    u32::try_from(total)
        .ok()
        .and_then(|len| len.checked_add(RegionInfo::SIZE))
        .map(|argsz| argsz - RegionInfo::SIZE)
        .ok_or(MessageError::EncodeTooLarge {
            body_len: usize::try_from(total).unwrap_or(usize::MAX),
        })
}

impl RegionInfoReply {
    /// The reply to a request of `request_argsz`: `info` (flags, index, size, offset) with its
    /// `caps` if they fit, else the 32 bytes alone with `argsz` telling the size needed.
    /// `argsz`, `cap_offset` and the CAPS flag of `info` are set here.
    pub fn for_request(
        request_argsz: u32,
        info: RegionInfo,
        caps: Vec<RegionCap>,
    ) -> Result<Self, MessageError> {
        let needed = RegionInfo::SIZE + caps_len(&caps)?;
        let mut info = RegionInfo {
            argsz: needed,
            cap_offset: 0,
            ..info
        };
        info.flags &= !VFIO_REGION_INFO_FLAG_CAPS;
        if caps.is_empty() || request_argsz < needed {
            return Ok(Self {
                info,
                caps: Vec::new(),
            });
        }
        info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
        info.cap_offset = RegionInfo::SIZE;
        Ok(Self { info, caps })
    }

    /// Whether the reply holds everything (the caps were not left out for lack of `argsz`).
    pub fn is_complete(&self) -> bool {
        self.info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 || self.info.argsz <= RegionInfo::SIZE
    }

    /// The areas of every sparse mmap capability.
    pub fn sparse_areas(&self) -> impl Iterator<Item = &SparseMmapArea> {
        self.caps.iter().flat_map(|cap| match cap {
            RegionCap::SparseMmap(areas) => areas.as_slice(),
            RegionCap::Type { .. } | RegionCap::Unknown { .. } => &[],
        })
    }

    /// The region type capability, `(type, subtype)`.
    pub fn region_type(&self) -> Option<(u32, u32)> {
        self.caps.iter().find_map(|cap| match *cap {
            RegionCap::Type { type_, subtype } => Some((type_, subtype)),
            RegionCap::SparseMmap(_) | RegionCap::Unknown { .. } => None,
        })
    }

    /// Most file descriptors this reply may carry: none without MMAP or a sparse mmap cap;
    /// else one, or one per sparse area (some libvfio-user versions send the region's fd
    /// once per area).
    pub fn max_fds(&self) -> usize {
        let has_sparse = self
            .caps
            .iter()
            .any(|c| matches!(c, RegionCap::SparseMmap(_)));
        if self.info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 && !has_sparse {
            0
        } else {
            self.sparse_areas().count().max(1)
        }
    }

    fn validate(&self) -> Result<(), MessageError> {
        let info = &self.info;
        let inconsistent = || MessageError::CapsInconsistent {
            flags: info.flags,
            cap_offset: info.cap_offset,
        };
        wire::check_argsz(info.argsz, RegionInfo::SIZE.into(), Self::NAME)?;
        let has_caps_flag = info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0;
        if self.caps.is_empty() {
            if has_caps_flag || info.cap_offset != 0 {
                return Err(inconsistent());
            }
        } else {
            if !has_caps_flag || info.cap_offset != RegionInfo::SIZE {
                return Err(inconsistent());
            }
            if info.argsz != RegionInfo::SIZE + caps_len(&self.caps)? {
                return Err(inconsistent());
            }
        }
        Ok(())
    }
}

impl Payload<'_> for RegionInfoReply {
    const NAME: &'static str = "DEVICE_GET_REGION_INFO reply";

    /// Bytes after what the reply describes are ignored: without CAPS, after the 32-byte
    /// struct (libvfio-user pads a reply to the request's `argsz` with zeros when the caps do
    /// not fit); with CAPS, after `argsz` (the info and its chain), which must be present.
    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let info = wire::prefix::<RegionInfo>(body, Self::NAME)?;
        wire::check_argsz(info.argsz, RegionInfo::SIZE.into(), Self::NAME)?;
        if info.flags & VFIO_REGION_INFO_FLAG_CAPS == 0 {
            if info.cap_offset != 0 {
                return Err(MessageError::CapsInconsistent {
                    flags: info.flags,
                    cap_offset: info.cap_offset,
                });
            }
            return Ok(Self {
                info,
                caps: Vec::new(),
            });
        }
        let full = usize::try_from(info.argsz)
            .ok()
            .and_then(|argsz| body.get(..argsz))
            .ok_or(MessageError::BodyTooShort {
                what: Self::NAME,
                need: usize::try_from(info.argsz).unwrap_or(usize::MAX),
                got: body.len(),
            })?;
        if info.cap_offset == 0 {
            return Err(MessageError::CapsInconsistent {
                flags: info.flags,
                cap_offset: 0,
            });
        }
        let caps = parse_caps(full, info.cap_offset, RegionInfo::SIZE)?;
        Ok(Self { info, caps })
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        let chain = encode_caps(&self.caps, RegionInfo::SIZE)?;
        Ok(wire::concat(&[self.info.as_bytes(), &chain]))
    }
}

/// `struct vfio_user_region_access` without data: REGION_READ request, REGION_WRITE reply.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes accessed.
    pub count: u32,
}

const _: () = assert!(size_of::<RegionAccess>() == 16);

impl Payload<'_> for RegionAccess {
    const NAME: &'static str = "region access";

    /// The 16 bytes and whatever follows (libvfio-user reads a REGION_READ request the same
    /// way: only a body shorter than the struct is refused).
    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        wire::prefix::<Self>(body, Self::NAME)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        Ok(self.as_bytes().to_vec())
    }
}

/// Region access with data: REGION_WRITE request, REGION_READ reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionData<'a> {
    /// Offset, region and count; `data` is exactly `count` bytes.
    pub access: RegionAccess,
    /// The bytes.
    pub data: Cow<'a, [u8]>,
}

impl<'a> RegionData<'a> {
    /// Region data of `data` at `offset` of `region`; `None` if `data` is longer than a u32
    /// count.
    pub fn new(region: u32, offset: u64, data: impl Into<Cow<'a, [u8]>>) -> Option<Self> {
        let data = data.into();
        let count = u32::try_from(data.len()).ok()?;
        Some(Self {
            access: RegionAccess {
                offset,
                region,
                count,
            },
            data,
        })
    }
}

impl<'a> Payload<'a> for RegionData<'a> {
    const NAME: &'static str = "region data";

    fn decode(body: &'a [u8]) -> Result<Self, MessageError> {
        let (access, rest) = wire::split::<RegionAccess>(body, Self::NAME)?;
        let data = wire::data_exact(
            rest,
            access.count.into(),
            size_of::<RegionAccess>(),
            Self::NAME,
        )?;
        Ok(Self {
            access,
            data: Cow::Borrowed(data),
        })
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        wire::data_exact(
            &self.data,
            self.access.count.into(),
            size_of::<RegionAccess>(),
            Self::NAME,
        )?;
        Ok(wire::concat(&[self.access.as_bytes(), &self.data]))
    }
}

#[cfg(test)]
mod tests {
    use vfmig_abi::uapi::{VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};

    use super::*;
    use crate::message::RegionCapsBuilder;

    const RWM: u32 =
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;

    fn migration_region() -> (RegionInfo, Vec<RegionCap>) {
        let info = RegionInfo {
            flags: RWM,
            index: 9,
            size: 0x5000,
            offset: 0x3000,
            ..RegionInfo::default()
        };
        let caps = RegionCapsBuilder::new()
            .region_type(3, 1)
            .sparse_mmap(vec![SparseMmapArea {
                offset: 0x1000,
                size: 0x4000,
            }])
            .build();
        (info, caps)
    }

    #[test]
    fn full_reply_matches_the_sample_server() {
        let (info, caps) = migration_region();
        let reply = RegionInfoReply::for_request(80, info, caps).unwrap();
        assert_eq!(
            (reply.info.argsz, reply.info.flags, reply.info.cap_offset),
            (80, 0xf, 32)
        );
        let body = reply.encode().unwrap();
        assert_eq!(body.len(), 80);
        let decoded = RegionInfoReply::decode(&body).unwrap();
        assert_eq!(decoded.region_type(), Some((3, 1)));
        assert_eq!(decoded.sparse_areas().count(), 1);
        assert_eq!(decoded, reply);
    }

    #[test]
    fn reply_too_small_for_the_caps_is_32_bytes_with_the_size_needed() {
        let (info, caps) = migration_region();
        let reply = RegionInfoReply::for_request(32, info, caps).unwrap();
        assert_eq!(
            (reply.info.argsz, reply.info.flags, reply.info.cap_offset),
            (80, RWM, 0)
        );
        assert!(!reply.is_complete());
        let body = reply.encode().unwrap();
        assert_eq!(body.len(), 32);
        assert_eq!(RegionInfoReply::decode(&body).unwrap(), reply);
    }

    #[test]
    fn reply_with_caps_flag_and_no_chain_is_einval() {
        let info = RegionInfo {
            argsz: 32,
            flags: VFIO_REGION_INFO_FLAG_CAPS,
            cap_offset: 0,
            ..RegionInfo::default()
        };
        let err = RegionInfoReply::decode(info.as_bytes()).unwrap_err();
        assert!(matches!(err, MessageError::CapsInconsistent { .. }));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn reply_bytes_after_argsz_are_ignored() {
        let (info, caps) = migration_region();
        let reply = RegionInfoReply::for_request(80, info, caps).unwrap();
        let mut body = reply.encode().unwrap();
        body.extend_from_slice(&[0xff; 8]);
        assert_eq!(RegionInfoReply::decode(&body).unwrap(), reply);
    }

    #[test]
    fn reply_shorter_than_its_argsz_with_caps_is_einval() {
        let (info, caps) = migration_region();
        let body = RegionInfoReply::for_request(80, info, caps)
            .unwrap()
            .encode()
            .unwrap();
        let err = RegionInfoReply::decode(&body[..72]).unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyTooShort {
                need: 80,
                got: 72,
                ..
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn reply_without_caps_padded_to_the_request_argsz_is_read() {
        let (info, caps) = migration_region();
        let reply = RegionInfoReply::for_request(40, info, caps).unwrap();
        let mut body = reply.encode().unwrap();
        body.extend_from_slice(&[0; 8]);
        assert_eq!(RegionInfoReply::decode(&body).unwrap(), reply);
    }

    #[test]
    fn request_with_argsz_bytes_of_payload_is_read_for_its_32() {
        let mut body = RegionInfo::request(9, 80).as_bytes().to_vec();
        body.resize(80, 0);
        assert_eq!(
            RegionInfo::decode(&body).unwrap(),
            RegionInfo::request(9, 80)
        );
    }

    #[test]
    fn request_argsz_below_32_is_einval() {
        let err = RegionInfo::decode(RegionInfo::request(0, 16).as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::ArgszTooSmall {
                argsz: 16,
                min: 32,
                ..
            }
        ));
    }

    #[test]
    fn region_write_data_must_match_count() {
        let access = RegionAccess {
            offset: 0,
            region: 9,
            count: 4,
        };
        let body = wire::concat(&[access.as_bytes(), &[1, 2, 3, 4, 5]]);
        assert!(matches!(
            RegionData::decode(&body),
            Err(MessageError::BodyLength {
                expected: 20,
                got: 21,
                ..
            })
        ));
    }

    #[test]
    fn region_read_request_is_16_bytes() {
        let access = RegionAccess {
            offset: 0x10,
            region: 9,
            count: 8,
        };
        assert_eq!(
            RegionAccess::decode(&access.encode().unwrap()).unwrap(),
            access
        );
    }

    #[test]
    fn max_fds_follows_the_sparse_areas() {
        let (info, caps) = migration_region();
        assert_eq!(
            RegionInfoReply::for_request(80, info, caps)
                .unwrap()
                .max_fds(),
            1
        );
        let plain =
            RegionInfoReply::for_request(32, RegionInfo { flags: 3, ..info }, vec![]).unwrap();
        assert_eq!(plain.max_fds(), 0);
    }
}
