//! Shared by the device tests: guest memory in a container, and a driver for the dma-engine.
#![allow(dead_code, unreachable_pub, clippy::cast_possible_truncation)]

use std::os::fd::OwnedFd;

use vfmig_abi::uapi::{VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE};
use vfmig_device::PciDevice;
use vfmig_device::devices::dma_engine::regs::{CONTROL_ENABLE, CONTROL_IRQ, Descriptor};
use vfmig_device::devices::dma_engine::{DmaEngine, RAM_BAR, REGS_BAR};
use vfmig_iommu::{Backing, Container};
use vfmig_memory::SharedMemory;
use vfmig_vfio_user::server::Backend;

/// Guest RAM size in the tests.
pub const GUEST: u64 = 16 << 20;
/// Where the ring lives in guest memory.
pub const RING: u64 = 0x10_0000;
/// Ring entries.
pub const ENTRIES: u32 = 64;

/// Guest memory (a memfd) and a container mapping it at IOVA 0.
pub fn guest() -> (SharedMemory, Container) {
    let mem = SharedMemory::new(c"guest", GUEST as usize).unwrap();
    let container = Container::default();
    map(&container, &mem);
    (mem, container)
}

/// Maps `mem` at IOVA 0 in `container`.
pub fn map(container: &Container, mem: &SharedMemory) {
    let fd: OwnedFd = mem.fd().try_clone_to_owned().unwrap();
    container
        .map_dma(
            VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            0,
            GUEST,
            Backing::Fd { fd, offset: 0 },
        )
        .unwrap();
}

/// Writes a BAR0 register.
pub fn reg_write<B: Backend>(dev: &mut B, offset: u64, v: u64, len: usize) {
    dev.region_write(REGS_BAR as u32, offset, &v.to_le_bytes()[..len])
        .unwrap();
}

/// Reads a BAR0 register.
pub fn reg_read<B: Backend>(dev: &mut B, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.region_read(REGS_BAR as u32, offset, &mut b[..len])
        .unwrap();
    u64::from_le_bytes(b)
}

/// A dma-engine with `ram` bytes of RAM and its ring enabled at [`RING`].
pub fn engine(container: &Container, ram: u64) -> PciDevice<DmaEngine> {
    let mut dev = PciDevice::new(DmaEngine::new(container.clone(), ram).unwrap()).unwrap();
    reg_write(&mut dev, 0x08, RING, 8);
    reg_write(&mut dev, 0x10, u64::from(ENTRIES), 4);
    reg_write(&mut dev, 0x14, u64::from(CONTROL_ENABLE | CONTROL_IRQ), 4);
    dev
}

/// Submits descriptors by writing them into the ring and ringing the doorbell.
pub fn submit(dev: &mut PciDevice<DmaEngine>, mem: &SharedMemory, descs: &[Descriptor]) {
    let mut tail = reg_read(dev, 0x18, 4) as u32;
    for d in descs {
        mem.write(RING + u64::from(tail) * 32, &d.encode()).unwrap();
        tail = (tail + 1) % ENTRIES;
    }
    reg_write(dev, 0x18, u64::from(tail), 4);
}

/// Writes device RAM through BAR2.
pub fn ram_write(dev: &mut PciDevice<DmaEngine>, offset: u64, data: &[u8]) {
    dev.region_write(RAM_BAR as u32, offset, data).unwrap();
}
