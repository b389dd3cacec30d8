//! The dma-engine's behaviour: descriptors move data, writes to guest memory are reported dirty,
//! the ring stays pinned (and dirty) while enabled, an unmapped ring is noticed.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::*;
use vfmig_abi::uapi::VFIO_DMA_UNMAP_FLAG_ALL;
use vfmig_device::devices::dma_engine::RAM_BAR;
use vfmig_device::devices::dma_engine::regs::{DONE, Descriptor, Op, STATUS_RING_LOST};
use vfmig_dirty::bitmap_bytes;
use vfmig_iommu::{BitmapRequest, CONTAINER_PAGE_SIZE, Container, GetBitmapRange, UnmapRequest};
use vfmig_vfio_user::server::Backend;

fn dirty_pages(c: &Container) -> Vec<u64> {
    let words = (bitmap_bytes(GUEST / 4096) / 8) as usize;
    let mut out = vec![0u64; words];
    let range = GetBitmapRange {
        iova: 0,
        size: GUEST,
        bitmap: BitmapRequest {
            pgsize: CONTAINER_PAGE_SIZE,
            size: words as u64 * 8,
        },
    };
    c.get_dirty_bitmap(&range, &mut out).unwrap();
    (0..GUEST / 4096)
        .filter(|p| out[(p / 64) as usize] & (1 << (p % 64)) != 0)
        .collect()
}

fn desc(op: Op, guest: u64, device: u64, len: u32, fill: u8) -> Descriptor {
    Descriptor {
        op,
        irq: false,
        guest,
        device,
        len,
        fill,
    }
}

#[test]
fn copies_move_data_between_guest_memory_and_device_ram() {
    let (mem, container) = guest();
    let mut dev = engine(&container, 1 << 20);
    mem.write(0x30_0000, b"from the guest").unwrap();
    submit(
        &mut dev,
        &mem,
        &[
            desc(Op::CopyToDevice, 0x30_0000, 0x100, 14, 0),
            desc(Op::CopyToGuest, 0x40_0000, 0x100, 14, 0),
        ],
    );
    let mut back = [0u8; 14];
    mem.read(0x40_0000, &mut back).unwrap();
    assert_eq!(&back, b"from the guest");
    let mut ram = [0u8; 14];
    dev.region_read(RAM_BAR as u32, 0x100, &mut ram).unwrap();
    assert_eq!(&ram, b"from the guest");
}

#[test]
fn completions_are_written_into_the_descriptor() {
    let (mem, container) = guest();
    let mut dev = engine(&container, 1 << 20);
    submit(
        &mut dev,
        &mem,
        &[
            desc(Op::FillDevice, 0, 0, 16, 7),
            desc(Op::FillDevice, 0, 1 << 20, 16, 7),
        ],
    );
    let word = |i: u64| {
        let mut b = [0u8; 4];
        mem.read(RING + i * 32 + 28, &mut b).unwrap();
        u32::from_le_bytes(b)
    };
    assert_eq!(word(0), DONE);
    assert_eq!(word(1), DONE | libc::EINVAL as u32, "outside device RAM");
    assert_eq!(reg_read(&mut dev, 0x28, 8), 2, "COMPLETED");
}

#[test]
fn writes_to_guest_memory_are_reported_dirty() {
    let (mem, container) = guest();
    let mut dev = engine(&container, 1 << 20);
    container.start_dirty_tracking().unwrap();
    submit(
        &mut dev,
        &mem,
        &[desc(Op::FillGuest, 0x50_0000, 0, 8192, 1)],
    );
    let pages = dirty_pages(&container);
    assert!(pages.contains(&0x500) && pages.contains(&0x501));
    assert!(!pages.contains(&0x502));
}

#[test]
fn the_pinned_ring_is_reported_dirty_on_every_get() {
    let (_mem, container) = guest();
    let _dev = engine(&container, 1 << 20);
    container.start_dirty_tracking().unwrap();
    let ring_page = RING / 4096;
    assert!(dirty_pages(&container).contains(&ring_page));
    assert!(dirty_pages(&container).contains(&ring_page));
}

#[test]
fn reads_from_guest_memory_are_not_reported_dirty() {
    let (mem, container) = guest();
    let mut dev = engine(&container, 1 << 20);
    container.start_dirty_tracking().unwrap();
    dirty_pages(&container);
    submit(
        &mut dev,
        &mem,
        &[desc(Op::CopyToDevice, 0x60_0000, 0, 4096, 0)],
    );
    assert!(!dirty_pages(&container).contains(&0x600));
}

#[test]
fn unmapping_the_ring_unpins_it_and_the_device_notices() {
    let (mem, container) = guest();
    let mut dev = engine(&container, 1 << 20);
    let all = UnmapRequest {
        flags: VFIO_DMA_UNMAP_FLAG_ALL,
        iova: 0,
        size: 0,
        bitmap: None,
    };
    assert_eq!(container.unmap_dma(&all, None).unwrap(), GUEST);
    assert_eq!(container.pinned_pages(), 0);
    reg_write(&mut dev, 0x18, 1, 4);
    assert_eq!(reg_read(&mut dev, 0x20, 4) as u32, STATUS_RING_LOST);
    drop(mem);
}

#[test]
fn a_descriptor_outside_guest_memory_fails_with_efault() {
    let (mem, container) = guest();
    let mut dev = engine(&container, 1 << 20);
    submit(
        &mut dev,
        &mem,
        &[desc(Op::CopyToGuest, GUEST + 4096, 0, 8, 0)],
    );
    assert_eq!(reg_read(&mut dev, 0x20, 4) as i32, libc::EFAULT);
}

#[test]
fn device_ram_sizes_must_be_powers_of_two() {
    let (_mem, container) = guest();
    assert!(vfmig_device::devices::dma_engine::DmaEngine::new(container, 3 << 20).is_err());
}

#[test]
fn an_all_mapped_engine_pins_nothing_and_makes_every_get_report_all_pages() {
    use vfmig_device::PciDevice;
    use vfmig_device::devices::dma_engine::DmaEngine;
    use vfmig_iommu::DirtyScope;
    let (mem, container) = guest();
    let engine = DmaEngine::with_scope(container.clone(), 1 << 20, DirtyScope::AllMapped).unwrap();
    let mut dev = PciDevice::new(engine).unwrap();
    reg_write(&mut dev, 0x08, RING, 8);
    reg_write(&mut dev, 0x10, u64::from(ENTRIES), 4);
    reg_write(&mut dev, 0x14, 1, 4);
    assert_eq!(container.pinned_pages(), 0);
    container.start_dirty_tracking().unwrap();
    submit(&mut dev, &mem, &[desc(Op::FillGuest, 0x50_0000, 0, 16, 3)]);
    let mut b = [0u8; 16];
    mem.read(0x50_0000, &mut b).unwrap();
    assert_eq!(b, [3; 16], "descriptors still run");
    assert_eq!(dirty_pages(&container).len() as u64, GUEST / 4096);
    assert_eq!(
        dirty_pages(&container).len() as u64,
        GUEST / 4096,
        "on every GET"
    );
}

/// Guest memory the container does not map: every access is a call to its owner, as a
/// vfio-user server's DMA_READ / DMA_WRITE to its client.
struct Owner(vfmig_memory::SharedMemory);

impl vfmig_iommu::RemoteMemory for Owner {
    fn read(&self, iova: vfmig_memory::Iova, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read(iova.raw(), buf)
    }
    fn write(&self, iova: vfmig_memory::Iova, data: &[u8]) -> std::io::Result<()> {
        self.0.write(iova.raw(), data)
    }
}

#[test]
fn a_ring_in_memory_without_an_fd_is_reached_by_copies() {
    let owner = std::sync::Arc::new(Owner(
        vfmig_memory::SharedMemory::new(c"remote", GUEST as usize).unwrap(),
    ));
    let container = Container::default();
    container
        .map_dma(
            vfmig_abi::uapi::VFIO_DMA_MAP_FLAG_READ | vfmig_abi::uapi::VFIO_DMA_MAP_FLAG_WRITE,
            0,
            GUEST,
            vfmig_iommu::Backing::Remote(owner.clone()),
        )
        .unwrap();
    // Enabling the ring cannot pin it: the device takes it by copies instead.
    let mut dev = engine(&container, 1 << 20);
    assert_eq!(reg_read(&mut dev, 0x20, 4), 0, "STATUS after enable");
    assert_eq!(container.pinned_pages(), 0);
    submit(
        &mut dev,
        &owner.0,
        &[desc(Op::FillGuest, 0x50_0000, 0, 16, 9)],
    );
    let mut filled = [0u8; 16];
    owner.0.read(0x50_0000, &mut filled).unwrap();
    assert_eq!(filled, [9; 16]);
    let mut word = [0u8; 4];
    owner.0.read(RING + 28, &mut word).unwrap();
    assert_eq!(u32::from_le_bytes(word), DONE, "completion written by copy");
}
