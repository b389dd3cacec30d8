//! File descriptors arrive and are usable: guest memory passed with DMA_MAP, the region file
//! the client mmaps, the eventfd the device signals.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use common::dummy::{
    BAR, CONFIG, IRQ, REG_DMA_ADDR, REG_DMA_LEN, REG_DMA_PATTERN, REG_DMA_READ, REG_DMA_SUM,
    REG_DMA_WRITE, REG_IRQ,
};
use common::*;
use vfmig_abi::uapi::{VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ};
use vfmig_iommu::{Iova, Prot};
use vfmig_vfio_user::client::IrqValues;
use vfmig_vfio_user::message::{
    IrqAction, RegionCapsBuilder, RegionInfo, RegionInfoReply, Reply, Request, SparseMmapArea,
};
use vfmig_vfio_user::{Client, ClientConfig, ClientError, Errno};

const GUEST: u64 = 0x1_0000_0000;

fn write_reg(client: &Client, reg: u64, value: u64) {
    client.region_write(BAR, reg, &value.to_le_bytes()).unwrap();
}

fn read_reg(client: &Client, reg: u64) -> u64 {
    let mut bytes = [0; 8];
    client.region_read(BAR, reg, &mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

/// Guest RAM in a memfd, mapped for the device at `GUEST`.
fn guest_ram(client: &Client, size: u64) -> File {
    let fd = memfd(size);
    client
        .dma_map(Iova(GUEST), size, Prot::READ_WRITE, Some((fd.as_fd(), 0)))
        .unwrap();
    File::from(fd)
}

#[test]
fn a_device_write_into_a_mapped_memfd_is_seen_by_the_client() {
    let (client, server) = connect();
    let ram = guest_ram(&client, 16 * CONTAINER_PAGE_SIZE.bytes());
    server
        .container
        .write(Iova(GUEST + 0x1234), b"from the device")
        .unwrap();
    let mut seen = [0; 15];
    ram.read_exact_at(&mut seen, 0x1234).unwrap();
    assert_eq!(&seen, b"from the device");
}

#[test]
fn a_device_dma_started_by_a_region_write_lands_in_the_memfd() {
    let (client, _server) = connect();
    let ram = guest_ram(&client, 16 * CONTAINER_PAGE_SIZE.bytes());
    write_reg(
        &client,
        REG_DMA_ADDR,
        GUEST + 3 * CONTAINER_PAGE_SIZE.bytes(),
    );
    write_reg(&client, REG_DMA_LEN, 100);
    write_reg(&client, REG_DMA_PATTERN, 0xab);
    write_reg(&client, REG_DMA_WRITE, 1);
    let mut seen = vec![0; 102];
    ram.read_exact_at(&mut seen, 3 * CONTAINER_PAGE_SIZE.bytes() - 1)
        .unwrap();
    assert_eq!(seen[0], 0);
    assert!(seen[1..101].iter().all(|&b| b == 0xab));
    assert_eq!(seen[101], 0);
}

#[test]
fn the_device_reads_what_the_client_put_in_the_memfd() {
    let (client, _server) = connect();
    let ram = guest_ram(&client, 16 * CONTAINER_PAGE_SIZE.bytes());
    ram.write_all_at(&[2; 50], 5 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap();
    write_reg(
        &client,
        REG_DMA_ADDR,
        GUEST + 5 * CONTAINER_PAGE_SIZE.bytes(),
    );
    write_reg(&client, REG_DMA_LEN, 60);
    write_reg(&client, REG_DMA_READ, 1);
    assert_eq!(read_reg(&client, REG_DMA_SUM), 100);
}

#[test]
fn a_mapping_at_an_fd_offset_maps_that_part_of_the_file() {
    let (client, server) = connect();
    let fd = memfd(8 * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(GUEST),
            2 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 4 * CONTAINER_PAGE_SIZE.bytes())),
        )
        .unwrap();
    server.container.write(Iova(GUEST), &[7]).unwrap();
    let mut byte = [0];
    File::from(fd)
        .read_exact_at(&mut byte, 4 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap();
    assert_eq!(byte, [7]);
}

#[test]
fn the_region_fd_is_mmapped_and_shared_with_the_device() {
    let (client, _server) = connect();
    let region = client.region_info(BAR).unwrap();
    let area = region.mmap_area(1).unwrap();
    assert_eq!(area.len(), 3 << 20);
    // Written through the mapping, read through the server.
    area.write_bytes(0x10, b"mmapped").unwrap();
    area.write::<u32>(0x100, 0xdead_beef).unwrap();
    let mut seen = [0; 7];
    client
        .region_read(BAR, (1 << 20) + 0x10, &mut seen)
        .unwrap();
    assert_eq!(&seen, b"mmapped");
    let mut word = [0; 4];
    client
        .region_read(BAR, (1 << 20) + 0x100, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
    // Written through the server, read through the mapping.
    client
        .region_write(
            BAR,
            (1 << 20) + 0x200,
            &0x1122_3344_5566_7788u64.to_le_bytes(),
        )
        .unwrap();
    assert_eq!(area.read::<u64>(0x200).unwrap(), 0x1122_3344_5566_7788);
}

#[test]
fn mmap_area_accesses_are_checked() {
    let (client, _server) = connect();
    let region = client.region_info(BAR).unwrap();
    let area = region.mmap_area(0).unwrap();
    assert_eq!(area.len(), 0x1000);
    assert_eq!(area.read::<u32>(0x1000).unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(area.read::<u32>(2).unwrap_err().errno(), Errno::EINVAL);
    assert!(area.write_bytes(0xfff, &[0, 0]).is_err());
    assert!(region.mmap_area(2).is_err());
    let config = client.region_info(CONFIG).unwrap();
    assert!(config.mmap_area(0).is_err());
}

#[test]
fn the_eventfd_given_with_set_irqs_is_signalled_by_the_device() {
    let (client, server) = connect();
    let fd = eventfd();
    client
        .set_irqs(
            IRQ,
            0,
            IrqAction::Trigger,
            IrqValues::Eventfds(&[fd.as_fd()]),
        )
        .unwrap();
    assert!(server.state.lock().unwrap().irq_eventfd.is_some());
    assert_eq!(eventfd_count(&fd), 0);
    write_reg(&client, REG_IRQ, 1);
    write_reg(&client, REG_IRQ, 1);
    assert_eq!(eventfd_count(&fd), 2);
}

#[test]
fn set_irqs_without_eventfds_deassigns() {
    let (client, server) = connect();
    let fd = eventfd();
    client
        .set_irqs(
            IRQ,
            0,
            IrqAction::Trigger,
            IrqValues::Eventfds(&[fd.as_fd()]),
        )
        .unwrap();
    client
        .set_irqs(IRQ, 0, IrqAction::Trigger, IrqValues::Deassign { count: 1 })
        .unwrap();
    assert!(server.state.lock().unwrap().irq_eventfd.is_none());
    write_reg(&client, REG_IRQ, 1);
    assert_eq!(eventfd_count(&fd), 0);
}

/// Asks for region 3, which a scripted server describes as one 2-page sparse-mmap area of
/// `file`, and returns the error of mapping that area.
fn map_error_of_an_area_in(file: OwnedFd) -> ClientError {
    let (client, server) = scripted(ClientConfig::default(), move |conn| {
        let info = RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP,
            index: 3,
            size: 2 * CONTAINER_PAGE_SIZE.bytes(),
            ..RegionInfo::default()
        };
        let area = SparseMmapArea {
            offset: 0,
            size: 2 * CONTAINER_PAGE_SIZE.bytes(),
        };
        for _ in 0..2 {
            let received = conn.recv().unwrap();
            let Ok(Request::DeviceGetRegionInfo(request)) = received.request(conn.limits()) else {
                panic!("expected GET_REGION_INFO");
            };
            let caps = RegionCapsBuilder::new().sparse_mmap(vec![area]).build();
            let reply = RegionInfoReply::for_request(request.argsz, info, caps).unwrap();
            let fds = if reply.caps.is_empty() {
                vec![]
            } else {
                vec![file.as_fd()]
            };
            conn.send_reply(&received.header, &Reply::DeviceGetRegionInfo(reply), &fds)
                .unwrap();
        }
    });
    let region = client.region_info(3).unwrap();
    assert!(region.fd.is_some());
    let err = region.mmap_area(0).unwrap_err();
    server.join().unwrap();
    err
}

#[test]
fn a_sparse_area_beyond_the_regions_file_is_refused() {
    let err = map_error_of_an_area_in(memfd(CONTAINER_PAGE_SIZE.bytes()));
    assert_eq!(err.errno(), Errno::EINVAL);
}

#[test]
fn a_sparse_area_in_a_file_the_server_could_shrink_is_refused() {
    // Big enough for the area, but not sealed against shrinking.
    let err = map_error_of_an_area_in(memfd(2 * CONTAINER_PAGE_SIZE.bytes()));
    assert_eq!(err.errno(), Errno::EINVAL);
}
