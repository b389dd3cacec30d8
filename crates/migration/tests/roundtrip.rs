//! Every section type through real sockets: a TCP loopback connection, a UNIX socket pair and
//! a UNIX listener. The receiver gets the sections the sender wrote, in order, and its RAM
//! ends equal to the sender's.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::thread;

use common::{GuestRam, Owned, read_body, sample_layout, sample_ram, sample_sections};
use vfmig_migration::transport::{Address, StreamConnection, connect, listen};

/// Sends the sample stream on `sender` from another thread while `receiver` reads it.
fn exchange(sender: StreamConnection, receiver: StreamConnection) -> (Vec<Owned>, GuestRam) {
    let source = sample_ram();
    let writer = thread::spawn(move || {
        let writer = common::write_sample(&sender, &source).expect("write sample");
        writer.bytes_written()
    });
    let mut dest = GuestRam::filled(&sample_layout(), 0xee);
    let sections = read_body(&receiver, &mut dest).expect("read sample");
    writer.join().expect("writer thread");
    (sections, dest)
}

fn assert_sample_received(sections: Vec<Owned>, dest: GuestRam) {
    assert_eq!(sections, sample_sections());
    // Every page was sent (zero pages as zero runs over the 0xee the destination held).
    assert_eq!(dest, sample_ram());
}

#[test]
fn every_section_type_round_trips_over_tcp_loopback() {
    let listener = listen(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().unwrap());
    let sender = connect(&address).unwrap();
    let receiver = accepting.join().unwrap();
    assert!(sender.nodelay().unwrap() && receiver.nodelay().unwrap());
    let (sections, dest) = exchange(sender, receiver);
    assert_sample_received(sections, dest);
}

#[test]
fn every_section_type_round_trips_over_a_unix_socket_pair() {
    let (sender, receiver) = StreamConnection::unix_pair().unwrap();
    let (sections, dest) = exchange(sender, receiver);
    assert_sample_received(sections, dest);
}

#[test]
fn every_section_type_round_trips_over_a_unix_listener() {
    let dir = std::env::temp_dir().join(format!("vfmig-mig-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let address = Address::Unix(dir.join("s"));
    let listener = listen(&address).unwrap();
    let accepting = thread::spawn(move || listener.accept().unwrap());
    let sender = connect(&address).unwrap();
    let receiver = accepting.join().unwrap();
    let (sections, dest) = exchange(sender, receiver);
    assert_sample_received(sections, dest);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn end_counts_every_section_and_byte_before_it() {
    let stream = common::sample_stream();
    let mut dest = GuestRam::new(&sample_layout());
    let sections = common::read_all(stream.as_slice(), &mut dest).unwrap();
    let Some(Owned::End(end)) = sections.last() else {
        panic!("no End");
    };
    assert_eq!(end.sections, 12);
    assert_eq!(end.bytes, stream.len() as u64 - 12 - 16);
}
