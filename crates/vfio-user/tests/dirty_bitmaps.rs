//! Dirty bitmaps of big mappings: a 64 GiB mapping fetched in one request and in chunks (a
//! small negotiated bitmap size on either side, several mappings, one mapping per request),
//! bits where the device wrote, and ranges of whole mappings only.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::*;
use vfmig_iommu::{Iova, Prot};
use vfmig_vfio_user::message::{
    BitmapRange, Command, DirtyPages, DirtyPagesReply, DirtyPagesRequest, DmaMap, Header, Reply,
    Request,
};
use vfmig_vfio_user::{Client, ClientConfig, Errno, Limits};
use zerocopy::IntoBytes;

const BIG: u64 = 64 * GIB;
const BASE: u64 = 0x100_0000_0000;
const PAGES: u64 = BIG / CONTAINER_PAGE_SIZE.bytes();

/// Pages the device writes: both ends, word and piece boundaries, and a few in between.
fn written_pages() -> Vec<u64> {
    let eight_gib = 8 * GIB / CONTAINER_PAGE_SIZE.bytes();
    vec![
        0,
        1,
        63,
        64,
        4095,
        eight_gib - 1,
        eight_gib,
        3 * eight_gib + 17,
        PAGES / 2 + 12345,
        PAGES - 1,
    ]
}

fn device_writes(server: &TestServer, pages: &[u64]) {
    for &page in pages {
        server
            .container
            .write(Iova(BASE + page * CONTAINER_PAGE_SIZE.bytes()), &[0x5a])
            .unwrap();
    }
}

/// Maps 64 GiB of one sparse memfd at `BASE` as one client mapping, starts tracking.
fn map_big(client: &Client) -> OwnedFd {
    let fd = memfd(BIG);
    client
        .dma_map(Iova(BASE), BIG, Prot::READ_WRITE, Some((fd.as_fd(), 0)))
        .unwrap();
    client.dirty_pages_start().unwrap();
    fd
}

#[test]
fn a_64_gib_mapping_is_one_server_mapping_and_one_request() {
    let (client, server) = connect();
    assert!(client.bitmap_capacity() >= 2 << 20);
    let _fd = map_big(&client);
    assert_eq!(server.container.mappings(), 1);
    device_writes(&server, &written_pages());
    let bitmap = client.dirty_pages_get(Iova(BASE), BIG).unwrap();
    assert_eq!(bitmap.len() as u64, PAGES / 64);
    assert_eq!(pages_of(&bitmap), written_pages());
}

#[test]
fn the_2_mib_bitmap_comes_in_one_reply_on_the_wire() {
    let (stream, server) = spawn_server(Limits::default());
    let mut raw = RawClient::negotiated(stream);
    let fd = memfd(BIG);
    let map = DmaMap::new(3, 0, BASE, BIG);
    let header = Header::new_command(raw.next_id(), Command::DmaMap, 32).unwrap();
    raw.send_raw_with_fds(header, map.as_bytes(), &[fd.as_fd()]);
    assert_eq!(raw.recv().header.error(), None);
    raw.request(&Request::DirtyPages(DirtyPagesRequest::Start { argsz: 8 }));
    device_writes(&server, &written_pages());
    let range = BitmapRange::new(BASE, BIG, CONTAINER_PAGE_SIZE);
    let received = raw.request(&Request::DirtyPages(DirtyPagesRequest::get_bitmap(range)));
    assert_eq!(received.header.msg_size, 16 + 40 + (2 << 20));
    match received.reply(raw.conn.limits()).unwrap() {
        Reply::DirtyPages(DirtyPagesReply::Bitmap {
            argsz,
            range: echoed,
            bits,
        }) => {
            assert_eq!((argsz, echoed), (40 + (2 << 20), range));
            let words: Vec<u64> = bits
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(pages_of(&words), written_pages());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_small_client_bitmap_size_splits_the_mapping_and_the_get() {
    let config = ClientConfig {
        max_bitmap_size: 256 << 10,
        ..ClientConfig::default()
    };
    let (client, server) = connect_with(config, Limits::default());
    assert_eq!(client.bitmap_capacity(), 256 << 10);
    let _fd = map_big(&client);
    // 256 KiB of bitmap covers 8 GiB: eight server mappings.
    assert_eq!(server.container.mappings(), 8);
    device_writes(&server, &written_pages());
    let bitmap = client.dirty_pages_get(Iova(BASE), BIG).unwrap();
    assert_eq!(pages_of(&bitmap), written_pages());
}

#[test]
fn a_small_server_message_limit_splits_the_mapping_and_the_get() {
    let limits = Limits {
        max_msg_size: (1 << 20) + 4096,
        ..Limits::default()
    };
    let (client, server) = connect_with(ClientConfig::default(), limits);
    assert_eq!(client.bitmap_capacity(), (1 << 20) + 4040);
    let _fd = map_big(&client);
    assert_eq!(server.container.mappings(), 2);
    device_writes(&server, &written_pages());
    let bitmap = client.dirty_pages_get(Iova(BASE), BIG).unwrap();
    assert_eq!(pages_of(&bitmap), written_pages());
}

/// GET_BITMAP requests the client sent, as recorded by a relay.
fn get_requests(log: &common::relay::Log) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.from == common::relay::Side::Client)
        .filter(|r| r.bytes[2..4] == Command::DirtyPages.code().to_le_bytes())
        .filter(|r| r.bytes[20..24] == 4u32.to_le_bytes())
        .count()
}

#[test]
fn several_mappings_share_one_request_or_take_one_each() {
    for (one_each, requests) in [(false, 1), (true, 8)] {
        let config = ClientConfig {
            one_mapping_per_request: one_each,
            ..ClientConfig::default()
        };
        let (server_end, server) = spawn_server(Limits::default());
        let (client_end, log) = common::relay::relay(server_end);
        let client = Client::from_stream(client_end, config).unwrap();
        let fd = memfd(BIG);
        for i in 0..8 {
            let iova = BASE + i * 8 * GIB;
            client
                .dma_map(
                    Iova(iova),
                    8 * GIB,
                    Prot::READ_WRITE,
                    Some((fd.as_fd(), i * 8 * GIB)),
                )
                .unwrap();
        }
        client.dirty_pages_start().unwrap();
        device_writes(&server, &written_pages());
        let bitmap = client.dirty_pages_get(Iova(BASE), BIG).unwrap();
        assert_eq!(pages_of(&bitmap), written_pages(), "one each: {one_each}");
        assert_eq!(get_requests(&log), requests, "one each: {one_each}");
    }
}

#[test]
fn a_split_mapping_is_fetched_in_as_many_requests() {
    let config = ClientConfig {
        max_bitmap_size: 256 << 10,
        ..ClientConfig::default()
    };
    let (server_end, server) = spawn_server(Limits::default());
    let (client_end, log) = common::relay::relay(server_end);
    let client = Client::from_stream(client_end, config).unwrap();
    let _fd = map_big(&client);
    device_writes(&server, &written_pages());
    client.dirty_pages_get(Iova(BASE), BIG).unwrap();
    assert_eq!(get_requests(&log), 8);
}

#[test]
fn mappings_at_unaligned_page_offsets_land_at_their_bits() {
    let (client, server) = connect();
    let fd = memfd(64 * CONTAINER_PAGE_SIZE.bytes());
    // Five mappings of three pages with one-page holes: bit offsets 0, 4, 8, 12, 16.
    for i in 0..5 {
        client
            .dma_map(
                Iova(i * 4 * CONTAINER_PAGE_SIZE.bytes()),
                3 * CONTAINER_PAGE_SIZE.bytes(),
                Prot::READ_WRITE,
                Some((fd.as_fd(), i * 4 * CONTAINER_PAGE_SIZE.bytes())),
            )
            .unwrap();
    }
    client.dirty_pages_start().unwrap();
    for page in [0, 2, 5, 9, 14, 18] {
        server
            .container
            .write(Iova(page * CONTAINER_PAGE_SIZE.bytes()), &[1])
            .unwrap();
    }
    let bitmap = client
        .dirty_pages_get(
            Iova(4 * CONTAINER_PAGE_SIZE.bytes()),
            15 * CONTAINER_PAGE_SIZE.bytes(),
        )
        .unwrap();
    // Relative to page 4: pages 5, 9, 14, 18 are bits 1, 5, 10, 14.
    assert_eq!(pages_of(&bitmap), [1, 5, 10, 14]);
    // Page 0 and 2 were not in that range and are still dirty.
    assert_eq!(
        pages_of(
            &client
                .dirty_pages_get(Iova(0), 3 * CONTAINER_PAGE_SIZE.bytes())
                .unwrap()
        ),
        [0, 2]
    );
}

#[test]
fn a_get_that_cuts_a_mapping_is_einval() {
    let (client, _server) = connect();
    let fd = memfd(4 * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(0),
            4 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    client.dirty_pages_start().unwrap();
    for (iova, size) in [
        (0, 2 * CONTAINER_PAGE_SIZE.bytes()),
        (CONTAINER_PAGE_SIZE.bytes(), 3 * CONTAINER_PAGE_SIZE.bytes()),
    ] {
        let err = client.dirty_pages_get(Iova(iova), size).unwrap_err();
        assert_eq!(err.errno(), Errno::EINVAL);
    }
}

#[test]
fn holes_in_a_get_read_as_clean() {
    let (client, server) = connect();
    let fd = memfd(CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(10 * CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    client.dirty_pages_start().unwrap();
    server
        .container
        .write(Iova(10 * CONTAINER_PAGE_SIZE.bytes()), &[1])
        .unwrap();
    let bitmap = client
        .dirty_pages_get(Iova(0), 100 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap();
    assert_eq!(bitmap.len(), 2);
    assert_eq!(pages_of(&bitmap), [10]);
}

#[test]
fn unmap_with_bitmap_of_a_split_mapping_collects_every_piece() {
    let config = ClientConfig {
        max_bitmap_size: 256 << 10,
        ..ClientConfig::default()
    };
    let (client, server) = connect_with(config, Limits::default());
    let _fd = map_big(&client);
    device_writes(&server, &written_pages());
    let bitmap = client.dma_unmap(Iova(BASE), BIG, true).unwrap().unwrap();
    assert_eq!(pages_of(&bitmap), written_pages());
    assert_eq!(server.container.mappings(), 0);
}

#[test]
fn get_with_argsz_too_small_gets_the_size_needed() {
    let (stream, _server) = spawn_server(Limits::default());
    let mut raw = RawClient::negotiated(stream);
    let fd = memfd(128 * CONTAINER_PAGE_SIZE.bytes());
    let header = Header::new_command(raw.next_id(), Command::DmaMap, 32).unwrap();
    raw.send_raw_with_fds(
        header,
        DmaMap::new(3, 0, 0, 128 * CONTAINER_PAGE_SIZE.bytes()).as_bytes(),
        &[fd.as_fd()],
    );
    assert_eq!(raw.recv().header.error(), None);
    raw.request(&Request::DirtyPages(DirtyPagesRequest::Start { argsz: 8 }));
    let range = BitmapRange::new(0, 128 * CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE);
    let mut body = DirtyPages {
        argsz: 40,
        flags: 4,
    }
    .as_bytes()
    .to_vec();
    body.extend_from_slice(range.to_wire().as_bytes());
    raw.send_body(Command::DirtyPages, &body);
    let received = raw.recv();
    assert_eq!(received.header.msg_size, 24);
    assert_eq!(
        received.reply(raw.conn.limits()).unwrap(),
        Reply::DirtyPages(DirtyPagesReply::TooSmall { argsz: 56 })
    );
}

#[test]
fn a_server_stating_no_max_bitmap_size_is_fetched_as_libvfio_user() {
    // libvfio-user's own VERSION reply (wire notes §4.4): no max_bitmap_size.
    const LIBVFIO_USER: &str = r#"{ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, "migration": { "pgsize": 4096 } } }"#;
    let (client_end, server_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut conn = vfmig_vfio_user::Connection::new(server_end).unwrap();
        let version = conn.recv().unwrap();
        let mut body = vec![0, 0, 2, 0];
        body.extend_from_slice(LIBVFIO_USER.as_bytes());
        body.push(0);
        let header = Header::new_reply(&version.header, body.len()).unwrap();
        conn.send(&header, &body, &[]).unwrap();
        let mut pieces = Vec::new();
        for _ in 0..3 {
            let received = conn.recv().unwrap();
            let Ok(Request::DmaMap(map)) = received.request(conn.limits()) else {
                panic!("expected DMA_MAP");
            };
            pieces.push((map.addr, map.size));
            conn.send_reply(&received.header, &Reply::DmaMap, &[])
                .unwrap();
        }
        answer(
            &mut conn,
            Command::DirtyPages,
            Reply::DirtyPages(DirtyPagesReply::Done),
        );
        for &(addr, size) in &pieces {
            let received = conn.recv().unwrap();
            let Ok(Request::DirtyPages(DirtyPagesRequest::GetBitmap { argsz, range })) =
                received.request(conn.limits())
            else {
                panic!("expected GET_BITMAP");
            };
            // Exactly one region, within libvfio-user's 1 MiB argsz.
            assert_eq!((range.iova, range.size), (addr, size));
            assert!(argsz <= 1 << 20);
            let mut bits = vec![0u8; range.bitmap_size as usize];
            bits[0] = 1;
            let reply = Reply::DirtyPages(DirtyPagesReply::Bitmap {
                argsz,
                range,
                bits: bits.into(),
            });
            conn.send_reply(&received.header, &reply, &[]).unwrap();
        }
        pieces
    });
    let client = Client::from_stream(client_end, ClientConfig::default()).unwrap();
    assert_eq!(client.bitmap_capacity(), (1 << 20) - 40);
    assert!(client.one_mapping_per_request());
    let _fd = map_big(&client);
    let bitmap = client.dirty_pages_get(Iova(BASE), BIG).unwrap();
    let pieces = server.join().unwrap();
    let piece_pages = ((1 << 20) - 40) * 8;
    assert_eq!(
        pieces
            .iter()
            .map(|&(_, size)| size / CONTAINER_PAGE_SIZE.bytes())
            .collect::<Vec<_>>(),
        [piece_pages, piece_pages, PAGES - 2 * piece_pages]
    );
    assert_eq!(pages_of(&bitmap), [0, piece_pages, 2 * piece_pages]);
}

/// A client whose GETs are answered by `answer_get` (after DMA_MAP and START are accepted).
fn scripted_get(
    answer_get: impl FnOnce(&mut vfmig_vfio_user::Connection, BitmapRange, Header) + Send + 'static,
) -> (Client, std::thread::JoinHandle<()>) {
    scripted(ClientConfig::default(), move |conn| {
        answer(conn, Command::DmaMap, Reply::DmaMap);
        answer(
            conn,
            Command::DirtyPages,
            Reply::DirtyPages(DirtyPagesReply::Done),
        );
        let received = conn.recv().unwrap();
        let Ok(Request::DirtyPages(DirtyPagesRequest::GetBitmap { range, .. })) =
            received.request(conn.limits())
        else {
            panic!("expected GET_BITMAP");
        };
        answer_get(conn, range, received.header);
    })
}

fn map_and_start(client: &Client, pages: u64) -> OwnedFd {
    let fd = memfd(pages * CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            Iova(0),
            pages * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    client.dirty_pages_start().unwrap();
    fd
}

#[test]
fn an_error_reply_to_a_whole_range_get_keeps_its_errno() {
    let (client, server) = scripted_get(|conn, _, header| {
        conn.send_error(&header, libc::EBUSY).unwrap();
    });
    let _fd = map_and_start(&client, 64);
    let mut out = vec![1, 2, 3];
    let err = client
        .dirty_pages_get_into(Iova(0), 64 * CONTAINER_PAGE_SIZE.bytes(), &mut out)
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EBUSY);
    server.join().unwrap();
}

#[test]
fn a_bitmap_reply_for_another_range_is_eproto() {
    let (client, server) = scripted_get(|conn, range, header| {
        let other = BitmapRange {
            iova: CONTAINER_PAGE_SIZE.bytes(),
            ..range
        };
        let reply = Reply::DirtyPages(DirtyPagesReply::Bitmap {
            argsz: 48,
            range: other,
            bits: vec![0xff; 8].into(),
        });
        conn.send_reply(&header, &reply, &[]).unwrap();
    });
    let _fd = map_and_start(&client, 64);
    let err = client
        .dirty_pages_get(Iova(0), 64 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EPROTO);
    server.join().unwrap();
}

#[test]
fn a_too_small_reply_to_a_get_is_eproto() {
    let (client, server) = scripted_get(|conn, _, header| {
        let reply = Reply::DirtyPages(DirtyPagesReply::TooSmall { argsz: 48 });
        conn.send_reply(&header, &reply, &[]).unwrap();
    });
    let _fd = map_and_start(&client, 64);
    let err = client
        .dirty_pages_get(Iova(0), 64 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EPROTO);
    server.join().unwrap();
}

#[test]
fn bits_past_the_range_in_a_reply_are_dropped() {
    let (client, server) = scripted_get(|conn, range, header| {
        // Three pages asked for, a whole word of bits answered.
        let reply = Reply::DirtyPages(DirtyPagesReply::Bitmap {
            argsz: 48,
            range,
            bits: vec![0xff; 8].into(),
        });
        conn.send_reply(&header, &reply, &[]).unwrap();
    });
    let _fd = map_and_start(&client, 3);
    let bitmap = client
        .dirty_pages_get(Iova(0), 3 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap();
    assert_eq!(bitmap, [0b111]);
    server.join().unwrap();
}
