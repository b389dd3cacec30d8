//! DEVICE_GET_REGION_INFO, DEVICE_GET_REGION_IO_FDS, REGION_READ, REGION_WRITE.

use std::os::fd::BorrowedFd;

use zerocopy::IntoBytes;

use super::super::backend::{Backend, RegionDescription};
use super::super::session::Session;
use crate::errno::Errno;
use crate::message::{
    Header, RegionAccess, RegionCapsBuilder, RegionData, RegionInfo, RegionInfoReply, RegionIoFds,
    RegionIoFdsReply, Reply, SparseMmapArea,
};

/// The capability chain of a region: its type, then (for an mmappable region) its sparse
/// areas, the whole region as one area if the backend named none (libvfio-user always sends
/// the sparse cap with an fd).
fn caps_of(region: &RegionDescription<'_>) -> RegionCapsBuilder {
    let mut caps = RegionCapsBuilder::new();
    if let Some((type_, subtype)) = region.region_type {
        caps = caps.region_type(type_, subtype);
    }
    if let Some(mmap) = &region.mmap {
        let areas = if mmap.areas.is_empty() {
            vec![SparseMmapArea {
                offset: 0,
                size: region.size,
            }]
        } else {
            mmap.areas.clone()
        };
        caps = caps.sparse_mmap(areas);
    }
    caps
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO` with the two-call protocol: if the caps do not fit the
/// request's `argsz`, the 32 bytes alone with the `argsz` needed, no CAPS flag, no fd.
pub(super) fn info<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: &RegionInfo,
) -> Result<(), Errno> {
    s.check_region_index(request.index)?;
    let region = s.backend.region_info(request.index)?;
    let info = RegionInfo {
        argsz: 0,
        flags: region.flags(),
        index: request.index,
        cap_offset: 0,
        size: region.size,
        offset: region.mmap.as_ref().map_or(0, |m| m.offset),
    };
    let reply = RegionInfoReply::for_request(request.argsz, info, caps_of(&region).build())?;
    let fds: Vec<BorrowedFd<'_>> = match &region.mmap {
        Some(mmap) if !reply.caps.is_empty() => vec![mmap.fd],
        _ => Vec::new(),
    };
    s.reply_with_fds(header, &Reply::DeviceGetRegionInfo(reply), &fds);
    Ok(())
}

/// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`: no region offers ioeventfds, so every valid region
/// has no sub-regions.
pub(super) fn io_fds<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: &RegionIoFds,
) -> Result<(), Errno> {
    s.check_region_index(request.index)?;
    let reply = RegionIoFdsReply::for_request(request.argsz, request.index, Vec::new())?;
    s.reply(header, &Reply::DeviceGetRegionIoFds(reply));
    Ok(())
}

/// `VFIO_USER_REGION_READ`: the access echoed, then the bytes.
pub(super) fn read<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    access: &RegionAccess,
) -> Result<(), Errno> {
    s.check_region_access(access.region, access.offset, access.count.into())?;
    // `count` was checked against max_data_xfer_size when the request was decoded.
    let len = usize::try_from(access.count).map_err(|_| Errno::EINVAL)?;
    let mut data = vec![0; len];
    s.backend
        .region_read(access.region, access.offset, &mut data)?;
    s.reply_parts(header, &[access.as_bytes(), &data]);
    Ok(())
}

/// `VFIO_USER_REGION_WRITE`: the access echoed.
pub(super) fn write<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    data: &RegionData<'_>,
) -> Result<(), Errno> {
    let access = data.access;
    s.check_region_access(access.region, access.offset, access.count.into())?;
    s.backend
        .region_write(access.region, access.offset, &data.data)?;
    s.reply(header, &Reply::RegionWrite(access));
    Ok(())
}
