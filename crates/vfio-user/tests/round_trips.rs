//! Every command's round trip through our client and our server over a real socket pair,
//! with the dummy device.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::AsFd;

use common::dummy::{BAR, BAR_AREAS, BAR_SIZE, CONFIG, IRQ, REG_IRQ, REG_SCRATCH, REG_STOPPED};
use common::*;
use vfmig_abi::uapi::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfmig_iommu::{Iova, Prot};
use vfmig_vfio_user::client::IrqValues;
use vfmig_vfio_user::message::{Command, IrqAction};
use vfmig_vfio_user::{ClientConfig, ClientError, Errno, Limits};

fn remote_errno(err: ClientError) -> (Command, Errno) {
    match err {
        ClientError::Remote { command, errno } => (command, errno),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn version_records_the_servers_capabilities() {
    let (client, _server) = connect();
    let version = client.server_version();
    assert_eq!((version.major, version.minor), (0, 2));
    let caps = &version.capabilities;
    assert_eq!((caps.max_msg_fds, caps.max_data_xfer_size), (8, 1 << 20));
    let migration = caps.migration.unwrap();
    assert_eq!(migration.pgsize, Some(CONTAINER_PAGE_SIZE));
    assert_eq!(migration.max_bitmap_size, (4 << 20) + 4040);
    assert_eq!(client.transfer_size(), 1 << 20);
}

#[test]
fn a_device_without_migration_states_none() {
    let (stream, _server) = spawn_server_with(Limits::default(), false);
    let client = vfmig_vfio_user::Client::from_stream(stream, ClientConfig::default()).unwrap();
    assert!(client.server_version().capabilities.migration.is_none());
}

#[test]
fn device_info_round_trips() {
    let (client, _server) = connect();
    let info = client.device_info().unwrap();
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI);
    assert_eq!((info.num_regions, info.num_irqs), (2, 1));
}

#[test]
fn region_info_without_caps_comes_in_one_call() {
    let (client, _server) = connect();
    let region = client.region_info(CONFIG).unwrap();
    assert_eq!((region.index, region.size), (CONFIG, 256));
    assert!(region.readable() && region.writable());
    assert!(region.sparse_areas.is_empty() && region.fd.is_none());
    assert_eq!(region.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
}

#[test]
fn region_info_with_caps_takes_two_calls_and_brings_the_fd() {
    let (client, _server) = connect();
    let region = client.region_info(BAR).unwrap();
    assert_eq!(region.size, BAR_SIZE);
    assert_ne!(region.flags & VFIO_REGION_INFO_FLAG_CAPS, 0);
    assert_ne!(region.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert_eq!(region.region_type, Some((0x8086, 1)));
    assert_eq!(region.sparse_areas, BAR_AREAS);
    assert!(region.fd.is_some());
}

#[test]
fn region_info_of_a_missing_region_is_einval() {
    let (client, _server) = connect();
    let err = client.region_info(2).unwrap_err();
    assert_eq!(
        remote_errno(err),
        (Command::DeviceGetRegionInfo, Errno::EINVAL)
    );
}

#[test]
fn region_io_fds_of_a_region_are_none() {
    let (client, _server) = connect();
    let (reply, fds) = client.region_io_fds(BAR).unwrap();
    assert_eq!((reply.head.index, reply.head.count), (BAR, 0));
    assert!(reply.sub_regions.is_empty() && fds.is_empty());
}

#[test]
fn irq_info_round_trips() {
    let (client, _server) = connect();
    let info = client.irq_info(IRQ).unwrap();
    assert_eq!(info.count, 1);
    assert_eq!(info.flags, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE);
    let err = client.irq_info(1).unwrap_err();
    assert_eq!(
        remote_errno(err),
        (Command::DeviceGetIrqInfo, Errno::EINVAL)
    );
}

#[test]
fn set_irqs_beyond_the_vectors_is_einval() {
    let (client, _server) = connect();
    let err = client
        .set_irqs(IRQ, 1, IrqAction::Trigger, IrqValues::None { count: 1 })
        .unwrap_err();
    assert_eq!(remote_errno(err), (Command::DeviceSetIrqs, Errno::EINVAL));
}

#[test]
fn set_irqs_disable_reaches_the_device() {
    let (client, server) = connect();
    client
        .set_irqs(IRQ, 0, IrqAction::Trigger, IrqValues::None { count: 0 })
        .unwrap();
    assert_eq!(server.state.lock().unwrap().irq_disables, 1);
}

#[test]
fn region_write_then_read_round_trips() {
    let (client, server) = connect();
    client.region_write(CONFIG, 0x10, &[1, 2, 3, 4]).unwrap();
    let mut buf = [0; 4];
    client.region_read(CONFIG, 0x10, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
    assert_eq!(
        &server.state.lock().unwrap().config[0x10..0x14],
        &[1, 2, 3, 4]
    );
}

#[test]
fn region_access_beyond_the_region_is_einval() {
    let (client, _server) = connect();
    let err = client.region_read(CONFIG, 254, &mut [0; 4]).unwrap_err();
    assert_eq!(remote_errno(err), (Command::RegionRead, Errno::EINVAL));
    let err = client.region_write(5, 0, &[0]).unwrap_err();
    assert_eq!(remote_errno(err), (Command::RegionWrite, Errno::EINVAL));
}

#[test]
fn large_region_accesses_are_split_by_the_transfer_size() {
    // The server accepts 64 KiB per transfer: 3 MiB is 48 round trips each way.
    let limits = Limits {
        max_data_xfer_size: 64 << 10,
        ..Limits::default()
    };
    let (client, _server) = connect_with(ClientConfig::default(), limits);
    assert_eq!(client.transfer_size(), 64 << 10);
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    client.region_write(BAR, 1 << 20, &data).unwrap();
    let mut back = vec![0; data.len()];
    client.region_read(BAR, 1 << 20, &mut back).unwrap();
    assert!(back == data);
}

#[test]
fn reset_reaches_the_device() {
    let (client, server) = connect();
    client
        .region_write(BAR, REG_SCRATCH, &7u64.to_le_bytes())
        .unwrap();
    client.reset().unwrap();
    let state = server.state.lock().unwrap();
    assert_eq!((state.resets, state.reg(REG_SCRATCH)), (1, 0));
}

#[test]
fn dma_map_and_unmap_round_trip() {
    let (client, server) = connect();
    let fd = memfd(16 * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(0x10_0000),
            16 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    assert_eq!(
        server.container.mapping_list(),
        [(
            Iova(0x10_0000),
            16 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE
        )]
    );
    assert_eq!(
        client
            .dma_unmap(Iova(0x10_0000), 16 * CONTAINER_PAGE_SIZE.bytes(), false)
            .unwrap(),
        None
    );
    assert_eq!(server.container.mappings(), 0);
}

#[test]
fn dma_map_over_an_existing_mapping_is_refused_before_sending() {
    let (client, _server) = connect();
    let fd = memfd(2 * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(0),
            2 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    let err = client
        .dma_map(
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
            Some((fd.as_fd(), 0)),
        )
        .unwrap_err();
    assert!(matches!(err, ClientError::Overlap { .. }));
    assert_eq!(err.errno(), Errno::EEXIST);
}

#[test]
fn dma_map_refused_by_the_server_carries_its_errno() {
    let (client, _server) = connect();
    let fd = memfd(CONTAINER_PAGE_SIZE.bytes());
    // No protection: the container's EINVAL.
    let none = Prot {
        read: false,
        write: false,
    };
    let err = client
        .dma_map(
            Iova(0),
            CONTAINER_PAGE_SIZE.bytes(),
            none,
            Some((fd.as_fd(), 0)),
        )
        .unwrap_err();
    assert_eq!(remote_errno(err), (Command::DmaMap, Errno::EINVAL));
    // The refused mapping was forgotten: the same range maps now.
    client
        .dma_map(
            Iova(0),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
}

#[test]
fn dma_unmap_all_removes_every_mapping() {
    let (client, server) = connect();
    let fd = memfd(4 * CONTAINER_PAGE_SIZE.bytes());
    for i in 0..4 {
        client
            .dma_map(
                Iova(i * 0x10_0000),
                CONTAINER_PAGE_SIZE.bytes(),
                Prot::READ,
                Some((fd.as_fd(), i * CONTAINER_PAGE_SIZE.bytes())),
            )
            .unwrap();
    }
    client.dma_unmap_all().unwrap();
    assert_eq!(server.container.mappings(), 0);
    // The client forgot them too: the same ranges map again.
    client
        .dma_map(
            Iova(0),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
}

#[test]
fn the_device_state_policy_refuses_dma_map_when_stopped() {
    let (client, _server) = connect();
    client
        .region_write(BAR, REG_STOPPED, &1u64.to_le_bytes())
        .unwrap();
    let fd = memfd(CONTAINER_PAGE_SIZE.bytes());
    let err = client
        .dma_map(
            Iova(0),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
            Some((fd.as_fd(), 0)),
        )
        .unwrap_err();
    assert_eq!(remote_errno(err), (Command::DmaMap, Errno::EINVAL));
    // Region accesses are still served, and running again lets the map through.
    client
        .region_write(BAR, REG_STOPPED, &0u64.to_le_bytes())
        .unwrap();
    client
        .dma_map(
            Iova(0),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
}

#[test]
fn dirty_pages_start_get_stop_round_trip() {
    let (client, server) = connect();
    let fd = memfd(64 * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(0),
            64 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    client.dirty_pages_start().unwrap();
    assert!(server.container.is_tracking());
    server
        .container
        .write(Iova(5 * CONTAINER_PAGE_SIZE.bytes()), &[1])
        .unwrap();
    assert_eq!(
        pages_of(
            &client
                .dirty_pages_get(Iova(0), 64 * CONTAINER_PAGE_SIZE.bytes())
                .unwrap()
        ),
        [5]
    );
    // Read and cleared.
    assert!(
        pages_of(
            &client
                .dirty_pages_get(Iova(0), 64 * CONTAINER_PAGE_SIZE.bytes())
                .unwrap()
        )
        .is_empty()
    );
    client.dirty_pages_stop().unwrap();
    assert!(!server.container.is_tracking());
}

#[test]
fn dirty_pages_without_migration_support_is_enotsup() {
    let (stream, _server) = spawn_server_with(Limits::default(), false);
    let client = vfmig_vfio_user::Client::from_stream(stream, ClientConfig::default()).unwrap();
    let err = client.dirty_pages_start().unwrap_err();
    assert_eq!(remote_errno(err), (Command::DirtyPages, Errno::ENOTSUP));
}

#[test]
fn dirty_pages_get_before_start_is_einval() {
    let (client, _server) = connect();
    let err = client
        .dirty_pages_get(Iova(0), CONTAINER_PAGE_SIZE.bytes())
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EINVAL);
}

#[test]
fn dma_unmap_with_bitmap_returns_the_dirty_pages() {
    let (client, server) = connect();
    let fd = memfd(128 * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(0x4000_0000),
            128 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    client.dirty_pages_start().unwrap();
    for page in [0, 63, 64, 127] {
        server
            .container
            .write(Iova(0x4000_0000 + page * CONTAINER_PAGE_SIZE.bytes()), &[9])
            .unwrap();
    }
    let bitmap = client
        .dma_unmap(Iova(0x4000_0000), 128 * CONTAINER_PAGE_SIZE.bytes(), true)
        .unwrap()
        .unwrap();
    assert_eq!(pages_of(&bitmap), [0, 63, 64, 127]);
    assert_eq!(server.container.mappings(), 0);
}

#[test]
fn device_dma_read_of_fd_less_memory_is_served_by_the_client() {
    let memory = VecMemory::new(0x8000_0000, 4 * CONTAINER_PAGE_SIZE.bytes() as usize);
    memory.set(0x8000_0000 + 100, &[3; 10]);
    let config = ClientConfig {
        memory: Some(memory.clone()),
        ..ClientConfig::default()
    };
    let (client, server) = connect_with(config, Limits::default());
    client
        .dma_map(
            Iova(0x8000_0000),
            4 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            None,
        )
        .unwrap();
    let mut buf = [0; 20];
    server
        .container
        .read(Iova(0x8000_0000 + 95), &mut buf)
        .unwrap();
    assert_eq!(
        buf,
        [0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0]
    );
}

#[test]
fn an_fd_less_mapping_without_client_memory_is_refused() {
    let (client, _server) = connect();
    let err = client
        .dma_map(Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ, None)
        .unwrap_err();
    assert!(matches!(err, ClientError::NoMemory { .. }));
}

#[test]
fn set_irqs_trigger_without_data_fires_the_irq() {
    let (client, _server) = connect();
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
        .set_irqs(IRQ, 0, IrqAction::Trigger, IrqValues::None { count: 1 })
        .unwrap();
    assert_eq!(eventfd_count(&fd), 1);
    client
        .region_write(BAR, REG_IRQ, &1u64.to_le_bytes())
        .unwrap();
    assert_eq!(eventfd_count(&fd), 1);
}
