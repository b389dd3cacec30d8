//! The exact wire bytes of the sample sessions in the wire notes
//! (`shared/reference/vfio-user-v1-wire-notes.md`), produced by our client and accepted by our
//! server (recorded by a relay between them), and the notes' request bytes sent raw to our
//! server, answered with the notes' reply bytes. `msg_id` (the first two bytes) is the
//! sender's choice and is not compared.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::AsFd;

use common::dummy::{BAR, IRQ, REG_DMA_ADDR, REG_DMA_LEN, REG_DMA_WRITE};
use common::relay::{Log, Recorded, Side, relay};
use common::*;
use vfmig_iommu::{Iova, Prot};
use vfmig_vfio_user::client::IrqValues;
use vfmig_vfio_user::message::{Command, IrqAction};
use vfmig_vfio_user::{Client, ClientConfig, Limits};

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// A client behind a recording relay, talking to a fresh server.
fn recorded(config: ClientConfig) -> (Client, TestServer, Log) {
    let (server_end, server) = spawn_server(Limits::default());
    let (client_end, log) = relay(server_end);
    (
        Client::from_stream(client_end, config).unwrap(),
        server,
        log,
    )
}

/// The messages of `command` recorded so far, cleared from the log.
fn take(log: &Log, command: Command) -> Vec<Recorded> {
    let mut log = log.lock().unwrap();
    let code = command.code().to_le_bytes();
    let taken = log
        .iter()
        .filter(|r| r.bytes[2..4] == code)
        .cloned()
        .collect();
    log.clear();
    taken
}

/// Asserts `message` is `expected` (hex, msg_id excluded: from the command number on).
fn assert_bytes(message: &Recorded, from: Side, expected: &str, fds: usize) {
    assert_eq!(message.from, from);
    assert_eq!(hex(expected), message.bytes[2..], "{from:?} message");
    assert_eq!(message.fds, fds);
}

#[test]
fn dirty_pages_start_is_24_bytes_and_its_reply_16() {
    let (client, _server, log) = recorded(ClientConfig::default());
    client.dirty_pages_start().unwrap();
    let messages = take(&log, Command::DirtyPages);
    // size=24 body 08000000 01000000; reply size=16.
    assert_bytes(
        &messages[0],
        Side::Client,
        "0e00 18000000 00000000 00000000 08000000 01000000",
        0,
    );
    assert_bytes(
        &messages[1],
        Side::Server,
        "0e00 10000000 01000000 00000000",
        0,
    );
}

#[test]
fn dma_map_is_48_bytes_with_one_fd() {
    let (client, _server, log) = recorded(ClientConfig::default());
    let fd = memfd(0x2000);
    client
        .dma_map(
            Iova(0x10_0000),
            0x1000,
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0x1000)),
        )
        .unwrap();
    let messages = take(&log, Command::DmaMap);
    // size=48 ... body 20000000 03000000 <offset> <addr> 00100000...
    assert_bytes(
        &messages[0],
        Side::Client,
        "0200 30000000 00000000 00000000
         20000000 03000000 0010000000000000 0000100000000000 0010000000000000",
        1,
    );
    assert_bytes(
        &messages[1],
        Side::Server,
        "0200 10000000 01000000 00000000",
        0,
    );
}

#[test]
fn get_bitmap_of_one_page_is_56_bytes_and_its_reply_64() {
    let (client, server, log) = recorded(ClientConfig::default());
    let fd = memfd(0x1000);
    client
        .dma_map(Iova(0), 0x1000, Prot::READ_WRITE, Some((fd.as_fd(), 0)))
        .unwrap();
    client.dirty_pages_start().unwrap();
    server.container.write(Iova(0x10), &[1]).unwrap();
    take(&log, Command::DirtyPages);
    assert_eq!(
        pages_of(&client.dirty_pages_get(Iova(0), 0x1000).unwrap()),
        [0]
    );
    let messages = take(&log, Command::DirtyPages);
    let range = "0000000000000000 0010000000000000 0010000000000000 0800000000000000";
    assert_bytes(
        &messages[0],
        Side::Client,
        &format!("0e00 38000000 00000000 00000000 30000000 04000000 {range}"),
        0,
    );
    assert_bytes(
        &messages[1],
        Side::Server,
        &format!("0e00 40000000 01000000 00000000 30000000 04000000 {range} 0100000000000000"),
        0,
    );
}

#[test]
fn dma_unmap_is_40_bytes_both_ways() {
    let (client, _server, log) = recorded(ClientConfig::default());
    let fd = memfd(0x1000);
    client
        .dma_map(
            Iova(0x10_0000),
            0x1000,
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    take(&log, Command::DmaMap);
    client.dma_unmap(Iova(0x10_0000), 0x1000, false).unwrap();
    let messages = take(&log, Command::DmaUnmap);
    let body = "18000000 00000000 0000100000000000 0010000000000000";
    assert_bytes(
        &messages[0],
        Side::Client,
        &format!("0300 28000000 00000000 00000000 {body}"),
        0,
    );
    assert_bytes(
        &messages[1],
        Side::Server,
        &format!("0300 28000000 01000000 00000000 {body}"),
        0,
    );
}

#[test]
fn set_irqs_with_one_eventfd_is_36_bytes() {
    let (client, _server, log) = recorded(ClientConfig::default());
    let fd = eventfd();
    client
        .set_irqs(
            IRQ,
            0,
            IrqAction::Trigger,
            IrqValues::Eventfds(&[fd.as_fd()]),
        )
        .unwrap();
    let messages = take(&log, Command::DeviceSetIrqs);
    // size=36 body 14000000 24000000 00000000 00000000 01000000 + 1 eventfd.
    assert_bytes(
        &messages[0],
        Side::Client,
        "0800 24000000 00000000 00000000 14000000 24000000 00000000 00000000 01000000",
        1,
    );
    assert_bytes(
        &messages[1],
        Side::Server,
        "0800 10000000 01000000 00000000",
        0,
    );
}

#[test]
fn the_dma_write_reply_count_is_8_bytes() {
    let memory = VecMemory::new(0x20_0000, 0x1000);
    let config = ClientConfig {
        memory: Some(memory),
        ..ClientConfig::default()
    };
    let (client, _server, log) = recorded(config);
    client
        .dma_map(Iova(0x20_0000), 0x1000, Prot::READ_WRITE, None)
        .unwrap();
    for (reg, value) in [
        (REG_DMA_ADDR, 0x20_0010u64),
        (REG_DMA_LEN, 4),
        (REG_DMA_WRITE, 1),
    ] {
        client.region_write(BAR, reg, &value.to_le_bytes()).unwrap();
    }
    let messages = take(&log, Command::DmaWrite);
    // The server's DMA_WRITE: 16 + 16 + 4 bytes; the client's reply: size=32.
    assert_bytes(
        &messages[0],
        Side::Server,
        "0c00 24000000 00000000 00000000 1000200000000000 0400000000000000 00000000",
        0,
    );
    assert_bytes(
        &messages[1],
        Side::Client,
        "0c00 20000000 01000000 00000000 1000200000000000 0400000000000000",
        0,
    );
}

#[test]
fn version_carries_nul_terminated_json_both_ways() {
    let (client, _server, log) = recorded(ClientConfig::default());
    drop(client);
    let messages = take(&log, Command::Version);
    for message in &messages[..2] {
        // major 0, minor 2, then JSON ending in NUL.
        assert_eq!(message.bytes[16..20], [0, 0, 2, 0]);
        assert_eq!(message.bytes.last(), Some(&0));
        let json = std::str::from_utf8(&message.bytes[20..message.bytes.len() - 1]).unwrap();
        assert!(json.contains("\"migration\":{\"pgsize\":4096"), "{json}");
    }
    let server_json = std::str::from_utf8(&messages[1].bytes[20..]).unwrap();
    assert!(server_json.contains("\"max_msg_fds\":8,\"max_data_xfer_size\":1048576"));
}

/// The notes' request bytes sent raw to our server; its reply compared byte for byte.
fn raw_exchange(
    raw: &mut RawClient,
    request: &str,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Vec<u8> {
    let mut bytes = 0x77u16.to_le_bytes().to_vec();
    bytes.extend_from_slice(&hex(request));
    let (header, body) = vfmig_vfio_user::message::Header::split(&bytes).unwrap();
    raw.send_raw_with_fds(header, body, fds);
    let reply = raw.recv();
    assert_eq!(reply.header.msg_id, 0x77);
    let mut out = zerocopy::IntoBytes::as_bytes(&reply.header)[2..].to_vec();
    out.extend_from_slice(&reply.body);
    out
}

#[test]
fn the_notes_request_bytes_get_the_notes_reply_bytes_from_our_server() {
    let (stream, _server) = spawn_server(Limits::default());
    let mut raw = RawClient::negotiated(stream);
    let fd = memfd(0x1000);
    let map = "0200 30000000 00000000 00000000
               20000000 03000000 0000000000000000 0000000000000000 0010000000000000";
    assert_eq!(
        raw_exchange(&mut raw, map, &[fd.as_fd()]),
        hex("0200 10000000 01000000 00000000")
    );
    let start = "0e00 18000000 00000000 00000000 08000000 01000000";
    assert_eq!(
        raw_exchange(&mut raw, start, &[]),
        hex("0e00 10000000 01000000 00000000")
    );
    let range = "0000000000000000 0010000000000000 0010000000000000 0800000000000000";
    let get = format!("0e00 38000000 00000000 00000000 30000000 04000000 {range}");
    assert_eq!(
        raw_exchange(&mut raw, &get, &[]),
        hex(&format!(
            "0e00 40000000 01000000 00000000 30000000 04000000 {range} 0000000000000000"
        ))
    );
    let unmap = "18000000 00000000 0000000000000000 0010000000000000";
    assert_eq!(
        raw_exchange(
            &mut raw,
            &format!("0300 28000000 00000000 00000000 {unmap}"),
            &[]
        ),
        hex(&format!("0300 28000000 01000000 00000000 {unmap}"))
    );
    // An error reply is the header alone: flags 0x21, EINVAL (22), here to a DEVICE_GET_INFO
    // whose argsz (8) is below its 16 bytes.
    assert_eq!(
        raw_exchange(
            &mut raw,
            "0400 20000000 00000000 00000000 08000000 00000000 00000000 00000000",
            &[]
        ),
        hex("0400 10000000 21000000 16000000")
    );
}
