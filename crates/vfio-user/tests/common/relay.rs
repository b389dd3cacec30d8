//! A relay between a client and a server that records every message as its wire bytes, for
//! tests that check the exact bytes each side sends.

use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use vfmig_vfio_user::{Connection, Limits};
use zerocopy::IntoBytes;

/// Who sent a recorded message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Client,
    /// The server.
    Server,
}

/// One message as it crossed the relay.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Its sender.
    pub from: Side,
    /// Header and body, as sent.
    pub bytes: Vec<u8>,
    /// File descriptors that came with it.
    pub fds: usize,
}

/// Everything that crossed the relay, in order.
pub type Log = Arc<Mutex<Vec<Recorded>>>;

fn limits() -> Limits {
    Limits {
        max_send_fds: 8,
        ..Limits::default()
    }
}

fn pump(from: Side, mut rx: Connection, mut tx: Connection, log: Log) {
    while let Ok(received) = rx.recv() {
        let mut bytes = received.header.as_bytes().to_vec();
        bytes.extend_from_slice(&received.body);
        log.lock().unwrap().push(Recorded {
            from,
            bytes,
            fds: received.fds.len(),
        });
        let fds: Vec<BorrowedFd<'_>> = received.fds.iter().map(AsFd::as_fd).collect();
        if tx.send(&received.header, &received.body, &fds).is_err() {
            break;
        }
    }
    let _ = tx.stream().shutdown(Shutdown::Both);
}

/// Puts a recording relay in front of `server_end`; returns the stream a client connects
/// with and the log.
pub fn relay(server_end: UnixStream) -> (UnixStream, Log) {
    let (client_end, relay_end) = UnixStream::pair().unwrap();
    let log: Log = Arc::default();
    let to_server = Connection::with_limits(server_end, limits()).unwrap();
    let from_client = Connection::with_limits(relay_end, limits()).unwrap();
    let to_client = from_client.try_clone().unwrap();
    let from_server = to_server.try_clone().unwrap();
    {
        let log = Arc::clone(&log);
        thread::spawn(move || pump(Side::Client, from_client, to_server, log));
    }
    {
        let log = Arc::clone(&log);
        thread::spawn(move || pump(Side::Server, from_server, to_client, log));
    }
    (client_end, log)
}
