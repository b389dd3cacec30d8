//! Every malformed message gets its errno and the next good message still works; NO_REPLY
//! gets nothing; a header that cannot be framed drops the client, and the server takes the
//! next one. Bytes are sent raw with a `Connection`.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use common::*;
use vfmig_abi::uapi::{
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
};
use vfmig_vfio_user::message::{
    BitmapRange, BitmapRangeWire, Capabilities, Command, DeviceInfo, DirtyPages, DmaAccess, DmaMap,
    DmaUnmap, Header, IrqSet, MigrationCapability, Payload, RegionAccess, RegionInfo, Request,
    Version,
};
use vfmig_vfio_user::server::SessionEnd;
use vfmig_vfio_user::{ConnectionError, Limits};
use zerocopy::IntoBytes;

const EINVAL: Option<u32> = Some(libc::EINVAL as u32);

fn negotiated() -> (RawClient, TestServer) {
    let (stream, server) = spawn_server(Limits::default());
    (RawClient::negotiated(stream), server)
}

/// Sends `body` as `command` and checks the reply is `errno`, then that the server still
/// answers.
fn refused(command: Command, body: &[u8], errno: Option<u32>) {
    let (mut raw, _server) = negotiated();
    assert_eq!(raw.errno_of(command, body), errno, "{command}");
    raw.assert_alive();
}

#[test]
fn unknown_command_is_einval() {
    let (mut raw, _server) = negotiated();
    let header = Header {
        msg_id: raw.next_id(),
        cmd: 15,
        msg_size: 16,
        flags: 0,
        error_no: 0,
    };
    raw.send_raw(header, &[]);
    assert_eq!(raw.recv().header.error(), EINVAL);
    raw.assert_alive();
}

#[test]
fn a_stray_reply_from_the_client_is_ignored() {
    let (mut raw, _server) = negotiated();
    let command = Header::new_command(0x4242, Command::DmaRead, 16).unwrap();
    let reply = Header::new_reply(&command, 16).unwrap();
    raw.send_raw(reply, DmaAccess { addr: 0, count: 0 }.as_bytes());
    raw.assert_alive();
}

#[test]
fn dma_map_with_a_short_body_is_einval() {
    let body = DmaMap::new(3, 0, 0, CONTAINER_PAGE_SIZE.bytes()).as_bytes()[..31].to_vec();
    refused(Command::DmaMap, &body, EINVAL);
}

#[test]
fn dma_map_with_unknown_flags_is_einval() {
    let map = DmaMap {
        flags: 4,
        ..DmaMap::new(3, 0, 0, CONTAINER_PAGE_SIZE.bytes())
    };
    refused(Command::DmaMap, map.as_bytes(), EINVAL);
}

#[test]
fn dma_map_with_two_fds_is_einval() {
    let (mut raw, server) = negotiated();
    let (a, b) = (
        memfd(CONTAINER_PAGE_SIZE.bytes()),
        memfd(CONTAINER_PAGE_SIZE.bytes()),
    );
    let body = DmaMap::new(3, 0, 0, CONTAINER_PAGE_SIZE.bytes())
        .encode()
        .unwrap();
    let header = Header::new_command(raw.next_id(), Command::DmaMap, body.len()).unwrap();
    raw.send_raw_with_fds(header, &body, &[a.as_fd(), b.as_fd()]);
    assert_eq!(raw.recv().header.error(), EINVAL);
    assert_eq!(server.container.mappings(), 0);
    raw.assert_alive();
}

#[test]
fn dma_map_of_an_unaligned_range_is_the_containers_einval() {
    refused(
        Command::DmaMap,
        DmaMap::new(3, 0, 0x800, CONTAINER_PAGE_SIZE.bytes()).as_bytes(),
        EINVAL,
    );
}

#[test]
fn dma_unmap_all_with_a_range_is_einval() {
    let unmap = DmaUnmap {
        argsz: 24,
        flags: VFIO_DMA_UNMAP_FLAG_ALL,
        addr: CONTAINER_PAGE_SIZE.bytes(),
        size: CONTAINER_PAGE_SIZE.bytes(),
    };
    refused(Command::DmaUnmap, unmap.as_bytes(), EINVAL);
}

#[test]
fn dma_unmap_of_a_bisected_mapping_is_einval() {
    let (mut raw, _server) = negotiated();
    let fd = memfd(2 * CONTAINER_PAGE_SIZE.bytes());
    let body = DmaMap::new(3, 0, 0, 2 * CONTAINER_PAGE_SIZE.bytes())
        .encode()
        .unwrap();
    let header = Header::new_command(raw.next_id(), Command::DmaMap, body.len()).unwrap();
    raw.send_raw_with_fds(header, &body, &[fd.as_fd()]);
    assert_eq!(raw.recv().header.error(), None);
    let unmap = DmaUnmap {
        argsz: 24,
        flags: 0,
        addr: 0,
        size: CONTAINER_PAGE_SIZE.bytes(),
    };
    assert_eq!(raw.errno_of(Command::DmaUnmap, unmap.as_bytes()), EINVAL);
    raw.assert_alive();
}

#[test]
fn region_info_with_argsz_below_32_is_einval() {
    refused(
        Command::DeviceGetRegionInfo,
        RegionInfo::request(0, 31).as_bytes(),
        EINVAL,
    );
}

#[test]
fn region_read_above_max_data_xfer_size_is_einval() {
    let access = RegionAccess {
        offset: 0,
        region: 1,
        count: (1 << 20) + 1,
    };
    refused(Command::RegionRead, access.as_bytes(), EINVAL);
}

#[test]
fn region_write_whose_count_is_not_its_data_is_einval() {
    let access = RegionAccess {
        offset: 0,
        region: 0,
        count: 4,
    };
    let mut body = access.as_bytes().to_vec();
    body.extend_from_slice(&[1, 2, 3]);
    refused(Command::RegionWrite, &body, EINVAL);
}

#[test]
fn set_irqs_with_two_data_types_is_einval() {
    let set = IrqSet {
        argsz: 20,
        flags: VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: 0,
        start: 0,
        count: 1,
    };
    refused(Command::DeviceSetIrqs, set.as_bytes(), EINVAL);
}

#[test]
fn set_irqs_with_more_eventfds_than_vectors_is_einval() {
    let (mut raw, server) = negotiated();
    let (a, b) = (eventfd(), eventfd());
    let set = IrqSet {
        argsz: 20,
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: 0,
        start: 0,
        count: 1,
    };
    let header = Header::new_command(raw.next_id(), Command::DeviceSetIrqs, 20).unwrap();
    raw.send_raw_with_fds(header, set.as_bytes(), &[a.as_fd(), b.as_fd()]);
    assert_eq!(raw.recv().header.error(), EINVAL);
    assert!(server.state.lock().unwrap().irq_eventfd.is_none());
    raw.assert_alive();
}

#[test]
fn dirty_pages_with_two_operations_is_einval() {
    let dirty = DirtyPages { argsz: 8, flags: 3 };
    refused(Command::DirtyPages, dirty.as_bytes(), EINVAL);
}

#[test]
fn dirty_pages_get_with_a_wrong_bitmap_size_is_einval() {
    let range = BitmapRangeWire {
        iova: 0,
        size: 65 * CONTAINER_PAGE_SIZE.bytes(),
        pgsize: CONTAINER_PAGE_SIZE.bytes(),
        bitmap_size: 8,
    };
    let mut body = DirtyPages {
        argsz: 48,
        flags: 4,
    }
    .as_bytes()
    .to_vec();
    body.extend_from_slice(range.as_bytes());
    refused(Command::DirtyPages, &body, EINVAL);
}

#[test]
fn dirty_pages_get_with_argsz_above_the_limit_is_einval() {
    let range = BitmapRange::new(0, CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE);
    let mut body = DirtyPages {
        argsz: 64 << 20,
        flags: 4,
    }
    .as_bytes()
    .to_vec();
    body.extend_from_slice(range.to_wire().as_bytes());
    refused(Command::DirtyPages, &body, EINVAL);
}

#[test]
fn version_after_negotiation_is_einval() {
    let body = client_version().encode().unwrap();
    refused(Command::Version, &body, EINVAL);
}

#[test]
fn dma_read_from_the_client_is_einval() {
    refused(
        Command::DmaRead,
        DmaAccess { addr: 0, count: 4 }.as_bytes(),
        EINVAL,
    );
}

#[test]
fn a_message_with_too_many_fds_is_efault() {
    let (mut raw, _server) = negotiated();
    let fds: Vec<_> = (0..9).map(|_| eventfd()).collect();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let header = Header::new_command(raw.next_id(), Command::DeviceReset, 0).unwrap();
    raw.send_raw_with_fds(header, &[], &borrowed);
    assert_eq!(raw.recv().header.error(), Some(libc::EFAULT as u32));
    raw.assert_alive();
}

#[test]
fn no_reply_gets_no_reply_even_on_error() {
    let (mut raw, server) = negotiated();
    let good = DeviceInfo::request().encode().unwrap();
    let header = Header::new_command(raw.next_id(), Command::DeviceGetInfo, good.len()).unwrap();
    raw.send_raw(header.with_no_reply(), &good);
    let bad = DeviceInfo {
        argsz: 8,
        ..DeviceInfo::request()
    };
    let header = Header::new_command(raw.next_id(), Command::DeviceGetInfo, 16).unwrap();
    raw.send_raw(header.with_no_reply(), bad.as_bytes());
    let header = Header::new_command(raw.next_id(), Command::DeviceReset, 0).unwrap();
    raw.send_raw(header.with_no_reply(), &[]);
    // The next reply is the next command's: nothing came for the three before.
    raw.assert_alive();
    assert_eq!(server.state.lock().unwrap().resets, 1);
}

#[test]
fn msg_size_below_the_header_drops_the_client() {
    let (mut raw, server) = negotiated();
    let header = Header {
        msg_size: 8,
        ..Header::new_command(raw.next_id(), Command::DeviceReset, 0).unwrap()
    };
    raw.send_raw(header, &[]);
    assert_eq!(raw.recv().header.error(), EINVAL);
    assert!(matches!(raw.conn.recv(), Err(ConnectionError::Closed)));
    let ends = server.join();
    assert!(matches!(
        ends.as_slice(),
        [SessionEnd::Dropped(ConnectionError::BadHeader { .. })]
    ));
}

#[test]
fn msg_size_above_the_limit_drops_the_client() {
    let (mut raw, _server) = negotiated();
    let header = Header {
        msg_size: 64 << 20,
        ..Header::new_command(raw.next_id(), Command::RegionWrite, 0).unwrap()
    };
    raw.send_raw(header, &[]);
    assert_eq!(raw.recv().header.error(), EINVAL);
    assert!(matches!(raw.conn.recv(), Err(ConnectionError::Closed)));
}

#[test]
fn after_a_dropped_client_the_server_takes_the_next() {
    let (path, server) = spawn_listener(2);
    {
        let mut raw = RawClient::negotiated(UnixStream::connect(&path).unwrap());
        let header = Header {
            msg_size: 3,
            ..Header::new_command(raw.next_id(), Command::DeviceReset, 0).unwrap()
        };
        raw.send_raw(header, &[]);
        assert_eq!(raw.recv().header.error(), EINVAL);
    }
    let mut raw = RawClient::negotiated(UnixStream::connect(&path).unwrap());
    raw.assert_alive();
    drop(raw);
    let ends = server.join();
    assert!(matches!(ends[0], SessionEnd::Dropped(_)));
    assert!(matches!(ends[1], SessionEnd::Closed));
}

#[test]
fn a_message_cut_short_drops_the_client() {
    let (mut raw, server) = negotiated();
    let header = Header::new_command(raw.next_id(), Command::DmaMap, 32).unwrap();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[0; 10]);
    std::io::Write::write_all(&mut raw.conn.stream(), &bytes).unwrap();
    drop(raw);
    assert!(matches!(
        server.join().as_slice(),
        [SessionEnd::Dropped(ConnectionError::Truncated { .. })]
    ));
}

fn negotiation_refused(request: &Request<'_>) {
    let (stream, server) = spawn_server(Limits::default());
    let mut raw = RawClient::new(stream);
    assert_eq!(raw.request(request).header.error(), EINVAL);
    assert!(matches!(raw.conn.recv(), Err(ConnectionError::Closed)));
    assert!(matches!(
        server.join().as_slice(),
        [SessionEnd::NegotiationFailed { .. }]
    ));
}

#[test]
fn a_first_message_other_than_version_is_einval_and_dropped() {
    negotiation_refused(&Request::DeviceGetInfo(DeviceInfo::request()));
}

#[test]
fn version_major_other_than_zero_is_einval_and_dropped() {
    negotiation_refused(&Request::Version(Version {
        major: 1,
        ..client_version()
    }));
}

#[test]
fn version_with_a_pgsize_other_than_4096_is_einval_and_dropped() {
    negotiation_refused(&Request::Version(Version {
        capabilities: Capabilities {
            migration: Some(MigrationCapability {
                pgsize: Some(vfmig_dirty::PageSize::new(8192).unwrap()),
                max_bitmap_size: 1 << 20,
            }),
            ..Capabilities::default()
        },
        ..client_version()
    }));
}
