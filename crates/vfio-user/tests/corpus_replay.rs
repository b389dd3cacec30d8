//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz harness on stable Rust,
//! so CI checks every input the fuzzers ever kept without needing nightly or cargo-fuzz.
//!
//! `cargo test -p vfmig-vfio-user --test corpus_replay -- --ignored` rewrites the `seed-*`
//! files from the messages below.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use vfmig_abi::uapi::{
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfmig_vfio_user::message::*;

#[path = "../fuzz/harness.rs"]
mod harness;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs every file of a corpus through `decode`; seeds must decode, other inputs must not
/// panic. Returns the number of files.
fn replay(target: &str, decode: fn(&[u8]) -> bool) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(corpus(target)).unwrap() {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let decoded = decode(&data);
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            decoded || !name.starts_with("seed-"),
            "seed {name} does not decode"
        );
        count += 1;
    }
    count
}

#[test]
fn request_corpus_replays_without_panic() {
    assert!(replay("decode_request", harness::decode_request) > 0);
}

#[test]
fn reply_corpus_replays_without_panic() {
    assert!(replay("decode_reply", harness::decode_reply) > 0);
}

/// A corpus input: descriptor count, header, body.
fn input(fds: u8, header: &Header, body: &[u8]) -> Vec<u8> {
    let mut data = vec![fds];
    data.extend_from_slice(zerocopy::IntoBytes::as_bytes(header));
    data.extend_from_slice(body);
    data
}

fn seed_requests() -> Vec<(&'static str, Request<'static>, u8)> {
    let caps = Capabilities {
        max_msg_fds: 32,
        max_data_xfer_size: 1024,
        migration: Some(MigrationCapability {
            pgsize: Some(vfmig_dirty::PageSize::SIZE_4K),
            max_bitmap_size: 256 << 20,
        }),
        twin_socket: Some(TwinSocket {
            supported: true,
            fd_index: None,
        }),
    };
    let range = BitmapRange::new(0, 0x1000, vfmig_dirty::PageSize::SIZE_4K);
    vec![
        (
            "version",
            Request::Version(Version {
                major: 0,
                minor: 2,
                capabilities: caps,
            }),
            0,
        ),
        (
            "dma-map-fd",
            Request::DmaMap(DmaMap::new(3, 0, 0x10_0000, 0x1000)),
            1,
        ),
        (
            "dma-unmap-bitmap",
            Request::DmaUnmap(DmaUnmapRequest {
                unmap: DmaUnmap {
                    argsz: 48,
                    flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                    addr: 0,
                    size: 0x1000,
                },
                bitmap: Some(Bitmap {
                    pgsize: vfmig_dirty::PageSize::SIZE_4K,
                    size: 8,
                }),
            }),
            0,
        ),
        ("get-info", Request::DeviceGetInfo(DeviceInfo::request()), 0),
        (
            "get-region-info",
            Request::DeviceGetRegionInfo(RegionInfo::request(9, 80)),
            0,
        ),
        (
            "get-io-fds",
            Request::DeviceGetRegionIoFds(RegionIoFds::request(0, 1024)),
            0,
        ),
        (
            "get-irq-info",
            Request::DeviceGetIrqInfo(IrqInfo::request(2)),
            0,
        ),
        (
            "set-irqs-eventfd",
            Request::DeviceSetIrqs(IrqSetRequest {
                set: IrqSet {
                    argsz: 20,
                    flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                    index: 2,
                    start: 0,
                    count: 1,
                },
                data: Cow::Borrowed(&[]),
            }),
            1,
        ),
        (
            "region-read",
            Request::RegionRead(RegionAccess {
                offset: 8,
                region: 9,
                count: 8,
            }),
            0,
        ),
        (
            "region-write",
            Request::RegionWrite(RegionData::new(9, 0, &[2, 0, 0, 0][..]).unwrap()),
            0,
        ),
        (
            "dma-read",
            Request::DmaRead(DmaAccess {
                addr: 0x10_0000,
                count: 16,
            }),
            0,
        ),
        (
            "dma-write",
            Request::DmaWrite(DmaData::new(0x10_0000, &[0xab; 16][..])),
            0,
        ),
        ("reset", Request::DeviceReset, 0),
        (
            "dirty-start",
            Request::DirtyPages(DirtyPagesRequest::Start { argsz: 8 }),
            0,
        ),
        (
            "dirty-get",
            Request::DirtyPages(DirtyPagesRequest::get_bitmap(range)),
            0,
        ),
    ]
}

fn seed_replies() -> Vec<(&'static str, Reply<'static>, u8)> {
    let flags =
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    let info = RegionInfo {
        flags,
        index: 9,
        size: 0x5000,
        offset: 0x3000,
        ..RegionInfo::default()
    };
    let caps = RegionCapsBuilder::new()
        .region_type(3, 1)
        .sparse_mmap(vec![SparseMmapArea {
            offset: 0x1000,
            size: 0x4000,
        }])
        .build();
    let entry = SubRegionIoFd {
        offset: 8,
        size: 4,
        fd_index: 0,
        ..SubRegionIoFd::default()
    };
    let range = BitmapRange::new(0, 0x1000, vfmig_dirty::PageSize::SIZE_4K);
    vec![
        (
            "error",
            Reply::Error {
                command: Command::DmaMap,
                errno: 22,
            },
            0,
        ),
        (
            "version",
            Reply::Version(Version {
                major: 0,
                minor: 2,
                capabilities: Capabilities::default(),
            }),
            0,
        ),
        ("dma-map", Reply::DmaMap, 0),
        (
            "dma-unmap-bitmap",
            Reply::DmaUnmap(DmaUnmapReply {
                unmap: DmaUnmap {
                    argsz: 48,
                    flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                    addr: 0,
                    size: 0x1000,
                },
                bitmap: Some(BitmapData {
                    header: Bitmap {
                        pgsize: vfmig_dirty::PageSize::SIZE_4K,
                        size: 8,
                    },
                    bits: Cow::Borrowed(&[1, 0, 0, 0, 0, 0, 0, 0]),
                }),
            }),
            0,
        ),
        (
            "get-info",
            Reply::DeviceGetInfo(DeviceInfo {
                argsz: 16,
                flags: 3,
                num_regions: 10,
                num_irqs: 5,
            }),
            0,
        ),
        (
            "region-info-caps",
            Reply::DeviceGetRegionInfo(
                RegionInfoReply::for_request(80, info, caps.clone()).unwrap(),
            ),
            1,
        ),
        (
            "region-info-short",
            Reply::DeviceGetRegionInfo(RegionInfoReply::for_request(32, info, caps).unwrap()),
            0,
        ),
        (
            "io-fds",
            Reply::DeviceGetRegionIoFds(
                RegionIoFdsReply::for_request(1024, 0, vec![entry]).unwrap(),
            ),
            1,
        ),
        (
            "irq-info",
            Reply::DeviceGetIrqInfo(IrqInfo {
                argsz: 16,
                flags: 1,
                index: 2,
                count: 8,
            }),
            0,
        ),
        (
            "region-read",
            Reply::RegionRead(RegionData::new(9, 8, &[1, 2, 3, 4, 5, 6, 7, 8][..]).unwrap()),
            0,
        ),
        (
            "dma-write",
            Reply::DmaWrite(DmaAccess {
                addr: 0x10_0000,
                count: 16,
            }),
            0,
        ),
        (
            "dirty-bitmap",
            Reply::DirtyPages(DirtyPagesReply::Bitmap {
                argsz: 48,
                range,
                bits: Cow::Borrowed(&[1; 8]),
            }),
            0,
        ),
        (
            "dirty-too-small",
            Reply::DirtyPages(DirtyPagesReply::TooSmall { argsz: 48 }),
            0,
        ),
    ]
}

/// Inputs only a liberal decoder takes (see the crate docs, "Liberal in what we accept"):
/// `(target, name, input)`.
fn liberal_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut region_info = RegionInfo::request(9, 80).encode().unwrap();
    region_info.resize(80, 0);
    let request = Header::new_command(1, Command::DeviceGetRegionInfo, 80).unwrap();
    let write = Header::new_command(1, Command::RegionWrite, 20).unwrap();
    let error = Header {
        msg_size: 32,
        ..Header::new_error_reply(&write, libc::EINVAL)
    };
    vec![
        (
            "decode_request",
            "region-info-argsz-body",
            input(0, &request, &region_info),
        ),
        (
            "decode_reply",
            "error-with-body",
            input(0, &error, &[0; 16]),
        ),
    ]
}

#[test]
#[ignore = "rewrites the seed corpus"]
fn write_seed_corpus() {
    for (target, name, data) in liberal_seeds() {
        fs::write(corpus(target).join(format!("seed-{name}")), data).unwrap();
    }
    for (name, request, fds) in seed_requests() {
        let body = request.encode().unwrap();
        let header = Header::new_command(1, request.command(), body.len()).unwrap();
        fs::write(
            corpus("decode_request").join(format!("seed-{name}")),
            input(fds, &header, &body),
        )
        .unwrap();
    }
    for (name, reply, fds) in seed_replies() {
        let body = reply.encode().unwrap();
        let request = Header::new_command(1, reply.command(), 0).unwrap();
        let header = reply.header(&request, body.len()).unwrap();
        fs::write(
            corpus("decode_reply").join(format!("seed-{name}")),
            input(fds, &header, &body),
        )
        .unwrap();
    }
}
