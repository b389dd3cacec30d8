//! The reader's buffer, a ring: sections that wrap around its end arrive whole, and a
//! section larger than the buffer grows it, keeping the bytes already received.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::thread;

use common::{chunk_bytes, sample_config};
use vfmig_migration::DeviceIndex;
use vfmig_migration::stream::device::DEVICE_CHUNK_HEADER_LEN;
use vfmig_migration::stream::frame::FRAME_OVERHEAD;
use vfmig_migration::stream::{
    DeviceChunk, Phase, READ_BUFFER, Section, StreamReader, StreamWriter,
};
use vfmig_migration::transport::StreamConnection;

/// A stream of the sample config and one chunk of device 1 per entry of `sizes` (each
/// filled from its index), without `End`.
fn chunks_stream(sizes: &[usize]) -> Vec<u8> {
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&sample_config()).unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        writer
            .write_device_chunk(&DeviceChunk {
                device: DeviceIndex(1),
                phase: Phase::PreCopy,
                iteration: i as u64,
                data: &chunk_bytes(len, i as u8),
            })
            .unwrap();
    }
    writer.into_inner().unwrap()
}

/// Reads the config and then `count` chunks from `reader`, checking each one's bytes.
fn expect_chunks<R: std::io::Read>(reader: &mut StreamReader<R>, sizes: &[usize]) {
    assert!(matches!(reader.next_section().unwrap(), Section::Config(_)));
    for (i, &len) in sizes.iter().enumerate() {
        match reader.next_section().unwrap() {
            Section::DeviceChunk(chunk) => {
                assert_eq!(chunk.iteration, i as u64);
                assert!(chunk.data == chunk_bytes(len, i as u8), "chunk {i} differs");
            }
            other => panic!("chunk {i}: {:?}", other.kind()),
        }
    }
}

#[test]
fn sections_that_wrap_around_the_buffer_end_arrive_whole() {
    // 24 chunks of 700,001 bytes: 16 MiB through a 2 MiB buffer, so sections straddle its
    // end at ever different offsets.
    let sizes = vec![700_001; 24];
    let stream = chunks_stream(&sizes);
    let (sender, receiver) = StreamConnection::unix_pair().unwrap();
    let writer = thread::spawn(move || std::io::Write::write_all(&mut &sender, &stream));
    let mut reader = StreamReader::new(&receiver).unwrap();
    expect_chunks(&mut reader, &sizes);
    writer.join().unwrap().unwrap();
    assert_eq!(reader.buffer_capacity(), READ_BUFFER);
}

#[test]
fn a_section_larger_than_the_buffer_grows_it_keeping_the_bytes_received() {
    // Small chunks fill part of the buffer ahead of the large one; a slice reader hands over
    // as much as asked, so the buffer is full of received bytes when it grows.
    let sizes = [3_000, 10 << 20, 5_000];
    let stream = chunks_stream(&sizes);
    let mut reader = StreamReader::new(stream.as_slice()).unwrap();
    expect_chunks(&mut reader, &sizes);
    // Doubled from 2 MiB to 8 MiB, then clamped to the large frame rounded up to the page
    // size.
    // SAFETY: `sysconf` has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    let frame = FRAME_OVERHEAD + DEVICE_CHUNK_HEADER_LEN as usize + (10 << 20);
    assert_eq!(reader.buffer_capacity(), frame.next_multiple_of(page));
}
