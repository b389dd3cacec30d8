//! [`MmapArea`]: a sparse area of a region, mapped into this process. The only `unsafe` of the
//! client: `mmap`, `munmap`, and the copies and volatile accesses into the mapping.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

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
    base: NonNull<u8>,
    len: usize,
    writable: bool,
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

// SAFETY: the area owns a shared file mapping (a base address and a length) with no thread
// affinity; every access copies through raw pointers, and concurrent changes by other threads
// or processes are expected of shared device memory.
unsafe impl Send for MmapArea {}
// SAFETY: as above: `&MmapArea` only copies bytes in and out through raw pointers.
unsafe impl Sync for MmapArea {}

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
        let file_offset = libc::off_t::try_from(offset)
            .map_err(|_| ClientError::invalid("sparse area offset", offset))?;
        if !readable {
            return Err(ClientError::invalid("region is not readable", offset));
        }
        check_inside_file(fd, offset, size)?;
        let mut prot = libc::PROT_READ;
        if writable {
            prot |= libc::PROT_WRITE;
        }
        // SAFETY: a new mapping at an address the kernel chooses (NULL hint): it aliases no
        // Rust object. The arguments are checked by the kernel.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ClientError::Mmap(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(ClientError::Mmap(
            io::Error::from_raw_os_error(libc::EFAULT),
        ))?;
        Ok(Self {
            base,
            len,
            writable,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an area has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of `[offset, offset + len)`, checked to lie inside the area.
    fn at(&self, offset: usize, len: usize) -> Result<*mut u8, ClientError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base.as_ptr().wrapping_add(offset)),
            _ => Err(ClientError::invalid(
                "access outside the area at",
                offset as u64,
            )),
        }
    }

    fn check_writable(&self) -> Result<(), ClientError> {
        if self.writable {
            Ok(())
        } else {
            Err(ClientError::invalid("the area is read-only", 0))
        }
    }

    /// The address of a `T` at `offset`: inside the area and naturally aligned.
    fn typed<T>(&self, offset: usize) -> Result<*mut T, ClientError> {
        let ptr = self.at(offset, size_of::<T>())?;
        if ptr.addr() % align_of::<T>() != 0 {
            return Err(ClientError::invalid("misaligned access at", offset as u64));
        }
        Ok(ptr.cast::<T>())
    }

    /// One volatile load of a `T` at `offset` (naturally aligned), as a register read.
    pub fn read<T: FromBytes + Copy>(&self, offset: usize) -> Result<T, ClientError> {
        let ptr = self.typed::<T>(offset)?;
        // SAFETY: `ptr` is inside the live mapping and aligned for `T` (checked); any bit
        // pattern is a valid `T` (FromBytes).
        Ok(unsafe { ptr.read_volatile() })
    }

    /// One volatile store of `value` at `offset` (naturally aligned), as a register write.
    pub fn write<T: IntoBytes + Immutable + Copy>(
        &self,
        offset: usize,
        value: T,
    ) -> Result<(), ClientError> {
        self.check_writable()?;
        let ptr = self.typed::<T>(offset)?;
        // SAFETY: `ptr` is inside the live, writable mapping and aligned for `T` (checked).
        unsafe { ptr.write_volatile(value) };
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), ClientError> {
        let src = self.at(offset, buf.len())?;
        // SAFETY: the source lies inside the live mapping (checked) and `buf` is a distinct
        // Rust buffer of the same length.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), ClientError> {
        self.check_writable()?;
        let dst = self.at(offset, data.len())?;
        // SAFETY: the destination lies inside the live, writable mapping (checked) and `data`
        // is a distinct Rust buffer of the same length.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }
}

impl Drop for MmapArea {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping this object created; nothing else unmaps
        // it and no reference into it outlives `self`.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::error!(error = %io::Error::last_os_error(), "munmap of a region area failed");
        }
    }
}
