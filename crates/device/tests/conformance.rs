//! Every migratable device passes the same check: saved in pre-copy while it keeps working,
//! stop-and-copy, resumed into a fresh device, the whole state compared.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::*;
use vfmig_device::PciDevice;
use vfmig_device::conformance::check;
use vfmig_device::devices::dma_engine::regs::{Descriptor, Op};
use vfmig_device::devices::mtty::Mtty;
use vfmig_iommu::Container;
use vfmig_vfio_user::server::Backend;

#[test]
fn mtty_migrates_registers_and_fifo_contents_while_working() {
    let mut src = PciDevice::new(Mtty::new()).unwrap();
    let mut dst = PciDevice::new(Mtty::new()).unwrap();
    src.region_write(0, 3, &[0x03]).unwrap(); // LCR 8N1
    src.region_write(1, 2, &[0x41]).unwrap(); // FCR: FIFO on, trigger 4
    let mut n = 0u8;
    let moved = check(&mut src, &mut dst, 2, |dev| {
        n = n.wrapping_add(1);
        dev.region_write(0, 0, &[n]).unwrap(); // THR: into port 0's FIFO
        dev.region_write(1, 7, &[n]).unwrap(); // SCR of port 1
    })
    .unwrap();
    assert!(moved.stop_copy_bytes > 0);
    let mut b = [0u8];
    dst.region_read(0, 0, &mut b).unwrap();
    assert_eq!(
        b[0], 1,
        "the first byte written on the source is read on the destination"
    );
}

#[test]
fn dma_engine_migrates_device_ram_over_several_precopy_rounds() {
    let (mem, container) = guest();
    mem.write(0x20_0000, &[0x5a; 8192]).unwrap();
    let mut src = engine(&container, 1 << 20);
    let dst_container = Container::default();
    map(&dst_container, &mem);
    let mut dst = PciDevice::new(
        vfmig_device::devices::dma_engine::DmaEngine::new(dst_container, 1 << 20).unwrap(),
    )
    .unwrap();
    let mut i = 0u64;
    let mut submitted = 0u64;
    let moved = check(&mut src, &mut dst, 3, |dev| {
        i += 1;
        if i.is_multiple_of(4) {
            // Keep a few pages changing: RAM writes and DMA into device RAM.
            ram_write(dev, (i % 16) * 4096, &i.to_le_bytes());
            submit(
                dev,
                &mem,
                &[
                    Descriptor {
                        op: Op::CopyToDevice,
                        irq: false,
                        guest: 0x20_0000,
                        device: 0x8000 + (i % 8) * 4096,
                        len: 4096,
                        fill: 0,
                    },
                    Descriptor {
                        op: Op::FillDevice,
                        irq: false,
                        guest: 0,
                        device: 0x40000,
                        len: 100,
                        fill: i as u8,
                    },
                ],
            );
            submitted += 2;
        }
    })
    .unwrap();
    let rounds = &moved.precopy_rounds;
    assert!(
        rounds[1] < rounds[0] / 4,
        "later rounds send only what changed: {rounds:?}"
    );
    assert_eq!(reg_read(&mut dst, 0x28, 8), submitted, "COMPLETED migrated");
}

#[test]
fn dma_engine_sends_zero_pages_without_their_data() {
    let (_mem, container) = guest();
    let mut src = engine(&container, 1 << 20);
    let moved = vfmig_device::conformance::save(&mut src, 1, |_| {}).unwrap();
    let bytes: usize = moved.chunks.iter().map(Vec::len).sum();
    assert!(bytes < 64 << 10, "256 zero pages cost {bytes} bytes");
}

#[test]
fn dma_engine_keeps_a_failure_status_across_migration() {
    let (mem, container) = guest();
    let mut src = engine(&container, 1 << 20);
    // A descriptor outside device RAM fails with EINVAL: STATUS says so.
    submit(
        &mut src,
        &mem,
        &[Descriptor {
            op: Op::FillDevice,
            irq: false,
            guest: 0,
            device: 2 << 20,
            len: 8,
            fill: 0,
        }],
    );
    assert_eq!(reg_read(&mut src, 0x20, 4), libc::EINVAL as u64);
    let dst_container = Container::default();
    map(&dst_container, &mem);
    let mut dst = PciDevice::new(
        vfmig_device::devices::dma_engine::DmaEngine::new(dst_container, 1 << 20).unwrap(),
    )
    .unwrap();
    check(&mut src, &mut dst, 1, |_| {}).unwrap();
    assert_eq!(reg_read(&mut dst, 0x20, 4), libc::EINVAL as u64);
}
