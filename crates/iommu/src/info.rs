//! `VFIO_IOMMU_GET_INFO`: page sizes and the capability chain, with the two-call `argsz`
//! protocol.
//!
//! ```text
//! offset  size  what
//!      0    24  struct vfio_iommu_type1_info {argsz, flags = PGSIZES|CAPS, iova_pgsizes, cap_offset}
//!     24    32  struct vfio_iommu_type1_info_cap_migration {id 2, v1, next = 56, flags 0,
//!               pgsize_bitmap = 4 KiB, max_dirty_bitmap_size = 256 MiB}
//!     56    12  struct vfio_iommu_type1_info_dma_avail {id 3, v1, next = 0, avail}
//! ```
//!
//! The caps are appended in the kernel's order (migration, then DMA_AVAIL); the IOVA_RANGE cap
//! is omitted, as the kernel omits it for a container without an IOMMU domain. If `argsz` is
//! too small for the caps, the reply says how much is needed and carries no caps
//! (`cap_offset` 0); the caller asks again.

use std::mem::size_of;

use vfmig_abi::dirty::DIRTY_BITMAP_SIZE_MAX;
use vfmig_abi::uapi::{
    IOMMU_INFO_CAP_OFFSET_MINSZ, IOMMU_INFO_MINSZ, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION_VERSION,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_migration,
};

use crate::container::Container;
use crate::error::{IommuError, Result};
use crate::types::CONTAINER_PAGE_SIZE;

const INFO_SIZE: u32 = 24;
const MIGRATION_CAP_SIZE: u32 = 32;
const _: () = {
    assert!(size_of::<vfio_iommu_type1_info>() == INFO_SIZE as usize);
    assert!(size_of::<vfio_iommu_type1_info_cap_migration>() == MIGRATION_CAP_SIZE as usize);
};
/// `struct vfio_iommu_type1_info_dma_avail`: the 8-byte header and a u32.
const DMA_AVAIL_CAP_SIZE: u32 = 12;
const DMA_AVAIL_CAP_VERSION: u16 = 1;

/// The full size of the info with its caps.
pub const IOMMU_INFO_FULL_SIZE: u32 = INFO_SIZE + MIGRATION_CAP_SIZE + DMA_AVAIL_CAP_SIZE;

/// The page sizes a mapping may use: every power of two from the container page size up (a
/// user-space container maps any page multiple, like a type1 container with no IOMMU domain).
pub const IOVA_PGSIZES: u64 = !(CONTAINER_PAGE_SIZE.bytes() - 1);

impl Container {
    /// `VFIO_IOMMU_GET_INFO` for a caller whose buffer is `argsz` bytes. Returns the bytes the
    /// kernel would write back: the info up to `cap_offset` (16 bytes, or 20 if `argsz >= 20`),
    /// then, if `argsz` has room for them, the caps at offset 24. `argsz < 16` is EINVAL.
    pub fn info(&self, argsz: u32) -> Result<Vec<u8>> {
        if argsz < IOMMU_INFO_MINSZ {
            return Err(IommuError::ArgszTooSmall {
                argsz,
                min: IOMMU_INFO_MINSZ,
            });
        }
        let avail = {
            let limit = self.config().max_mappings;
            u32::try_from(limit.saturating_sub(self.mappings())).unwrap_or(u32::MAX)
        };
        let fits = argsz >= IOMMU_INFO_FULL_SIZE;
        let mut buf = Vec::with_capacity(IOMMU_INFO_FULL_SIZE as usize);
        buf.extend_from_slice(&(if fits { argsz } else { IOMMU_INFO_FULL_SIZE }).to_le_bytes());
        buf.extend_from_slice(&(VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS).to_le_bytes());
        buf.extend_from_slice(&IOVA_PGSIZES.to_le_bytes());
        if argsz < IOMMU_INFO_CAP_OFFSET_MINSZ {
            return Ok(buf);
        }
        buf.extend_from_slice(&(if fits { INFO_SIZE } else { 0 }).to_le_bytes());
        if !fits {
            return Ok(buf);
        }
        buf.extend_from_slice(&0u32.to_le_bytes()); // pad
        // Migration cap.
        cap_header(
            &mut buf,
            VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
            VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION_VERSION,
            INFO_SIZE + MIGRATION_CAP_SIZE,
        );
        buf.extend_from_slice(&0u32.to_le_bytes()); // flags
        buf.extend_from_slice(&0u32.to_le_bytes()); // pad
        buf.extend_from_slice(&CONTAINER_PAGE_SIZE.bytes().to_le_bytes());
        buf.extend_from_slice(&DIRTY_BITMAP_SIZE_MAX.to_le_bytes());
        // DMA_AVAIL cap, last in the chain.
        cap_header(
            &mut buf,
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            DMA_AVAIL_CAP_VERSION,
            0,
        );
        buf.extend_from_slice(&avail.to_le_bytes());
        debug_assert_eq!(buf.len(), IOMMU_INFO_FULL_SIZE as usize);
        Ok(buf)
    }
}

/// `struct vfio_info_cap_header`: id, version, offset of the next cap (0 ends the chain).
fn cap_header(buf: &mut Vec<u8>, id: u32, version: u16, next: u32) {
    // Cap ids are small constants (1..3) that fit the header's u16.
    let id = u16::try_from(id).unwrap_or(u16::MAX);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&next.to_le_bytes());
}
