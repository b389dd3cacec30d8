//! Client memory: `DMA_MAP` (2), `DMA_UNMAP` (3), and the server's `DMA_READ` (11) and
//! `DMA_WRITE` (12) of memory it could not map.
//!
//! ```text
//! DMA_MAP request (32 B, + at most 1 fd)    DMA_UNMAP request (24 B [+ 16 B])
//!   0 argsz = 32                              0 argsz   max reply payload
//!   4 flags  READ 1 | WRITE 2                 4 flags   GET_DIRTY_BITMAP 1 | ALL 2 (exclusive)
//!   8 offset into the fd                      8 addr
//!  16 addr (IOVA)                            16 size
//!  24 size                                   24 bitmap {pgsize, size}   with GET_DIRTY_BITMAP
//! reply: header only                        reply: the 24 B echoed [+ bitmap header + bits]
//!
//! DMA_READ / DMA_WRITE (16 B + data)
//!   0 addr
//!   8 count   (u64 both ways: the spec's 4-byte count in the DMA_WRITE reply is wrong;
//!             libvfio-user sends and expects 8, a 32-byte reply)
//!  16 data    DMA_READ reply, DMA_WRITE request
//! ```

use std::borrow::Cow;

use vfmig_abi::uapi::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
};
use vfmig_dirty::PageSize;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::dirty::{check_bitmap_geometry, check_bitmap_size};
use super::{Payload, wire};
use crate::error::MessageError;

/// `struct vfio_user_dma_map`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DmaMap {
    /// Size of this struct, 32.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE`.
    pub flags: u32,
    /// Offset of the mapping in the fd sent with the message (0 without one).
    pub offset: u64,
    /// IOVA of the mapping.
    pub addr: u64,
    /// Bytes mapped.
    pub size: u64,
}

const _: () = assert!(size_of::<DmaMap>() == 32);
const _: () = assert!(size_of::<DmaMap>() == size_of::<vfio_iommu_type1_dma_map>());

impl DmaMap {
    /// `argsz` of a DMA_MAP.
    pub const ARGSZ: u32 = 32;
    /// Flags a DMA_MAP may carry.
    pub const FLAGS: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;

    /// A DMA_MAP of `[addr, addr + size)` at `offset` of its fd.
    pub fn new(flags: u32, offset: u64, addr: u64, size: u64) -> Self {
        Self {
            argsz: Self::ARGSZ,
            flags,
            offset,
            addr,
            size,
        }
    }

    fn validate(&self) -> Result<(), MessageError> {
        wire::check_argsz(self.argsz, size_of::<Self>() as u64, Self::NAME)?;
        if self.flags & !Self::FLAGS != 0 {
            return Err(MessageError::InvalidFlags {
                what: Self::NAME,
                flags: self.flags,
            });
        }
        Ok(())
    }
}

impl Payload<'_> for DmaMap {
    const NAME: &'static str = "DMA_MAP";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let map = wire::prefix::<Self>(body, Self::NAME)?;
        map.validate()?;
        Ok(map)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        Ok(self.as_bytes().to_vec())
    }
}

/// `struct vfio_user_dma_unmap` without its trailing bitmap.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DmaUnmap {
    /// Most bytes of reply payload the client accepts.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP` or `VFIO_DMA_UNMAP_FLAG_ALL`, not both.
    pub flags: u32,
    /// IOVA of the mapping (0 with `ALL`).
    pub addr: u64,
    /// Size of the mapping (0 with `ALL`).
    pub size: u64,
}

const _: () = assert!(size_of::<DmaUnmap>() == 24);
const _: () = assert!(size_of::<DmaUnmap>() == size_of::<vfio_iommu_type1_dma_unmap>());

/// `struct vfio_user_bitmap` as its bytes (the kernel's `struct vfio_bitmap` without its data
/// pointer), nothing checked. Decoded messages carry a [`Bitmap`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BitmapWire {
    /// Bytes per bit.
    pub pgsize: u64,
    /// Bytes of bitmap (excluding this header).
    pub size: u64,
}

const _: () = assert!(size_of::<BitmapWire>() == 16);

/// The bitmap of an unmap, decoded: its page size parsed once, at decode ([`page_size`],
/// EINVAL otherwise).
///
/// [`page_size`]: super::page_size
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Bytes per bit.
    pub pgsize: PageSize,
    /// Bytes of bitmap (excluding this header).
    pub size: u64,
}

impl Bitmap {
    /// The wire bytes.
    pub fn to_wire(&self) -> BitmapWire {
        BitmapWire {
            pgsize: self.pgsize.bytes(),
            size: self.size,
        }
    }

    /// Parses the wire bytes for an unmap of `range_size` bytes: EINVAL
    /// ([`MessageError::BadPageSize`], [`MessageError::BitmapSize`]) off the rule.
    fn from_wire(wire: &BitmapWire, range_size: u64) -> Result<Self, MessageError> {
        Ok(Self {
            pgsize: check_bitmap_geometry(range_size, wire.pgsize, wire.size)?,
            size: wire.size,
        })
    }
}

impl DmaUnmap {
    /// The flags alone: none, ALL, or GET_DIRTY_BITMAP with a bitmap (EINVAL otherwise).
    fn check_flags(&self, with_bitmap: bool, what: &'static str) -> Result<(), MessageError> {
        match (self.flags, with_bitmap) {
            (0 | VFIO_DMA_UNMAP_FLAG_ALL, false) | (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, true) => {
                Ok(())
            }
            _ => Err(MessageError::InvalidFlags {
                what,
                flags: self.flags,
            }),
        }
    }

    fn validate(
        &self,
        with_bitmap: Option<&Bitmap>,
        what: &'static str,
    ) -> Result<(), MessageError> {
        let fixed = size_of::<Self>() as u64;
        match (self.flags, with_bitmap) {
            (0, None) => wire::check_argsz(self.argsz, fixed, what),
            (VFIO_DMA_UNMAP_FLAG_ALL, None) => {
                if self.addr != 0 || self.size != 0 {
                    return Err(MessageError::UnmapAllWithRange {
                        addr: self.addr,
                        size: self.size,
                    });
                }
                wire::check_argsz(self.argsz, fixed, what)
            }
            (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, Some(bitmap)) => {
                check_bitmap_size(self.size, bitmap.pgsize, bitmap.size)
            }
            _ => Err(MessageError::InvalidFlags {
                what,
                flags: self.flags,
            }),
        }
    }

    /// Whether the request asks for the dirty bitmap.
    pub fn wants_bitmap(&self) -> bool {
        self.flags == VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
    }
}

/// A DMA_UNMAP request: the struct, and with GET_DIRTY_BITMAP the bitmap it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmapRequest {
    /// The unmap.
    pub unmap: DmaUnmap,
    /// Page size and byte size of the bitmap wanted (GET_DIRTY_BITMAP only).
    pub bitmap: Option<Bitmap>,
}

impl DmaUnmapRequest {
    /// Bytes of reply payload this request calls for: 24, or 40 + the bitmap.
    pub fn reply_size(&self) -> u64 {
        let fixed = size_of::<DmaUnmap>() as u64;
        match self.bitmap {
            None => fixed,
            Some(b) => fixed
                .saturating_add(size_of::<BitmapWire>() as u64)
                .saturating_add(b.size),
        }
    }

    fn validate(&self) -> Result<(), MessageError> {
        self.unmap.validate(self.bitmap.as_ref(), Self::NAME)?;
        if self.bitmap.is_some() {
            wire::check_argsz(self.unmap.argsz, self.reply_size(), Self::NAME)?;
        }
        Ok(())
    }
}

impl Payload<'_> for DmaUnmapRequest {
    const NAME: &'static str = "DMA_UNMAP request";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let (unmap, rest) = wire::split::<DmaUnmap>(body, Self::NAME)?;
        let bitmap = if unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            Some(wire::prefix::<BitmapWire>(rest, Self::NAME)?)
        } else {
            None
        };
        // The flags are checked before the bitmap is parsed, as before the page size was.
        unmap.check_flags(bitmap.is_some(), Self::NAME)?;
        let bitmap = bitmap
            .map(|b| Bitmap::from_wire(&b, unmap.size))
            .transpose()?;
        let request = Self { unmap, bitmap };
        request.validate()?;
        Ok(request)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        let bitmap = self.bitmap.map(|b| b.to_wire());
        let bitmap = bitmap.as_ref().map(IntoBytes::as_bytes).unwrap_or_default();
        Ok(wire::concat(&[self.unmap.as_bytes(), bitmap]))
    }
}

/// A dirty bitmap with its header, as a reply carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapData<'a> {
    /// Page size and byte size.
    pub header: Bitmap,
    /// The bits: page n is bit `n % 8` of byte `n / 8`.
    pub bits: Cow<'a, [u8]>,
}

/// A DMA_UNMAP reply: the request's struct echoed, and the bitmap if one was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaUnmapReply<'a> {
    /// The request's struct, echoed.
    pub unmap: DmaUnmap,
    /// The dirty bitmap of the unmapped range (GET_DIRTY_BITMAP only).
    pub bitmap: Option<BitmapData<'a>>,
}

impl DmaUnmapReply<'_> {
    fn validate(&self) -> Result<(), MessageError> {
        let header = self.bitmap.as_ref().map(|b| &b.header);
        self.unmap.validate(header, Self::NAME)?;
        if let Some(bitmap) = &self.bitmap {
            wire::data_exact(&bitmap.bits, bitmap.header.size, 40, Self::NAME)?;
        }
        Ok(())
    }
}

impl<'a> Payload<'a> for DmaUnmapReply<'a> {
    const NAME: &'static str = "DMA_UNMAP reply";

    fn decode(body: &'a [u8]) -> Result<Self, MessageError> {
        let (unmap, rest) = wire::split::<DmaUnmap>(body, Self::NAME)?;
        let bitmap = if unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            let (header, bits) = wire::split::<BitmapWire>(rest, Self::NAME)?;
            unmap.check_flags(true, Self::NAME)?;
            Some(BitmapData {
                header: Bitmap::from_wire(&header, unmap.size)?,
                bits: Cow::Borrowed(bits),
            })
        } else {
            None
        };
        let reply = Self { unmap, bitmap };
        reply.validate()?;
        Ok(reply)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        Ok(match &self.bitmap {
            None => self.unmap.as_bytes().to_vec(),
            Some(b) => wire::concat(&[
                self.unmap.as_bytes(),
                b.header.to_wire().as_bytes(),
                &b.bits,
            ]),
        })
    }
}

/// `struct vfio_user_dma_region_access` without its data: DMA_READ request, DMA_WRITE reply.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DmaAccess {
    /// IOVA accessed.
    pub addr: u64,
    /// Bytes accessed.
    pub count: u64,
}

const _: () = assert!(size_of::<DmaAccess>() == 16);

impl DmaAccess {
    /// Bytes of a DMA_WRITE reply as the spec's table draws it: a 4-byte `count`.
    const SPEC_WRITE_REPLY: usize = 12;

    /// A DMA_WRITE reply: the 16 bytes libvfio-user sends, or the 12 of the spec's table
    /// (`count` as a `u32`), which a client written from the spec sends.
    pub fn decode_write_reply(body: &[u8]) -> Result<Self, MessageError> {
        if body.len() == Self::SPEC_WRITE_REPLY {
            let (addr, count) = wire::split::<u64>(body, Self::NAME)?;
            let count = wire::prefix::<u32>(count, Self::NAME)?;
            return Ok(Self {
                addr,
                count: count.into(),
            });
        }
        Self::decode(body)
    }
}

impl Payload<'_> for DmaAccess {
    const NAME: &'static str = "DMA access";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        wire::prefix::<Self>(body, Self::NAME)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        Ok(self.as_bytes().to_vec())
    }
}

/// DMA access with data: DMA_WRITE request, DMA_READ reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaData<'a> {
    /// Address and count; `data` is exactly `count` bytes.
    pub access: DmaAccess,
    /// The bytes.
    pub data: Cow<'a, [u8]>,
}

impl<'a> DmaData<'a> {
    /// DMA data of `data` at `addr`, `count` set to its length.
    pub fn new(addr: u64, data: impl Into<Cow<'a, [u8]>>) -> Self {
        let data = data.into();
        Self {
            access: DmaAccess {
                addr,
                count: data.len() as u64,
            },
            data,
        }
    }
}

impl<'a> Payload<'a> for DmaData<'a> {
    const NAME: &'static str = "DMA data";

    fn decode(body: &'a [u8]) -> Result<Self, MessageError> {
        let (access, rest) = wire::split::<DmaAccess>(body, Self::NAME)?;
        let data = wire::data_exact(rest, access.count, size_of::<DmaAccess>(), Self::NAME)?;
        Ok(Self {
            access,
            data: Cow::Borrowed(data),
        })
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        wire::data_exact(
            &self.data,
            self.access.count,
            size_of::<DmaAccess>(),
            Self::NAME,
        )?;
        Ok(wire::concat(&[self.access.as_bytes(), &self.data]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of an unmap of `[0, size)` with `flags`, its bitmap header (4 KiB pages,
    /// `bitmap_size` bytes) and then `data`.
    fn unmap_with_bitmap(
        argsz: u32,
        flags: u32,
        size: u64,
        bitmap_size: u64,
        data: &[u8],
    ) -> Vec<u8> {
        let unmap = DmaUnmap {
            argsz,
            flags,
            addr: 0,
            size,
        };
        let bitmap = BitmapWire {
            pgsize: 4096,
            size: bitmap_size,
        };
        wire::concat(&[unmap.as_bytes(), bitmap.as_bytes(), data])
    }

    const UNMAP_ALL: u32 = VFIO_DMA_UNMAP_FLAG_ALL;
    const GET_DIRTY: u32 = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;

    #[test]
    fn dma_map_from_the_sample_trace_decodes() {
        // size=48 body 20000000 03000000 <offset> <addr> 00100000...
        let mut body = vec![0x20, 0, 0, 0, 3, 0, 0, 0];
        body.extend_from_slice(&0x1000u64.to_le_bytes());
        body.extend_from_slice(&0x10_0000u64.to_le_bytes());
        body.extend_from_slice(&0x1000u64.to_le_bytes());
        let map = DmaMap::decode(&body).unwrap();
        assert_eq!(map, DmaMap::new(3, 0x1000, 0x10_0000, 0x1000));
    }

    #[test]
    fn dma_map_with_unknown_flags_is_einval() {
        let body = DmaMap {
            flags: 4,
            ..DmaMap::new(0, 0, 0, 0x1000)
        }
        .as_bytes()
        .to_vec();
        let err = DmaMap::decode(&body).unwrap_err();
        assert!(matches!(err, MessageError::InvalidFlags { flags: 4, .. }));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn dma_map_with_small_argsz_is_einval() {
        let body = DmaMap {
            argsz: 31,
            ..DmaMap::new(3, 0, 0, 0x1000)
        }
        .as_bytes()
        .to_vec();
        assert!(matches!(
            DmaMap::decode(&body),
            Err(MessageError::ArgszTooSmall {
                argsz: 31,
                min: 32,
                ..
            })
        ));
    }

    #[test]
    fn dma_map_with_trailing_bytes_is_read_for_its_32() {
        let mut body = DmaMap::new(3, 0, 0, 0x1000).as_bytes().to_vec();
        body.push(0xff);
        assert_eq!(DmaMap::decode(&body).unwrap(), DmaMap::new(3, 0, 0, 0x1000));
    }

    #[test]
    fn dma_write_reply_with_the_specs_4_byte_count_is_read() {
        let mut body = 0x2000u64.to_le_bytes().to_vec();
        body.extend_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(
            DmaAccess::decode_write_reply(&body).unwrap(),
            DmaAccess {
                addr: 0x2000,
                count: 0x10
            }
        );
    }

    #[test]
    fn plain_unmap_is_24_bytes_and_echoed() {
        let unmap = DmaUnmap {
            argsz: 24,
            flags: 0,
            addr: 0x1000,
            size: 0x2000,
        };
        let request = DmaUnmapRequest {
            unmap,
            bitmap: None,
        };
        assert_eq!(request.encode().unwrap().len(), 24);
        let reply = DmaUnmapReply {
            unmap,
            bitmap: None,
        };
        assert_eq!(
            DmaUnmapReply::decode(&reply.encode().unwrap()).unwrap(),
            reply
        );
    }

    #[test]
    fn unmap_all_with_a_range_is_einval() {
        let unmap = DmaUnmap {
            argsz: 24,
            flags: UNMAP_ALL,
            addr: 0x1000,
            size: 0,
        };
        let err = DmaUnmapRequest::decode(unmap.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::UnmapAllWithRange {
                addr: 0x1000,
                size: 0
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn unmap_all_and_get_bitmap_together_are_einval() {
        let body = unmap_with_bitmap(64, UNMAP_ALL | GET_DIRTY, 0, 0, &[]);
        let err = DmaUnmapRequest::decode(&body).unwrap_err();
        assert!(matches!(err, MessageError::InvalidFlags { flags: 3, .. }));
    }

    #[test]
    fn unmap_with_bitmap_needs_the_bitmap_header() {
        let unmap = DmaUnmap {
            argsz: 48,
            flags: GET_DIRTY,
            addr: 0,
            size: 0x1000,
        };
        let err = DmaUnmapRequest::decode(unmap.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyTooShort {
                need: 16,
                got: 0,
                ..
            }
        ));
    }

    #[test]
    fn unmap_with_bitmap_needs_argsz_for_the_whole_reply() {
        let body = unmap_with_bitmap(47, GET_DIRTY, 0x1000, 8, &[]);
        let err = DmaUnmapRequest::decode(&body).unwrap_err();
        assert!(matches!(
            err,
            MessageError::ArgszTooSmall {
                argsz: 47,
                min: 48,
                ..
            }
        ));
    }

    #[test]
    fn unmap_with_a_wrong_bitmap_size_is_einval() {
        let body = unmap_with_bitmap(1024, GET_DIRTY, 0x1000, 1, &[]);
        let err = DmaUnmapRequest::decode(&body).unwrap_err();
        assert!(matches!(
            err,
            MessageError::BitmapSize {
                expected: 8,
                bitmap_size: 1,
                ..
            }
        ));
    }

    #[test]
    fn unmap_reply_bitmap_must_have_the_stated_length() {
        let body = unmap_with_bitmap(48, GET_DIRTY, 0x1000, 8, &[0; 7]);
        let err = DmaUnmapReply::decode(&body).unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyLength {
                expected: 48,
                got: 47,
                ..
            }
        ));
    }

    #[test]
    fn dma_write_reply_count_is_8_bytes() {
        let body = DmaAccess {
            addr: 0x1000,
            count: 0x10,
        }
        .encode()
        .unwrap();
        assert_eq!(body.len(), 16);
        assert_eq!(&body[8..], &0x10u64.to_le_bytes());
    }

    #[test]
    fn dma_data_count_must_match_the_data() {
        let body = wire::concat(&[DmaAccess { addr: 0, count: 4 }.as_bytes(), &[1, 2, 3]]);
        assert!(matches!(
            DmaData::decode(&body),
            Err(MessageError::BodyLength {
                expected: 20,
                got: 19,
                ..
            })
        ));
    }
}
