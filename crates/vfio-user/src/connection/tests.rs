//! Connection tests over real `UnixStream::pair()` sockets.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::thread;

use zerocopy::IntoBytes;

use super::*;
use crate::message::{BitmapRange, DeviceInfo, DirtyPagesReply, DmaMap, Payload};

fn pair_with(limits: Limits) -> (Connection, Connection) {
    let (a, b) = UnixStream::pair().unwrap();
    (
        Connection::with_limits(a, limits).unwrap(),
        Connection::with_limits(b, limits).unwrap(),
    )
}

fn pair() -> (Connection, Connection) {
    Connection::pair().unwrap()
}

fn dma_map_header(body_len: usize) -> Header {
    Header::new_command(1, crate::message::Command::DmaMap, body_len).unwrap()
}

/// Whether the peer of `probe` is closed everywhere: a read gives end of stream.
fn peer_is_closed(probe: &mut UnixStream) -> bool {
    probe.set_nonblocking(true).unwrap();
    matches!(probe.read(&mut [0; 1]), Ok(0))
}

#[test]
fn an_fd_arrives_and_is_usable() {
    let (mut client, mut server) = pair();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let body = DmaMap::new(3, 0, 0x1000, 0x1000).encode().unwrap();
    client
        .send(&dma_map_header(body.len()), &body, &[writer.as_fd()])
        .unwrap();
    drop(writer);

    let mut received = server.recv().unwrap();
    assert_eq!(received.fds.len(), 1);
    let mut file = File::from(received.take_fds().remove(0));
    file.write_all(b"through the received fd").unwrap();
    drop(file);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "through the received fd");
}

#[test]
fn received_fds_are_close_on_exec() {
    let (mut client, mut server) = pair();
    let (_reader, writer) = std::io::pipe().unwrap();
    let body = DmaMap::new(3, 0, 0, 0x1000).encode().unwrap();
    client
        .send(&dma_map_header(body.len()), &body, &[writer.as_fd()])
        .unwrap();
    let received = server.recv().unwrap();
    let fdinfo =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", received.fds[0].as_raw_fd()))
            .unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    let flags = u32::from_str_radix(flags, 8).unwrap();
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "flags {flags:o}");
}

#[test]
fn more_fds_than_accepted_is_efault_and_closes_every_one() {
    let limits = Limits {
        max_recv_fds: 1,
        max_send_fds: 8,
        ..Limits::default()
    };
    let (mut client, mut server) = pair_with(limits);
    let (passed, mut probe) = UnixStream::pair().unwrap();
    let copies: Vec<_> = (0..5).map(|_| passed.try_clone().unwrap()).collect();
    let fds: Vec<_> = copies.iter().map(AsFd::as_fd).collect();
    let body = DmaMap::new(3, 0, 0, 0x1000).encode().unwrap();
    client
        .send(&dma_map_header(body.len()), &body, &fds)
        .unwrap();
    drop(fds);
    drop(copies);
    drop(passed);

    let err = server.recv().unwrap_err();
    assert!(
        matches!(err, ConnectionError::TooManyFdsReceived { limit: 1, .. }),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EFAULT);
    assert!(!err.is_fatal());
    assert_eq!(err.header().map(|h| h.msg_id), Some(1));
    assert!(peer_is_closed(&mut probe), "a passed descriptor leaked");
}

#[test]
fn after_too_many_fds_the_next_message_is_read() {
    let limits = Limits {
        max_recv_fds: 0,
        max_send_fds: 1,
        ..Limits::default()
    };
    let (mut client, mut server) = pair_with(limits);
    let (passed, mut probe) = UnixStream::pair().unwrap();
    let body = DmaMap::new(3, 0, 0, 0x1000).encode().unwrap();
    client
        .send(&dma_map_header(body.len()), &body, &[passed.as_fd()])
        .unwrap();
    drop(passed);
    client.send_request(2, &Request::DeviceReset, &[]).unwrap();

    let err = server.recv().unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::TooManyFdsReceived {
            limit: 0,
            arrived: 0,
            ..
        }
    ));
    let next = server.recv().unwrap();
    assert_eq!(next.request(server.limits()).unwrap(), Request::DeviceReset);
    assert!(peer_is_closed(&mut probe));
}

#[test]
fn a_clean_close_between_messages_is_closed() {
    let (client, mut server) = pair();
    drop(client);
    let err = server.recv().unwrap_err();
    assert!(matches!(err, ConnectionError::Closed));
    assert_eq!(err.errno(), libc::ENOTCONN);
    assert!(err.is_fatal());
}

#[test]
fn a_close_inside_the_header_is_truncated() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut server = Connection::new(b).unwrap();
    a.write_all(&[0; 8]).unwrap();
    drop(a);
    let err = server.recv().unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::Truncated {
            expected: 16,
            received: 8
        }
    ));
    assert_eq!(err.errno(), libc::ECONNRESET);
}

#[test]
fn a_close_inside_the_body_is_truncated() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut server = Connection::new(b).unwrap();
    a.write_all(dma_map_header(84).as_bytes()).unwrap();
    a.write_all(&[0; 10]).unwrap();
    drop(a);
    let err = server.recv().unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::Truncated {
            expected: 100,
            received: 26
        }
    ));
}

#[test]
fn msg_size_above_the_limit_is_fatal_einval_before_allocating() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut server = Connection::new(b).unwrap();
    let header = Header {
        msg_size: u32::MAX,
        ..dma_map_header(0)
    };
    a.write_all(header.as_bytes()).unwrap();
    let err = server.recv().unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::BadHeader {
            source: MessageError::MessageTooLarge {
                msg_size: u32::MAX,
                ..
            },
            ..
        }
    ));
    assert_eq!(err.errno(), libc::EINVAL);
    assert!(err.is_fatal());
}

#[test]
fn msg_size_below_the_header_is_fatal_einval() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut server = Connection::new(b).unwrap();
    a.write_all(
        Header {
            msg_size: 8,
            ..dma_map_header(0)
        }
        .as_bytes(),
    )
    .unwrap();
    let err = server.recv().unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::BadHeader {
            source: MessageError::MessageTooSmall { msg_size: 8 },
            ..
        }
    ));
    assert_eq!(err.errno(), libc::EINVAL);
}

#[test]
fn after_a_malformed_body_the_next_message_decodes() {
    let (mut client, mut server) = pair();
    let bad = DmaMap {
        flags: 0x80,
        ..DmaMap::new(3, 0, 0, 0x1000)
    };
    client
        .send(&dma_map_header(32), bad.as_bytes(), &[])
        .unwrap();
    client
        .send_request(2, &Request::DeviceGetInfo(DeviceInfo::request()), &[])
        .unwrap();

    let first = server.recv().unwrap();
    let err = first.request(server.limits()).unwrap_err();
    assert!(matches!(
        err,
        MessageError::InvalidFlags { flags: 0x80, .. }
    ));
    assert_eq!(err.errno(), libc::EINVAL);
    let second = server.recv().unwrap();
    assert_eq!(second.header.msg_id, 2);
    assert_eq!(
        second.request(server.limits()).unwrap(),
        Request::DeviceGetInfo(DeviceInfo::request())
    );
}

#[test]
fn an_unknown_command_is_read_whole_and_answered_einval() {
    let (mut client, mut server) = pair();
    let header = Header {
        cmd: 99,
        ..Header::new_command(5, crate::message::Command::DmaMap, 4).unwrap()
    };
    client.send(&header, &[1, 2, 3, 4], &[]).unwrap();
    client.send_request(6, &Request::DeviceReset, &[]).unwrap();

    let unknown = server.recv().unwrap();
    let err = unknown.request(server.limits()).unwrap_err();
    assert!(matches!(err, MessageError::UnknownCommand { cmd: 99 }));
    server.send_error(&unknown.header, err.errno()).unwrap();
    assert_eq!(server.recv().unwrap().header.msg_id, 6);
    let reply = client.recv().unwrap();
    assert_eq!(
        (reply.header.flags, reply.header.error_no, reply.header.cmd),
        (0x21, 22, 99)
    );
}

#[test]
fn a_4_mib_bitmap_crosses_in_pieces() {
    let (mut client, mut server) = pair();
    let range = BitmapRange::new(0, 128 << 30, vfmig_dirty::PageSize::SIZE_4K);
    assert_eq!(range.bitmap_size, 4 << 20);
    let bits: Vec<u8> = (0..range.bitmap_size).map(|i| (i % 251) as u8).collect();
    let expected = bits.clone();
    let request = Header::new_command(9, crate::message::Command::DirtyPages, 40).unwrap();
    let sender = thread::spawn(move || {
        let reply = DirtyPagesReply::Bitmap {
            argsz: u32::MAX,
            range,
            bits: Cow::Owned(bits),
        };
        server
            .send_reply(&request, &Reply::DirtyPages(reply), &[])
            .unwrap();
        server
    });
    let received = client.recv().unwrap();
    let _server = sender.join().unwrap();
    assert_eq!(received.body.len(), 40 + (4 << 20));
    match received.reply(client.limits()).unwrap() {
        Reply::DirtyPages(DirtyPagesReply::Bitmap {
            range: got, bits, ..
        }) => {
            assert_eq!(got, range);
            assert!(bits == expected, "bitmap bytes differ");
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn send_refuses_a_header_that_does_not_match_the_body() {
    let (mut client, _server) = pair();
    let err = client.send(&dma_map_header(32), &[0; 31], &[]).unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::SizeMismatch {
            msg_size: 48,
            actual: 47
        }
    ));
    assert!(!err.is_fatal());
}

#[test]
fn send_refuses_more_fds_than_the_peer_accepts() {
    let (mut client, _server) = pair();
    let (_r, w) = std::io::pipe().unwrap();
    let body = DmaMap::new(3, 0, 0, 0x1000).encode().unwrap();
    let err = client
        .send(&dma_map_header(32), &body, &[w.as_fd(), w.as_fd()])
        .unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::TooManyFdsToSend { count: 2, max: 1 }
    ));
    assert_eq!(err.errno(), libc::EINVAL);
}

#[test]
fn no_reply_commands_get_no_reply() {
    let (mut client, mut server) = pair();
    let request = Header::new_command(3, crate::message::Command::DeviceReset, 0)
        .unwrap()
        .with_no_reply();
    server
        .send_reply(&request, &Reply::DeviceReset, &[])
        .unwrap();
    server.send_error(&request, libc::EIO).unwrap();
    let mut stream = client.stream().try_clone().unwrap();
    stream.set_nonblocking(true).unwrap();
    let err = stream.read(&mut [0; 1]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(server);
    assert!(matches!(client.recv(), Err(ConnectionError::Closed)));
}

#[test]
fn an_error_reply_round_trips() {
    let (mut client, mut server) = pair();
    let request = client.send_request(4, &Request::DeviceReset, &[]).unwrap();
    let received = server.recv().unwrap();
    server.send_error(&received.header, libc::ENOTSUP).unwrap();
    let reply = client.recv().unwrap();
    assert_eq!(reply.header.msg_id, request.msg_id);
    let expected = Reply::Error {
        command: crate::message::Command::DeviceReset,
        errno: libc::ENOTSUP as u32,
    };
    assert_eq!(reply.reply(client.limits()).unwrap(), expected);
}

/// Sends a GET_BITMAP reply whose bitmap is `words`, from `server` to `client`.
#[allow(clippy::cast_possible_truncation)]
fn send_bitmap_reply(server: &mut Connection, words: &[u64]) -> Header {
    let range = BitmapRange::new(
        0,
        words.len() as u64 * 64 * 4096,
        vfmig_dirty::PageSize::SIZE_4K,
    );
    let reply = Reply::DirtyPages(DirtyPagesReply::Bitmap {
        argsz: 40 + range.bitmap_size as u32,
        range,
        bits: Cow::Owned(words.as_bytes().to_vec()),
    });
    let request = Header::new_command(9, crate::message::Command::DirtyPages, 40).unwrap();
    server.send_reply(&request, &reply, &[]).unwrap();
    request
}

#[test]
fn a_split_body_lands_in_the_words_given() {
    let (mut client, mut server) = pair();
    let words: Vec<u64> = (0..1000).map(|i| i * 0x0101_0101).collect();
    send_bitmap_reply(&mut server, &words);
    let (received, tail) = client
        .recv_into(|_, _| BodyBuffer::Split {
            head: 40,
            tail: vec![7; 1000],
        })
        .unwrap();
    assert_eq!(received.body.len(), 40);
    assert_eq!(received.header.msg_size as usize, 16 + 40 + 8000);
    assert_eq!(tail, Tail::Filled(words));
}

#[test]
fn a_split_of_another_size_reads_the_body_whole_and_gives_the_words_back() {
    let (mut client, mut server) = pair();
    send_bitmap_reply(&mut server, &[1, 2, 3]);
    let (received, tail) = client
        .recv_into(|_, _| BodyBuffer::Split {
            head: 40,
            tail: vec![7; 4],
        })
        .unwrap();
    assert_eq!(received.body.len(), 40 + 24);
    assert_eq!(tail, Tail::Unused(vec![7; 4]));
    // The stream is in step: the next message reads.
    send_bitmap_reply(&mut server, &[5]);
    assert_eq!(client.recv().unwrap().body.len(), 48);
}
