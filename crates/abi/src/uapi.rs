//! The uAPI items of the migration series, re-exported from `vfio-bindings` 0.7.
//!
//! The v2 headers renamed the v1 region type and subtype to `*_MIGRATION_DEPRECATED` and the state
//! bits to `VFIO_DEVICE_STATE_V1_*`; the values are those of the series (type 3, subtype 1,
//! RUNNING 1, SAVING 2, RESUMING 4). Both names are offered here: the header's, and the series'
//! own (`VFIO_REGION_TYPE_MIGRATION`, `VFIO_REGION_SUBTYPE_MIGRATION`) as aliases of them.
//!
//! Sizes and field offsets of every struct are checked at compile time by the bindings
//! themselves, and against the C compiler by `tests/c_layout.rs`.

pub use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION,
    // The ioctl base.
    VFIO_BASE,
    VFIO_DEVICE_FLAGS_CAPS,
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_DEVICE_STATE_MASK,
    VFIO_DEVICE_STATE_V1_RESUMING,
    VFIO_DEVICE_STATE_V1_RUNNING,
    VFIO_DEVICE_STATE_V1_SAVING,
    VFIO_DEVICE_STATE_V1_STOP,
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
    VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR1_REGION_INDEX,
    VFIO_PCI_BAR2_REGION_INDEX,
    VFIO_PCI_BAR3_REGION_INDEX,
    VFIO_PCI_BAR4_REGION_INDEX,
    VFIO_PCI_BAR5_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
    VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
    VFIO_REGION_TYPE_PCI_VENDOR_MASK,
    VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
    VFIO_TYPE,
    VFIO_TYPE1_IOMMU,
    VFIO_TYPE1v2_IOMMU,
    // Container: DMA map and unmap, with the dirty bitmap on unmap.
    vfio_bitmap,
    // Device, region and IRQ info.
    vfio_device_info,
    // The v1 migration region.
    vfio_device_migration_info,
    // The capability header shared by region info and IOMMU info chains.
    vfio_info_cap_header,
    // Container: dirty page tracking.
    vfio_iommu_type1_dirty_bitmap,
    vfio_iommu_type1_dirty_bitmap_get,
    vfio_iommu_type1_dma_map,
    vfio_iommu_type1_dma_unmap,
    // Container: type, info and the migration capability.
    vfio_iommu_type1_info,
    vfio_iommu_type1_info_cap_migration,
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
    vfio_region_info_cap_sparse_mmap,
    vfio_region_info_cap_type,
    vfio_region_sparse_mmap_area,
};

/// The series' name for the migration region type (3); the v2 headers call it
/// `VFIO_REGION_TYPE_MIGRATION_DEPRECATED`.
pub const VFIO_REGION_TYPE_MIGRATION: u32 = VFIO_REGION_TYPE_MIGRATION_DEPRECATED;

/// The series' name for the migration region subtype (1); the v2 headers call it
/// `VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED`.
pub const VFIO_REGION_SUBTYPE_MIGRATION: u32 = VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED;

/// Version of the `VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION` capability defined by the series.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION_VERSION: u16 = 1;

/// Version of the region-info capabilities (sparse mmap, type) defined by the kernel.
pub const VFIO_REGION_INFO_CAP_VERSION: u16 = 1;

/// Byte size of the `argsz`/`flags` prefix of `vfio_iommu_type1_dirty_bitmap` (its `minsz`).
pub const DIRTY_PAGES_MINSZ: u32 = 8;

/// `argsz` of a GET_BITMAP request: the prefix plus `vfio_iommu_type1_dirty_bitmap_get`; the
/// bitmap memory itself is not counted.
pub const DIRTY_PAGES_GET_BITMAP_ARGSZ: u32 = 48;

/// `minsz` of `vfio_iommu_type1_dma_unmap` (up to and including `size`).
pub const DMA_UNMAP_MINSZ: u32 = 24;

/// `minsz` of `vfio_device_info` (up to and including `num_irqs`), the size vfio-user carries.
/// The bindings' struct is 24 bytes: 5.x kernels added `cap_offset`, 6.6 a trailing `pad`.
pub const DEVICE_INFO_MINSZ: u32 = 16;

/// `minsz` of `vfio_iommu_type1_info` (up to and including `iova_pgsizes`).
pub const IOMMU_INFO_MINSZ: u32 = 16;

/// `argsz` from which `vfio_iommu_type1_info::cap_offset` is written back.
pub const IOMMU_INFO_CAP_OFFSET_MINSZ: u32 = 20;

const _: () = {
    assert!(size_of::<vfio_iommu_type1_dirty_bitmap>() == DIRTY_PAGES_MINSZ as usize);
    assert!(
        size_of::<vfio_iommu_type1_dirty_bitmap>() + size_of::<vfio_iommu_type1_dirty_bitmap_get>()
            == DIRTY_PAGES_GET_BITMAP_ARGSZ as usize
    );
    assert!(size_of::<vfio_iommu_type1_dma_unmap>() == DMA_UNMAP_MINSZ as usize);
    assert!(size_of::<vfio_bitmap>() == 24);
    assert!(std::mem::offset_of!(vfio_device_info, cap_offset) == DEVICE_INFO_MINSZ as usize);
    assert!(size_of::<vfio_iommu_type1_info>() == 24);
    assert!(std::mem::offset_of!(vfio_iommu_type1_info, cap_offset) == 16);
    assert!(size_of::<vfio_iommu_type1_info_cap_migration>() == 32);
    assert!(size_of::<vfio_info_cap_header>() == 8);
    assert!(size_of::<vfio_device_migration_info>() == 32);
};
