//! Random messages after VERSION never bring the server down: each is answered exactly as the
//! rules say (a reply unless it is a reply itself or asked for none), the device's DMA to the
//! client is refused by it meanwhile, and the server still answers a good command at the end.

#![allow(clippy::cast_possible_truncation)]

mod common;

use common::*;
use proptest::prelude::*;
use vfmig_vfio_user::message::{FLAGS_NO_REPLY, FLAGS_TYPE_MASK, FLAGS_TYPE_REPLY, Header};
use vfmig_vfio_user::{Limits, Received};

/// Whether the server answers a message with these flags (reserved bits are ignored).
fn answered(flags: u32) -> bool {
    let reply = flags & FLAGS_TYPE_MASK == FLAGS_TYPE_REPLY;
    flags & FLAGS_NO_REPLY == 0 && !reply
}

/// The reply to `msg_id`, refusing (EFAULT) any command the server sends first.
fn reply_to(raw: &mut RawClient, msg_id: u16) -> Received {
    loop {
        let received = raw.recv();
        if received.header.flags & FLAGS_TYPE_MASK == FLAGS_TYPE_REPLY {
            assert_eq!(received.header.msg_id, msg_id, "replies come in order");
            return received;
        }
        raw.conn.send_error(&received.header, libc::EFAULT).unwrap();
    }
}

fn message() -> impl Strategy<Value = (u16, u32, Vec<u8>)> {
    let flags = prop_oneof![
        Just(0u32),
        Just(0x10),
        Just(1),
        Just(0x40),
        Just(0x21),
        any::<u32>()
    ];
    let len = prop_oneof![
        Just(0usize),
        Just(8),
        Just(16),
        Just(20),
        Just(24),
        Just(32),
        Just(40),
        0usize..128
    ];
    (0u16..17, flags, len).prop_flat_map(|(cmd, flags, len)| {
        (
            Just(cmd),
            Just(flags),
            proptest::collection::vec(any::<u8>(), len),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_messages_are_answered_and_the_server_survives(
        messages in proptest::collection::vec(message(), 1..24)
    ) {
        let (stream, _server) = spawn_server(Limits::default());
        let mut raw = RawClient::negotiated(stream);
        for (cmd, flags, body) in messages {
            let header = Header {
                msg_id: raw.next_id(),
                cmd,
                msg_size: 16 + body.len() as u32,
                flags,
                error_no: 0,
            };
            raw.send_raw(header, &body);
            if answered(flags) {
                reply_to(&mut raw, header.msg_id);
            }
        }
        raw.assert_alive();
    }
}
