//! [`SharedMemory`]: a memfd and its mapping in this process. Other processes map the same fd
//! (a device process through DMA_MAP, a client through a sparse-mmap area) and see every byte.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use crate::mmap::{Access, Mmap};
use crate::{host_page_size, memfd_sealed};

/// A memfd and its read-write `MAP_SHARED` [`Mmap`] in this process, unmapped on drop.
/// Offsets are bytes from the start of the memfd, which is the start of the mapping.
///
/// Its length is fixed for its life: the memfd is sealed against shrinking, growing and further
/// seals ([`crate::memfd_sealed`]), so a process it is sent to (a device process mapping guest
/// RAM through DMA_MAP) can trust every page of its mapping to stay backed and copy with plain
/// loads and stores.
pub struct SharedMemory {
    file: File,
    map: Mmap,
}

impl SharedMemory {
    /// A zeroed memfd of `len` bytes, named `name` (for /proc), sealed to that length, mapped
    /// read-write.
    pub fn new(name: &CStr, len: usize) -> io::Result<Self> {
        let file = memfd_sealed(name, len)?;
        let map = Mmap::shared(file.as_fd(), 0, len, Access::ReadWrite)?;
        Ok(SharedMemory { file, map })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the memory has no bytes.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The memfd, for another process to map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The mapping in this process: its host address and length (a KVM memslot needs them).
    pub fn mapping(&self) -> &Mmap {
        &self.map
    }

    /// `offset` as a usize, if `[offset, offset + len)` lies inside; EINVAL otherwise.
    fn check(&self, offset: u64, len: usize) -> io::Result<usize> {
        usize::try_from(offset)
            .ok()
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= self.len()))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Copies `buf.len()` bytes from `offset`; EINVAL if the range is outside.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.map.read(self.check(offset, buf.len())?, buf)
    }

    /// Copies `data` to `offset`; EINVAL if the range is outside.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.map.write(self.check(offset, data.len())?, data)
    }

    /// Copies `data` to `offset` with non-temporal stores ([`Mmap::write_streaming`]); EINVAL
    /// if the range is outside.
    pub fn write_streaming(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.map
            .write_streaming(self.check(offset, data.len())?, data)
    }

    /// Copies `buf.len()` bytes from `offset` through the file rather than the mapping: a page
    /// never written reads as zeros without being allocated (a fault on the mapping would
    /// allocate it). EINVAL if the range is outside.
    pub fn read_through_file(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
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
            self.map.resident(first, stop - first, &mut resident)?;
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
                    self.map.read(from, dst)?;
                } else {
                    self.file.read_exact_at(dst, from as u64)?;
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
        self.map.populate()
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
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("len", &self.len())
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
    fn zero_outside_is_einval() {
        let m = SharedMemory::new(c"t", 4096).unwrap();
        assert_eq!(
            m.zero(4096, 4096).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn its_memfd_is_sealed_against_shrinking() {
        let m = SharedMemory::new(c"t", 4096).unwrap();
        assert!(crate::FileInfo::of(m.fd()).unwrap().cannot_shrink());
    }

    #[test]
    fn an_empty_memory_maps_nothing() {
        let m = SharedMemory::new(c"t", 0).unwrap();
        assert!(m.is_empty());
        m.read(0, &mut []).unwrap();
    }
}
