//! `VFIO_USER_DEVICE_GET_REGION_IO_FDS` (6): file descriptors for parts of a region.
//!
//! ```text
//! request and reply head (16 B)           sub-region entry (48 B on the wire)
//!  0 argsz  request ≥ 16; reply: needed     0 offset      in the region
//!  4 flags  0                               8 size
//!  8 index                                 16 fd_index    into the reply's fds
//! 12 count  request 0; reply: entries      20 type        0 ioeventfd, 1 ioregionfd,
//! 16 entries (reply, if argsz allowed)                     2 ioeventfd with shadow memory
//!                                          24 flags
//!                                          28 shadow_mem_fd_index (type 2)
//!                                          32 shadow_offset / ioregionfd user_data
//!                                          40 datamatch
//! ```
//!
//! The spec describes 40-byte entries; libvfio-user (`1569a37`) sends 48-byte ones (the union
//! with the shadow-ioeventfd layout), so entries are 48 bytes here. A reply whose entries are
//! 40 bytes each is read too (the spec tells a client to find the entry size from `argsz` and
//! `count`): its `datamatch` (ioeventfd) or `user_data` (ioregionfd) at offset 32 lands in the
//! field of the 48-byte layout that holds it. A reply whose `argsz` did not allow the entries
//! carries the 16-byte head only (with `count` and the `argsz` needed).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Payload, wire};
use crate::error::MessageError;

/// `vfio_user_region_io_fds_request` / the head of `vfio_user_region_io_fds_reply`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct RegionIoFds {
    /// Request: most reply payload accepted; reply: payload needed.
    pub argsz: u32,
    /// Zero.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Request: zero; reply: number of sub-regions.
    pub count: u32,
}

const _: () = assert!(size_of::<RegionIoFds>() == 16);

/// `vfio_user_sub_region_ioeventfd` (48 bytes, the size of the wire's union).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SubRegionIoFd {
    /// Offset of the sub-region in the region.
    pub offset: u64,
    /// Bytes (0: any access size).
    pub size: u64,
    /// Index of the sub-region's fd among the reply's fds.
    pub fd_index: u32,
    /// [`IO_FD_TYPE_IOEVENTFD`], [`IO_FD_TYPE_IOREGIONFD`] or [`IO_FD_TYPE_IOEVENTFD_SHADOW`].
    pub kind: u32,
    /// `KVM_IOEVENTFD_FLAG_*` / `KVM_IOREGION_*`.
    pub flags: u32,
    /// Index of the shadow memory fd (type 2).
    pub shadow_mem_fd_index: u32,
    /// Offset in the shadow memory fd (type 2); `user_data` of an ioregionfd (type 1).
    pub shadow_offset: u64,
    /// Datamatch value.
    pub datamatch: u64,
}

const _: () = assert!(size_of::<SubRegionIoFd>() == 48);

/// A sub-region entry as the spec draws it (40 bytes): the 48-byte layout without the shadow
/// fields, its last `u64` the ioeventfd's `datamatch` or the ioregionfd's `user_data`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct SpecSubRegionIoFd {
    offset: u64,
    size: u64,
    fd_index: u32,
    kind: u32,
    flags: u32,
    padding: u32,
    datamatch_or_user_data: u64,
}

const _: () = assert!(size_of::<SpecSubRegionIoFd>() == 40);

impl SpecSubRegionIoFd {
    /// The entry in the 48-byte layout; a type the spec does not define is EINVAL.
    fn widen(&self) -> Result<SubRegionIoFd, MessageError> {
        let entry = SubRegionIoFd {
            offset: self.offset,
            size: self.size,
            fd_index: self.fd_index,
            kind: self.kind,
            flags: self.flags,
            ..SubRegionIoFd::default()
        };
        match self.kind {
            IO_FD_TYPE_IOEVENTFD => Ok(SubRegionIoFd {
                datamatch: self.datamatch_or_user_data,
                ..entry
            }),
            IO_FD_TYPE_IOREGIONFD => Ok(SubRegionIoFd {
                shadow_offset: self.datamatch_or_user_data,
                ..entry
            }),
            kind => Err(MessageError::IoFdType { kind }),
        }
    }
}

/// An ioeventfd sub-region.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// An ioregionfd sub-region.
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;
/// An ioeventfd sub-region with shadow memory.
pub const IO_FD_TYPE_IOEVENTFD_SHADOW: u32 = 2;

impl SubRegionIoFd {
    /// The ioregionfd `user_data` (the same bytes as `shadow_offset`).
    pub fn user_data(&self) -> u64 {
        self.shadow_offset
    }

    /// The fd indexes this entry uses: its fd, and for type 2 its shadow memory fd.
    pub fn fd_indexes(&self) -> impl Iterator<Item = u32> {
        let shadow = (self.kind == IO_FD_TYPE_IOEVENTFD_SHADOW).then_some(self.shadow_mem_fd_index);
        std::iter::once(self.fd_index).chain(shadow)
    }
}

impl Payload<'_> for RegionIoFds {
    const NAME: &'static str = "DEVICE_GET_REGION_IO_FDS request";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let request = wire::prefix::<Self>(body, Self::NAME)?;
        request.validate()?;
        Ok(request)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        Ok(self.as_bytes().to_vec())
    }
}

impl RegionIoFds {
    /// The request for region `index`, accepting `argsz` bytes of reply.
    pub fn request(index: u32, argsz: u32) -> Self {
        Self {
            argsz,
            flags: 0,
            index,
            count: 0,
        }
    }

    fn validate(&self) -> Result<(), MessageError> {
        wire::check_argsz(self.argsz, size_of::<Self>() as u64, Self::NAME)?;
        wire::check_zero(self.flags.into(), "flags", Self::NAME)?;
        wire::check_zero(self.count.into(), "count", Self::NAME)
    }
}

/// A GET_REGION_IO_FDS reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionIoFdsReply {
    /// The head; `count` sub-regions exist, `argsz` is the payload needed for all of them.
    pub head: RegionIoFds,
    /// The sub-regions: `count` of them, or none when `argsz` did not allow them.
    pub sub_regions: Vec<SubRegionIoFd>,
}

impl RegionIoFdsReply {
    /// The reply to a request of `request_argsz` for region `index`: every sub-region if they
    /// fit, else the head alone with the `argsz` needed.
    pub fn for_request(
        request_argsz: u32,
        index: u32,
        sub_regions: Vec<SubRegionIoFd>,
    ) -> Result<Self, MessageError> {
        let count = u32::try_from(sub_regions.len()).map_err(|_| MessageError::EncodeTooLarge {
            body_len: usize::MAX,
        })?;
        let needed = Self::payload_len(count);
        let argsz = u32::try_from(needed).map_err(|_| MessageError::EncodeTooLarge {
            body_len: usize::try_from(needed).unwrap_or(usize::MAX),
        })?;
        let head = RegionIoFds {
            argsz,
            flags: 0,
            index,
            count,
        };
        let sub_regions = if request_argsz >= argsz {
            sub_regions
        } else {
            Vec::new()
        };
        Ok(Self { head, sub_regions })
    }

    /// Cannot overflow: a `u32` count of 48-byte entries is below 2^38.
    fn payload_len(count: u32) -> u64 {
        size_of::<RegionIoFds>() as u64 + u64::from(count) * size_of::<SubRegionIoFd>() as u64
    }

    fn validate(&self) -> Result<(), MessageError> {
        wire::check_argsz(self.head.argsz, size_of::<RegionIoFds>() as u64, Self::NAME)?;
        wire::check_zero(self.head.flags.into(), "flags", Self::NAME)?;
        if !self.sub_regions.is_empty()
            && self.sub_regions.len() as u64 != u64::from(self.head.count)
        {
            return Err(MessageError::BodyLength {
                what: Self::NAME,
                expected: Self::payload_len(self.head.count),
                got: size_of::<RegionIoFds>().saturating_add(
                    self.sub_regions
                        .len()
                        .saturating_mul(size_of::<SubRegionIoFd>()),
                ),
            });
        }
        match self
            .sub_regions
            .iter()
            .find(|s| s.kind > IO_FD_TYPE_IOEVENTFD_SHADOW)
        {
            Some(bad) => Err(MessageError::IoFdType { kind: bad.kind }),
            None => Ok(()),
        }
    }

    /// Checks that every fd index of every entry names one of the `received` descriptors.
    pub fn check_fd_indexes(&self, received: usize) -> Result<(), MessageError> {
        for index in self.sub_regions.iter().flat_map(SubRegionIoFd::fd_indexes) {
            if usize::try_from(index).map_or(true, |i| i >= received) {
                return Err(MessageError::FdIndex {
                    what: Self::NAME,
                    index: index.into(),
                    received,
                });
            }
        }
        Ok(())
    }
}

impl Payload<'_> for RegionIoFdsReply {
    const NAME: &'static str = "DEVICE_GET_REGION_IO_FDS reply";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let (head, rest) = wire::split::<RegionIoFds>(body, Self::NAME)?;
        let count = u64::from(head.count);
        let entries = |size: usize| count.saturating_mul(size as u64);
        let sub_regions = if rest.is_empty() {
            Vec::new()
        } else if rest.len() as u64 == entries(size_of::<SpecSubRegionIoFd>()) {
            rest.chunks_exact(size_of::<SpecSubRegionIoFd>())
                .filter_map(|chunk| SpecSubRegionIoFd::read_from_bytes(chunk).ok())
                .map(|entry| entry.widen())
                .collect::<Result<_, _>>()?
        } else {
            wire::data_exact(
                rest,
                entries(size_of::<SubRegionIoFd>()),
                size_of::<RegionIoFds>(),
                Self::NAME,
            )?
            .chunks_exact(size_of::<SubRegionIoFd>())
            .filter_map(|chunk| SubRegionIoFd::read_from_bytes(chunk).ok())
            .collect()
        };
        let reply = Self { head, sub_regions };
        reply.validate()?;
        Ok(reply)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        let mut out = self.head.as_bytes().to_vec();
        for sub_region in &self.sub_regions {
            out.extend_from_slice(sub_region.as_bytes());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ioeventfd(fd_index: u32) -> SubRegionIoFd {
        SubRegionIoFd {
            offset: 8,
            size: 4,
            fd_index,
            kind: IO_FD_TYPE_IOEVENTFD,
            ..SubRegionIoFd::default()
        }
    }

    #[test]
    fn entries_are_48_bytes_on_the_wire() {
        let reply =
            RegionIoFdsReply::for_request(1024, 0, vec![ioeventfd(0), ioeventfd(0)]).unwrap();
        let body = reply.encode().unwrap();
        assert_eq!(body.len(), 16 + 2 * 48);
        assert_eq!(reply.head.argsz, 112);
        assert_eq!(RegionIoFdsReply::decode(&body).unwrap(), reply);
    }

    #[test]
    fn reply_too_small_is_the_head_with_count_and_argsz() {
        let reply = RegionIoFdsReply::for_request(16, 0, vec![ioeventfd(0)]).unwrap();
        assert_eq!(
            (reply.head.argsz, reply.head.count, reply.sub_regions.len()),
            (64, 1, 0)
        );
        assert_eq!(
            RegionIoFdsReply::decode(&reply.encode().unwrap()).unwrap(),
            reply
        );
    }

    #[test]
    fn the_spec_40_byte_entries_are_read_into_the_48_byte_layout() {
        let head = RegionIoFds {
            argsz: 16 + 2 * 40,
            flags: 0,
            index: 0,
            count: 2,
        };
        let ioeventfd = SpecSubRegionIoFd {
            offset: 8,
            size: 4,
            datamatch_or_user_data: 0x55,
            ..SpecSubRegionIoFd::default()
        };
        let ioregionfd = SpecSubRegionIoFd {
            kind: IO_FD_TYPE_IOREGIONFD,
            datamatch_or_user_data: 0x77,
            ..ioeventfd
        };
        let body = wire::concat(&[head.as_bytes(), ioeventfd.as_bytes(), ioregionfd.as_bytes()]);
        let reply = RegionIoFdsReply::decode(&body).unwrap();
        assert_eq!(reply.sub_regions[0].datamatch, 0x55);
        assert_eq!(reply.sub_regions[1].user_data(), 0x77);
        assert_eq!(
            (reply.sub_regions[1].offset, reply.sub_regions[1].size),
            (8, 4)
        );
    }

    #[test]
    fn entries_of_neither_size_are_einval() {
        let head = RegionIoFds {
            argsz: 56,
            flags: 0,
            index: 0,
            count: 1,
        };
        let body = wire::concat(&[head.as_bytes(), &[0; 44]]);
        assert!(matches!(
            RegionIoFdsReply::decode(&body),
            Err(MessageError::BodyLength {
                expected: 64,
                got: 60,
                ..
            })
        ));
    }

    #[test]
    fn request_with_nonzero_count_is_einval() {
        let request = RegionIoFds {
            count: 1,
            ..RegionIoFds::request(0, 16)
        };
        let err = RegionIoFds::decode(request.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::NotZero {
                field: "count",
                value: 1,
                ..
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn unknown_sub_region_type_is_einval() {
        let bad = SubRegionIoFd {
            kind: 3,
            ..ioeventfd(0)
        };
        let head = RegionIoFds {
            argsz: 64,
            flags: 0,
            index: 0,
            count: 1,
        };
        let body = wire::concat(&[head.as_bytes(), bad.as_bytes()]);
        assert!(matches!(
            RegionIoFdsReply::decode(&body),
            Err(MessageError::IoFdType { kind: 3 })
        ));
    }

    #[test]
    fn fd_index_beyond_the_fds_received_is_einval() {
        let shadow = SubRegionIoFd {
            kind: IO_FD_TYPE_IOEVENTFD_SHADOW,
            shadow_mem_fd_index: 1,
            ..ioeventfd(0)
        };
        let reply = RegionIoFdsReply::for_request(1024, 0, vec![shadow]).unwrap();
        assert!(reply.check_fd_indexes(2).is_ok());
        assert!(matches!(
            reply.check_fd_indexes(1),
            Err(MessageError::FdIndex {
                index: 1,
                received: 1,
                ..
            })
        ));
    }
}
