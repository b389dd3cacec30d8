//! Where a mapping's memory lives: a file descriptor mapped into this process, or nowhere here
//! (then only the peer that owns it can reach it, through a [`RemoteMemory`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::types::{Iova, Prot};

/// Reaches a mapping whose memory is not in this process: a vfio-user server sends DMA_READ and
/// DMA_WRITE messages to its client for a region mapped without an fd.
pub trait RemoteMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `iova`.
    fn read(&self, iova: Iova, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `iova`.
    fn write(&self, iova: Iova, data: &[u8]) -> io::Result<()>;
}

/// The memory behind a new mapping.
pub enum Backing {
    /// A file descriptor (memfd, file, hugetlbfs) and the offset of the mapping in it. The
    /// container maps it `MAP_SHARED` into this process and unmaps it with the mapping.
    Fd {
        /// The file.
        fd: OwnedFd,
        /// Byte offset of the mapping's first page in the file; page-aligned.
        offset: u64,
    },
    /// No memory here: device accesses go through the peer.
    Remote(Arc<dyn RemoteMemory>),
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Fd { fd, offset } => write!(f, "Fd({}, offset {offset:#x})", fd.as_raw_fd()),
            Backing::Remote(_) => f.write_str("Remote"),
        }
    }
}

/// A `MAP_SHARED` mapping of a file in this process, unmapped on drop.
pub(crate) struct HostMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: HostMemory owns a shared file mapping: a base pointer and a length with no thread
// affinity. Concurrent access to the bytes is the callers' business (they copy with raw
// pointers, never form references that could alias a concurrent write).
unsafe impl Send for HostMemory {}
// SAFETY: as above; `&HostMemory` only hands out the base address.
unsafe impl Sync for HostMemory {}

impl HostMemory {
    /// Maps `len` bytes of `fd` at `offset`, readable, and writable if `prot.write`.
    /// `MAP_NORESERVE`: guest RAM is sparse until touched.
    pub(crate) fn map(fd: &OwnedFd, offset: u64, len: u64, prot: Prot) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut mprot = libc::PROT_READ;
        if prot.write {
            mprot |= libc::PROT_WRITE;
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL); it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                mprot,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(HostMemory { base, len })
    }

    /// Address of byte `offset`; `offset` must be `< len` (callers check against the mapping).
    #[allow(clippy::cast_possible_truncation)] // offset < len, a usize
    pub(crate) fn ptr_at(&self, offset: u64) -> *mut u8 {
        debug_assert!(offset < self.len as u64);
        // `offset < len`, and the mapping is `len` bytes, so this stays inside it.
        self.base.as_ptr().wrapping_add(offset as usize)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    ///
    /// The caller has checked that `offset + buf.len()` is inside the mapping.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        debug_assert!(offset + buf.len() as u64 <= self.len as u64);
        // SAFETY: the source range lies inside this live mapping (checked by the caller against
        // the mapping's size, which equals `len`); `buf` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr_at(offset), buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `data` to `offset`.
    ///
    /// The caller has checked that `offset + data.len()` is inside the mapping and that it is
    /// writable.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) {
        debug_assert!(offset + data.len() as u64 <= self.len as u64);
        // SAFETY: the destination range lies inside this live, writable mapping (checked by the
        // caller); `data` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr_at(offset), data.len()) }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: base/len describe a mapping this object created and nothing else unmapped;
        // no pin guard outlives it (a mapping with pins is never removed).
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::error!(error = %io::Error::last_os_error(), "munmap of a DMA mapping failed");
        }
    }
}
