//! Shared by the device tests: guest memory in a container, a driver for the dma-engine, and
//! a dma-engine served over a socket pair with the client-side steps of a migration.
#![allow(dead_code, unreachable_pub, clippy::cast_possible_truncation)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::thread;

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, PENDING_BYTES_OFFSET};
use vfmig_abi::uapi::{VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE};
use vfmig_device::devices::dma_engine::regs::{CONTROL_ENABLE, CONTROL_IRQ, Descriptor};
use vfmig_device::devices::dma_engine::{DmaEngine, RAM_BAR, REGS_BAR};
use vfmig_device::{MIGRATION_REGION_INDEX, PciDevice};
use vfmig_iommu::{Backing, Container};
use vfmig_memory::SharedMemory;
use vfmig_vfio_user::server::Backend;
use vfmig_vfio_user::{Client, ClientConfig, Connection, Errno, Limits, Server};

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

/// A dma-engine (1 MiB of device RAM) served on one end of a socket pair; the client on the
/// other.
pub fn serve(container: &Container) -> Client {
    let (client, server_end) = UnixStream::pair().unwrap();
    let device = PciDevice::new(DmaEngine::new(container.clone(), 1 << 20).unwrap()).unwrap();
    let server_container = container.clone();
    thread::spawn(move || {
        let mut server = Server::new(device, server_container, Limits::default());
        let conn = Connection::with_limits(server_end, Limits::default()).unwrap();
        server.serve_connection(conn)
    });
    Client::from_stream(client, ClientConfig::default()).unwrap()
}

/// Writes the migration region's `device_state`.
pub fn set_state(c: &Client, s: DeviceState) -> Result<(), Errno> {
    c.region_write(MIGRATION_REGION_INDEX, 0, &s.raw().to_le_bytes())
        .map_err(|e| e.errno())
}

/// A `u64` register of the migration region.
pub fn migration_u64(c: &Client, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(MIGRATION_REGION_INDEX, offset, &mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

/// Reads chunks until `pending_bytes` is 0.
pub fn drain(c: &Client) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while migration_u64(c, PENDING_BYTES_OFFSET) > 0 {
        let offset = migration_u64(c, DATA_OFFSET_OFFSET);
        let size = migration_u64(c, DATA_SIZE_OFFSET);
        let mut chunk = vec![0u8; size as usize];
        c.region_read(MIGRATION_REGION_INDEX, offset, &mut chunk)
            .unwrap();
        chunks.push(chunk);
    }
    chunks
}

/// Hands one chunk to a resuming device.
pub fn send_chunk(c: &Client, chunk: &[u8]) -> Result<(), Errno> {
    let offset = migration_u64(c, DATA_OFFSET_OFFSET);
    c.region_write(MIGRATION_REGION_INDEX, offset, chunk)
        .and_then(|()| {
            c.region_write(
                MIGRATION_REGION_INDEX,
                DATA_SIZE_OFFSET,
                &(chunk.len() as u64).to_le_bytes(),
            )
        })
        .map_err(|e| e.errno())
}
