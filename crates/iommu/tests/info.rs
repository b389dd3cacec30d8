//! VFIO_IOMMU_GET_INFO (semantics §1.8): page sizes and the migration capability, with the
//! two-call argsz protocol.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use common::*;
use vfmig_abi::uapi::{
    VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};
use vfmig_iommu::{Container, IOMMU_INFO_FULL_SIZE, IommuError};

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn info_with_argsz_below_16_is_einval() {
    assert_err!(
        Container::default().info(15),
        IommuError::ArgszTooSmall { min: 16, .. }
    );
}

#[test]
fn info_with_argsz_16_returns_page_sizes_without_cap_offset() {
    let b = Container::default().info(16).unwrap();
    assert_eq!(b.len(), 16);
    assert_eq!(
        u32_at(&b, 4),
        VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS
    );
    assert_eq!(u64_at(&b, 8) & 0xfff, 0, "no page size below 4 KiB");
    assert_ne!(
        u64_at(&b, 8) & CONTAINER_PAGE_SIZE.bytes(),
        0,
        "4 KiB pages"
    );
}

#[test]
fn info_too_small_for_the_caps_asks_for_more_and_gives_no_caps() {
    let b = Container::default().info(24).unwrap();
    assert_eq!(u32_at(&b, 0), IOMMU_INFO_FULL_SIZE);
    assert_eq!(u32_at(&b, 16), 0, "cap_offset");
    assert_eq!(b.len(), 20);
}

#[test]
fn info_carries_the_migration_capability_at_offset_24() {
    let b = Container::default().info(IOMMU_INFO_FULL_SIZE).unwrap();
    assert_eq!(u32_at(&b, 16), 24, "cap_offset");
    assert_eq!(
        u32::from(u16_at(&b, 24)),
        VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
    );
    assert_eq!(u16_at(&b, 26), 1, "version");
    assert_eq!(u32_at(&b, 32), 0, "flags");
    assert_eq!(
        u64_at(&b, 40),
        CONTAINER_PAGE_SIZE.bytes(),
        "pgsize_bitmap: only 4 KiB"
    );
    assert_eq!(u64_at(&b, 48), 256 << 20, "max_dirty_bitmap_size");
}

#[test]
fn info_chains_the_dma_avail_capability_last() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let b = c.info(4096).unwrap();
    let next = u32_at(&b, 28) as usize;
    assert_eq!(next, 56);
    assert_eq!(u32::from(u16_at(&b, next)), VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
    assert_eq!(u32_at(&b, next + 4), 0, "end of chain");
    assert_eq!(u32_at(&b, next + 8), 65534, "mappings still available");
    assert_eq!(u32_at(&b, 0), 4096, "argsz is left as given");
}
