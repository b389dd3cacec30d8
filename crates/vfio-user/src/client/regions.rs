//! Regions: info with the two-call `argsz` protocol, reads and writes split to the server's
//! `max_data_xfer_size`, and GET_REGION_IO_FDS.

use std::os::fd::OwnedFd;
use std::time::Duration;

use vfmig_abi::uapi::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use zerocopy::IntoBytes;

use super::Client;
use super::error::ClientError;
use super::mmap::MmapArea;
use crate::message::{
    Command, RegionAccess, RegionInfo, RegionInfoReply, RegionIoFds, RegionIoFdsReply, Reply,
    Request, SparseMmapArea,
};

/// `argsz` of a GET_REGION_IO_FDS reply without sub-regions.
const IO_FDS_ARGSZ: u32 = 16;
const _: () = assert!(size_of::<RegionIoFds>() == IO_FDS_ARGSZ as usize);

/// A region as the server describes it, with the file to mmap its sparse areas from.
#[derive(Debug)]
pub struct Region {
    /// Region index.
    pub index: u32,
    /// Bytes.
    pub size: u64,
    /// `VFIO_REGION_INFO_FLAG_*` as sent (READ, WRITE, MMAP, CAPS).
    pub flags: u32,
    /// Offset of the region in `fd`: the mmap offset of area *i* is `offset + areas[i].offset`.
    pub offset: u64,
    /// The region type capability, `(type, subtype)`.
    pub region_type: Option<(u32, u32)>,
    /// The areas that may be mmapped, as offsets in the region.
    pub sparse_areas: Vec<SparseMmapArea>,
    /// The region's file, if it is mmappable.
    pub fd: Option<OwnedFd>,
}

impl Region {
    /// The client may read it.
    pub fn readable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_READ != 0
    }

    /// The client may write it.
    pub fn writable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_WRITE != 0
    }

    /// Sparse area `area` mapped into this process, readable and writable as the region is.
    pub fn mmap_area(&self, area: usize) -> Result<MmapArea, ClientError> {
        let fd = self
            .fd
            .as_ref()
            .filter(|_| self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0)
            .ok_or(ClientError::invalid(
                "region is not mmappable",
                self.index.into(),
            ))?;
        let found = self
            .sparse_areas
            .get(area)
            .ok_or(ClientError::invalid("no such sparse area", area as u64))?;
        if found
            .offset
            .checked_add(found.size)
            .is_none_or(|end| end > self.size)
        {
            return Err(ClientError::invalid(
                "sparse area outside the region at",
                found.offset,
            ));
        }
        let offset = self
            .offset
            .checked_add(found.offset)
            .ok_or(ClientError::invalid(
                "sparse area offset overflows",
                found.offset,
            ))?;
        MmapArea::new(fd, offset, found.size, self.readable(), self.writable())
    }
}

impl Client {
    /// `VFIO_USER_DEVICE_GET_REGION_INFO` of region `index`: asked with `argsz` 32, and again
    /// with the `argsz` the server says it needs if the capabilities did not fit.
    pub fn region_info(&self, index: u32) -> Result<Region, ClientError> {
        let command = Command::DeviceGetRegionInfo;
        let mut argsz = RegionInfo::SIZE;
        for _ in 0..2 {
            let request = Request::DeviceGetRegionInfo(RegionInfo::request(index, argsz));
            let mut received = self.shared.call(&request, &[])?;
            let reply = match self.shared.reply(command, &received)? {
                Reply::DeviceGetRegionInfo(reply) => reply,
                _ => return Err(ClientError::unexpected(command, "not a region info")),
            };
            if reply.info.index != index {
                return Err(ClientError::unexpected(command, "another region's info"));
            }
            if reply.is_complete() {
                // Some servers send the fd once per sparse area; one is enough.
                let fd = received.take_fds().into_iter().next();
                return Ok(region_of(reply, fd));
            }
            argsz = reply.info.argsz;
        }
        Err(ClientError::unexpected(
            command,
            "capabilities still left out with the argsz asked for",
        ))
    }

    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS` of region `index` (two calls if needed, as region
    /// info), with the file descriptors that came with it.
    pub fn region_io_fds(
        &self,
        index: u32,
    ) -> Result<(RegionIoFdsReply, Vec<OwnedFd>), ClientError> {
        let command = Command::DeviceGetRegionIoFds;
        let mut argsz = IO_FDS_ARGSZ;
        for _ in 0..2 {
            let request = Request::DeviceGetRegionIoFds(RegionIoFds::request(index, argsz));
            let mut received = self.shared.call(&request, &[])?;
            let reply = match self.shared.reply(command, &received)? {
                Reply::DeviceGetRegionIoFds(reply) => reply,
                _ => return Err(ClientError::unexpected(command, "not an IO-FD reply")),
            };
            if reply.head.count == 0 || !reply.sub_regions.is_empty() {
                return Ok((reply, received.take_fds()));
            }
            argsz = reply.head.argsz;
        }
        Err(ClientError::unexpected(
            command,
            "sub-regions still left out",
        ))
    }

    /// Reads `buf.len()` bytes at `offset` of region `index`, in pieces of at most
    /// [`Client::transfer_size`], each answered within [`Client::reply_timeout`].
    pub fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.region_read_within(index, offset, buf, self.reply_timeout())
    }

    /// [`Client::region_read`] with each piece's reply awaited for at most `timeout`: for a
    /// region whose reads make the device work (a migration region's `pending_bytes`).
    pub fn region_read_within(
        &self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let command = Command::RegionRead;
        let mut at = offset;
        for piece in buf.chunks_mut(self.shared.xfer) {
            let access = access(index, at, piece.len())?;
            let received = self
                .shared
                .call_parts_within(command, &[access.as_bytes()], timeout)?;
            match self.shared.reply(command, &received)? {
                Reply::RegionRead(data) if data.access == access => {
                    piece.copy_from_slice(&data.data)
                }
                _ => return Err(ClientError::unexpected(command, "not the data asked for")),
            }
            self.shared.peer.recycle(received.body);
            at = next(at, piece.len())?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of region `index`, in pieces of at most
    /// [`Client::transfer_size`], each answered within [`Client::reply_timeout`].
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.region_write_within(index, offset, data, self.reply_timeout())
    }

    /// [`Client::region_write`] with each piece's reply awaited for at most `timeout`: for a
    /// region whose writes make the device work (a migration region's `device_state`).
    pub fn region_write_within(
        &self,
        index: u32,
        offset: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let command = Command::RegionWrite;
        let mut at = offset;
        for piece in data.chunks(self.shared.xfer) {
            let access = access(index, at, piece.len())?;
            let received =
                self.shared
                    .call_parts_within(command, &[access.as_bytes(), piece], timeout)?;
            match self.shared.reply(command, &received)? {
                Reply::RegionWrite(echo) if echo == access => {}
                _ => return Err(ClientError::unexpected(command, "not the access echoed")),
            }
            at = next(at, piece.len())?;
        }
        Ok(())
    }
}

fn region_of(reply: RegionInfoReply, fd: Option<OwnedFd>) -> Region {
    let region_type = reply.region_type();
    let sparse_areas = reply.sparse_areas().copied().collect();
    Region {
        index: reply.info.index,
        size: reply.info.size,
        flags: reply.info.flags,
        offset: reply.info.offset,
        region_type,
        sparse_areas,
        fd,
    }
}

/// The access of `len` bytes at `offset` of `region` (`len` is at most the transfer size,
/// itself at most `u32::MAX`).
fn access(region: u32, offset: u64, len: usize) -> Result<RegionAccess, ClientError> {
    let count =
        u32::try_from(len).map_err(|_| ClientError::invalid("access too long", len as u64))?;
    Ok(RegionAccess {
        offset,
        region,
        count,
    })
}

fn next(at: u64, len: usize) -> Result<u64, ClientError> {
    at.checked_add(len as u64)
        .ok_or(ClientError::invalid("region offset overflows", at))
}
