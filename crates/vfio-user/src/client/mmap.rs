//! [`MmapArea`]: a sparse area of a region, mapped into this process (a
//! `vfmig_memory::Mmap`), with the checks and errors of the client's API.

use std::os::fd::{AsFd, OwnedFd};

use vfmig_memory::{Access, Mmap};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::error::ClientError;

/// A sparse mmap area of a region, mapped `MAP_SHARED` from the region's file; unmapped on
/// drop.
///
/// The memory is shared with the device process, which may change it at any time, so it is
/// never lent out as a Rust reference: typed accesses are single volatile loads and stores of
/// their natural width (what device registers need), byte ranges are copied in and out.
///
/// The area must lie inside the file when it is mapped (checked against the file's size for a
/// regular file or memfd); a server that shrinks the file afterwards makes accesses fault
/// (`SIGBUS`), as with any shared mapping a peer controls.
#[derive(Debug)]
pub struct MmapArea {
    map: Mmap,
}

/// Fails unless `[offset, offset + size)` lies inside `fd` when it is a regular file (a memfd
/// is one); other files (device nodes) have no size to check against.
fn check_inside_file(fd: &OwnedFd, offset: u64, size: u64) -> Result<(), ClientError> {
    let file = std::fs::File::from(fd.try_clone().map_err(ClientError::Mmap)?);
    let metadata = file.metadata().map_err(ClientError::Mmap)?;
    let end = offset
        .checked_add(size)
        .ok_or(ClientError::invalid("sparse area wraps at", offset))?;
    if metadata.is_file() && end > metadata.len() {
        return Err(ClientError::invalid(
            "sparse area beyond the end of its file at",
            offset,
        ));
    }
    Ok(())
}

impl MmapArea {
    /// Maps `size` bytes of `fd` at `offset`; an area the client may not read is refused (an
    /// mmappable VFIO region is readable).
    pub(super) fn new(
        fd: &OwnedFd,
        offset: u64,
        size: u64,
        readable: bool,
        writable: bool,
    ) -> Result<Self, ClientError> {
        let len = usize::try_from(size)
            .ok()
            .filter(|&len| len > 0)
            .ok_or(ClientError::invalid("sparse area size", size))?;
        if libc::off_t::try_from(offset).is_err() {
            return Err(ClientError::invalid("sparse area offset", offset));
        }
        if !readable {
            return Err(ClientError::invalid("region is not readable", offset));
        }
        check_inside_file(fd, offset, size)?;
        let access = if writable {
            Access::ReadWrite
        } else {
            Access::Read
        };
        let map = Mmap::shared(fd.as_fd(), offset, len, access).map_err(ClientError::Mmap)?;
        Ok(Self { map })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: an area has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Fails unless `[offset, offset + len)` lies inside the area.
    fn check(&self, offset: usize, len: usize) -> Result<(), ClientError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.len() => Ok(()),
            _ => Err(ClientError::invalid(
                "access outside the area at",
                offset as u64,
            )),
        }
    }

    /// Fails unless a write of `len` bytes at `offset` is inside a writable area.
    fn check_write(&self, offset: usize, len: usize) -> Result<(), ClientError> {
        if self.map.access() != Access::ReadWrite {
            return Err(ClientError::invalid("the area is read-only", 0));
        }
        self.check(offset, len)
    }

    /// Fails unless a `T` at `offset` is inside and naturally aligned.
    fn check_typed<T>(&self, offset: usize) -> Result<(), ClientError> {
        self.check(offset, size_of::<T>())?;
        if !self
            .map
            .as_ptr()
            .addr()
            .wrapping_add(offset)
            .is_multiple_of(align_of::<T>())
        {
            return Err(ClientError::invalid("misaligned access at", offset as u64));
        }
        Ok(())
    }

    /// One volatile load of a `T` at `offset` (naturally aligned), as a register read.
    pub fn read<T: FromBytes + Copy>(&self, offset: usize) -> Result<T, ClientError> {
        self.check_typed::<T>(offset)?;
        self.map.read_volatile(offset).map_err(ClientError::Mmap)
    }

    /// One volatile store of `value` at `offset` (naturally aligned), as a register write.
    pub fn write<T: IntoBytes + Immutable + Copy>(
        &self,
        offset: usize,
        value: T,
    ) -> Result<(), ClientError> {
        self.check_write(offset, 0)?;
        self.check_typed::<T>(offset)?;
        self.map
            .write_volatile(offset, value)
            .map_err(ClientError::Mmap)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), ClientError> {
        self.check(offset, buf.len())?;
        self.map.read(offset, buf).map_err(ClientError::Mmap)
    }

    /// Copies `data` to `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), ClientError> {
        self.check_write(offset, data.len())?;
        self.map.write(offset, data).map_err(ClientError::Mmap)
    }
}
