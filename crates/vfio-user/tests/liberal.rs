//! "Liberal in what we accept" (the crate docs list the rules): one test per rule, over real
//! sockets. Server rules are checked against the real server with raw bytes; client rules
//! against a scripted server that answers the way a reasonable peer might.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread;

use common::dummy::{BAR, REG_DMA_ADDR, REG_DMA_LEN, REG_DMA_PATTERN, REG_DMA_WRITE};
use common::*;
use vfmig_abi::uapi::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};
use vfmig_iommu::Container;
use vfmig_vfio_user::message::{
    Command, DeviceInfo, DirtyPages, DmaAccess, DmaMap, FLAGS_ERROR, FLAGS_TYPE_REPLY, Header,
    IrqSet, Payload, RegionAccess, RegionInfo, RegionIoFds, Reply, Request, SparseMmapArea,
};
use vfmig_vfio_user::server::{
    DeviceDescription, IrqDescription, IrqSetData, RegionDescription, RegionMmap,
};
use vfmig_vfio_user::{Backend, ClientConfig, Connection, Errno, Limits, Server};
use zerocopy::IntoBytes;

fn negotiated() -> (RawClient, TestServer) {
    let (stream, server) = spawn_server(Limits::default());
    (RawClient::negotiated(stream), server)
}

/// Sends `body` as `command` and returns its reply, which must be a success.
fn accepted(raw: &mut RawClient, command: Command, body: &[u8]) -> vfmig_vfio_user::Received {
    let sent = raw.send_body(command, body);
    let reply = raw.recv();
    assert_eq!(reply.header.msg_id, sent.msg_id);
    assert_eq!(reply.header.error(), None, "{command} refused");
    reply
}

/// Sends `body` after `header` (the reply to `request`) as it is.
fn reply_raw(conn: &mut Connection, request: &Header, header: Header, body: &[u8]) {
    let header = Header {
        msg_id: request.msg_id,
        cmd: request.cmd,
        msg_size: 16 + body.len() as u32,
        ..header
    };
    conn.send(&header, body, &[]).unwrap();
}

/// An error reply to `request` carrying `body` after the header, as libvfio-user sends one
/// to a failed region access.
fn error_with_body(conn: &mut Connection, request: &Header, errno: i32, body: &[u8]) {
    let header = Header {
        flags: FLAGS_TYPE_REPLY | FLAGS_ERROR,
        error_no: errno as u32,
        ..Header::default()
    };
    reply_raw(conn, request, header, body);
}

/// Answers the next DEVICE_GET_INFO, to show the session goes on.
fn answer_device_info(conn: &mut Connection) {
    let info = DeviceInfo {
        argsz: 16,
        flags: 3,
        num_regions: 2,
        num_irqs: 1,
    };
    answer(conn, Command::DeviceGetInfo, Reply::DeviceGetInfo(info));
}

// Rule 1: a body longer than its fixed part is read for that part.

/// The sample server's migration region as libvfio-user describes it: region 9, a type cap
/// (3, 1) and one sparse area, so its full info is 80 bytes.
struct SampleMigrationRegion {
    file: std::os::fd::OwnedFd,
}

impl Backend for SampleMigrationRegion {
    fn device_info(&self) -> DeviceDescription {
        DeviceDescription {
            flags: 3,
            num_regions: 10,
            num_irqs: 0,
        }
    }
    fn region_info(&self, index: u32) -> Result<RegionDescription<'_>, Errno> {
        (index == 9)
            .then(|| RegionDescription {
                size: 0x5000,
                readable: true,
                writable: true,
                region_type: Some((3, 1)),
                mmap: Some(RegionMmap {
                    fd: self.file.as_fd(),
                    offset: 0x3000,
                    areas: vec![SparseMmapArea {
                        offset: 0x1000,
                        size: 0x4000,
                    }],
                }),
            })
            .ok_or(Errno::EINVAL)
    }
    fn region_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn irq_info(&self, _: u32) -> Result<IrqDescription, Errno> {
        Err(Errno::EINVAL)
    }
    fn set_irqs(&mut self, _: &IrqSet, _: IrqSetData<'_>) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn reset(&mut self) -> Result<(), Errno> {
        Ok(())
    }
    fn check_command(&self, _: Command) -> Result<(), Errno> {
        Ok(())
    }
    fn migration_capable(&self) -> bool {
        true
    }
    fn client_gone(&mut self) {}
}

#[test]
fn a_96_byte_get_region_info_with_argsz_80_gets_the_caps() {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let backend = SampleMigrationRegion {
            file: memfd(0x8000),
        };
        let mut server = Server::new(backend, Container::default(), Limits::default());
        server.serve_connection(Connection::new(server_end).unwrap())
    });
    let mut raw = RawClient::negotiated(client_end);
    let mut body = RegionInfo::request(9, 80).as_bytes().to_vec();
    body.resize(80, 0);
    assert_eq!(16 + body.len(), 96);
    let reply = accepted(&mut raw, Command::DeviceGetRegionInfo, &body);
    assert_eq!(reply.header.msg_size, 16 + 80);
    let Reply::DeviceGetRegionInfo(info) = reply.reply(raw.conn.limits()).unwrap() else {
        panic!("not a region info");
    };
    assert_eq!((info.info.argsz, info.info.flags), (80, 0xf));
    assert_eq!(info.region_type(), Some((3, 1)));
    assert_eq!(info.sparse_areas().count(), 1);
    assert_eq!(reply.fds.len(), 1);
    drop(raw);
    server.join().unwrap();
}

#[test]
fn a_dma_map_and_a_dirty_pages_start_with_trailing_bytes_are_carried_out() {
    let (mut raw, server) = negotiated();
    let fd = memfd(CONTAINER_PAGE_SIZE.bytes());
    let mut map = DmaMap::new(3, 0, 0x10_0000, CONTAINER_PAGE_SIZE.bytes())
        .as_bytes()
        .to_vec();
    map.extend_from_slice(&[0xff; 8]);
    let header = Header::new_command(raw.next_id(), Command::DmaMap, map.len()).unwrap();
    raw.send_raw_with_fds(header, &map, &[fd.as_fd()]);
    assert_eq!(raw.recv().header.error(), None);
    assert_eq!(server.container.mappings(), 1);
    let start = DirtyPages { argsz: 8, flags: 1 };
    let body = [start.as_bytes(), &[0; 8]].concat();
    accepted(&mut raw, Command::DirtyPages, &body);
    assert!(server.container.is_tracking());
}

// Rule 2: SET_IRQS data beyond what its flags call for is ignored.

#[test]
fn set_irqs_with_the_kernels_eventfd_array_is_carried_out() {
    let (mut raw, server) = negotiated();
    let set = IrqSet {
        argsz: 24,
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: 0,
        start: 0,
        count: 1,
    };
    let eventfd = eventfd();
    let body = [set.as_bytes(), &7i32.to_le_bytes()].concat();
    let header = Header::new_command(raw.next_id(), Command::DeviceSetIrqs, body.len()).unwrap();
    raw.send_raw_with_fds(header, &body, &[eventfd.as_fd()]);
    assert_eq!(raw.recv().header.error(), None);
    assert!(server.state.lock().unwrap().irq_eventfd.is_some());
}

// Rule 3: an error reply is its errno, whatever follows the header.

#[test]
fn a_failed_region_write_answered_in_32_bytes_yields_its_errno_and_the_session_goes_on() {
    let (client, script) = scripted(ClientConfig::default(), |conn| {
        let write = conn.recv().unwrap();
        assert_eq!(write.header.cmd, Command::RegionWrite.code());
        // libvfio-user echoes the 16-byte access after the header.
        error_with_body(conn, &write.header, libc::EIO, &write.body[..16]);
        answer_device_info(conn);
    });
    let err = client.region_write(BAR, 0, &[1, 2, 3, 4]).unwrap_err();
    assert_eq!(err.errno(), Errno::new(libc::EIO));
    assert_eq!(client.device_info().unwrap().num_regions, 2);
    script.join().unwrap();
}

#[test]
fn a_failed_region_read_answered_in_36_bytes_yields_its_errno_and_the_session_goes_on() {
    let (client, script) = scripted(ClientConfig::default(), |conn| {
        let read = conn.recv().unwrap();
        assert_eq!(read.header.cmd, Command::RegionRead.code());
        let mut body = read.body.clone();
        body.extend_from_slice(&[0; 4]);
        error_with_body(conn, &read.header, libc::EINVAL, &body);
        answer_device_info(conn);
    });
    let mut buf = [0; 4];
    let err = client.region_read(BAR, 0, &mut buf).unwrap_err();
    assert_eq!(err.errno(), Errno::EINVAL);
    assert_eq!(client.device_info().unwrap().num_regions, 2);
    script.join().unwrap();
}

// Rule 4: a reply with no payload ignores a body.

#[test]
fn a_dma_map_reply_that_echoes_the_request_is_success() {
    let (client, script) = scripted(ClientConfig::default(), |conn| {
        let map = conn.recv().unwrap();
        assert_eq!(map.header.cmd, Command::DmaMap.code());
        let header = Header {
            flags: FLAGS_TYPE_REPLY,
            ..Header::default()
        };
        reply_raw(conn, &map.header, header, &map.body);
    });
    let _fd = map_one_page(&client);
    drop(client);
    script.join().unwrap();
}

// Rule 5: a GET_REGION_INFO reply may be padded.

#[test]
fn a_region_info_reply_padded_with_zeros_is_read() {
    let (client, script) = scripted(ClientConfig::default(), |conn| {
        let request = conn.recv().unwrap();
        let info = RegionInfo {
            argsz: 32,
            flags: 3,
            index: 0,
            cap_offset: 0,
            size: 256,
            offset: 0,
        };
        let body = [info.as_bytes(), &[0; 16]].concat();
        let header = Header {
            flags: FLAGS_TYPE_REPLY,
            ..Header::default()
        };
        reply_raw(conn, &request.header, header, &body);
    });
    let region = client.region_info(0).unwrap();
    assert_eq!((region.size, region.flags), (256, 3));
    drop(client);
    script.join().unwrap();
}

// Rule 6: a DMA_WRITE reply's count may be 4 bytes, as the spec's table draws it.

#[test]
fn a_dma_write_reply_with_a_4_byte_count_completes_the_devices_write() {
    const GUEST: u64 = 0x20_0000;
    let (mut raw, _server) = negotiated();
    let map = DmaMap::new(3, 0, GUEST, CONTAINER_PAGE_SIZE.bytes());
    accepted(&mut raw, Command::DmaMap, &map.encode().unwrap());
    for (reg, value) in [
        (REG_DMA_ADDR, GUEST + 8),
        (REG_DMA_LEN, 4),
        (REG_DMA_PATTERN, 9),
    ] {
        let write = [
            RegionAccess {
                offset: reg,
                region: BAR,
                count: 8,
            }
            .as_bytes(),
            &value.to_le_bytes(),
        ]
        .concat();
        accepted(&mut raw, Command::RegionWrite, &write);
    }
    let doorbell = [
        RegionAccess {
            offset: REG_DMA_WRITE,
            region: BAR,
            count: 8,
        }
        .as_bytes(),
        &1u64.to_le_bytes(),
    ]
    .concat();
    let sent = raw.send_body(Command::RegionWrite, &doorbell);
    let dma = raw.recv();
    let Request::DmaWrite(data) = dma.request(raw.conn.limits()).unwrap() else {
        panic!("expected the device's DMA_WRITE");
    };
    assert_eq!((data.access.addr, &*data.data), (GUEST + 8, &[9u8; 4][..]));
    let spec_reply = [&(GUEST + 8).to_le_bytes()[..], &4u32.to_le_bytes()].concat();
    let header = Header {
        flags: FLAGS_TYPE_REPLY,
        ..Header::default()
    };
    reply_raw(&mut raw.conn, &dma.header, header, &spec_reply);
    let done = raw.recv();
    assert_eq!(
        (done.header.msg_id, done.header.error()),
        (sent.msg_id, None)
    );
    assert_eq!(
        DmaAccess::decode_write_reply(&spec_reply).unwrap(),
        DmaAccess {
            addr: GUEST + 8,
            count: 4
        }
    );
}

// Rule 7: VERSION JSON need not end in a NUL.

#[test]
fn the_server_accepts_version_json_without_its_nul() {
    let (stream, _server) = spawn_server(Limits::default());
    let mut raw = RawClient::new(stream);
    let mut body = client_version().encode().unwrap();
    assert_eq!(body.pop(), Some(0));
    accepted(&mut raw, Command::Version, &body);
    raw.assert_alive();
}

#[test]
fn the_client_accepts_a_version_reply_without_its_nul() {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let script = thread::spawn(move || {
        let mut conn = Connection::new(server_end).unwrap();
        let version = conn.recv().unwrap();
        let json = br#"{"capabilities":{"max_msg_fds":4,"max_data_xfer_size":4096}}"#;
        let body = [&[0u8, 0, 2, 0][..], json].concat();
        let header = Header {
            flags: FLAGS_TYPE_REPLY,
            ..Header::default()
        };
        reply_raw(&mut conn, &version.header, header, &body);
    });
    let client = vfmig_vfio_user::Client::from_stream(client_end, ClientConfig::default()).unwrap();
    assert_eq!(client.server_version().capabilities.max_msg_fds, 4);
    assert_eq!(client.transfer_size(), 4096);
    drop(client);
    script.join().unwrap();
}

// Rule 8: header flag bits 6-31 are ignored.

#[test]
fn reserved_header_flag_bits_are_ignored() {
    let (mut raw, _server) = negotiated();
    let body = DeviceInfo::request().encode().unwrap();
    let header = Header {
        flags: 0x40,
        ..Header::new_command(raw.next_id(), Command::DeviceGetInfo, body.len()).unwrap()
    };
    raw.send_raw(header, &body);
    let reply = raw.recv();
    assert_eq!(
        (reply.header.msg_id, reply.header.error()),
        (header.msg_id, None)
    );
}

// Rule 9: DEVICE_RESET ignores a body.

#[test]
fn a_reset_with_a_body_resets() {
    let (mut raw, server) = negotiated();
    accepted(&mut raw, Command::DeviceReset, &[0; 4]);
    assert_eq!(server.state.lock().unwrap().resets, 1);
}

// Rule 10: GET_REGION_IO_FDS entries may be the spec's 40 bytes.

#[test]
fn region_io_fds_with_the_specs_40_byte_entries_are_read() {
    let (client, script) = scripted(ClientConfig::default(), |conn| {
        let request = conn.recv().unwrap();
        assert_eq!(request.header.cmd, Command::DeviceGetRegionIoFds.code());
        let head = RegionIoFds {
            argsz: 16 + 40,
            flags: 0,
            index: BAR,
            count: 1,
        };
        // offset 0x40, size 4, fd 0, ioeventfd, no flags, padding, datamatch 0x1234.
        let mut entry = Vec::new();
        for word in [0x40u64, 4] {
            entry.extend_from_slice(&word.to_le_bytes());
        }
        entry.extend_from_slice(&[0; 16]);
        entry.extend_from_slice(&0x1234u64.to_le_bytes());
        let body = [head.as_bytes(), &entry].concat();
        let header = Header {
            msg_id: request.header.msg_id,
            cmd: request.header.cmd,
            msg_size: 16 + body.len() as u32,
            flags: FLAGS_TYPE_REPLY,
            error_no: 0,
        };
        let notify = eventfd();
        conn.send(&header, &body, &[notify.as_fd()]).unwrap();
    });
    let (reply, fds) = client.region_io_fds(BAR).unwrap();
    let entry = reply.sub_regions[0];
    assert_eq!(
        (entry.offset, entry.size, entry.datamatch),
        (0x40, 4, 0x1234)
    );
    assert_eq!(fds.len(), 1);
    drop(client);
    script.join().unwrap();
}
