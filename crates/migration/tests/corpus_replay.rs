//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz harness on stable
//! Rust, so CI checks every input the fuzzers ever kept without nightly or cargo-fuzz.
//!
//! `cargo test -p vfmig-migration --test corpus_replay -- --ignored` rewrites the `seed-*`
//! files from the streams below.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use vfmig_migration::stream::{
    DeviceChunk, DeviceConfig, DeviceDesc, End, FLAG_OPTIONAL, Iteration, Phase, RamLayout,
    RegionDesc, StreamConfig, StreamHeader, StreamVersion, StreamWriter, encode_frame,
};
use vfmig_migration::{DeviceIndex, Gpa, PageRun, STREAM_PAGE_SIZE};

#[path = "../fuzz/harness.rs"]
mod harness;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs every file of a corpus through `read`; seeds must read to `End`, other inputs must
/// not panic. Returns the number of files.
fn replay(target: &str, read: fn(&[u8]) -> bool) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(corpus(target)).unwrap() {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let complete = read(&data);
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            complete || !name.starts_with("seed-"),
            "seed {name} does not read to End"
        );
        count += 1;
    }
    count
}

#[test]
fn stream_corpus_replays_without_panic() {
    assert!(replay("read_stream", harness::read_stream) > 0);
}

#[test]
fn framed_corpus_replays_without_panic() {
    assert!(replay("read_framed", harness::read_framed) > 0);
}

#[test]
fn seeds_are_what_the_writer_writes_today() {
    for (name, stream) in seeds() {
        let file = corpus("read_stream").join(format!("seed-{name}"));
        assert_eq!(
            fs::read(&file).unwrap(),
            stream,
            "{name}: rewrite the seeds (see the top of this file)"
        );
    }
}

/// A small layout: 64 KiB at 0 and 8 KiB at 1 MiB.
fn small_config(devices: &[u32]) -> StreamConfig {
    let ram = RamLayout::new(vec![
        RegionDesc {
            gpa: Gpa(0),
            size: 16 * STREAM_PAGE_SIZE.bytes(),
        },
        RegionDesc {
            gpa: Gpa(1 << 20),
            size: 2 * STREAM_PAGE_SIZE.bytes(),
        },
    ])
    .unwrap();
    let devices = devices
        .iter()
        .map(|&id| DeviceDesc {
            id: DeviceIndex(id),
            kind: if id == 1 { "mtty" } else { "dma-engine" }.into(),
            config: format!("dev{id}").into_bytes(),
        })
        .collect();
    StreamConfig::new(ram, devices).unwrap()
}

/// The seed streams, by name.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&small_config(&[])).unwrap();
    writer.finish().unwrap();
    seeds.push(("config-end", writer.into_inner().unwrap()));

    // Page 0 zero, page 1 data; the second region zero.
    let mut ram = common::GuestRam::new(small_config(&[]).ram());
    ram.write_pattern(STREAM_PAGE_SIZE.bytes(), 1);
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&small_config(&[1, 2])).unwrap();
    writer
        .write_iteration(Iteration {
            number: 0,
            pages: 4,
        })
        .unwrap();
    writer
        .write_ram(
            [PageRun::new(Gpa(0), 2), PageRun::new(Gpa(1 << 20), 2)],
            &ram,
        )
        .unwrap();
    writer
        .write_device_chunk(&DeviceChunk {
            device: DeviceIndex(2),
            phase: Phase::PreCopy,
            iteration: 0,
            data: b"pre-copy chunk",
        })
        .unwrap();
    writer
        .write_device_chunk(&DeviceChunk {
            device: DeviceIndex(1),
            phase: Phase::StopCopy,
            iteration: 1,
            data: &[],
        })
        .unwrap();
    for id in [2, 1] {
        writer
            .write_device_config(&DeviceConfig {
                device: DeviceIndex(id),
                data: b"config",
            })
            .unwrap();
    }
    writer.finish().unwrap();
    seeds.push(("all-sections", writer.into_inner().unwrap()));

    // A newer minor with an optional section of an unknown type.
    let mut stream = StreamHeader::new(StreamVersion { major: 1, minor: 2 })
        .to_bytes()
        .to_vec();
    stream.extend(encode_frame(1, 0, &small_config(&[]).encode()));
    stream.extend(encode_frame(0x4000, FLAG_OPTIONAL, b"new"));
    let end = End {
        sections: 2,
        bytes: stream.len() as u64,
    };
    stream.extend(encode_frame(6, 0, &end.encode()));
    seeds.push(("newer-minor-optional", stream));
    seeds
}

/// A stream's frames without the stream header and the checksums: the `read_framed` input
/// that `harness::frame_up` turns back into the stream.
fn unframe(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = &stream[16..];
    while rest.len() >= 8 {
        let len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
        out.extend_from_slice(&rest[..8 + len]);
        rest = &rest[8 + len + 4..];
    }
    out
}

#[test]
#[ignore = "rewrites the seed corpus"]
fn write_seed_corpus() {
    for (name, stream) in seeds() {
        fs::write(corpus("read_stream").join(format!("seed-{name}")), &stream).unwrap();
        // `frame_up` writes the current version: the newer-minor seed is for read_stream.
        if name != "newer-minor-optional" {
            let framed = unframe(&stream);
            assert_eq!(harness::frame_up(&framed), stream);
            fs::write(corpus("read_framed").join(format!("seed-{name}")), framed).unwrap();
        }
    }
}
