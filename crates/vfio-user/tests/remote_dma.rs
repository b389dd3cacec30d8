//! Server-to-client DMA for memory mapped without an fd: DMA_WRITE and DMA_READ arriving
//! while the client waits for a reply, from the server thread or from device threads, split
//! by the client's transfer size; pages written that way are reported by the client, which
//! never asks the server for a bitmap of fd-less memory (libvfio-user keeps none); a departed
//! client, or one that never answers, fails the device's DMA instead of hanging it.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::Arc;
use std::thread;

use common::dummy::{
    BAR, REG_DMA_ADDR, REG_DMA_LEN, REG_DMA_PATTERN, REG_DMA_READ, REG_DMA_SUM, REG_DMA_WRITE,
    REG_SCRATCH,
};
use common::*;
use std::os::fd::AsFd;
use vfmig_iommu::{Iova, Prot};

use vfmig_abi::uapi::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
use vfmig_vfio_user::message::{
    Bitmap, BitmapRange, Command, DirtyPagesReply, DirtyPagesRequest, DmaAccess, DmaData, DmaMap,
    DmaUnmap, DmaUnmapRequest, Payload, Reply, Request,
};
use vfmig_vfio_user::{Client, ClientConfig, Connection, Errno, Limits};

const GUEST: u64 = 0x2_0000_0000;
const SIZE: u64 = 64 * CONTAINER_PAGE_SIZE.bytes();

fn write_reg(client: &Client, reg: u64, value: u64) {
    client.region_write(BAR, reg, &value.to_le_bytes()).unwrap();
}

/// A client whose fd-less mappings are served from a `VecMemory` at `GUEST`.
fn with_memory(config: ClientConfig) -> (Client, TestServer, Arc<VecMemory>) {
    let memory = VecMemory::new(GUEST, SIZE as usize);
    let config = ClientConfig {
        memory: Some(memory.clone()),
        ..config
    };
    let (client, server) = connect_with(config, Limits::default());
    client
        .dma_map(Iova(GUEST), SIZE, Prot::READ_WRITE, None)
        .unwrap();
    (client, server, memory)
}

/// Asks the device to write `len` bytes of `pattern` at `addr` while handling a REGION_WRITE.
fn device_dma_write(client: &Client, addr: u64, len: u64, pattern: u8) {
    write_reg(client, REG_DMA_ADDR, addr);
    write_reg(client, REG_DMA_LEN, len);
    write_reg(client, REG_DMA_PATTERN, pattern.into());
    write_reg(client, REG_DMA_WRITE, 1);
}

#[test]
fn a_dma_write_arrives_while_the_client_waits_for_a_region_write_reply() {
    let (client, _server, memory) = with_memory(ClientConfig::default());
    device_dma_write(
        &client,
        GUEST + 3 * CONTAINER_PAGE_SIZE.bytes() + 10,
        2 * CONTAINER_PAGE_SIZE.bytes(),
        0xcd,
    );
    // The REGION_WRITE returned after the DMA_WRITE it caused was served.
    assert_eq!(
        memory.get(GUEST + 3 * CONTAINER_PAGE_SIZE.bytes() + 9, 1),
        [0]
    );
    assert!(
        memory
            .get(
                GUEST + 3 * CONTAINER_PAGE_SIZE.bytes() + 10,
                2 * CONTAINER_PAGE_SIZE.bytes() as usize
            )
            .iter()
            .all(|&b| b == 0xcd)
    );
    assert_eq!(
        memory.get(GUEST + 5 * CONTAINER_PAGE_SIZE.bytes() + 10, 1),
        [0]
    );
}

#[test]
fn a_dma_read_arrives_while_the_client_waits_for_a_region_write_reply() {
    let (client, _server, memory) = with_memory(ClientConfig::default());
    memory.set(GUEST + CONTAINER_PAGE_SIZE.bytes(), &[1; 300]);
    write_reg(&client, REG_DMA_ADDR, GUEST + CONTAINER_PAGE_SIZE.bytes());
    write_reg(&client, REG_DMA_LEN, 400);
    write_reg(&client, REG_DMA_READ, 1);
    let mut sum = [0; 8];
    client.region_read(BAR, REG_DMA_SUM, &mut sum).unwrap();
    assert_eq!(u64::from_le_bytes(sum), 300);
}

#[test]
fn device_dma_is_split_by_the_clients_transfer_size() {
    let config = ClientConfig {
        max_data_xfer_size: 1024,
        ..ClientConfig::default()
    };
    let (client, _server, memory) = with_memory(config);
    device_dma_write(&client, GUEST + 100, 4 * 1024 + 7, 0x11);
    assert!(
        memory
            .get(GUEST + 100, 4 * 1024 + 7)
            .iter()
            .all(|&b| b == 0x11)
    );
    assert_eq!(memory.get(GUEST + 100 + 4 * 1024 + 7, 1), [0]);
}

#[test]
fn pages_written_by_dma_write_are_in_the_get() {
    let (client, _server, _memory) = with_memory(ClientConfig::default());
    client.dirty_pages_start().unwrap();
    device_dma_write(
        &client,
        GUEST + 7 * CONTAINER_PAGE_SIZE.bytes() + 4000,
        200,
        0xee,
    );
    let bitmap = client.dirty_pages_get(Iova(GUEST), SIZE).unwrap();
    assert_eq!(pages_of(&bitmap), [7, 8]);
    assert!(pages_of(&client.dirty_pages_get(Iova(GUEST), SIZE).unwrap()).is_empty());
}

#[test]
fn device_threads_dma_while_the_client_works() {
    let (client, server, memory) = with_memory(ClientConfig::default());
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let container = server.container.clone();
            thread::spawn(move || {
                for i in 0..50u64 {
                    let at = Iova(GUEST + (t * 16 + i % 16) * CONTAINER_PAGE_SIZE.bytes());
                    container.write(at, &[t as u8 + 1; 64]).unwrap();
                    let mut back = [0; 64];
                    container.read(at, &mut back).unwrap();
                    assert_eq!(back, [t as u8 + 1; 64]);
                }
            })
        })
        .collect();
    for i in 0..200u64 {
        write_reg(&client, REG_SCRATCH, i);
        let mut value = [0; 8];
        client.region_read(BAR, REG_SCRATCH, &mut value).unwrap();
        assert_eq!(u64::from_le_bytes(value), i);
    }
    for worker in workers {
        worker.join().unwrap();
    }
    for t in 0..4u64 {
        assert_eq!(
            memory.get(GUEST + t * 16 * CONTAINER_PAGE_SIZE.bytes(), 64),
            [t as u8 + 1; 64]
        );
    }
}

#[test]
fn a_departed_client_fails_a_waiting_device_dma_with_econnreset() {
    let (stream, server) = spawn_server(Limits::default());
    let mut raw = RawClient::negotiated(stream);
    let map = vfmig_vfio_user::message::DmaMap::new(3, 0, GUEST, SIZE);
    raw.request(&Request::DmaMap(map));
    let container = server.container.clone();
    let device = thread::spawn(move || container.write(Iova(GUEST), &[1; 8]));
    // The DMA_WRITE arrives; the client goes without answering.
    let received = raw.recv();
    assert_eq!(received.header.cmd, Command::DmaWrite.code());
    drop(raw);
    let err = device.join().unwrap().unwrap_err();
    assert_eq!(err.errno(), libc::ECONNRESET);
    server.join();
}

#[test]
fn a_client_that_never_answers_a_dma_write_fails_the_device_access_with_etimedout() {
    let deadline = std::time::Duration::from_millis(300);
    let (stream, server) = spawn_server_configured(Limits::default(), true, move |server| {
        server.set_dma_reply_timeout(deadline);
    });
    let mut raw = RawClient::negotiated(stream);
    let map = vfmig_vfio_user::message::DmaMap::new(3, 0, GUEST, SIZE);
    raw.request(&Request::DmaMap(map));
    let container = server.container.clone();
    let started = std::time::Instant::now();
    let device = thread::spawn(move || container.write(Iova(GUEST), &[1; 8]));
    // The DMA_WRITE arrives; the client stays connected and never answers.
    let received = raw.recv();
    assert_eq!(received.header.cmd, Command::DmaWrite.code());
    let err = device.join().unwrap().unwrap_err();
    assert_eq!(
        (err.errno(), started.elapsed() < 10 * deadline),
        (libc::ETIMEDOUT, true),
        "{err} after {:?}",
        started.elapsed()
    );
    drop(raw);
    server.join();
}

/// Sends a DMA_WRITE of `data` at `addr` and returns the reply's errno (`None`: success).
fn server_dma_write(conn: &mut Connection, addr: u64, data: &[u8]) -> Option<u32> {
    conn.send_request(0x900, &Request::DmaWrite(DmaData::new(addr, data)), &[])
        .unwrap();
    let reply = conn.recv().unwrap();
    assert_eq!(reply.header.msg_id, 0x900);
    if reply.header.error().is_none() {
        let echo = DmaAccess {
            addr,
            count: data.len() as u64,
        };
        assert_eq!(reply.reply(conn.limits()).unwrap(), Reply::DmaWrite(echo));
    }
    reply.header.error()
}

#[test]
fn the_client_reports_its_dma_writes_and_never_asks_for_an_fd_less_bitmap() {
    let memory = VecMemory::new(GUEST, SIZE as usize);
    let config = ClientConfig {
        memory: Some(memory.clone()),
        ..ClientConfig::default()
    };
    let (client, server) = scripted(config, |conn| {
        answer(conn, Command::DmaMap, Reply::DmaMap);
        // Like libvfio-user, this server keeps no bitmap of fd-less memory: it writes through
        // DMA_WRITE while the client waits for the START reply, and would answer a GET_BITMAP
        // of that mapping with EINVAL. The client's next command must be the STOP.
        let start = conn.recv().unwrap();
        assert_eq!(start.header.cmd, Command::DirtyPages.code());
        assert_eq!(
            server_dma_write(conn, GUEST + 9 * CONTAINER_PAGE_SIZE.bytes(), &[1; 10]),
            None
        );
        assert_eq!(
            server_dma_write(
                conn,
                GUEST + 62 * CONTAINER_PAGE_SIZE.bytes(),
                &[2; CONTAINER_PAGE_SIZE.bytes() as usize * 2]
            ),
            None
        );
        conn.send_reply(
            &start.header,
            &Reply::DirtyPages(DirtyPagesReply::Done),
            &[],
        )
        .unwrap();
        let received = conn.recv().unwrap();
        assert_eq!(
            received.request(conn.limits()).unwrap(),
            Request::DirtyPages(DirtyPagesRequest::Stop { argsz: 8 }),
            "no GET_BITMAP of the fd-less mapping before the STOP"
        );
        conn.send_reply(
            &received.header,
            &Reply::DirtyPages(DirtyPagesReply::Done),
            &[],
        )
        .unwrap();
    });
    client
        .dma_map(Iova(GUEST), SIZE, Prot::READ_WRITE, None)
        .unwrap();
    client.dirty_pages_start().unwrap();
    let bitmap = client.dirty_pages_get(Iova(GUEST), SIZE).unwrap();
    assert_eq!(pages_of(&bitmap), [9, 62, 63]);
    client.dirty_pages_stop().unwrap();
    assert_eq!(
        memory.get(GUEST + 9 * CONTAINER_PAGE_SIZE.bytes(), 10),
        [1; 10]
    );
    server.join().unwrap();
}

#[test]
fn a_dma_write_outside_client_memory_is_efault_and_into_read_only_eperm() {
    let memory = VecMemory::new(GUEST, SIZE as usize);
    let config = ClientConfig {
        memory: Some(memory),
        ..ClientConfig::default()
    };
    let (client, server) = scripted(config, |conn| {
        answer(conn, Command::DmaMap, Reply::DmaMap);
        // While the client waits for its RESET reply.
        let reset = conn.recv().unwrap();
        assert_eq!(reset.header.cmd, Command::DeviceReset.code());
        assert_eq!(
            server_dma_write(conn, GUEST + SIZE, &[1]),
            Some(libc::EFAULT as u32)
        );
        assert_eq!(
            server_dma_write(conn, GUEST + SIZE - 1, &[1, 2]),
            Some(libc::EFAULT as u32)
        );
        assert_eq!(
            server_dma_write(conn, GUEST, &[1]),
            Some(libc::EPERM as u32)
        );
        // The client answers a server command it does not serve with EINVAL.
        let body = vfmig_vfio_user::message::DeviceInfo::request()
            .encode()
            .unwrap();
        let header =
            vfmig_vfio_user::message::Header::new_command(0x901, Command::DeviceGetInfo, 16)
                .unwrap();
        conn.send(&header, &body, &[]).unwrap();
        assert_eq!(
            conn.recv().unwrap().header.error(),
            Some(libc::EINVAL as u32)
        );
        conn.send_reply(&reset.header, &Reply::DeviceReset, &[])
            .unwrap();
    });
    client.dma_map(Iova(GUEST), SIZE, Prot::READ, None).unwrap();
    client.reset().unwrap();
    server.join().unwrap();
}

#[test]
fn a_client_waiting_for_a_reply_gets_econnreset_when_the_server_goes() {
    let (client, server) = scripted(ClientConfig::default(), |conn| {
        // Reads the request and hangs up.
        let _ = conn.recv().unwrap();
    });
    let err = client.reset().unwrap_err();
    assert_eq!(err.errno(), Errno::ECONNRESET);
    server.join().unwrap();
    assert_eq!(client.reset().unwrap_err().errno(), Errno::ENOTCONN);
}

/// A negotiated raw client on `stream` that mapped [`GUEST`]..+[`SIZE`] without an fd and
/// started dirty tracking.
fn fd_less_mapping_tracked(stream: std::os::unix::net::UnixStream) -> RawClient {
    let mut raw = RawClient::negotiated(stream);
    let map = DmaMap::new(3, 0, GUEST, SIZE);
    assert_eq!(raw.errno_of(Command::DmaMap, &map.encode().unwrap()), None);
    let start = DirtyPagesRequest::Start { argsz: 8 };
    assert_eq!(
        raw.errno_of(Command::DirtyPages, &start.encode().unwrap()),
        None
    );
    raw
}

#[test]
fn the_server_answers_a_get_bitmap_of_an_fd_less_mapping_with_einval() {
    let (stream, _server) = spawn_server(Limits::default());
    let mut raw = fd_less_mapping_tracked(stream);
    let get = DirtyPagesRequest::get_bitmap(BitmapRange::new(GUEST, SIZE, CONTAINER_PAGE_SIZE));
    assert_eq!(
        raw.errno_of(Command::DirtyPages, &get.encode().unwrap()),
        Some(libc::EINVAL as u32)
    );
    raw.assert_alive();
}

#[test]
fn the_server_answers_an_unmap_with_bitmap_of_an_fd_less_mapping_with_einval() {
    let (stream, server) = spawn_server(Limits::default());
    let mut raw = fd_less_mapping_tracked(stream);
    let unmap = DmaUnmapRequest {
        unmap: DmaUnmap {
            argsz: 40 + 8,
            flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            addr: GUEST,
            size: SIZE,
        },
        bitmap: Some(Bitmap {
            pgsize: CONTAINER_PAGE_SIZE,
            size: 8,
        }),
    };
    assert_eq!(
        raw.errno_of(Command::DmaUnmap, &unmap.encode().unwrap()),
        Some(libc::EINVAL as u32)
    );
    assert_eq!(server.container.mappings(), 1);
}

#[test]
fn a_get_over_fd_and_fd_less_mappings_merges_the_servers_bits_and_the_clients_record() {
    let (client, server, _memory) = with_memory(ClientConfig::default());
    // Guest RAM with an fd just below the fd-less mapping.
    let below = GUEST - SIZE;
    let fd = memfd(SIZE);
    client
        .dma_map(Iova(below), SIZE, Prot::READ_WRITE, Some((fd.as_fd(), 0)))
        .unwrap();
    client.dirty_pages_start().unwrap();
    server
        .container
        .write(Iova(below + 5 * CONTAINER_PAGE_SIZE.bytes()), &[1])
        .unwrap();
    device_dma_write(&client, GUEST + 3 * CONTAINER_PAGE_SIZE.bytes(), 8, 0xab);
    let bitmap = client.dirty_pages_get(Iova(below), 2 * SIZE).unwrap();
    assert_eq!(pages_of(&bitmap), [5, 64 + 3]);
    let bitmap = client
        .dma_unmap(Iova(below), 2 * SIZE, true)
        .unwrap()
        .unwrap();
    assert!(pages_of(&bitmap).is_empty());
}

#[test]
fn an_unmap_with_bitmap_reports_the_clients_record_of_an_fd_less_mapping() {
    let (client, server, _memory) = with_memory(ClientConfig::default());
    client.dirty_pages_start().unwrap();
    device_dma_write(&client, GUEST + 10 * CONTAINER_PAGE_SIZE.bytes(), 8, 0xcd);
    let bitmap = client.dma_unmap(Iova(GUEST), SIZE, true).unwrap().unwrap();
    assert_eq!(pages_of(&bitmap), [10]);
    assert_eq!(server.container.mappings(), 0);
}

#[test]
fn an_unmap_with_bitmap_of_an_fd_less_mapping_while_tracking_is_off_is_einval() {
    let (client, server, _memory) = with_memory(ClientConfig::default());
    let err = client.dma_unmap(Iova(GUEST), SIZE, true).unwrap_err();
    assert_eq!(err.errno(), Errno::EINVAL);
    assert_eq!(server.container.mappings(), 1);
}
