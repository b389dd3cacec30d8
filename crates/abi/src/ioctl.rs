//! VFIO ioctl numbers.
//!
//! Every VFIO ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)`: no direction and no size bits, the size
//! travels in `argsz` instead. bindgen cannot evaluate the `_IO` macro, so the numbers are
//! computed here from the header's `VFIO_TYPE` (`';'`, 0x3B) and `VFIO_BASE` (100), and checked
//! against the C header by `tests/c_layout.rs`.
//!
//! Numbers are per file descriptor: `VFIO_IOMMU_DIRTY_PAGES` (container) and
//! `VFIO_DEVICE_FEATURE` (device) share 117, `VFIO_IOMMU_GET_INFO` and
//! `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` share 112.

use crate::uapi::{VFIO_BASE, VFIO_TYPE};

/// The `_IO(type, nr)` encoding: direction and size 0, so `type << 8 | nr`.
const fn io(nr: u32) -> u32 {
    ((VFIO_TYPE as u32) << 8) | (VFIO_BASE + nr)
}

/// `VFIO_GET_API_VERSION` (container), 0x3B64.
pub const VFIO_GET_API_VERSION: u32 = io(0);
/// `VFIO_CHECK_EXTENSION` (container), 0x3B65.
pub const VFIO_CHECK_EXTENSION: u32 = io(1);
/// `VFIO_SET_IOMMU` (container), 0x3B66.
pub const VFIO_SET_IOMMU: u32 = io(2);
/// `VFIO_GROUP_GET_STATUS` (group), 0x3B67.
pub const VFIO_GROUP_GET_STATUS: u32 = io(3);
/// `VFIO_GROUP_SET_CONTAINER` (group), 0x3B68.
pub const VFIO_GROUP_SET_CONTAINER: u32 = io(4);
/// `VFIO_GROUP_UNSET_CONTAINER` (group), 0x3B69.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = io(5);
/// `VFIO_GROUP_GET_DEVICE_FD` (group), 0x3B6A.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = io(6);
/// `VFIO_DEVICE_GET_INFO` (device), 0x3B6B.
pub const VFIO_DEVICE_GET_INFO: u32 = io(7);
/// `VFIO_DEVICE_GET_REGION_INFO` (device), 0x3B6C: finds the migration region through its
/// type capability.
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO` (device), 0x3B6D.
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(9);
/// `VFIO_DEVICE_SET_IRQS` (device), 0x3B6E.
pub const VFIO_DEVICE_SET_IRQS: u32 = io(10);
/// `VFIO_DEVICE_RESET` (device), 0x3B6F: the only way out of the v1 error state.
pub const VFIO_DEVICE_RESET: u32 = io(11);
/// `VFIO_IOMMU_GET_INFO` (container), 0x3B70: page sizes and the migration capability.
pub const VFIO_IOMMU_GET_INFO: u32 = io(12);
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (device), 0x3B70.
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = io(12);
/// `VFIO_IOMMU_MAP_DMA` (container), 0x3B71.
pub const VFIO_IOMMU_MAP_DMA: u32 = io(13);
/// `VFIO_DEVICE_PCI_HOT_RESET` (device), 0x3B71.
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = io(13);
/// `VFIO_IOMMU_UNMAP_DMA` (container), 0x3B72: with `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`.
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(14);
/// `VFIO_IOMMU_ENABLE` (container, sPAPR), 0x3B73.
pub const VFIO_IOMMU_ENABLE: u32 = io(15);
/// `VFIO_IOMMU_DISABLE` (container, sPAPR), 0x3B74.
pub const VFIO_IOMMU_DISABLE: u32 = io(16);
/// `VFIO_IOMMU_DIRTY_PAGES` (container), 0x3B75: START, STOP, GET_BITMAP.
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = io(17);
/// `VFIO_DEVICE_FEATURE` (device, 5.9+), 0x3B75: the same number as `VFIO_IOMMU_DIRTY_PAGES`,
/// on another file descriptor.
pub const VFIO_DEVICE_FEATURE: u32 = io(17);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_numbers_match_the_series() {
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3B70);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3B71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3B72);
        assert_eq!(VFIO_IOMMU_DIRTY_PAGES, 0x3B75);
    }

    #[test]
    fn device_numbers_match_the_series() {
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3B6C);
        assert_eq!(VFIO_DEVICE_RESET, 0x3B6F);
    }
}
