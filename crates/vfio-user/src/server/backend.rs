//! The device as the server sees it: the [`Backend`] trait a device layer implements, and the
//! descriptions it answers with.
//!
//! The backend is mechanism for the device's own semantics: what a region access does, which
//! IRQs exist, what a reset means, which commands its current state allows. The server does
//! everything protocol-shaped around it: decoding, bounds of region accesses, capability
//! chains, errno replies, DMA mappings and dirty pages (through the container).

use std::os::fd::{BorrowedFd, OwnedFd};

use vfmig_abi::uapi::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

use crate::errno::Errno;
use crate::message::{Command, IrqSet, SparseMmapArea};

/// `VFIO_USER_DEVICE_GET_INFO`: what the device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDescription {
    /// `VFIO_DEVICE_FLAGS_*` (e.g. `RESET | PCI`).
    pub flags: u32,
    /// Number of regions; indexes `0..num_regions` exist.
    pub num_regions: u32,
    /// Number of IRQ indexes; indexes `0..num_irqs` exist.
    pub num_irqs: u32,
}

/// The mmappable part of a region: the file that backs it and where.
#[derive(Debug)]
pub struct RegionMmap<'a> {
    /// The file the client maps (sent with the full GET_REGION_INFO reply).
    pub fd: BorrowedFd<'a>,
    /// Offset of the region's first byte in `fd` (the reply's `offset`).
    pub offset: u64,
    /// The parts of the region that may be mapped, as offsets in the region; empty means the
    /// whole region (the server then states one area covering it, as libvfio-user does).
    pub areas: Vec<SparseMmapArea>,
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO`: one region.
#[derive(Debug)]
pub struct RegionDescription<'a> {
    /// Bytes.
    pub size: u64,
    /// The client may read it.
    pub readable: bool,
    /// The client may write it.
    pub writable: bool,
    /// A device-specific region type `(type, subtype)`, e.g. `(3, 1)` for the v1 migration
    /// region.
    pub region_type: Option<(u32, u32)>,
    /// Present if (parts of) the region may be mmapped by the client.
    pub mmap: Option<RegionMmap<'a>>,
}

impl RegionDescription<'_> {
    /// The `VFIO_REGION_INFO_FLAG_*` bits (READ, WRITE, MMAP; CAPS is the server's).
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.readable {
            flags |= VFIO_REGION_INFO_FLAG_READ;
        }
        if self.writable {
            flags |= VFIO_REGION_INFO_FLAG_WRITE;
        }
        if self.mmap.is_some() {
            flags |= VFIO_REGION_INFO_FLAG_MMAP;
        }
        flags
    }
}

/// `VFIO_USER_DEVICE_GET_IRQ_INFO`: one IRQ index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqDescription {
    /// Number of vectors.
    pub count: u32,
    /// Vectors can signal an eventfd.
    pub eventfd: bool,
    /// Vectors can be masked.
    pub maskable: bool,
    /// The device masks a vector when it fires (INTx).
    pub automasked: bool,
    /// The number of vectors cannot change once enabled.
    pub noresize: bool,
}

impl IrqDescription {
    /// The `VFIO_IRQ_INFO_*` bits.
    pub fn flags(&self) -> u32 {
        [
            (self.eventfd, VFIO_IRQ_INFO_EVENTFD),
            (self.maskable, VFIO_IRQ_INFO_MASKABLE),
            (self.automasked, VFIO_IRQ_INFO_AUTOMASKED),
            (self.noresize, VFIO_IRQ_INFO_NORESIZE),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .fold(0, |flags, (_, bit)| flags | bit)
    }
}

/// The data of a `VFIO_USER_DEVICE_SET_IRQS`, by its data type.
#[derive(Debug)]
pub enum IrqSetData<'a> {
    /// `DATA_NONE`: act on every vector of the range (with `count` 0: disable the index).
    None,
    /// `DATA_BOOL`: one byte per vector; act where it is non-zero.
    Bool(&'a [u8]),
    /// `DATA_EVENTFD`: one eventfd per vector (signal it when the vector fires), or none to
    /// de-assign the range.
    Eventfds(Vec<OwnedFd>),
}

/// A device served over vfio-user.
///
/// Every method that can fail answers with the errno the client is told. The server calls the
/// backend from one thread, in the order the client's commands arrive; device threads of its
/// own (DMA engines, timers) use the [`vfmig_iommu::Container`] directly, any time.
///
/// Before calling anything, the server checks what the protocol defines: region and IRQ
/// indexes against [`DeviceDescription`], region accesses against the region's size, IRQ
/// ranges against the index's `count`. No method has a default body: a device states each
/// behaviour, in particular its migration capability and its state policy.
pub trait Backend: Send {
    /// What the device is. Asked once per client; it must not change while one is connected.
    fn device_info(&self) -> DeviceDescription;

    /// Region `index` (below `num_regions`). Its size must not change while a client is
    /// connected.
    fn region_info(&self, index: u32) -> Result<RegionDescription<'_>, Errno>;

    /// Reads `data.len()` bytes at `offset` of region `index`; the range is inside the region.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;

    /// Writes `data` at `offset` of region `index`; the range is inside the region. The device
    /// may DMA to or from guest memory while handling it (through the container; for memory
    /// the client mapped without an fd that becomes DMA_READ / DMA_WRITE to the client).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// IRQ index `index` (below `num_irqs`).
    fn irq_info(&self, index: u32) -> Result<IrqDescription, Errno>;

    /// `VFIO_USER_DEVICE_SET_IRQS`: `set` is the decoded request (flags name exactly one data
    /// type and one action; `start + count` is within the index, or `count` is 0 with
    /// `DATA_NONE | ACTION_TRIGGER`: disable the whole index and drop its eventfds).
    fn set_irqs(&mut self, set: &IrqSet, data: IrqSetData<'_>) -> Result<(), Errno>;

    /// `VFIO_USER_DEVICE_RESET`.
    fn reset(&mut self) -> Result<(), Errno>;

    /// The device's state policy, asked before every command after VERSION: `Err` refuses the
    /// command with that errno (e.g. EINVAL for DMA_MAP / DMA_UNMAP in STOP or STOP_COPY, as
    /// libvfio-user does).
    fn check_command(&self, command: Command) -> Result<(), Errno>;

    /// Whether the device can migrate: the server then advertises the `migration` capability
    /// and accepts `VFIO_USER_DIRTY_PAGES`; otherwise DIRTY_PAGES is `ENOTSUP`.
    fn migration_capable(&self) -> bool;

    /// The client went away. Its mappings are gone and every IRQ index was disabled (through
    /// [`Backend::set_irqs`]) before this call; the device keeps its state for the next client.
    fn client_gone(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_flags_are_the_kernel_bits() {
        let irq = IrqDescription {
            count: 1,
            eventfd: true,
            maskable: false,
            automasked: true,
            noresize: false,
        };
        assert_eq!(
            irq.flags(),
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_AUTOMASKED
        );
    }

    #[test]
    fn an_mmap_region_has_the_mmap_flag() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let region = RegionDescription {
            size: 4096,
            readable: true,
            writable: false,
            region_type: None,
            mmap: Some(RegionMmap {
                fd: std::os::fd::AsFd::as_fd(&file),
                offset: 0,
                areas: Vec::new(),
            }),
        };
        assert_eq!(
            region.flags(),
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP
        );
    }
}
