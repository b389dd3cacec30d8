//! Where a mapping's memory lives: a file descriptor mapped into this process (a
//! `vfmig_memory::Mmap`), or nowhere here (then only the peer that owns it can reach it,
//! through a [`RemoteMemory`]); and how device accesses reach it ([`AccessPath`]).
//!
//! A client's file can lose pages under the mapping: a file shorter than the mapping, or one
//! its owner shrinks later, leaves pages that raise SIGBUS when touched, which would end the
//! device process. So a mapping is refused if its file does not cover it (EFAULT), and one
//! whose file is not sealed against shrinking is only ever copied through the kernel, where a
//! vanished page is EFAULT for that one access. A sealed memfd (every VMM of this workspace
//! seals its guest RAM) keeps plain copies: it cannot shrink, and seals are never removed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use vfmig_memory::{Access, FileInfo, Iova, Mmap};

use crate::error::{IommuError, Result};
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

/// How device accesses reach a mapping's memory; the container chooses it per mapping, when
/// it is made ([`crate::Container::access_path`] tells which).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AccessPath {
    /// Plain loads and stores of the mapping in this process: its file is sealed against
    /// shrinking (`F_SEAL_SHRINK`) and is not on hugetlbfs, so every page of the mapping stays
    /// backed.
    Direct,
    /// Copies through the kernel (`vfmig_memory::Mmap::read_checked`): the file may shrink
    /// under the mapping (its owner did not seal it, or it is not a memfd), or its pages come
    /// from a huge page pool that can run dry; a page that cannot be had fails the access with
    /// EFAULT instead of ending this process with SIGBUS.
    Checked,
    /// No memory in this process: DMA messages to the peer ([`RemoteMemory`]).
    Remote,
}

/// A mapping's memory in this process, and how it is copied.
pub(crate) struct HostMemory {
    map: Mmap,
    /// True if the file may shrink: copies go through the kernel.
    checked: bool,
}

impl HostMemory {
    /// Maps `len` bytes of `fd` at `offset` into this process, `MAP_SHARED`: readable, and
    /// writable if `prot.write` (a device that may only read guest memory gets a read-only
    /// view).
    ///
    /// A regular file must hold every byte of the range now: a shorter one is refused with
    /// EFAULT, the errno the kernel's type1 MAP_DMA gives when pinning a user address that no
    /// page backs (its `get_user_pages` turns the SIGBUS of a page past a file's end into
    /// EFAULT). The mapping is [`AccessPath::Direct`] if no page of it can vanish
    /// (`vfmig_memory::FileInfo::always_backed`: sealed against shrinking, not hugetlbfs),
    /// [`AccessPath::Checked`] otherwise. ENOMEM if `len` does not fit the address space.
    pub(crate) fn map(fd: &OwnedFd, offset: u64, len: u64, prot: Prot) -> Result<HostMemory> {
        let mmap_error = |source| IommuError::Mmap {
            size: len,
            offset,
            source,
        };
        let file = FileInfo::of(fd.as_fd()).map_err(mmap_error)?;
        if !file.covers(offset, len) {
            return Err(IommuError::BeyondFile {
                offset,
                size: len,
                file_size: file.size,
            });
        }
        let len_usize = usize::try_from(len)
            .map_err(|_| mmap_error(io::Error::from_raw_os_error(libc::ENOMEM)))?;
        let access = if prot.write {
            Access::ReadWrite
        } else {
            Access::Read
        };
        let map = Mmap::shared(fd.as_fd(), offset, len_usize, access).map_err(mmap_error)?;
        Ok(HostMemory {
            map,
            checked: !file.always_backed(),
        })
    }

    pub(crate) fn path(&self) -> AccessPath {
        if self.checked {
            AccessPath::Checked
        } else {
            AccessPath::Direct
        }
    }

    /// Copies `buf.len()` bytes at `offset` of the mapping into `buf`, on the mapping's path.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        if self.checked {
            self.map.read_checked(offset, buf)
        } else {
            self.map.read(offset, buf)
        }
    }

    /// Copies `data` to `offset` of the mapping, on the mapping's path.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        if self.checked {
            self.map.write_checked(offset, data)
        } else {
            self.map.write(offset, data)
        }
    }

    /// The host address of `[offset, offset + len)`, checked to lie inside.
    pub(crate) fn ptr_at(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        self.map.ptr_at(offset, len)
    }
}
