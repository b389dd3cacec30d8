//! [`MmapArea`]: a sparse area of a region, mapped into this process (a
//! `vfmig_memory::Mmap`), with the checks and errors of the client's API.

use std::os::fd::{AsFd, OwnedFd};

use vfmig_memory::{Access, FileInfo, Mmap};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::error::ClientError;

/// A sparse mmap area of a region, mapped `MAP_SHARED` from the region's file; unmapped on
/// drop.
///
/// The memory is shared with the device process, which may change it at any time, so it is
/// never lent out as a Rust reference: typed accesses are single volatile loads and stores of
/// their natural width (what device registers need), byte ranges are copied in and out.
///
/// A regular file (a memfd) is mapped only if the area lies inside it and the file can never
/// fault a mapping of it: sealed against shrinking (`F_SEAL_SHRINK`) and not on hugetlbfs.
/// Otherwise the server could cut pages off under the mapping and the next access here, or
/// the guest's through a KVM memslot over it, would fault (`SIGBUS` in this process,
/// `EFAULT` out of `KVM_RUN`); the caller reaches such an area by trapped REGION_READ/WRITE
/// instead. Files that are not regular (device nodes) have no size to cut and are mapped.
#[derive(Debug)]
pub struct MmapArea {
    map: Mmap,
}

/// Fails unless `[offset, offset + size)` lies inside `fd` and stays there: for a regular
/// file (a memfd), inside its present size and sealed so that it cannot shrink (see
/// [`MmapArea`]); other files (device nodes) have no size to check against.
fn check_inside_file(fd: &OwnedFd, offset: u64, size: u64) -> Result<(), ClientError> {
    let info = FileInfo::of(fd.as_fd()).map_err(ClientError::Mmap)?;
    if offset.checked_add(size).is_none() {
        return Err(ClientError::invalid("sparse area wraps at", offset));
    }
    if !info.covers(offset, size) {
        return Err(ClientError::invalid(
            "sparse area beyond the end of its file at",
            offset,
        ));
    }
    if info.regular && !info.always_backed() {
        return Err(ClientError::invalid(
            "sparse area in a file the server could shrink (no F_SEAL_SHRINK, or hugetlbfs) at",
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

    /// The host address of the first byte, for a hypervisor to map the area into a guest
    /// (a KVM memslot). The mapping is valid as long as `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Whether the area was mapped writable.
    pub fn writable(&self) -> bool {
        self.map.access() == Access::ReadWrite
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
