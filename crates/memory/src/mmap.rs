//! [`Mmap`]: the one mapped-region type of the workspace. A shared mapping of a file (a memfd,
//! a device file, guest RAM another process sent), or anonymous memory; unmapped on drop.
//!
//! The memory may be shared with other processes, which change it at any time, so a mapping
//! is never lent out as a Rust reference: bytes are copied in and out through raw pointers
//! (bulk copies, streaming stores), typed accesses are single volatile loads and stores of
//! their natural width (what device registers need). Every access is checked to lie inside
//! the mapping and to be allowed by its [`Access`]; EINVAL if it is outside, EACCES if it is
//! not allowed. Callers that need the raw address (a pin, a KVM memslot, a ring laid over a
//! mapping) take [`Mmap::as_ptr`] / [`Mmap::as_mut_ptr`] and keep the invariants themselves.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::copy::copy_streaming;

/// What this process may do with a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Access {
    /// Read only (`PROT_READ`).
    Read,
    /// Read and write (`PROT_READ | PROT_WRITE`).
    ReadWrite,
}

impl Access {
    fn prot(self) -> libc::c_int {
        match self {
            Access::Read => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// A mapping in this process, unmapped on drop. A mapping of 0 bytes maps nothing.
pub struct Mmap {
    base: NonNull<u8>,
    len: usize,
    access: Access,
}

// SAFETY: the mapping is plain memory with no thread affinity; every access copies through raw
// pointers bounded by `len`, never through references that could alias a writer (concurrent
// writers, in this process or another, are expected of shared memory).
unsafe impl Send for Mmap {}
// SAFETY: as above: `&Mmap` only copies bytes in and out, and hands out raw addresses.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `len` bytes of `fd` from `offset` on, `MAP_SHARED`: what this process writes, every
    /// process mapping the file sees. `MAP_NORESERVE`: memory is committed page by page as it
    /// is touched (guest RAM is sparse until then).
    pub fn shared(fd: BorrowedFd<'_>, offset: u64, len: usize, access: Access) -> io::Result<Mmap> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        Self::map(
            len,
            access,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            fd.as_raw_fd(),
            offset,
        )
    }

    /// Maps `len` bytes of anonymous, private memory, zero until written; `MAP_NORESERVE`.
    pub fn anonymous(len: usize, access: Access) -> io::Result<Mmap> {
        Self::map(
            len,
            access,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    }

    fn map(
        len: usize,
        access: Access,
        flags: libc::c_int,
        fd: libc::c_int,
        offset: libc::off_t,
    ) -> io::Result<Mmap> {
        if len == 0 {
            return Ok(Mmap {
                base: NonNull::dangling(),
                len,
                access,
            });
        }
        // SAFETY: a new mapping at an address the kernel chooses (NULL hint): it aliases no
        // Rust object. The kernel checks the arguments.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, access.prot(), flags, fd, offset) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(Mmap { base, len, access })
    }

    /// Replaces bytes `[at, at + len)` of this mapping with a shared mapping of `fd` from
    /// `offset` on (`MAP_FIXED`), with this mapping's access. `at` and `len` must be multiples
    /// of the host page size (EINVAL otherwise, or if the range is outside). The address range
    /// stays this value's and is unmapped with it; what was mapped there before is gone, so a
    /// raw pointer into the range now reads the file.
    pub fn overlay_shared(
        &mut self,
        at: usize,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let page = crate::host_page_size();
        if !at.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let at = self.check(at, len)?;
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `[at, at + len)` lies inside this mapping (checked), which this value owns;
        // `&mut self` and the absence of any reference into a mapping mean no Rust object
        // lives there. MAP_FIXED replaces exactly that range.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at).cast(),
                len,
                self.access.prot(),
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the mapping has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What this process may do with the mapping.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The host address of the first byte (dangling for an empty mapping).
    pub fn as_ptr(&self) -> *const u8 {
        self.base.as_ptr()
    }

    /// The host address of the first byte, for writes (the mapping must be
    /// [`Access::ReadWrite`] for any to be made).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// `offset`, if `[offset, offset + len)` lies inside; EINVAL otherwise.
    fn check(&self, offset: usize, len: usize) -> io::Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(offset),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// The address of `[offset, offset + len)`, checked to lie inside; EINVAL otherwise.
    pub fn ptr_at(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        let offset = self.check(offset, len)?;
        Ok(self.base.as_ptr().wrapping_add(offset))
    }

    /// The address of `[offset, offset + len)` for writing: inside (EINVAL) and writable
    /// (EACCES).
    pub(crate) fn writable_at(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        if self.access != Access::ReadWrite {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        self.ptr_at(offset, len)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let src = self.ptr_at(offset, buf.len())?;
        if !buf.is_empty() {
            // SAFETY: `[offset, offset + buf.len())` lies inside the live mapping (checked), and
            // `buf` is a distinct Rust buffer of that length.
            unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) }
        }
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let dst = self.writable_at(offset, data.len())?;
        if !data.is_empty() {
            // SAFETY: `[offset, offset + data.len())` lies inside the live, writable mapping
            // (checked), and `data` is a distinct Rust buffer of that length.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) }
        }
        Ok(())
    }

    /// Copies `data` to `offset` as [`write`](Self::write) does, but with non-temporal stores
    /// where the CPU has them (x86_64): the bytes go to memory without first reading each
    /// destination line into the cache, and without evicting what is cached. For bulk writes
    /// nobody reads soon: a migration destination filling guest RAM writes it about twice as
    /// fast this way.
    pub fn write_streaming(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let dst = self.writable_at(offset, data.len())?;
        if !data.is_empty() {
            // SAFETY: `[offset, offset + data.len())` lies inside the live, writable mapping
            // (checked), and `data` is a distinct Rust buffer.
            unsafe { copy_streaming(dst, data) }
        }
        Ok(())
    }

    /// The address of a `T` at `offset`: inside and naturally aligned (EINVAL otherwise).
    fn typed<T>(&self, ptr: *mut u8) -> io::Result<*mut T> {
        if !ptr.addr().is_multiple_of(align_of::<T>()) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(ptr.cast::<T>())
    }

    /// One volatile load of a `T` at `offset` (naturally aligned), as a register read.
    pub fn read_volatile<T: FromBytes + Copy>(&self, offset: usize) -> io::Result<T> {
        let ptr = self.typed::<T>(self.ptr_at(offset, size_of::<T>())?)?;
        // SAFETY: `ptr` is inside the live mapping and aligned for `T` (checked); any bit
        // pattern is a valid `T` (FromBytes).
        Ok(unsafe { ptr.read_volatile() })
    }

    /// One volatile store of `value` at `offset` (naturally aligned), as a register write.
    pub fn write_volatile<T: IntoBytes + Immutable + Copy>(
        &self,
        offset: usize,
        value: T,
    ) -> io::Result<()> {
        let ptr = self.typed::<T>(self.writable_at(offset, size_of::<T>())?)?;
        // SAFETY: `ptr` is inside the live, writable mapping and aligned for `T` (checked).
        unsafe { ptr.write_volatile(value) };
        Ok(())
    }

    /// Which pages of `[offset, offset + len)` are resident in memory (`mincore`): one byte per
    /// host page into `out`, bit 0 set for a resident page. `offset` must be page-aligned, and
    /// `out` hold a byte for every page (EINVAL otherwise).
    pub fn resident(&self, offset: usize, len: usize, out: &mut [u8]) -> io::Result<()> {
        let page = crate::host_page_size();
        let start = self.ptr_at(offset, len)?;
        if !offset.is_multiple_of(page) || out.len() < len.div_ceil(page) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `[offset, offset + len)` lies inside the live mapping (checked) and starts on
        // a page boundary (the mapping does, and `offset` is a multiple of the page size);
        // `mincore` writes one byte per page of it into `out`, which holds that many.
        let rc = unsafe { libc::mincore(start.cast(), len, out.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Faults every page in, writable (`MADV_POPULATE_WRITE`), so later writes find them
    /// resident. EACCES on a read-only mapping.
    pub fn populate(&self) -> io::Result<()> {
        let start = self.writable_at(0, self.len)?;
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the range is exactly this object's live mapping; populating pages changes no
        // byte of it.
        let rc = unsafe { libc::madvise(start.cast(), self.len, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: base/len describe the mapping this object made (any overlays lie inside it);
        // nothing else unmaps it, and no reference into it outlives `self`.
        if unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) } != 0 {
            tracing::error!(error = %io::Error::last_os_error(), len = self.len, "munmap failed");
        }
    }
}

impl std::fmt::Debug for Mmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmap")
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::memfd;

    #[test]
    fn two_mappings_of_one_memfd_see_each_others_writes() {
        let file = memfd(c"t", 4096).unwrap();
        let a = Mmap::shared(file.as_fd(), 0, 4096, Access::ReadWrite).unwrap();
        let b = Mmap::shared(file.as_fd(), 0, 4096, Access::Read).unwrap();
        a.write(100, b"shared").unwrap();
        let mut got = [0; 6];
        b.read(100, &mut got).unwrap();
        assert_eq!(&got, b"shared");
    }

    #[test]
    fn an_access_outside_is_einval() {
        let m = Mmap::anonymous(4096, Access::ReadWrite).unwrap();
        let err = m.read(4000, &mut [0; 200]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_write_to_a_read_only_mapping_is_eacces() {
        let file = memfd(c"t", 4096).unwrap();
        let m = Mmap::shared(file.as_fd(), 0, 4096, Access::Read).unwrap();
        let err = m.write(0, &[1]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn a_misaligned_volatile_access_is_einval() {
        let m = Mmap::anonymous(4096, Access::ReadWrite).unwrap();
        let err = m.read_volatile::<u32>(2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_volatile_store_is_read_back() {
        let m = Mmap::anonymous(4096, Access::ReadWrite).unwrap();
        m.write_volatile(8, 0x1234_5678u32).unwrap();
        assert_eq!(m.read_volatile::<u32>(8).unwrap(), 0x1234_5678);
    }

    #[test]
    fn a_mapping_beyond_the_file_fails_with_the_kernel_errno() {
        let file = memfd(c"t", 4096).unwrap();
        let err = Mmap::shared(file.as_fd(), u64::MAX, 4096, Access::Read).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn an_overlay_shows_the_file() {
        let page = crate::host_page_size();
        let file = memfd(c"t", page).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"file", 0).unwrap();
        let mut m = Mmap::anonymous(2 * page, Access::ReadWrite).unwrap();
        m.overlay_shared(page, file.as_fd(), 0, page).unwrap();
        let mut got = [0; 4];
        m.read(page, &mut got).unwrap();
        assert_eq!(&got, b"file");
    }

    #[test]
    fn an_overlay_off_the_page_size_is_einval() {
        let page = crate::host_page_size();
        let file = memfd(c"t", page).unwrap();
        let mut m = Mmap::anonymous(2 * page, Access::ReadWrite).unwrap();
        let err = m.overlay_shared(1, file.as_fd(), 0, page).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn populate_keeps_the_contents() {
        let m = Mmap::anonymous(2 * 4096, Access::ReadWrite).unwrap();
        m.write(10, b"kept").unwrap();
        m.populate().unwrap();
        let mut b = [0u8; 4];
        m.read(10, &mut b).unwrap();
        assert_eq!(&b, b"kept");
    }

    #[test]
    fn write_streaming_writes_every_byte_at_any_alignment() {
        let mem = Mmap::anonymous(8192, Access::ReadWrite).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8 + 1).collect();
        for (offset, len) in [(0, 1000), (3, 1000), (17, 64), (4096 - 5, 200), (100, 15)] {
            mem.write(0, &[0; 8192]).unwrap();
            mem.write_streaming(offset, &data[..len]).unwrap();
            let mut back = vec![0; 8192];
            mem.read(0, &mut back).unwrap();
            assert_eq!(
                &back[offset..offset + len],
                &data[..len],
                "at {offset}+{len}"
            );
            assert!(back[..offset].iter().all(|&b| b == 0), "before {offset}");
            assert!(
                back[offset + len..].iter().all(|&b| b == 0),
                "after {offset}+{len}"
            );
        }
    }
}
