//! Mutual TLS over real TCP sockets: a migration stream arrives whole; a peer whose
//! certificate another CA signed, or that names no allowed peer, is refused in the handshake,
//! before the other end reads a byte of stream; clones of a TLS connection read and write at
//! once and a third one shuts it down, as the engine uses them. Credentials are made here,
//! in temporary directories, with throwaway CAs.
#![allow(clippy::cast_possible_truncation)]

mod common;
mod tls_creds;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{GuestRam, read_body, sample_layout, sample_ram, sample_sections};
use tls_creds::{Ca, good_creds, temp_dir, tls, write_creds};
use vfmig_migration::transport::{
    Address, CredsError, HANDSHAKE_TIMEOUT, Listener, StreamConnection, TlsCreds, TransportError,
    TransportSecurity, connect_with, listen_with,
};

fn tls_listener(security: &TransportSecurity) -> Listener {
    listen_with(&"tcp:127.0.0.1:0".parse().unwrap(), security).unwrap()
}

/// A connected pair (source, destination) over mutual TLS.
fn tls_pair(name: &str) -> (StreamConnection, StreamConnection) {
    let security = tls(&good_creds(name), &[]);
    let listener = tls_listener(&security);
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept());
    let source = connect_with(&address, &security).unwrap();
    let destination = accepting.join().unwrap().unwrap();
    (source, destination)
}

#[test]
fn a_migration_stream_over_mutual_tls_arrives_whole() {
    let (source, destination) = tls_pair("whole");
    assert!(source.is_tls() && destination.is_tls());
    let ram = sample_ram();
    let writing = thread::spawn(move || {
        common::write_sample(&source, &ram)
            .expect("write sample")
            .bytes_written()
    });
    let mut dest = GuestRam::filled(&sample_layout(), 0xee);
    let sections = read_body(&destination, &mut dest).expect("read sample");
    writing.join().unwrap();
    assert_eq!(sections, sample_sections());
    assert_eq!(dest, sample_ram());
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_by_the_listener() {
    let (ours, theirs) = (Ca::new("ours"), Ca::new("theirs"));
    let dir = temp_dir("client-other-ca");
    write_creds(&dir, &ours, &ours, &["127.0.0.1"], &["x"]);
    let listener = tls_listener(&tls(&dir, &[]));
    // The source trusts the destination's CA, but its own certificate comes from another.
    let rogue = temp_dir("client-other-ca-rogue");
    write_creds(&rogue, &ours, &theirs, &["127.0.0.1"], &["x"]);
    let address = listener.address().clone();
    let sending = thread::spawn(move || {
        // TLS 1.3 ends the client's part of the handshake before the server's verdict, so the
        // connect may succeed; the stream it then sends must never be read.
        if let Ok(mut conn) = connect_with(&address, &tls(&rogue, &[])) {
            let _ = conn.write_all(b"VFMIG stream bytes");
        }
    });
    let refused = listener.accept().unwrap_err();
    sending.join().unwrap();
    assert!(
        matches!(refused, TransportError::Handshake { .. })
            && refused.to_string().contains("certificate"),
        "{refused}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_by_the_client() {
    let dir = temp_dir("server-other-ca");
    let (ours, theirs) = (Ca::new("ours"), Ca::new("theirs"));
    write_creds(&dir, &ours, &theirs, &["127.0.0.1"], &["x"]);
    let listener = tls_listener(&tls(&dir, &[]));
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().map(|_| ()));
    let client = temp_dir("server-other-ca-client");
    write_creds(&client, &ours, &ours, &["127.0.0.1"], &["x"]);
    let refused = connect_with(&address, &tls(&client, &[])).unwrap_err();
    assert!(
        matches!(refused, TransportError::Handshake { .. })
            && refused.to_string().contains("certificate"),
        "{refused}"
    );
    assert!(accepting.join().unwrap().is_err());
}

#[test]
fn a_server_not_named_for_the_host_dialled_is_refused_by_the_client() {
    let dir = temp_dir("server-name");
    let ca = Ca::new("ours");
    write_creds(&dir, &ca, &ca, &["elsewhere.example"], &["x"]);
    let security = tls(&dir, &[]);
    let listener = tls_listener(&security);
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().map(|_| ()));
    let refused = connect_with(&address, &security).unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
    assert!(accepting.join().unwrap().is_err());
}

#[test]
fn a_source_not_on_the_destinations_allow_list_is_refused() {
    let dir = good_creds("allow-list-refused");
    let listener = tls_listener(&tls(&dir, &["vfmig-other-source"]));
    let address = listener.address().clone();
    let sending = thread::spawn(move || {
        if let Ok(mut conn) = connect_with(&address, &tls(&dir, &[])) {
            let _ = conn.write_all(b"VFMIG stream bytes");
        }
    });
    let refused = listener.accept().unwrap_err();
    sending.join().unwrap();
    assert!(refused.to_string().contains("allowed peers"), "{refused}");
}

#[test]
fn a_source_on_the_destinations_allow_list_is_accepted() {
    let dir = good_creds("allow-list-accepted");
    let listener = tls_listener(&tls(&dir, &["vfmig-other-source", "vfmig-source"]));
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().map(|_| ()));
    connect_with(&address, &tls(&dir, &[])).unwrap();
    accepting.join().unwrap().unwrap();
}

#[test]
fn a_destination_not_on_the_sources_allow_list_is_refused() {
    let dir = good_creds("allow-list-server");
    let listener = tls_listener(&tls(&dir, &[]));
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().map(|_| ()));
    let refused = connect_with(&address, &tls(&dir, &["other-destination"])).unwrap_err();
    assert!(refused.to_string().contains("allowed peers"), "{refused}");
    assert!(accepting.join().unwrap().is_err());
}

#[test]
fn a_plain_client_is_refused_by_a_tls_listener() {
    let listener = tls_listener(&tls(&good_creds("plain-client"), &[]));
    let address = listener.address().clone();
    let sending = thread::spawn(move || {
        let Address::Tcp { port, .. } = address else {
            unreachable!()
        };
        let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = raw.write_all(b"VFMIG\0\0\0 a plain stream header and more");
        let _ = raw.read(&mut [0u8; 64]);
    });
    let refused = listener.accept().unwrap_err();
    sending.join().unwrap();
    assert!(
        matches!(refused, TransportError::Handshake { .. }),
        "{refused}"
    );
}

#[test]
fn a_silent_peer_fails_the_handshake_after_the_timeout() {
    let listener = tls_listener(&tls(&good_creds("silent"), &[]));
    let Address::Tcp { port, .. } = listener.address().clone() else {
        unreachable!()
    };
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let refused = listener.accept().unwrap_err();
    assert!(
        matches!(refused, TransportError::HandshakeTimeout { .. }),
        "{refused}"
    );
    assert!(start.elapsed() >= HANDSHAKE_TIMEOUT);
}

/// The engine's pattern: on each side one handle writes a long stream while a clone reads the
/// other side's, at once (each side's socket buffers fill, so taking turns would stall).
#[test]
fn clones_of_a_tls_connection_read_and_write_at_once() {
    const LEN: usize = 16 << 20;
    let (source, destination) = tls_pair("duplex");
    let pattern =
        |seed: u8| -> Vec<u8> { (0..LEN).map(|i| (i as u8).wrapping_mul(seed)).collect() };
    let run = |conn: StreamConnection, seed: u8, peer_seed: u8| {
        let reader = conn.try_clone().unwrap();
        let reading = thread::spawn(move || {
            let mut got = Vec::with_capacity(LEN);
            (&reader).take(LEN as u64).read_to_end(&mut got).unwrap();
            got
        });
        let writing = thread::spawn(move || (&conn).write_all(&pattern(seed)).unwrap());
        (reading, writing, peer_seed)
    };
    for (reading, writing, peer_seed) in [run(source, 3, 5), run(destination, 5, 3)] {
        writing.join().unwrap();
        assert!(reading.join().unwrap() == pattern(peer_seed));
    }
}

#[test]
fn shutdown_from_a_third_handle_ends_a_blocked_read() {
    let (source, _destination) = tls_pair("shutdown");
    let canceller = source.try_clone().unwrap();
    let reading = thread::spawn(move || (&source).read(&mut [0u8; 16]));
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    canceller.shutdown().unwrap();
    let ended = reading.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    // No close_notify came, so the read reports a cut stream rather than a clean end.
    assert_eq!(ended.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
}

#[test]
fn shutdown_write_lets_the_peer_read_a_clean_end_and_still_answer() {
    let (source, destination) = tls_pair("half-close");
    (&destination).write_all(b"FAILED why\n").unwrap();
    destination.shutdown_write().unwrap();
    let mut got = Vec::new();
    (&source).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"FAILED why\n");
    (&source).write_all(b"late").unwrap();
    let mut late = [0u8; 4];
    (&destination).read_exact(&mut late).unwrap();
    assert_eq!(&late, b"late");
}

#[test]
fn a_read_timeout_keeps_its_meaning_over_tls() {
    let (source, _destination) = tls_pair("timeout");
    source
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let err = (&source).read(&mut [0u8; 16]).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
}

#[test]
fn a_key_without_its_certificate_is_named_in_the_error() {
    let dir = good_creds("missing-cert");
    std::fs::remove_file(dir.join("client-cert.pem")).unwrap();
    match TlsCreds::load(&dir, &[]) {
        Err(CredsError::Missing { path, .. }) => assert_eq!(path, dir.join("client-cert.pem")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_ca_file_without_a_certificate_is_named_in_the_error() {
    let dir = good_creds("bad-ca");
    std::fs::write(dir.join("ca-cert.pem"), "not a certificate\n").unwrap();
    let err = TlsCreds::load(&dir, &[]).unwrap_err();
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");
}

#[test]
fn a_destination_without_the_server_pair_cannot_listen() {
    let dir = good_creds("no-server-pair");
    std::fs::remove_file(dir.join("server-cert.pem")).unwrap();
    std::fs::remove_file(dir.join("server-key.pem")).unwrap();
    let refused = listen_with(&"tcp:127.0.0.1:0".parse().unwrap(), &tls(&dir, &[])).unwrap_err();
    assert!(
        matches!(&refused, TransportError::Creds(CredsError::Missing { path, .. }) if path.ends_with("server-cert.pem")),
        "{refused}"
    );
}

#[test]
fn tls_on_a_unix_address_is_refused() {
    let dir = good_creds("unix");
    let refused =
        connect_with(&"unix:/tmp/vfmig-none".parse().unwrap(), &tls(&dir, &[])).unwrap_err();
    assert!(
        matches!(refused, TransportError::TlsNeedsTcp { .. }),
        "{refused}"
    );
}
