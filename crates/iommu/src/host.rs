//! Where a mapping's memory lives: a file descriptor mapped into this process (a
//! `vfmig_memory::Mmap`), or nowhere here (then only the peer that owns it can reach it,
//! through a [`RemoteMemory`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use vfmig_memory::{Access, Iova, Mmap};

use crate::types::Prot;

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

/// Maps `len` bytes of `fd` at `offset` into this process, `MAP_SHARED`: readable, and
/// writable if `prot.write` (a device that may only read guest memory gets a read-only view).
/// ENOMEM if `len` does not fit the address space.
pub(crate) fn map_host(fd: &OwnedFd, offset: u64, len: u64, prot: Prot) -> io::Result<Mmap> {
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let access = if prot.write {
        Access::ReadWrite
    } else {
        Access::Read
    };
    Mmap::shared(fd.as_fd(), offset, len, access)
}
