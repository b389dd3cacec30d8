//! `VFIO_USER_DIRTY_PAGES` (14): dirty page logging START / STOP / GET_BITMAP.
//!
//! ```text
//! request                                   GET_BITMAP reply
//!  0 argsz  8, or max reply payload (GET)    0 argsz  payload needed: 8 + 32 + bitmap
//!  4 flags  START 1 | STOP 2 | GET 4 (one)   4 flags  GET 4
//!  8 iova            \                       8 the request's range, echoed
//! 16 size             | GET only: 32 B      40 bitmap (bitmap_size bytes)
//! 24 bitmap pgsize    | vfio_user_bitmap_range
//! 32 bitmap size     /
//! START/STOP reply: header only.  GET reply with argsz too small: the 8 bytes only.
//! ```
//!
//! The spec's table says the range is 40 bytes (the kernel's `vfio_bitmap` with its data
//! pointer) and the bitmap starts at 48; libvfio-user since PR #508 uses the 16-byte
//! `vfio_user_bitmap`, so the range is 32 bytes and the bitmap starts at payload offset 40.
//! We follow the bytes.

use std::borrow::Cow;

use vfmig_abi::uapi::{
    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, vfio_iommu_type1_dirty_bitmap,
};
use vfmig_dirty::{PageSize, bitmap_bytes};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Payload, wire};
use crate::error::MessageError;

/// The page size of a bitmap on the wire, parsed once: EINVAL ([`MessageError::BadPageSize`])
/// unless a power of two of at least 4 KiB.
pub fn page_size(pgsize: u64) -> Result<PageSize, MessageError> {
    PageSize::new(pgsize).map_err(|_| MessageError::BadPageSize { pgsize })
}

/// Checks that `pgsize` is a page size ([`page_size`]) and `bitmap_size` is exactly
/// `DIRTY_BITMAP_BYTES(ceil(size / pgsize))`: the kernel's and libvfio-user's rule for every
/// dirty bitmap. Returns the page size, parsed.
pub fn check_bitmap_geometry(
    size: u64,
    pgsize: u64,
    bitmap_size: u64,
) -> Result<PageSize, MessageError> {
    let page = page_size(pgsize)?;
    check_bitmap_size(size, page, bitmap_size)?;
    Ok(page)
}

/// The size half of [`check_bitmap_geometry`], for a page size already parsed.
pub(crate) fn check_bitmap_size(
    size: u64,
    page: PageSize,
    bitmap_size: u64,
) -> Result<(), MessageError> {
    let expected = bitmap_bytes(size.div_ceil(page.bytes()));
    if bitmap_size == expected {
        Ok(())
    } else {
        Err(MessageError::BitmapSize {
            size,
            pgsize: page.bytes(),
            bitmap_size,
            expected,
        })
    }
}

/// `struct vfio_user_dirty_pages` (the kernel's `vfio_iommu_type1_dirty_bitmap` prefix).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DirtyPages {
    /// 8 for START/STOP; for GET_BITMAP the most reply payload accepted (request) or needed
    /// (reply).
    pub argsz: u32,
    /// Exactly one of START, STOP, GET_BITMAP.
    pub flags: u32,
}

const _: () = assert!(size_of::<DirtyPages>() == 8);
const _: () = assert!(size_of::<DirtyPages>() == size_of::<vfio_iommu_type1_dirty_bitmap>());

/// `struct vfio_user_bitmap_range` as its bytes: an IOVA range and the bitmap that covers it,
/// nothing checked. Decoded messages carry a [`BitmapRange`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BitmapRangeWire {
    /// Start of the range.
    pub iova: u64,
    /// Bytes of IOVA space.
    pub size: u64,
    /// Page size of the bitmap.
    pub pgsize: u64,
    /// Bytes of bitmap.
    pub bitmap_size: u64,
}

const _: () = assert!(size_of::<BitmapRangeWire>() == 32);

/// A bitmap range, decoded: its page size parsed once, at decode ([`page_size`], EINVAL
/// otherwise), and its bitmap size the one the range calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapRange {
    /// Start of the range.
    pub iova: u64,
    /// Bytes of IOVA space.
    pub size: u64,
    /// Page size of the bitmap.
    pub pgsize: PageSize,
    /// Bytes of bitmap.
    pub bitmap_size: u64,
}

impl BitmapRange {
    /// The range `[iova, iova + size)` with a bitmap of `pgsize` pages, sized by the rule.
    pub fn new(iova: u64, size: u64, pgsize: PageSize) -> Self {
        Self {
            iova,
            size,
            pgsize,
            bitmap_size: bitmap_bytes(size.div_ceil(pgsize.bytes())),
        }
    }

    /// Parses the wire bytes: EINVAL ([`MessageError::BadPageSize`],
    /// [`MessageError::BitmapSize`]) for a page size or bitmap size off the rule.
    pub fn from_wire(wire: &BitmapRangeWire) -> Result<Self, MessageError> {
        let pgsize = check_bitmap_geometry(wire.size, wire.pgsize, wire.bitmap_size)?;
        Ok(Self {
            iova: wire.iova,
            size: wire.size,
            pgsize,
            bitmap_size: wire.bitmap_size,
        })
    }

    /// The wire bytes.
    pub fn to_wire(&self) -> BitmapRangeWire {
        BitmapRangeWire {
            iova: self.iova,
            size: self.size,
            pgsize: self.pgsize.bytes(),
            bitmap_size: self.bitmap_size,
        }
    }

    fn validate(&self) -> Result<(), MessageError> {
        check_bitmap_size(self.size, self.pgsize, self.bitmap_size)
    }
}

/// Bytes of a full GET_BITMAP reply payload before the bitmap.
pub const GET_BITMAP_PREFIX: u64 = (size_of::<DirtyPages>() + size_of::<BitmapRangeWire>()) as u64;

/// A DIRTY_PAGES request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyPagesRequest {
    /// Start logging (`argsz` ≥ 8).
    Start {
        /// `argsz` as sent.
        argsz: u32,
    },
    /// Stop logging.
    Stop {
        /// `argsz` as sent.
        argsz: u32,
    },
    /// Return and clear the bitmap of `range`.
    GetBitmap {
        /// Most reply payload accepted; below 40 + bitmap the server answers with the 8-byte
        /// prefix only, `argsz` set to the size needed.
        argsz: u32,
        /// The range and its bitmap geometry.
        range: BitmapRange,
    },
}

impl DirtyPagesRequest {
    /// A GET_BITMAP of `range` with `argsz` exactly the reply it calls for (saturated).
    pub fn get_bitmap(range: BitmapRange) -> Self {
        let needed = GET_BITMAP_PREFIX.saturating_add(range.bitmap_size);
        Self::GetBitmap {
            argsz: u32::try_from(needed).unwrap_or(u32::MAX),
            range,
        }
    }

    fn header(&self) -> DirtyPages {
        match *self {
            Self::Start { argsz } => DirtyPages {
                argsz,
                flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
            },
            Self::Stop { argsz } => DirtyPages {
                argsz,
                flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
            },
            Self::GetBitmap { argsz, .. } => DirtyPages {
                argsz,
                flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
            },
        }
    }

    fn validate(&self) -> Result<(), MessageError> {
        wire::check_argsz(
            self.header().argsz,
            size_of::<DirtyPages>() as u64,
            Self::NAME,
        )?;
        match self {
            Self::GetBitmap { range, .. } => range.validate(),
            Self::Start { .. } | Self::Stop { .. } => Ok(()),
        }
    }
}

impl Payload<'_> for DirtyPagesRequest {
    const NAME: &'static str = "DIRTY_PAGES request";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        // Bytes after the fixed part of each operation are ignored, as libvfio-user does.
        let (dirty, rest) = wire::split::<DirtyPages>(body, Self::NAME)?;
        let request = match dirty.flags {
            VFIO_IOMMU_DIRTY_PAGES_FLAG_START => Self::Start { argsz: dirty.argsz },
            VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP => Self::Stop { argsz: dirty.argsz },
            VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP => {
                let range = wire::prefix::<BitmapRangeWire>(rest, Self::NAME)?;
                wire::check_argsz(dirty.argsz, size_of::<DirtyPages>() as u64, Self::NAME)?;
                Self::GetBitmap {
                    argsz: dirty.argsz,
                    range: BitmapRange::from_wire(&range)?,
                }
            }
            flags => {
                return Err(MessageError::InvalidFlags {
                    what: Self::NAME,
                    flags,
                });
            }
        };
        request.validate()?;
        Ok(request)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        Ok(match self {
            Self::Start { .. } | Self::Stop { .. } => self.header().as_bytes().to_vec(),
            Self::GetBitmap { range, .. } => {
                wire::concat(&[self.header().as_bytes(), range.to_wire().as_bytes()])
            }
        })
    }
}

/// A DIRTY_PAGES reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirtyPagesReply<'a> {
    /// START or STOP done: no payload.
    Done,
    /// GET_BITMAP whose `argsz` was too small: the payload needed, to retry with.
    TooSmall {
        /// Reply payload needed.
        argsz: u32,
    },
    /// GET_BITMAP: the range echoed and its bitmap (read and cleared).
    Bitmap {
        /// Payload size of this reply.
        argsz: u32,
        /// The request's range.
        range: BitmapRange,
        /// The bits: page n of the range is bit `n % 8` of byte `n / 8`.
        bits: Cow<'a, [u8]>,
    },
}

impl DirtyPagesReply<'_> {
    fn validate(&self) -> Result<(), MessageError> {
        if let Self::Bitmap { range, bits, .. } = self {
            range.validate()?;
            wire::data_exact(bits, range.bitmap_size, 40, Self::NAME)?;
        }
        Ok(())
    }
}

impl<'a> Payload<'a> for DirtyPagesReply<'a> {
    const NAME: &'static str = "DIRTY_PAGES reply";

    /// An empty body, or one that echoes a START or STOP request, is [`Self::Done`].
    fn decode(body: &'a [u8]) -> Result<Self, MessageError> {
        if body.is_empty() {
            return Ok(Self::Done);
        }
        let (dirty, rest) = wire::split::<DirtyPages>(body, Self::NAME)?;
        if matches!(
            dirty.flags,
            VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
        ) {
            return Ok(Self::Done);
        }
        if dirty.flags != VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP {
            return Err(MessageError::InvalidFlags {
                what: Self::NAME,
                flags: dirty.flags,
            });
        }
        if rest.is_empty() {
            return Ok(Self::TooSmall { argsz: dirty.argsz });
        }
        let (range, bits) = wire::split::<BitmapRangeWire>(rest, Self::NAME)?;
        let reply = Self::Bitmap {
            argsz: dirty.argsz,
            range: BitmapRange::from_wire(&range)?,
            bits: Cow::Borrowed(bits),
        };
        reply.validate()?;
        Ok(reply)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        let get = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
        Ok(match self {
            Self::Done => Vec::new(),
            Self::TooSmall { argsz } => DirtyPages {
                argsz: *argsz,
                flags: get,
            }
            .as_bytes()
            .to_vec(),
            Self::Bitmap { argsz, range, bits } => wire::concat(&[
                DirtyPages {
                    argsz: *argsz,
                    flags: get,
                }
                .as_bytes(),
                range.to_wire().as_bytes(),
                bits,
            ]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn start_from_the_wire_decodes() {
        // size=24 body 08000000 01000000
        let request = DirtyPagesRequest::decode(&hex("08000000 01000000")).unwrap();
        assert_eq!(request, DirtyPagesRequest::Start { argsz: 8 });
    }

    #[test]
    fn get_bitmap_from_the_wire_decodes_with_a_32_byte_range() {
        // size=56 body 30000000 04000000 | iova 0 | size 0x1000 | pgsize 0x1000 | bitmap 8
        let body = hex(
            "30000000 04000000 0000000000000000 0010000000000000 0010000000000000 0800000000000000",
        );
        assert_eq!(body.len(), 40);
        let request = DirtyPagesRequest::decode(&body).unwrap();
        let range = BitmapRange {
            iova: 0,
            size: 0x1000,
            pgsize: PageSize::SIZE_4K,
            bitmap_size: 8,
        };
        assert_eq!(request, DirtyPagesRequest::GetBitmap { argsz: 0x30, range });
        assert_eq!(DirtyPagesRequest::get_bitmap(range), request);
    }

    #[test]
    fn get_bitmap_reply_is_48_bytes_for_one_page() {
        let range = BitmapRange::new(0, 0x1000, PageSize::SIZE_4K);
        let reply = DirtyPagesReply::Bitmap {
            argsz: 48,
            range,
            bits: Cow::Owned(vec![1; 8]),
        };
        assert_eq!(reply.encode().unwrap().len(), 48);
    }

    #[test]
    fn two_flags_at_once_are_einval() {
        let err = DirtyPagesRequest::decode(&hex("08000000 03000000")).unwrap_err();
        assert!(matches!(err, MessageError::InvalidFlags { flags: 3, .. }));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn argsz_below_8_is_einval() {
        let err = DirtyPagesRequest::decode(&hex("07000000 01000000")).unwrap_err();
        assert!(matches!(
            err,
            MessageError::ArgszTooSmall {
                argsz: 7,
                min: 8,
                ..
            }
        ));
    }

    #[test]
    fn start_with_trailing_bytes_is_read_for_its_8() {
        let request = DirtyPagesRequest::decode(&hex("08000000 01000000 00")).unwrap();
        assert_eq!(request, DirtyPagesRequest::Start { argsz: 8 });
    }

    #[test]
    fn a_start_reply_echoing_the_request_is_done() {
        let body = hex("08000000 01000000");
        assert_eq!(
            DirtyPagesReply::decode(&body).unwrap(),
            DirtyPagesReply::Done
        );
    }

    #[test]
    fn bitmap_size_must_be_whole_u64_words_of_the_range() {
        let range = BitmapRange {
            iova: 0,
            size: 65 * 4096,
            pgsize: PageSize::SIZE_4K,
            bitmap_size: 9,
        };
        let err = DirtyPagesRequest::GetBitmap { argsz: 100, range }
            .encode()
            .unwrap_err();
        assert!(matches!(
            err,
            MessageError::BitmapSize {
                expected: 16,
                bitmap_size: 9,
                ..
            }
        ));
    }

    #[test]
    fn a_pgsize_that_is_not_a_page_size_is_einval() {
        for pgsize in [0, 2048, 4097, 3 << 12] {
            let range = BitmapRangeWire {
                iova: 0,
                size: 4096,
                pgsize,
                bitmap_size: 8,
            };
            let body = wire::concat(&[&hex("30000000 04000000"), range.as_bytes()]);
            let err = DirtyPagesRequest::decode(&body).unwrap_err();
            assert!(matches!(err, MessageError::BadPageSize { pgsize: p } if p == pgsize));
            assert_eq!(err.errno(), libc::EINVAL);
        }
    }

    #[test]
    fn too_small_reply_is_the_8_byte_prefix() {
        let body = hex("38000000 04000000");
        let reply = DirtyPagesReply::decode(&body).unwrap();
        assert_eq!(reply, DirtyPagesReply::TooSmall { argsz: 0x38 });
    }

    #[test]
    fn reply_bitmap_shorter_than_stated_is_einval() {
        let range = BitmapRange::new(0, 0x1000, PageSize::SIZE_4K);
        let body = wire::concat(&[
            &hex("30000000 04000000"),
            range.to_wire().as_bytes(),
            &[0; 4],
        ]);
        assert!(matches!(
            DirtyPagesReply::decode(&body),
            Err(MessageError::BodyLength {
                expected: 48,
                got: 44,
                ..
            })
        ));
    }

    #[test]
    fn bitmap_range_new_sizes_by_the_kernel_rule() {
        let page = PageSize::SIZE_4K;
        assert_eq!(BitmapRange::new(0, 64 << 30, page).bitmap_size, 2 << 20);
        assert_eq!(BitmapRange::new(0, 1, page).bitmap_size, 8);
        assert_eq!(BitmapRange::new(0, 0, page).bitmap_size, 0);
    }
}
