//! Properties of the codec: decoding never panics, whatever the bytes; every valid message
//! encodes and decodes back to itself.

use std::borrow::Cow;
use vfmig_dirty::PageSize;

use proptest::collection::vec;
use proptest::prelude::*;
use vfmig_abi::uapi::{
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

use super::*;
use crate::Limits;

/// `min` or more, up to `u32::MAX`.
fn at_least(min: u64) -> impl Strategy<Value = u32> {
    let min = u32::try_from(min).unwrap_or(u32::MAX);
    min..=u32::MAX
}

fn page_size() -> impl Strategy<Value = PageSize> {
    (12u32..40).prop_map(|shift| PageSize::new(1u64 << shift).unwrap())
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    let migration =
        (proptest::option::of(page_size()), any::<u64>()).prop_map(|(pgsize, max_bitmap_size)| {
            MigrationCapability {
                pgsize,
                max_bitmap_size,
            }
        });
    let twin = (any::<bool>(), proptest::option::of(0u32..4)).prop_map(|(supported, fd_index)| {
        TwinSocket {
            supported,
            fd_index,
        }
    });
    (
        0u32..=1024,
        any::<u64>(),
        proptest::option::of(migration),
        proptest::option::of(twin),
    )
        .prop_map(
            |(max_msg_fds, max_data_xfer_size, migration, twin_socket)| Capabilities {
                max_msg_fds,
                max_data_xfer_size,
                migration,
                twin_socket,
            },
        )
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u16>(), any::<u16>(), capabilities()).prop_map(|(major, minor, capabilities)| Version {
        major,
        minor,
        capabilities,
    })
}

/// A bitmap geometry: page size, and a size of up to 4096 pages, so bitmaps stay small.
fn small_bitmap() -> impl Strategy<Value = (PageSize, u64)> {
    (12u32..16, 0u64..4096 * 4096)
        .prop_map(|(shift, size)| (PageSize::new(1u64 << shift).unwrap(), size))
}

fn dma_unmap_request() -> impl Strategy<Value = DmaUnmapRequest> {
    let plain = (at_least(24), any::<u64>(), any::<u64>()).prop_map(|(argsz, addr, size)| {
        DmaUnmapRequest {
            unmap: DmaUnmap {
                argsz,
                flags: 0,
                addr,
                size,
            },
            bitmap: None,
        }
    });
    let all = at_least(24).prop_map(|argsz| DmaUnmapRequest {
        unmap: DmaUnmap {
            argsz,
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            addr: 0,
            size: 0,
        },
        bitmap: None,
    });
    let with_bitmap =
        (any::<u64>(), small_bitmap(), any::<u32>()).prop_map(|(addr, (pgsize, size), extra)| {
            let bitmap = Bitmap {
                pgsize,
                size: BitmapRange::new(0, size, pgsize).bitmap_size,
            };
            let argsz = u32::try_from(40 + bitmap.size)
                .unwrap()
                .saturating_add(extra % 1024);
            let unmap = DmaUnmap {
                argsz,
                flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                addr,
                size,
            };
            DmaUnmapRequest {
                unmap,
                bitmap: Some(bitmap),
            }
        });
    prop_oneof![plain, all, with_bitmap]
}

fn irq_set() -> impl Strategy<Value = (IrqSetRequest<'static>, usize)> {
    let data_types = [
        VFIO_IRQ_SET_DATA_NONE,
        VFIO_IRQ_SET_DATA_BOOL,
        VFIO_IRQ_SET_DATA_EVENTFD,
    ];
    let actions = [
        VFIO_IRQ_SET_ACTION_MASK,
        VFIO_IRQ_SET_ACTION_UNMASK,
        VFIO_IRQ_SET_ACTION_TRIGGER,
    ];
    let set = (
        proptest::sample::select(data_types.to_vec()),
        proptest::sample::select(actions.to_vec()),
        at_least(20),
        any::<u32>(),
        any::<u32>(),
        1u32..8,
        any::<bool>(),
        vec(0u8..2, 8),
    )
        .prop_map(
            |(data, action, argsz, index, start, count, deassign, bools)| {
                let set = IrqSet {
                    argsz,
                    flags: data | action,
                    index,
                    start,
                    count,
                };
                let (bytes, fds) = match data {
                    VFIO_IRQ_SET_DATA_BOOL => (bools[..count as usize].to_vec(), 0),
                    VFIO_IRQ_SET_DATA_EVENTFD if !deassign => (Vec::new(), count as usize),
                    _ => (Vec::new(), 0),
                };
                (
                    IrqSetRequest {
                        set,
                        data: Cow::Owned(bytes),
                    },
                    fds,
                )
            },
        );
    let disable = (at_least(20), any::<u32>()).prop_map(|(argsz, index)| {
        let set = IrqSet {
            argsz,
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        (
            IrqSetRequest {
                set,
                data: Cow::Owned(Vec::new()),
            },
            0,
        )
    });
    prop_oneof![set, disable]
}

fn bitmap_range() -> impl Strategy<Value = BitmapRange> {
    (any::<u64>(), any::<u64>(), page_size())
        .prop_map(|(iova, size, pgsize)| BitmapRange::new(iova, size, pgsize))
}

fn dirty_pages_request() -> impl Strategy<Value = DirtyPagesRequest> {
    prop_oneof![
        at_least(8).prop_map(|argsz| DirtyPagesRequest::Start { argsz }),
        at_least(8).prop_map(|argsz| DirtyPagesRequest::Stop { argsz }),
        (at_least(8), bitmap_range())
            .prop_map(|(argsz, range)| DirtyPagesRequest::GetBitmap { argsz, range }),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

/// A valid request and the number of descriptors it travels with.
fn request() -> impl Strategy<Value = (Request<'static>, usize)> {
    let max_xfer = Limits::default().max_data_xfer_size;
    prop_oneof![
        version().prop_map(|v| (Request::Version(v), 0)),
        (
            0u32..4,
            at_least(32),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            0usize..2
        )
            .prop_map(|(flags, argsz, offset, addr, size, fds)| (
                Request::DmaMap(DmaMap {
                    argsz,
                    flags,
                    offset,
                    addr,
                    size
                }),
                fds
            )),
        dma_unmap_request().prop_map(|u| (Request::DmaUnmap(u), 0)),
        (at_least(16), any::<[u32; 3]>()).prop_map(|(argsz, [flags, num_regions, num_irqs])| (
            Request::DeviceGetInfo(DeviceInfo {
                argsz,
                flags,
                num_regions,
                num_irqs
            }),
            0
        )),
        (at_least(32), any::<u32>(), any::<u32>()).prop_map(|(argsz, index, flags)| {
            (
                Request::DeviceGetRegionInfo(RegionInfo {
                    flags,
                    ..RegionInfo::request(index, argsz)
                }),
                0,
            )
        }),
        (at_least(16), any::<u32>()).prop_map(|(argsz, index)| (
            Request::DeviceGetRegionIoFds(RegionIoFds::request(index, argsz)),
            0
        )),
        (at_least(16), any::<u32>()).prop_map(|(argsz, index)| (
            Request::DeviceGetIrqInfo(IrqInfo {
                argsz,
                ..IrqInfo::request(index)
            }),
            0
        )),
        irq_set().prop_map(|(s, fds)| (Request::DeviceSetIrqs(s), fds)),
        (
            any::<u64>(),
            any::<u32>(),
            0..=u32::try_from(max_xfer).unwrap()
        )
            .prop_map(|(offset, region, count)| (
                Request::RegionRead(RegionAccess {
                    offset,
                    region,
                    count
                }),
                0
            )),
        (any::<u64>(), any::<u32>(), bytes()).prop_map(|(offset, region, data)| (
            Request::RegionWrite(RegionData::new(region, offset, data).unwrap()),
            0
        )),
        (any::<u64>(), 0..=max_xfer)
            .prop_map(|(addr, count)| (Request::DmaRead(DmaAccess { addr, count }), 0)),
        (any::<u64>(), bytes())
            .prop_map(|(addr, data)| (Request::DmaWrite(DmaData::new(addr, data)), 0)),
        Just((Request::DeviceReset, 0)),
        dirty_pages_request().prop_map(|d| (Request::DirtyPages(d), 0)),
    ]
}

fn region_cap() -> impl Strategy<Value = RegionCap> {
    let area =
        (any::<u64>(), any::<u64>()).prop_map(|(offset, size)| SparseMmapArea { offset, size });
    prop_oneof![
        vec(area, 0..4).prop_map(RegionCap::SparseMmap),
        (any::<u32>(), any::<u32>())
            .prop_map(|(type_, subtype)| RegionCap::Type { type_, subtype }),
        (3u16.., any::<u16>()).prop_map(|(id, version)| RegionCap::Unknown { id, version }),
        (1u16..3, 2u16..).prop_map(|(id, version)| RegionCap::Unknown { id, version }),
    ]
}

fn region_info_reply() -> impl Strategy<Value = RegionInfoReply> {
    (
        any::<u32>(),
        0u32..16,
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        vec(region_cap(), 0..4),
    )
        .prop_map(|(request_argsz, flags, index, size, offset, caps)| {
            let info = RegionInfo {
                flags,
                index,
                size,
                offset,
                ..RegionInfo::default()
            };
            RegionInfoReply::for_request(request_argsz, info, caps).unwrap()
        })
}

fn io_fds_reply() -> impl Strategy<Value = RegionIoFdsReply> {
    let entry = (any::<[u64; 4]>(), 0u32..2, 0u32..3, any::<u32>(), 0u32..2).prop_map(
        |([offset, size, shadow_offset, datamatch], fd_index, kind, flags, shadow_mem_fd_index)| {
            SubRegionIoFd {
                offset,
                size,
                fd_index,
                kind,
                flags,
                shadow_mem_fd_index,
                shadow_offset,
                datamatch,
            }
        },
    );
    (any::<u32>(), any::<u32>(), vec(entry, 0..4)).prop_map(|(argsz, index, entries)| {
        RegionIoFdsReply::for_request(argsz, index, entries).unwrap()
    })
}

fn dirty_pages_reply() -> impl Strategy<Value = DirtyPagesReply<'static>> {
    let bitmap = (any::<u32>(), any::<u64>(), small_bitmap(), any::<u8>()).prop_map(
        |(argsz, iova, (pgsize, size), fill)| {
            let range = BitmapRange::new(iova, size, pgsize);
            let bits = vec![fill; usize::try_from(range.bitmap_size).unwrap()];
            DirtyPagesReply::Bitmap {
                argsz,
                range,
                bits: Cow::Owned(bits),
            }
        },
    );
    prop_oneof![
        Just(DirtyPagesReply::Done),
        any::<u32>().prop_map(|argsz| DirtyPagesReply::TooSmall { argsz }),
        bitmap
    ]
}

fn dma_unmap_reply() -> impl Strategy<Value = DmaUnmapReply<'static>> {
    (dma_unmap_request(), any::<u8>()).prop_map(|(request, fill)| DmaUnmapReply {
        unmap: request.unmap,
        bitmap: request.bitmap.map(|header| BitmapData {
            header,
            bits: Cow::Owned(vec![fill; usize::try_from(header.size).unwrap()]),
        }),
    })
}

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

/// A valid reply; it travels with the fewest descriptors it allows.
fn reply() -> impl Strategy<Value = Reply<'static>> {
    prop_oneof![
        (command(), any::<u32>()).prop_map(|(command, errno)| Reply::Error { command, errno }),
        version().prop_map(Reply::Version),
        Just(Reply::DmaMap),
        dma_unmap_reply().prop_map(Reply::DmaUnmap),
        any::<[u32; 4]>().prop_map(|[a, flags, num_regions, num_irqs]| {
            Reply::DeviceGetInfo(DeviceInfo {
                argsz: a.max(16),
                flags,
                num_regions,
                num_irqs,
            })
        }),
        region_info_reply().prop_map(Reply::DeviceGetRegionInfo),
        io_fds_reply().prop_map(Reply::DeviceGetRegionIoFds),
        any::<[u32; 4]>().prop_map(|[a, flags, index, count]| Reply::DeviceGetIrqInfo(IrqInfo {
            argsz: a.max(16),
            flags,
            index,
            count
        })),
        Just(Reply::DeviceSetIrqs),
        (any::<u64>(), any::<u32>(), bytes()).prop_map(|(offset, region, data)| Reply::RegionRead(
            RegionData::new(region, offset, data).unwrap()
        )),
        any::<(u64, u32, u32)>().prop_map(|(offset, region, count)| Reply::RegionWrite(
            RegionAccess {
                offset,
                region,
                count
            }
        )),
        (any::<u64>(), bytes()).prop_map(|(addr, data)| Reply::DmaRead(DmaData::new(addr, data))),
        any::<(u64, u64)>().prop_map(|(addr, count)| Reply::DmaWrite(DmaAccess { addr, count })),
        Just(Reply::DeviceReset),
        dirty_pages_reply().prop_map(Reply::DirtyPages),
    ]
}

/// The descriptors a valid reply travels with: the fewest it allows, or as many as its
/// sub-regions name.
fn fds_for(reply: &Reply<'_>) -> usize {
    match reply {
        Reply::DeviceGetRegionIoFds(io) => io
            .sub_regions
            .iter()
            .flat_map(SubRegionIoFd::fd_indexes)
            .map(|i| i as usize + 1)
            .max()
            .unwrap_or(0),
        _ => reply.fd_range().0,
    }
}

/// A body that starts valid and is then damaged: bytes overwritten, and cut or extended.
fn damaged(body: Vec<u8>, edits: Vec<(usize, u8)>, cut: usize, tail: Vec<u8>) -> Vec<u8> {
    let mut body = body;
    for (at, byte) in edits {
        if let Some(len) = std::num::NonZeroUsize::new(body.len()) {
            body[at % len.get()] = byte;
        }
    }
    body.truncate(body.len().saturating_sub(cut));
    body.extend(tail);
    body
}

proptest! {
    #[test]
    fn valid_requests_decode_to_themselves((request, fds) in request()) {
        let body = request.encode().unwrap();
        let decoded = Request::decode(request.command(), &body, fds, &Limits::default()).unwrap();
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn valid_replies_decode_to_themselves(reply in reply()) {
        let body = reply.encode().unwrap();
        let error = match reply { Reply::Error { errno, .. } => Some(errno), _ => None };
        let decoded = Reply::decode(reply.command(), error, &body, fds_for(&reply)).unwrap();
        prop_assert_eq!(decoded, reply);
    }

    #[test]
    fn request_decoding_never_panics_on_arbitrary_bodies(command in command(), body in vec(any::<u8>(), 0..256), fds in 0usize..4) {
        let _ = Request::decode(command, &body, fds, &Limits::default());
    }

    #[test]
    fn reply_decoding_never_panics_on_arbitrary_bodies(command in command(), body in vec(any::<u8>(), 0..256), fds in 0usize..4, error in proptest::option::of(any::<u32>())) {
        let _ = Reply::decode(command, error, &body, fds);
    }

    #[test]
    fn request_decoding_never_panics_on_damaged_requests((request, fds) in request(), edits in vec((any::<usize>(), any::<u8>()), 0..8), cut in 0usize..8, tail in vec(any::<u8>(), 0..8)) {
        let body = damaged(request.encode().unwrap(), edits, cut, tail);
        let _ = Request::decode(request.command(), &body, fds, &Limits::default());
    }

    #[test]
    fn reply_decoding_never_panics_on_damaged_replies(reply in reply(), edits in vec((any::<usize>(), any::<u8>()), 0..8), cut in 0usize..8, tail in vec(any::<u8>(), 0..8)) {
        let body = damaged(reply.encode().unwrap(), edits, cut, tail);
        let _ = Reply::decode(reply.command(), None, &body, reply.fd_range().0);
    }

    #[test]
    fn whole_message_parsing_never_panics(bytes in vec(any::<u8>(), 0..256), fds in 0usize..4) {
        let _ = Request::parse(&bytes, fds, &Limits::default());
        let _ = Reply::parse(&bytes, fds, &Limits::default());
    }
}
