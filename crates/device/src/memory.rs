//! Memory a device shares with its client: a memfd mapped into this process, which the client
//! may map too (the mmappable parts of a region, the migration data section).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A memfd and its `MAP_SHARED` mapping in this process, unmapped on drop.
pub struct SharedMemory {
    file: File,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; every access goes through
// raw-pointer copies bounded by `len`, never through references that could alias a writer.
unsafe impl Send for SharedMemory {}
// SAFETY: as above: `&SharedMemory` only copies bytes in and out.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// A zeroed memfd of `len` bytes, named `name` (for /proc), mapped read-write.
    pub fn new(name: &CStr, len: usize) -> io::Result<Self> {
        // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = File::from(fd);
        file.set_len(len as u64)?;
        if len == 0 {
            return Ok(SharedMemory {
                file,
                base: NonNull::dangling(),
                len,
            });
        }
        // SAFETY: a new mapping at an address the kernel chooses; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(SharedMemory { file, base, len })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the memory has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, for the client to map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Copies `buf.len()` bytes from `offset` through the file rather than the mapping: a page
    /// never written reads as zeros without being allocated (a fault on the mapping would
    /// allocate it). EINVAL if the range is outside.
    pub fn read_through_file(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    /// Faults every page in, writable (`MADV_POPULATE_WRITE`), so later writes find them
    /// resident: a migration destination does it while it waits for the stream.
    pub fn populate(&self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the range is exactly this object's live mapping; populating pages changes no
        // byte of it.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros by freeing its pages (`fallocate` punching
    /// a hole): cheap for pages never written, and it gives memory back for the others. Every
    /// process mapping the memfd sees the zeros. EINVAL if the range is outside.
    pub fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        let len_usize =
            usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.check(offset, len_usize)?;
        let (off, n) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(off), Ok(n)) => (off, n),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // SAFETY: fallocate on our own fd has no effect on Rust memory; the mapping stays valid
        // (the hole reads as zeros).
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `offset` as a usize, if `[offset, offset + len)` lies inside.
    fn check(&self, offset: u64, len: usize) -> io::Result<usize> {
        usize::try_from(offset)
            .ok()
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= self.len))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Copies `buf.len()` bytes from `offset`; EINVAL if the range is outside.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.check(offset, buf.len())?;
        if !buf.is_empty() {
            // SAFETY: `[offset, offset + buf.len())` is inside the live mapping (checked), and
            // `buf` is a distinct Rust buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.base.as_ptr().add(offset),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            }
        }
        Ok(())
    }

    /// Copies `data` to `offset`; EINVAL if the range is outside.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = self.check(offset, data.len())?;
        if !data.is_empty() {
            // SAFETY: `[offset, offset + data.len())` is inside the live, writable mapping
            // (checked), and `data` is a distinct Rust buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.base.as_ptr().add(offset),
                    data.len(),
                )
            }
        }
        Ok(())
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: base/len describe the mapping this object made; nothing else unmaps it.
        if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) } != 0 {
            tracing::error!(error = %io::Error::last_os_error(), "munmap of shared device memory failed");
        }
    }
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_makes_written_bytes_read_zero() {
        let m = SharedMemory::new(c"t", 3 * 4096).unwrap();
        m.write(4096, &[7; 4096]).unwrap();
        m.zero(4096, 4096).unwrap();
        let mut b = [1u8; 4096];
        m.read(4096, &mut b).unwrap();
        assert_eq!(b, [0; 4096]);
    }

    #[test]
    fn reads_through_the_file_see_what_the_mapping_wrote() {
        let m = SharedMemory::new(c"t", 2 * 4096).unwrap();
        m.write(100, b"abc").unwrap();
        let mut b = [0u8; 3];
        m.read_through_file(100, &mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn populate_keeps_the_contents() {
        let m = SharedMemory::new(c"t", 2 * 4096).unwrap();
        m.write(10, b"kept").unwrap();
        m.populate().unwrap();
        let mut b = [0u8; 4];
        m.read(10, &mut b).unwrap();
        assert_eq!(&b, b"kept");
    }

    #[test]
    fn zero_outside_is_einval() {
        let m = SharedMemory::new(c"t", 4096).unwrap();
        assert_eq!(
            m.zero(4096, 4096).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
