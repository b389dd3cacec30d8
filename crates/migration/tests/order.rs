//! The order rules, on both sides: the writer refuses before sending, the reader refuses
//! what a writer that ignored them would send.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io::{self, Write};

use common::sample_config;
use vfmig_migration::DeviceIndex;
use vfmig_migration::stream::{
    CURRENT_VERSION, DeviceChunk, DeviceConfig, Iteration, OrderError, Phase, ReadError,
    SectionKind, StreamHeader, StreamReader, StreamWriter, WriteError, encode_frame,
};

fn chunk(device: u32, data: &[u8]) -> DeviceChunk<'_> {
    DeviceChunk {
        device: DeviceIndex(device),
        phase: Phase::PreCopy,
        iteration: 0,
        data,
    }
}

fn device_config(device: u32) -> DeviceConfig<'static> {
    DeviceConfig {
        device: DeviceIndex(device),
        data: b"c",
    }
}

fn order_error(result: Result<(), WriteError>) -> OrderError {
    match result {
        Err(WriteError::Order(err)) => err,
        other => panic!("{other:?}"),
    }
}

#[test]
fn writer_refuses_anything_before_the_config_and_writes_nothing() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    assert_eq!(
        order_error(writer.write_iteration(Iteration::default())),
        OrderError::ConfigNotFirst {
            kind: SectionKind::Iteration
        }
    );
    assert!(matches!(
        order_error(writer.write_device_chunk(&chunk(1, b"x"))),
        OrderError::ConfigNotFirst { .. }
    ));
    assert!(matches!(
        order_error(writer.finish().map(|_| ())),
        OrderError::ConfigNotFirst { .. }
    ));
    assert_eq!(writer.bytes_written(), 16);
    assert_eq!(writer.sections_written(), 0);
}

#[test]
fn writer_enforces_the_device_rules() {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&sample_config()).unwrap();
    assert_eq!(
        order_error(writer.write_config(&sample_config())),
        OrderError::DuplicateConfig
    );
    assert_eq!(
        order_error(writer.write_device_chunk(&chunk(3, b"x"))),
        OrderError::UnknownDevice {
            device: DeviceIndex(3)
        }
    );
    writer.write_device_config(&device_config(1)).unwrap();
    assert!(matches!(
        order_error(writer.write_device_chunk(&chunk(1, b"x"))),
        OrderError::AfterDeviceConfig { .. }
    ));
    assert!(matches!(
        order_error(writer.write_device_config(&device_config(1))),
        OrderError::AfterDeviceConfig { .. }
    ));
    assert_eq!(
        order_error(writer.finish().map(|_| ())),
        OrderError::MissingDeviceConfig {
            device: DeviceIndex(2)
        }
    );
    writer.write_device_config(&device_config(2)).unwrap();
    writer.finish().unwrap();
    assert_eq!(
        order_error(writer.write_iteration(Iteration::default())),
        OrderError::AfterEnd
    );
}

#[test]
fn a_chunk_of_exactly_the_cap_passes_and_one_byte_more_is_refused() {
    let max = vec![7u8; 16 << 20];
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&sample_config()).unwrap();
    let before = writer.bytes_written();
    let over = vec![0u8; (16 << 20) + 1];
    assert!(matches!(
        writer.write_device_chunk(&chunk(1, &over)),
        Err(WriteError::TooLong {
            kind: SectionKind::DeviceChunk,
            ..
        })
    ));
    assert_eq!(writer.bytes_written(), before);
    writer.write_device_chunk(&chunk(1, &max)).unwrap();
    let stream = writer.into_inner().unwrap();
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    reader.next_section().unwrap();
    match reader.next_section().unwrap() {
        vfmig_migration::stream::Section::DeviceChunk(got) => assert_eq!(got.data, &max[..]),
        other => panic!("{other:?}"),
    }
}

/// A stream of the sample config followed by `frames`.
fn hand_made(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    stream.extend(encode_frame(1, 0, &sample_config().encode()));
    for frame in frames {
        stream.extend_from_slice(frame);
    }
    stream
}

/// The order error of the last of `frames`, all others being accepted.
fn reader_order_error(stream: &[u8], sections: usize) -> OrderError {
    let mut reader = StreamReader::new(stream).unwrap();
    for _ in 0..sections - 1 {
        reader.next_section().unwrap();
    }
    match reader.next_section() {
        Err(ReadError::Order { pos, source }) => {
            assert_eq!(pos.index as usize, sections - 1);
            source
        }
        other => panic!("{other:?}"),
    }
}

fn chunk_frame(device: u32) -> Vec<u8> {
    let mut payload = device.to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 12]);
    payload.extend_from_slice(b"data");
    encode_frame(3, 0, &payload)
}

fn device_config_frame(device: u32) -> Vec<u8> {
    let mut payload = device.to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 4]);
    encode_frame(4, 0, &payload)
}

#[test]
fn reader_refuses_sections_out_of_order() {
    let mut first = StreamHeader::new(CURRENT_VERSION).to_bytes().to_vec();
    first.extend(encode_frame(5, 0, &Iteration::default().encode()));
    assert!(matches!(
        reader_order_error(&first, 1),
        OrderError::ConfigNotFirst {
            kind: SectionKind::Iteration
        }
    ));
    let twice = hand_made(&[encode_frame(1, 0, &sample_config().encode())]);
    assert_eq!(reader_order_error(&twice, 2), OrderError::DuplicateConfig);
    assert_eq!(
        reader_order_error(&hand_made(&[chunk_frame(9)]), 2),
        OrderError::UnknownDevice {
            device: DeviceIndex(9)
        }
    );
    let after = hand_made(&[device_config_frame(1), chunk_frame(1)]);
    assert!(matches!(
        reader_order_error(&after, 3),
        OrderError::AfterDeviceConfig { .. }
    ));
}

#[test]
fn reader_refuses_to_read_past_end() {
    let stream = common::sample_stream();
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    while !reader.is_finished() {
        reader.next_section().unwrap();
    }
    assert!(matches!(
        reader.next_section(),
        Err(ReadError::Order {
            source: OrderError::AfterEnd,
            ..
        })
    ));
}

/// A transport that accepts `room` bytes, then fails with `EPIPE`.
struct FailsAfter {
    room: usize,
}

impl Write for FailsAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_write_keeps_its_errno_and_breaks_the_writer() {
    let mut writer = StreamWriter::new(FailsAfter { room: 100 }).unwrap();
    writer.write_config(&sample_config()).unwrap();
    let big = vec![1u8; 1 << 20];
    let err = writer.write_device_chunk(&chunk(1, &big)).unwrap_err();
    let WriteError::Io { source, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::EPIPE));
    assert!(matches!(
        writer.write_device_chunk(&chunk(1, b"x")),
        Err(WriteError::Broken)
    ));
}
