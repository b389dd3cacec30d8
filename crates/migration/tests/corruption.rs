//! Corrupted and truncated streams are always refused, never accepted and never a panic.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::{GuestRam, Owned, read_all, sample_layout, sample_ram};
use vfmig_migration::stream::{
    CURRENT_VERSION, DeviceChunk, DeviceConfig, End, OrderError, Phase, ReadError, SectionKind,
    StreamHeader, StreamPart, StreamReader, StreamWriter, encode_frame,
};
use vfmig_migration::{DeviceIndex, Gpa, PageRun};

/// A small stream of every section type: about 8.5 KiB.
fn small_stream() -> Vec<u8> {
    let ram = sample_ram();
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&common::sample_config()).unwrap();
    writer
        .write_iteration(vfmig_migration::stream::Iteration {
            number: 0,
            pages: 4,
        })
        .unwrap();
    // Page 0 is zero, pages 1 and 2 are not.
    writer.write_ram([PageRun::new(Gpa(0), 3)], &ram).unwrap();
    writer
        .write_device_chunk(&DeviceChunk {
            device: DeviceIndex(2),
            phase: Phase::PreCopy,
            iteration: 0,
            data: &common::chunk_bytes(50, 9),
        })
        .unwrap();
    for id in [1, 2] {
        writer
            .write_device_config(&DeviceConfig {
                device: DeviceIndex(id),
                data: b"cfg",
            })
            .unwrap();
    }
    writer.finish().unwrap();
    writer.into_inner().unwrap()
}

/// Reads a stream to its end; `Ok` only if every section verified and `End` was reached.
fn read(stream: &[u8]) -> Result<Vec<Owned>, ReadError> {
    let mut ram = GuestRam::new(&sample_layout());
    read_all(stream, &mut ram)
}

#[test]
fn every_flipped_byte_of_a_small_stream_is_detected() {
    let stream = small_stream();
    assert!(read(&stream).is_ok());
    let mut corrupted = stream.clone();
    for at in 0..stream.len() {
        for mask in [0x01, 0x80, 0xff] {
            corrupted[at] ^= mask;
            assert!(
                read(&corrupted).is_err(),
                "flipping byte {at} with {mask:#x} was not detected"
            );
            corrupted[at] ^= mask;
        }
    }
}

#[test]
fn sampled_flipped_bytes_of_a_large_stream_are_detected() {
    let stream = common::sample_stream();
    assert!(stream.len() > 1 << 20);
    let positions = (0..200)
        .chain((200..stream.len()).step_by(1999))
        .chain(stream.len() - 64..stream.len());
    let mut corrupted = stream.clone();
    for at in positions {
        corrupted[at] ^= 0x10;
        assert!(
            read(&corrupted).is_err(),
            "flipping byte {at} was not detected"
        );
        corrupted[at] ^= 0x10;
    }
}

#[test]
fn every_truncation_is_reported_as_truncation() {
    let stream = small_stream();
    for len in 0..stream.len() {
        match read(&stream[..len]) {
            Err(ReadError::Truncated { offset, .. }) => assert_eq!(offset, len as u64),
            other => panic!("stream cut at {len}: {other:?}"),
        }
    }
}

#[test]
fn stream_without_end_is_truncated_between_sections() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&common::sample_config()).unwrap();
    let stream = writer.into_inner().unwrap();
    let err = read(&stream).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Truncated {
                part: StreamPart::FrameHeader,
                section: None,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn checksum_error_names_the_section_index_type_and_offset() {
    let stream = small_stream();
    // Find where the device chunk (section #3) starts by reading up to it.
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    for _ in 0..3 {
        reader.next_section().unwrap();
    }
    let chunk_offset = reader.bytes_read();
    let mut corrupted = stream.clone();
    corrupted[chunk_offset as usize + 8 + 20] ^= 1;
    let err = read(&corrupted).unwrap_err();
    let ReadError::Checksum { pos, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        (pos.index, pos.kind, pos.offset),
        (3, SectionKind::DeviceChunk.to_wire(), chunk_offset)
    );
    let text = err.to_string();
    assert!(
        text.contains("section #3 (device-chunk)")
            && text.contains(&format!("at byte {chunk_offset}")),
        "{text}"
    );
}

#[test]
fn end_with_wrong_counts_is_refused() {
    let config = common::sample_config();
    let mut stream = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    stream.extend(encode_frame(1, 0, &config.encode()));
    // A stream of a config without devices, then an End that claims 2 sections.
    let config = vfmig_migration::stream::StreamConfig::new(sample_layout(), vec![]).unwrap();
    let mut stream2 = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    stream2.extend(encode_frame(1, 0, &config.encode()));
    let end_offset = stream2.len() as u64;
    let wrong = End {
        sections: 2,
        bytes: end_offset,
    };
    stream2.extend(encode_frame(6, 0, &wrong.encode()));
    let err = read(&stream2).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Order {
                source: OrderError::EndMismatch {
                    what: "sections",
                    declared: 2,
                    actual: 1
                },
                ..
            }
        ),
        "{err:?}"
    );
    // The same End with the right counts is accepted.
    let right = End {
        sections: 1,
        bytes: end_offset,
    };
    stream2.truncate(end_offset as usize);
    stream2.extend(encode_frame(6, 0, &right.encode()));
    assert!(read(&stream2).is_ok());
    // And a config with devices but no device-config sections cannot end.
    let end = End {
        sections: 1,
        bytes: stream.len() as u64,
    };
    stream.extend(encode_frame(6, 0, &end.encode()));
    assert!(matches!(
        read(&stream).unwrap_err(),
        ReadError::Order {
            source: OrderError::MissingDeviceConfig { .. },
            ..
        }
    ));
}

#[test]
fn reader_refuses_to_go_on_after_an_error() {
    let mut stream = small_stream();
    stream[40] ^= 1;
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    assert!(matches!(
        reader.next_section(),
        Err(ReadError::Checksum { .. })
    ));
    assert!(matches!(reader.next_section(), Err(ReadError::Broken)));
}

#[test]
fn a_known_section_flagged_optional_is_refused() {
    // A config without devices and its End, the End flagged optional: the stream's only
    // encoding of an End has no flags, so this one is not a stream of ours.
    let config = vfmig_migration::stream::StreamConfig::new(sample_layout(), vec![]).unwrap();
    let mut stream = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    stream.extend(encode_frame(1, 0, &config.encode()));
    let end = End {
        sections: 1,
        bytes: stream.len() as u64,
    };
    let optional = vfmig_migration::stream::FLAG_OPTIONAL;
    stream.extend(encode_frame(
        SectionKind::End as u16,
        optional,
        &end.encode(),
    ));
    let err = read(&stream).unwrap_err();
    assert!(
        matches!(err, ReadError::Flags { flags, .. } if flags == optional),
        "{err:?}"
    );
}
