//! Transports: errors keep their errno, UNIX listeners clean up, and a shutdown is how a
//! cancelled side makes the other see the end of the stream.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::thread;
use std::time::Duration;

use common::sample_config;
use vfmig_migration::DeviceIndex;
use vfmig_migration::stream::{
    DeviceChunk, Phase, ReadError, Section, StreamPart, StreamReader, StreamWriter,
};
use vfmig_migration::transport::{Address, StreamConnection, TransportError, connect, listen};

fn temp_socket(name: &str) -> Address {
    let dir = std::env::temp_dir().join(format!("vfmig-mig-tr-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Address::Unix(dir.join("s"))
}

#[test]
fn refused_tcp_connection_keeps_its_errno() {
    let listener = listen(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.address().clone();
    drop(listener);
    match connect(&address) {
        Err(TransportError::Connect { address: a, source }) => {
            assert_eq!(a, address);
            assert_eq!(source.raw_os_error(), Some(libc::ECONNREFUSED));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn host_names_resolve() {
    let listener = listen(&"tcp:localhost:0".parse().unwrap()).unwrap();
    let Address::Tcp { port, .. } = listener.address().clone() else {
        panic!("not TCP");
    };
    let accepting = thread::spawn(move || listener.accept().map(|_| ()));
    let address = Address::Tcp {
        host: "localhost".into(),
        port,
    };
    connect(&address).unwrap();
    accepting.join().unwrap().unwrap();
}

#[test]
fn unix_listener_refuses_a_used_path_and_removes_its_socket() {
    let address = temp_socket("inuse");
    let Address::Unix(path) = &address else {
        unreachable!()
    };
    let listener = listen(&address).unwrap();
    assert!(path.exists());
    match listen(&address) {
        Err(TransportError::Listen { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE));
        }
        other => panic!("{other:?}"),
    }
    drop(listener);
    assert!(!path.exists());
    match connect(&address) {
        Err(TransportError::Connect { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn cancelled_sender_makes_the_blocked_receiver_see_a_truncated_stream() {
    let (sender, receiver) = StreamConnection::unix_pair().unwrap();
    let sending = thread::spawn(move || {
        let mut writer = StreamWriter::new(&sender).unwrap();
        writer.write_config(&sample_config()).unwrap();
        writer
            .write_device_chunk(&DeviceChunk {
                device: DeviceIndex(1),
                phase: Phase::PreCopy,
                iteration: 0,
                data: b"partial",
            })
            .unwrap();
        writer.flush().unwrap();
        // The receiver is blocked waiting for more when the sender cancels.
        thread::sleep(Duration::from_millis(50));
        writer.get_ref().shutdown().unwrap();
    });
    let mut reader = StreamReader::new(&receiver).unwrap();
    assert!(matches!(reader.next_section(), Ok(Section::Config(_))));
    assert!(matches!(reader.next_section(), Ok(Section::DeviceChunk(_))));
    let err = reader.next_section().unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Truncated {
                part: StreamPart::FrameHeader,
                ..
            }
        ),
        "{err:?}"
    );
    sending.join().unwrap();
}

#[test]
fn shutdown_from_another_thread_unblocks_our_own_reader() {
    let (sender, receiver) = StreamConnection::unix_pair().unwrap();
    let canceller = receiver.try_clone().unwrap();
    let reading = thread::spawn(move || StreamReader::new(&receiver).map(|_| ()));
    thread::sleep(Duration::from_millis(50));
    canceller.shutdown().unwrap();
    assert!(matches!(
        reading.join().unwrap(),
        Err(ReadError::Truncated {
            part: StreamPart::StreamHeader,
            ..
        })
    ));
    drop(sender);
}
