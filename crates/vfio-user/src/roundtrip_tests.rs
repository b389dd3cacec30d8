//! Every request and reply of the 14 commands, encoded, sent over a real socket pair with its
//! file descriptors, received and decoded back to itself.

use std::borrow::Cow;
use std::fs::File;
use std::os::fd::AsFd;

use vfmig_abi::uapi::{
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

use crate::message::*;
use crate::{Connection, Limits};

fn limits() -> Limits {
    Limits {
        max_send_fds: 8,
        ..Limits::default()
    }
}

fn descriptors(n: usize) -> Vec<File> {
    (0..n).map(|_| File::open("/dev/null").unwrap()).collect()
}

fn round_trip_request(request: Request<'_>, nfds: usize) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut client = Connection::with_limits(a, limits()).unwrap();
    let mut server = Connection::with_limits(b, limits()).unwrap();
    let files = descriptors(nfds);
    let fds: Vec<_> = files.iter().map(AsFd::as_fd).collect();
    let header = client.send_request(0x42, &request, &fds).unwrap();
    let received = server.recv().unwrap();
    assert_eq!(received.header, header);
    assert_eq!(received.fds.len(), nfds);
    assert_eq!(received.request(server.limits()).unwrap(), request);
}

fn round_trip_reply(reply: Reply<'_>, nfds: usize) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut client = Connection::with_limits(a, limits()).unwrap();
    let mut server = Connection::with_limits(b, limits()).unwrap();
    let files = descriptors(nfds);
    let fds: Vec<_> = files.iter().map(AsFd::as_fd).collect();
    let request = Header::new_command(0x42, reply.command(), 0).unwrap();
    server.send_reply(&request, &reply, &fds).unwrap();
    let received = client.recv().unwrap();
    assert_eq!(
        (received.header.msg_id, received.header.cmd),
        (0x42, reply.command().code())
    );
    assert_eq!(received.fds.len(), nfds);
    assert_eq!(received.reply(client.limits()).unwrap(), reply);
}

fn migration_caps() -> Capabilities {
    Capabilities {
        max_msg_fds: 8,
        max_data_xfer_size: 1 << 20,
        migration: Some(MigrationCapability {
            pgsize: Some(vfmig_dirty::PageSize::SIZE_4K),
            max_bitmap_size: 4 << 20,
        }),
        twin_socket: None,
    }
}

fn one_page_range() -> BitmapRange {
    BitmapRange::new(0x10_0000, 0x1000, vfmig_dirty::PageSize::SIZE_4K)
}

fn region_info_reply() -> RegionInfoReply {
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
    RegionInfoReply::for_request(1024, info, caps).unwrap()
}

fn io_fds_reply() -> RegionIoFdsReply {
    let entry = |fd_index, kind| SubRegionIoFd {
        offset: 8,
        size: 4,
        fd_index,
        kind,
        datamatch: 7,
        ..SubRegionIoFd::default()
    };
    let entries = vec![
        entry(0, IO_FD_TYPE_IOEVENTFD),
        entry(1, IO_FD_TYPE_IOREGIONFD),
    ];
    RegionIoFdsReply::for_request(1024, 0, entries).unwrap()
}

macro_rules! round_trips {
    ($($name:ident: $kind:ident($value:expr, $fds:expr);)*) => {
        $(
            #[test]
            fn $name() {
                $kind($value, $fds);
            }
        )*
    };
}

round_trips! {
    version_request_round_trips: round_trip_request(Request::Version(Version { major: 0, minor: 2, capabilities: migration_caps() }), 0);
    version_reply_with_twin_socket_round_trips: round_trip_reply(Reply::Version(Version {
        major: 0,
        minor: 2,
        capabilities: Capabilities { twin_socket: Some(TwinSocket { supported: true, fd_index: Some(0) }), ..migration_caps() },
    }), 1);
    dma_map_request_with_fd_round_trips: round_trip_request(Request::DmaMap(DmaMap::new(3, 0x2000, 0x1_0000_0000, 0x4000_0000)), 1);
    dma_map_request_without_fd_round_trips: round_trip_request(Request::DmaMap(DmaMap::new(1, 0, 0x1000, 0x1000)), 0);
    dma_map_reply_round_trips: round_trip_reply(Reply::DmaMap, 0);
    dma_unmap_request_round_trips: round_trip_request(Request::DmaUnmap(DmaUnmapRequest {
        unmap: DmaUnmap { argsz: 24, flags: 0, addr: 0x1000, size: 0x1000 },
        bitmap: None,
    }), 0);
    dma_unmap_all_request_round_trips: round_trip_request(Request::DmaUnmap(DmaUnmapRequest {
        unmap: DmaUnmap { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_ALL, addr: 0, size: 0 },
        bitmap: None,
    }), 0);
    dma_unmap_request_with_bitmap_round_trips: round_trip_request(Request::DmaUnmap(DmaUnmapRequest {
        unmap: DmaUnmap { argsz: 48, flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, addr: 0, size: 0x1000 },
        bitmap: Some(Bitmap { pgsize: vfmig_dirty::PageSize::SIZE_4K, size: 8 }),
    }), 0);
    dma_unmap_reply_with_bitmap_round_trips: round_trip_reply(Reply::DmaUnmap(DmaUnmapReply {
        unmap: DmaUnmap { argsz: 48, flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, addr: 0, size: 0x1000 },
        bitmap: Some(BitmapData { header: Bitmap { pgsize: vfmig_dirty::PageSize::SIZE_4K, size: 8 }, bits: Cow::Owned(vec![1, 0, 0, 0, 0, 0, 0, 0]) }),
    }), 0);
    device_get_info_request_round_trips: round_trip_request(Request::DeviceGetInfo(DeviceInfo::request()), 0);
    device_get_info_reply_round_trips: round_trip_reply(Reply::DeviceGetInfo(DeviceInfo { argsz: 16, flags: 3, num_regions: 10, num_irqs: 5 }), 0);
    region_info_request_round_trips: round_trip_request(Request::DeviceGetRegionInfo(RegionInfo::request(9, 32)), 0);
    region_info_reply_with_caps_and_fd_round_trips: round_trip_reply(Reply::DeviceGetRegionInfo(region_info_reply()), 1);
    region_io_fds_request_round_trips: round_trip_request(Request::DeviceGetRegionIoFds(RegionIoFds::request(0, 1024)), 0);
    region_io_fds_reply_round_trips: round_trip_reply(Reply::DeviceGetRegionIoFds(io_fds_reply()), 2);
    irq_info_request_round_trips: round_trip_request(Request::DeviceGetIrqInfo(IrqInfo::request(2)), 0);
    irq_info_reply_round_trips: round_trip_reply(Reply::DeviceGetIrqInfo(IrqInfo { argsz: 16, flags: 9, index: 2, count: 64 }), 0);
    set_irqs_eventfd_request_round_trips: round_trip_request(Request::DeviceSetIrqs(IrqSetRequest {
        set: IrqSet { argsz: 20, flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index: 2, start: 0, count: 3 },
        data: Cow::Borrowed(&[]),
    }), 3);
    set_irqs_bool_request_round_trips: round_trip_request(Request::DeviceSetIrqs(IrqSetRequest {
        set: IrqSet { argsz: 23, flags: VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK, index: 2, start: 1, count: 3 },
        data: Cow::Owned(vec![1, 0, 1]),
    }), 0);
    set_irqs_reply_round_trips: round_trip_reply(Reply::DeviceSetIrqs, 0);
    region_read_request_round_trips: round_trip_request(Request::RegionRead(RegionAccess { offset: 8, region: 9, count: 8 }), 0);
    region_read_reply_round_trips: round_trip_reply(Reply::RegionRead(RegionData::new(9, 8, vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap()), 0);
    region_write_request_round_trips: round_trip_request(Request::RegionWrite(RegionData::new(9, 0, &[2, 0, 0, 0][..]).unwrap()), 0);
    region_write_reply_round_trips: round_trip_reply(Reply::RegionWrite(RegionAccess { offset: 0, region: 9, count: 4 }), 0);
    dma_read_request_round_trips: round_trip_request(Request::DmaRead(DmaAccess { addr: 0x1000, count: 1024 }), 0);
    dma_read_reply_round_trips: round_trip_reply(Reply::DmaRead(DmaData::new(0x1000, vec![0xab; 1024])), 0);
    dma_write_request_round_trips: round_trip_request(Request::DmaWrite(DmaData::new(0x2000, vec![0xcd; 512])), 0);
    dma_write_reply_round_trips: round_trip_reply(Reply::DmaWrite(DmaAccess { addr: 0x2000, count: 512 }), 0);
    device_reset_request_round_trips: round_trip_request(Request::DeviceReset, 0);
    device_reset_reply_round_trips: round_trip_reply(Reply::DeviceReset, 0);
    dirty_pages_start_request_round_trips: round_trip_request(Request::DirtyPages(DirtyPagesRequest::Start { argsz: 8 }), 0);
    dirty_pages_stop_request_round_trips: round_trip_request(Request::DirtyPages(DirtyPagesRequest::Stop { argsz: 8 }), 0);
    dirty_pages_get_request_round_trips: round_trip_request(Request::DirtyPages(DirtyPagesRequest::get_bitmap(one_page_range())), 0);
    dirty_pages_done_reply_round_trips: round_trip_reply(Reply::DirtyPages(DirtyPagesReply::Done), 0);
    dirty_pages_too_small_reply_round_trips: round_trip_reply(Reply::DirtyPages(DirtyPagesReply::TooSmall { argsz: 48 }), 0);
    dirty_pages_bitmap_reply_round_trips: round_trip_reply(Reply::DirtyPages(DirtyPagesReply::Bitmap {
        argsz: 48,
        range: one_page_range(),
        bits: Cow::Owned(vec![0xff, 0, 0, 0, 0, 0, 0, 0]),
    }), 0);
    error_reply_round_trips: round_trip_reply(Reply::Error { command: Command::DmaUnmap, errno: libc::ENOENT as u32 }, 0);
}
