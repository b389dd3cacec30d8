//! The dma-engine's BAR4 over a real socket: a client maps it, its trapped accesses reach the
//! same memory, a migration carries it and its resume refuses malformed BAR4 sections.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::*;
use vfmig_abi::DeviceState;
use vfmig_device::DIGEST_REGION_INDEX;
use vfmig_device::devices::dma_engine::{SHARED_BAR, SHARED_SIZE};
use vfmig_vfio_user::{Client, Errno};

const BAR4: u32 = SHARED_BAR as u32;

fn digest(c: &Client) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(DIGEST_REGION_INDEX, 0, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A BAR4 section as the device's model sends it (the `PciDevice` tag byte first): `count`,
/// then `entries` as given.
fn shared_chunk(count: u32, entries: &[u8]) -> Vec<u8> {
    let mut c = vec![1u8];
    c.extend_from_slice(b"DMAE");
    c.extend_from_slice(&[3, 0, 0, 0]);
    c.extend_from_slice(&count.to_le_bytes());
    c.extend_from_slice(entries);
    c
}

/// A page entry: page number and flags.
fn entry(page: u32, flags: u32) -> Vec<u8> {
    [page.to_le_bytes(), flags.to_le_bytes()].concat()
}

#[test]
fn bar4_offers_one_sparse_mmap_area_over_64_kib_with_its_fd() {
    let (_mem, container) = guest();
    let c = serve(&container);
    let region = c.region_info(BAR4).unwrap();
    assert_eq!(region.size, SHARED_SIZE);
    assert_eq!(region.sparse_areas.len(), 1);
    assert_eq!(
        (region.sparse_areas[0].offset, region.sparse_areas[0].size),
        (0, SHARED_SIZE)
    );
    assert!(region.fd.is_some());
}

#[test]
fn a_store_through_the_mapping_is_read_back_by_a_trapped_read() {
    let (_mem, container) = guest();
    let c = serve(&container);
    let area = c.region_info(BAR4).unwrap().mmap_area(0).unwrap();
    area.write::<u64>(0x5008, 0x1234_5678_9abc_def0).unwrap();
    let mut b = [0u8; 8];
    c.region_read(BAR4, 0x5008, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1234_5678_9abc_def0);
}

#[test]
fn a_trapped_write_is_seen_through_the_mapping() {
    let (_mem, container) = guest();
    let c = serve(&container);
    let area = c.region_info(BAR4).unwrap().mmap_area(0).unwrap();
    c.region_write(BAR4, SHARED_SIZE - 8, &7u64.to_le_bytes())
        .unwrap();
    assert_eq!(area.read::<u64>(SHARED_SIZE as usize - 8).unwrap(), 7);
}

#[test]
fn bar4_written_during_pre_copy_reaches_the_destination_in_stop_and_copy() {
    let (_mem, container) = guest();
    let src = serve(&container);
    let dst = serve(&container);
    let src_area = src.region_info(BAR4).unwrap().mmap_area(0).unwrap();
    src_area.write_bytes(0, b"before pre-copy").unwrap();
    set_state(&src, DeviceState::PRE_COPY).unwrap();
    let mut chunks = drain(&src);
    // Written after pre-copy ran dry: only stop-and-copy can carry it.
    src_area.write_bytes(0x7ff0, b"during pre-copy").unwrap();
    set_state(&src, DeviceState::STOP_COPY).unwrap();
    chunks.extend(drain(&src));

    set_state(&dst, DeviceState::RESUMING).unwrap();
    for chunk in &chunks {
        send_chunk(&dst, chunk).unwrap();
    }
    set_state(&dst, DeviceState::RUNNING).unwrap();
    let dst_area = dst.region_info(BAR4).unwrap().mmap_area(0).unwrap();
    let (mut want, mut got) = (
        vec![0u8; SHARED_SIZE as usize],
        vec![1u8; SHARED_SIZE as usize],
    );
    src_area.read_bytes(0, &mut want).unwrap();
    dst_area.read_bytes(0, &mut got).unwrap();
    assert!(got == want, "BAR4 differs on the destination");
    assert_eq!(&got[0x7ff0..0x7fff], b"during pre-copy");
}

#[test]
fn the_digest_tells_devices_apart_by_bar4_alone() {
    let (_mem, container) = guest();
    let a = serve(&container);
    let b = serve(&container);
    assert_eq!(digest(&a), digest(&b));
    b.region_write(BAR4, 0xf000, &[1]).unwrap();
    assert_ne!(digest(&a), digest(&b));
}

#[test]
fn resume_refuses_truncated_page_data_in_bar4_and_the_device_still_serves() {
    let (_mem, container) = guest();
    let c = serve(&container);
    set_state(&c, DeviceState::RESUMING).unwrap();
    let short = shared_chunk(1, &[entry(0, 0), vec![0xaa; 100]].concat());
    assert_eq!(send_chunk(&c, &short), Err(Errno::EINVAL));
    c.region_write(BAR4, 0, &[5]).unwrap();
    let mut b = [0u8];
    c.region_read(BAR4, 0, &mut b).unwrap();
    assert_eq!(b, [5]);
}

#[test]
fn resume_refuses_more_bar4_pages_than_bar4_has() {
    let (_mem, container) = guest();
    let c = serve(&container);
    set_state(&c, DeviceState::RESUMING).unwrap();
    let entries: Vec<u8> = (0..17).flat_map(|p| entry(p % 16, 1)).collect();
    assert_eq!(
        send_chunk(&c, &shared_chunk(17, &entries)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        c.region_info(BAR4).unwrap().size,
        SHARED_SIZE,
        "still serves"
    );
}

#[test]
fn resume_refuses_a_bar4_page_past_its_end() {
    let (_mem, container) = guest();
    let c = serve(&container);
    set_state(&c, DeviceState::RESUMING).unwrap();
    assert_eq!(
        send_chunk(&c, &shared_chunk(1, &entry(16, 1))),
        Err(Errno::EINVAL)
    );
}

#[test]
fn resume_refuses_bytes_after_the_last_bar4_page() {
    let (_mem, container) = guest();
    let c = serve(&container);
    set_state(&c, DeviceState::RESUMING).unwrap();
    let long = shared_chunk(1, &[entry(0, 1), vec![0; 8]].concat());
    assert_eq!(send_chunk(&c, &long), Err(Errno::EINVAL));
}
