//! Versions and forward compatibility: another major is refused, a higher minor is read, and
//! what a higher minor may add (optional sections of new types) is verified and skipped.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::{GuestRam, read_all, sample_layout};
use vfmig_migration::stream::{
    CURRENT_VERSION, End, FLAG_OPTIONAL, HeaderError, ReadError, StreamConfig, StreamHeader,
    StreamReader, StreamVersion, encode_frame,
};

/// A stream of `version` holding `frames` (already encoded) after the header.
fn stream_of(version: StreamVersion, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = StreamHeader::new(version).to_bytes().to_vec();
    for frame in frames {
        stream.extend_from_slice(frame);
    }
    stream
}

fn config_frame() -> Vec<u8> {
    let config = StreamConfig::new(sample_layout(), vec![]).unwrap();
    encode_frame(1, 0, &config.encode())
}

fn end_frame(sections: u64, bytes: usize) -> Vec<u8> {
    encode_frame(
        6,
        0,
        &End {
            sections,
            bytes: bytes as u64,
        }
        .encode(),
    )
}

fn read(stream: &[u8]) -> Result<usize, ReadError> {
    let mut ram = GuestRam::new(&sample_layout());
    read_all(stream, &mut ram).map(|sections| sections.len())
}

#[test]
fn unknown_major_is_refused_naming_both_versions() {
    for major in [0, 2, 0xffff] {
        let theirs = StreamVersion { major, minor: 3 };
        let stream = stream_of(theirs, &[config_frame()]);
        let err = StreamReader::new(stream.as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Header(HeaderError::UnsupportedVersion { theirs: t, ours })
                    if t == theirs && ours == CURRENT_VERSION
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("{major}.3")) && text.contains("1.0"),
            "{text}"
        );
    }
}

#[test]
fn higher_minor_is_accepted() {
    let sample = common::sample_stream();
    let mut stream = StreamHeader::new(StreamVersion { major: 1, minor: 7 })
        .to_bytes()
        .to_vec();
    stream.extend_from_slice(&sample[16..]);
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    assert_eq!(reader.version(), StreamVersion { major: 1, minor: 7 });
    reader.next_section().unwrap();
    assert_eq!(read(&stream).unwrap(), 13);
}

#[test]
fn optional_section_of_a_newer_minor_is_verified_and_skipped() {
    let config = config_frame();
    let optional = encode_frame(0x4001, FLAG_OPTIONAL, b"something new");
    let offset = 16 + config.len() + optional.len();
    let stream = stream_of(
        StreamVersion { major: 1, minor: 1 },
        &[config.clone(), optional.clone(), end_frame(2, offset)],
    );
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    reader.next_section().unwrap();
    reader.next_section().unwrap();
    assert!(reader.is_finished());
    assert_eq!(reader.sections_skipped(), 1);
    assert_eq!(reader.sections_read(), 3);

    // Skipped, but not unchecked: a corrupted optional section is refused.
    let mut corrupted = stream.clone();
    corrupted[16 + config.len() + 10] ^= 1;
    assert!(matches!(read(&corrupted), Err(ReadError::Checksum { .. })));
}

#[test]
fn unknown_type_without_the_optional_flag_is_refused() {
    let config = config_frame();
    let stream = stream_of(
        CURRENT_VERSION,
        &[config.clone(), encode_frame(0x4001, 0, b"x")],
    );
    let err = read(&stream).unwrap_err();
    let ReadError::UnknownKind { pos } = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        (pos.index, pos.kind, pos.offset),
        (1, 0x4001, 16 + config.len() as u64)
    );
}

#[test]
fn unknown_flags_are_refused() {
    let stream = stream_of(CURRENT_VERSION, &[encode_frame(1, 0x0002, b"")]);
    assert!(matches!(
        read(&stream),
        Err(ReadError::Flags { flags: 2, .. })
    ));
}

#[test]
fn a_stream_that_is_not_ours_is_refused_by_its_magic() {
    let mut stream = stream_of(CURRENT_VERSION, &[config_frame()]);
    stream[..8].copy_from_slice(b"QEVM\0\0\0\x03");
    assert!(matches!(
        StreamReader::new(stream.as_slice()),
        Err(ReadError::Header(HeaderError::BadMagic { .. }))
    ));
}
