//! End to end: a `vfmig device dma-engine` process that a client's memory cannot end. A
//! mapping larger than its memfd is refused at DMA_MAP; a memfd the client shrinks after
//! mapping it fails the DMA that touches the part cut off (the descriptor's errno), and the
//! device process goes on serving.
#![allow(clippy::cast_possible_truncation, missing_docs)] // test sizes are small constants

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use common::device::{DeviceProcess, reg_read, reg_write};
use vfmig_device::devices::dma_engine::regs::{CONTROL_ENABLE, DONE, Descriptor, Op};
use vfmig_iommu::{Iova, Prot};
use vfmig_memory::{SharedMemory, memfd};
use vfmig_vfio_user::{Client, Errno};

const MIB: u64 = 1 << 20;
/// The descriptor ring: 16 descriptors at 1 MiB of guest memory.
const RING: u64 = MIB;
/// BAR0 registers.
const TAIL: u64 = 0x18;
const STATUS: u64 = 0x20;

/// Points the device at a 16-descriptor ring at [`RING`] and enables it.
fn enable_ring(c: &Client) {
    reg_write(c, 0x08, RING, 8);
    reg_write(c, 0x10, 16, 4);
    reg_write(c, 0x14, u64::from(CONTROL_ENABLE), 4);
}

/// Puts `d` in the ring in `guest`, rings the doorbell (the device runs it before it answers)
/// and returns the descriptor's completion word.
fn run(c: &Client, guest: &File, d: Descriptor) -> u32 {
    let tail = reg_read(c, TAIL, 4);
    let at = RING + tail * 32;
    guest.write_all_at(&d.encode(), at).unwrap();
    reg_write(c, TAIL, (tail + 1) % 16, 4);
    let mut word = [0u8; 4];
    guest.read_exact_at(&mut word, at + 28).unwrap();
    u32::from_le_bytes(word)
}

fn copy_to_device(guest: u64) -> Descriptor {
    Descriptor {
        op: Op::CopyToDevice,
        irq: false,
        guest,
        device: 0,
        len: 4096,
        fill: 0,
    }
}

fn fill_guest(guest: u64) -> Descriptor {
    Descriptor {
        op: Op::FillGuest,
        irq: false,
        guest,
        device: 0,
        len: 4096,
        fill: 0x5a,
    }
}

const EFAULT: u32 = libc::EFAULT.unsigned_abs();

#[test]
fn a_map_larger_than_its_memfd_is_refused_with_efault() {
    let mut dev = DeviceProcess::start(&["dma-engine", "--ram-mib", "1"], "short-memfd");
    let c = dev.connect();
    let guest = memfd(c"guest", MIB as usize).unwrap();
    let err = c
        .dma_map(
            Iova(0),
            16 * MIB,
            Prot::READ_WRITE,
            Some((guest.as_fd(), 0)),
        )
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EFAULT, "{err}");
    // Nothing was mapped, and the device serves on: the memfd maps at its real size.
    c.dma_map(Iova(0), MIB, Prot::READ_WRITE, Some((guest.as_fd(), 0)))
        .unwrap();
    assert!(dev.alive());
}

#[test]
fn a_dma_into_memory_the_client_cut_off_fails_and_the_device_keeps_serving() {
    let mut dev = DeviceProcess::start(&["dma-engine", "--ram-mib", "1"], "cut-memfd");
    let c = dev.connect();
    let guest = memfd(c"guest", (8 * MIB) as usize).unwrap();
    c.dma_map(Iova(0), 8 * MIB, Prot::READ_WRITE, Some((guest.as_fd(), 0)))
        .unwrap();
    enable_ring(&c);
    assert_eq!(run(&c, &guest, copy_to_device(4 * MIB)), DONE);

    // The client keeps 2 MiB (the ring among them) and cuts the rest off.
    guest.set_len(2 * MIB).unwrap();
    assert_eq!(run(&c, &guest, copy_to_device(4 * MIB)), DONE | EFAULT);
    assert_eq!(run(&c, &guest, fill_guest(6 * MIB)), DONE | EFAULT);
    assert_eq!(reg_read(&c, STATUS, 4), u64::from(EFAULT));
    assert!(dev.alive(), "the device process died");

    // It serves on: a descriptor in the memory kept runs, and lands.
    assert_eq!(run(&c, &guest, fill_guest(MIB / 2)), DONE);
    let mut filled = [0u8; 4096];
    guest.read_exact_at(&mut filled, MIB / 2).unwrap();
    assert_eq!(filled, [0x5a; 4096]);
    assert!(dev.alive());
}

#[test]
fn a_sealed_guest_memory_cannot_be_cut_under_the_device() {
    let dev = DeviceProcess::start(&["dma-engine", "--ram-mib", "1"], "sealed-memfd");
    let c = dev.connect();
    let guest = SharedMemory::new(c"guest", (4 * MIB) as usize).unwrap();
    c.dma_map(Iova(0), 4 * MIB, Prot::READ_WRITE, Some((guest.fd(), 0)))
        .unwrap();
    let file = File::from(guest.fd().try_clone_to_owned().unwrap());
    let err = file.set_len(MIB).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    enable_ring(&c);
    assert_eq!(run(&c, &file, fill_guest(3 * MIB)), DONE);
    let mut filled = [0u8; 16];
    guest.read(3 * MIB, &mut filled).unwrap();
    assert_eq!(filled, [0x5a; 16]);
}
