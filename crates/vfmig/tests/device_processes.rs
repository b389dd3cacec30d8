//! End to end: device processes started with `vfmig device`, driven by the vfio-user client,
//! their state moved from one process to another through the v1 migration region.
#![allow(clippy::cast_possible_truncation, missing_docs)]

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, PENDING_BYTES_OFFSET};
use vfmig_device::MIGRATION_REGION_INDEX;
use vfmig_device::devices::dma_engine::regs::{CONTROL_ENABLE, DONE, Descriptor, Op};
use vfmig_iommu::{Iova, Prot};
use vfmig_memory::SharedMemory;
use vfmig_vfio_user::Client;

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use common::device::{DeviceProcess, reg_read, reg_write};

fn set_state(c: &Client, s: DeviceState) {
    c.region_write(MIGRATION_REGION_INDEX, 0, &s.raw().to_le_bytes())
        .unwrap();
}

fn read_u64(c: &Client, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(MIGRATION_REGION_INDEX, offset, &mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

/// Drains the chunks pending now, calling `work` before each.
fn drain(c: &Client, chunks: &mut Vec<Vec<u8>>, mut work: impl FnMut()) -> u64 {
    let mut bytes = 0;
    loop {
        work();
        if read_u64(c, PENDING_BYTES_OFFSET) == 0 {
            return bytes;
        }
        let offset = read_u64(c, DATA_OFFSET_OFFSET);
        let mut data = vec![0u8; read_u64(c, DATA_SIZE_OFFSET) as usize];
        c.region_read(MIGRATION_REGION_INDEX, offset, &mut data)
            .unwrap();
        bytes += data.len() as u64;
        chunks.push(data);
    }
}

fn resume(c: &Client, chunks: &[Vec<u8>]) {
    set_state(c, DeviceState::RESUMING);
    for chunk in chunks {
        let offset = read_u64(c, DATA_OFFSET_OFFSET);
        c.region_write(MIGRATION_REGION_INDEX, offset, chunk)
            .unwrap();
        c.region_write(
            MIGRATION_REGION_INDEX,
            DATA_SIZE_OFFSET,
            &(chunk.len() as u64).to_le_bytes(),
        )
        .unwrap();
    }
    set_state(c, DeviceState::RUNNING);
}

#[test]
fn mtty_registers_and_fifo_move_between_device_processes() {
    let (a, b) = (
        DeviceProcess::start(&["mtty"], "mtty-a"),
        DeviceProcess::start(&["mtty"], "mtty-b"),
    );
    let (src, dst) = (a.connect(), b.connect());
    for &byte in b"vfmig" {
        src.region_write(0, 0, &[byte]).unwrap();
    }
    src.region_write(1, 7, &[0x42]).unwrap();
    let mut chunks = Vec::new();
    set_state(&src, DeviceState::PRE_COPY);
    drain(&src, &mut chunks, || {});
    set_state(&src, DeviceState::STOP_COPY);
    drain(&src, &mut chunks, || {});
    set_state(&src, DeviceState::STOP);
    resume(&dst, &chunks);
    let mut got = Vec::new();
    for _ in 0..5 {
        let mut byte = [0u8];
        dst.region_read(0, 0, &mut byte).unwrap();
        got.push(byte[0]);
    }
    assert_eq!(got, b"vfmig");
    let mut scr = [0u8];
    dst.region_read(1, 7, &mut scr).unwrap();
    assert_eq!(scr[0], 0x42);
}

const GUEST: u64 = 8 << 20;
const RING: u64 = 0x10_0000;

fn submit(c: &Client, guest: &SharedMemory, d: &Descriptor) {
    let tail = reg_read(c, 0x18, 4);
    guest.write(RING + tail * 32, &d.encode()).unwrap();
    reg_write(c, 0x18, (tail + 1) % 16, 4);
}

#[test]
fn dma_engine_device_ram_precopies_over_several_rounds_between_processes() {
    let guest = SharedMemory::new(c"guest", GUEST as usize).unwrap();
    guest.write(0x20_0000, &[0xab; 4096]).unwrap();
    let args = ["dma-engine", "--ram-mib", "4"];
    let (a, b) = (
        DeviceProcess::start(&args, "dma-a"),
        DeviceProcess::start(&args, "dma-b"),
    );
    let (src, dst) = (a.connect(), b.connect());
    for c in [&src, &dst] {
        c.dma_map(Iova(0), GUEST, Prot::READ_WRITE, Some((guest.fd(), 0)))
            .unwrap();
    }
    reg_write(&src, 0x08, RING, 8);
    reg_write(&src, 0x10, 16, 4);
    reg_write(&src, 0x14, u64::from(CONTROL_ENABLE), 4);
    src.region_write(2, 0x1000, b"device ram").unwrap();

    let mut chunks = Vec::new();
    let mut rounds = Vec::new();
    set_state(&src, DeviceState::PRE_COPY);
    for round in 0..3u64 {
        let mut n = 0u64;
        rounds.push(drain(&src, &mut chunks, || {
            n += 1;
            if n.is_multiple_of(8) {
                src.region_write(2, 0x2000 + round * 4096, &n.to_le_bytes())
                    .unwrap();
                submit(
                    &src,
                    &guest,
                    &Descriptor {
                        op: Op::CopyToDevice,
                        irq: false,
                        guest: 0x20_0000,
                        device: 0x3000,
                        len: 4096,
                        fill: 0,
                    },
                );
            }
        }));
    }
    set_state(&src, DeviceState::STOP_COPY);
    let stop_copy = drain(&src, &mut chunks, || {});
    set_state(&src, DeviceState::STOP);
    assert!(
        rounds[1] < rounds[0] / 8,
        "later rounds carry only changed pages: {rounds:?}"
    );
    assert!(
        stop_copy < rounds[0] / 8,
        "stop-and-copy is small: {stop_copy} vs {rounds:?}"
    );

    resume(&dst, &chunks);
    let mut ram = vec![0u8; 4 << 20];
    let mut want = vec![0u8; 4 << 20];
    dst.region_read(2, 0, &mut ram).unwrap();
    set_state(&src, DeviceState::RUNNING);
    src.region_read(2, 0, &mut want).unwrap();
    assert!(ram == want, "device RAM differs after migration");
    // The destination runs the ring it inherited.
    submit(
        &dst,
        &guest,
        &Descriptor {
            op: Op::FillGuest,
            irq: false,
            guest: 0x30_0000,
            device: 0,
            len: 16,
            fill: 7,
        },
    );
    let tail = reg_read(&dst, 0x18, 4);
    let mut word = [0u8; 4];
    guest
        .read(RING + (tail + 15) % 16 * 32 + 28, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), DONE);
    let mut filled = [0u8; 16];
    guest.read(0x30_0000, &mut filled).unwrap();
    assert_eq!(filled, [7; 16]);
}

#[test]
fn the_migration_data_section_can_be_read_and_written_through_mmap() {
    let (a, b) = (
        DeviceProcess::start(&["mtty"], "mtty-mmap-a"),
        DeviceProcess::start(&["mtty"], "mtty-mmap-b"),
    );
    let (src, dst) = (a.connect(), b.connect());
    src.region_write(0, 0, b"m").unwrap();
    // The source's chunks read through its mmapped data section instead of REGION_READ.
    let region = src.region_info(MIGRATION_REGION_INDEX).unwrap();
    let area = region.mmap_area(0).unwrap();
    let base = region.sparse_areas[0].offset;
    set_state(&src, DeviceState::STOP_COPY);
    let mut chunks = Vec::new();
    while read_u64(&src, PENDING_BYTES_OFFSET) > 0 {
        let offset = read_u64(&src, DATA_OFFSET_OFFSET);
        let mut chunk = vec![0u8; read_u64(&src, DATA_SIZE_OFFSET) as usize];
        area.read_bytes((offset - base) as usize, &mut chunk)
            .unwrap();
        chunks.push(chunk);
    }
    set_state(&src, DeviceState::STOP);
    // Written into the destination's mmapped data section, each followed by data_size.
    let region = dst.region_info(MIGRATION_REGION_INDEX).unwrap();
    let area = region.mmap_area(0).unwrap();
    let base = region.sparse_areas[0].offset;
    set_state(&dst, DeviceState::RESUMING);
    for chunk in &chunks {
        let offset = read_u64(&dst, DATA_OFFSET_OFFSET);
        area.write_bytes((offset - base) as usize, chunk).unwrap();
        let size = chunk.len() as u64;
        dst.region_write(
            MIGRATION_REGION_INDEX,
            DATA_SIZE_OFFSET,
            &size.to_le_bytes(),
        )
        .unwrap();
    }
    set_state(&dst, DeviceState::RUNNING);
    let mut byte = [0u8];
    dst.region_read(0, 0, &mut byte).unwrap();
    assert_eq!(&byte, b"m");
}
