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
        let file = memfd(name, len)?;
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

    /// The first byte of the mapping, for those that map it elsewhere too (a KVM memslot).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr().cast()
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

    /// Copies `buf.len()` bytes from `offset` as [`read_through_file`](Self::read_through_file)
    /// does (a page never written reads as zeros without being allocated), but faster: the
    /// pages resident in memory are copied straight from the mapping, and only the others
    /// (holes, and pages swapped out) are read through the file. `mincore` tells which is
    /// which, one call per 256 pages. A page freed or swapped out between that call and the
    /// copy is faulted back in with its contents, so the bytes are always the memory's.
    /// EINVAL if the range is outside.
    pub fn read_sparse(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        /// Pages asked about per `mincore` call.
        const PAGES: usize = 256;
        let start = self.check(offset, buf.len())?;
        let page = host_page_size();
        let end = start + buf.len();
        let mut at = start;
        while at < end {
            let first = at / page * page;
            let stop = (first + PAGES * page).min(end);
            let mut resident = [0u8; PAGES];
            // SAFETY: `[first, stop)` lies inside the live mapping (`stop <= end <= len`) and
            // starts on a page boundary (the mapping does); `mincore` writes one byte per page
            // of it, at most `PAGES`, into `resident`.
            let rc = unsafe {
                libc::mincore(
                    self.base.as_ptr().add(first).cast(),
                    stop - first,
                    resident.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let pages = (stop - first).div_ceil(page);
            let mut p = 0;
            while p < pages {
                let kind = resident[p] & 1;
                let q = (p + 1..pages)
                    .find(|&q| resident[q] & 1 != kind)
                    .unwrap_or(pages);
                let (from, to) = ((first + p * page).max(at), (first + q * page).min(stop));
                let dst = &mut buf[from - start..to - start];
                if kind == 1 {
                    // SAFETY: `[from, to)` is inside the live mapping, and `dst` is a distinct
                    // Rust buffer of that length.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.base.as_ptr().add(from),
                            dst.as_mut_ptr(),
                            dst.len(),
                        )
                    }
                } else {
                    std::os::unix::fs::FileExt::read_exact_at(&self.file, dst, from as u64)?;
                }
                p = q;
            }
            at = stop;
        }
        Ok(())
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

impl SharedMemory {
    /// Copies `data` to `offset` as [`write`](Self::write) does, but with non-temporal stores
    /// where the CPU has them (x86_64): the bytes go to memory without first reading each
    /// destination line into the cache, and without evicting what is cached. For bulk writes
    /// nobody reads soon: a migration destination filling guest RAM writes it about twice as
    /// fast this way. EINVAL if the range is outside.
    pub fn write_streaming(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = self.check(offset, data.len())?;
        if !data.is_empty() {
            // SAFETY: `[offset, offset + data.len())` is inside the live, writable mapping
            // (checked), and `data` is a distinct Rust buffer.
            unsafe { copy_streaming(self.base.as_ptr().add(offset), data) }
        }
        Ok(())
    }
}

/// Copies `src` to `dst` with non-temporal stores for the 16-byte-aligned middle.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
#[cfg(target_arch = "x86_64")]
unsafe fn copy_streaming(dst: *mut u8, src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const LINE: usize = 64;
    let len = src.len();
    let head = dst.align_offset(16).min(len);
    let body = (len - head) / LINE * LINE;
    // SAFETY: every range below lies inside `[0, len)` of both buffers, which the caller
    // guarantees are valid and disjoint; `dst + head` is 16-byte aligned, as the streaming
    // stores need; SSE2 is part of x86_64.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
        let (from, to) = (src.as_ptr().add(head), dst.add(head));
        let mut at = 0;
        while at < body {
            for lane in (0..LINE).step_by(16) {
                let value = _mm_loadu_si128(from.add(at + lane).cast::<__m128i>());
                _mm_stream_si128(to.add(at + lane).cast::<__m128i>(), value);
            }
            at += LINE;
        }
        // Streaming stores are weakly ordered: fence them before anyone may look.
        _mm_sfence();
        let done = head + body;
        std::ptr::copy_nonoverlapping(src.as_ptr().add(done), dst.add(done), len - done);
    }
}

/// Copies `src` to `dst`.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_streaming(dst: *mut u8, src: &[u8]) {
    // SAFETY: as the caller guarantees.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
}

/// A new memfd of `len` zero bytes, named `name` (for /proc), close-on-exec.
pub fn memfd(name: &CStr, len: usize) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(len as u64)?;
    Ok(file)
}

/// The host's page size.
pub fn host_page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .unwrap_or(4096)
    })
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

    /// Bytes of `mem`'s memfd that are allocated.
    fn allocated(mem: &SharedMemory) -> u64 {
        use std::os::unix::fs::MetadataExt;
        mem.file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn read_sparse_reads_written_and_unwritten_pages() {
        let page = host_page_size();
        let mem = SharedMemory::new(c"sparse", 600 * page).unwrap();
        // Resident pages, a hole, a page freed again, across a 256-page mincore window.
        mem.write(3, &[7; 5000]).unwrap();
        mem.write(250 * page as u64, &vec![9; 20 * page]).unwrap();
        mem.zero(260 * page as u64, page as u64).unwrap();
        let mut want = vec![0u8; 600 * page];
        mem.read(0, &mut want).unwrap();
        for (offset, len) in [
            (0, 600 * page),
            (1, 5000),
            (249 * page + 17, 12 * page),
            (300 * page, 3),
        ] {
            let mut got = vec![0xee; len];
            mem.read_sparse(offset as u64, &mut got).unwrap();
            assert_eq!(got, want[offset..offset + len], "at {offset}+{len}");
        }
    }

    #[test]
    fn read_sparse_allocates_no_unwritten_page() {
        let page = host_page_size();
        let mem = SharedMemory::new(c"sparse", 512 * page).unwrap();
        mem.write(0, &[1; 10]).unwrap();
        let before = allocated(&mem);
        let mut buf = vec![0xee; 511 * page];
        mem.read_sparse(page as u64, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(allocated(&mem), before);
    }

    #[test]
    fn read_sparse_outside_is_einval() {
        let mem = SharedMemory::new(c"sparse", 4096).unwrap();
        let err = mem.read_sparse(4000, &mut [0; 200]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn write_streaming_writes_every_byte_at_any_alignment() {
        let mem = SharedMemory::new(c"stream", 8192).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8 + 1).collect();
        for (offset, len) in [(0, 1000), (3, 1000), (17, 64), (4096 - 5, 200), (100, 15)] {
            mem.write(0, &[0; 8192]).unwrap();
            mem.write_streaming(offset as u64, &data[..len]).unwrap();
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

    #[test]
    fn write_streaming_outside_is_einval() {
        let mem = SharedMemory::new(c"stream", 4096).unwrap();
        let err = mem.write_streaming(4000, &[1; 200]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

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
