//! An IOMMU container with the dirty-tracking rules of Linux 5.10 `vfio_iommu_type1`, in user
//! space: the one place that knows which guest pages a device may have written.
//!
//! A [`Container`] holds DMA mappings (IOVA ranges backed by a file descriptor mapped into this
//! process, or by a peer reached through [`RemoteMemory`]) and the devices attached to it. It
//! behaves like a type1 v2 container in every rule a VMM can observe — the same checks, in the
//! same order, with the same errnos ([`IommuError::errno`]) — without the kernel's known bugs:
//!
//! * map: page-aligned, no wrap, no overlap (EEXIST), at most 65535 mappings (ENOSPC), a file
//!   that covers the mapping (EFAULT);
//! * unmap: whole mappings only (a bisected one is EINVAL), holes unmap nothing, the bytes
//!   unmapped are returned; with GET_DIRTY_BITMAP the removed mappings' dirty pages are reported
//!   first; unmap-all; pinned pages are first asked back through an [`UnmapNotifier`], and if a
//!   device keeps them, the unmap fails with EBUSY and removes nothing;
//! * dirty tracking: START / STOP (idempotent), GET_BITMAP over any range of whole mappings,
//!   read-and-clear except that pinned pages stay dirty; the bitmaps are held to a memory budget
//!   (see [Limits](#limits));
//! * the vendor-driver side: [`Container::pin`] (a [`PinGuard`] lends the host memory),
//!   [`Container::read`] / [`Container::write`] (writes mark dirty), and
//!   [`Container::mark_dirty`] for a device that writes some other way;
//! * dirty scope: a device is [`DirtyScope::AllMapped`] (every mapped page is reported on every
//!   GET) until its first pin makes it [`DirtyScope::Pinned`]; detaching an `AllMapped` device
//!   while tracking marks every mapped page dirty;
//! * [`Container::info`]: page sizes and the migration capability in the kernel's layout.
//!
//! # Mappings without an fd
//!
//! A mapping backed by [`Backing::Remote`] (a vfio-user client's memory that it did not share)
//! has no dirty bitmap: the peer that owns the memory sees every write to it (each one is a
//! message to it) and keeps its own record, which is how libvfio-user divides the work. So
//! START gives it none and charges nothing for it, writes to it mark nothing, and a GET_BITMAP
//! or unmap-with-bitmap whose range holds one fails with EINVAL ([`IommuError::Untracked`])
//! before any bit is read, as libvfio-user answers. [`Container::count_dirty`] counts it as 0.
//!
//! # Limits
//!
//! Everything a peer can make the container allocate is capped by its [`ContainerConfig`]: a
//! vfio-user client can map up to [`ContainerConfig::max_mappings`] ranges of up to 8 TiB of
//! a sparse file each (costing it nothing), and START would then allocate a dirty bitmap of up
//! to 256 MiB for each. So every tracked mapping's bitmap is charged
//! (`DIRTY_BITMAP_BYTES(pages)`, [`Container::bitmap_bytes`] in all) against
//! [`ContainerConfig::max_bitmap_bytes`], 1 GiB by default, enough for 32 TiB of 4 KiB pages.
//! START checks every mapping before it allocates anything and, over the budget, fails with
//! ENOMEM ([`IommuError::BitmapBudget`]) leaving tracking off; a map while tracking that does
//! not fit fails the same way and maps nothing. Unmap and STOP give the bytes back. The budget
//! is per container.
//!
//! # Files that shrink
//!
//! A mapping's file belongs to the client, and a page of a shared mapping past the file's end
//! raises SIGBUS when touched, which would end the device process for one client's mistake or
//! malice. So MAP_DMA refuses a regular file that does not cover the mapping (EFAULT, as type1
//! fails to pin such a range), and each mapping gets an [`AccessPath`]: `Direct` (plain
//! copies) if its memfd is sealed against shrinking, which no one can undo, and not on
//! hugetlbfs (an empty huge page pool is SIGBUS too); `Checked` otherwise, where every device read and write is copied by the kernel
//! (`process_vm_readv`/`writev` on this process) and a page the client cut off since fails that
//! one access with EFAULT ([`IommuError::Fault`]). A write that fails part-way still marks its
//! whole piece dirty: the bytes before the fault were written. A [`PinGuard`] copies on its
//! mapping's path and lends a raw address only on a `Direct` one.
//!
//! # Concurrency
//!
//! Device threads pin, read, write and mark under the shared side of the container lock, as
//! does GET_BITMAP; map, unmap, START and STOP take it exclusively. Dirty bits live in
//! [`vfmig_dirty::DirtyBitmap`]s, which never lose a bit set during a read-and-clear and lock
//! only one small chunk at a time, so a marker never waits for a whole large-bitmap copy. GETs
//! are serialized among themselves, because each clears and then re-sets the pinned pages.
//!
//! The peer is never called with the container lock held. A read or write of a mapping without
//! an fd ([`RemoteMemory`], a socket round trip) is planned under the shared lock, which then
//! is dropped while the peer answers: a slow peer holds up no map or unmap, and through the
//! lock's writer preference no other device thread either. Memory in this process is still
//! copied under the lock, with no extra cost. A remote write needs no mark afterwards: its
//! mapping is not tracked here (see [Mappings without an fd](#mappings-without-an-fd)).
//!
//! # Deviations from the kernel, on purpose
//!
//! * GET_BITMAP with a bitmap page size of 0 is EINVAL (the kernel computes `__ffs(0)`).
//! * A failed bitmap allocation at START leaks and frees nothing twice (5.10's unwind bug).
//! * A range may not end exactly at 2^64 (the kernel's `iova + size - 1` check allows it).
//! * Dirty bitmaps have a memory budget, ENOMEM beyond it (see [Limits](#limits)); the kernel
//!   has none of its own, and charges its bitmaps to the memory cgroup of the VMM instead.
//! * Mappings without an fd, which the kernel does not have, are not tracked (see
//!   [Mappings without an fd](#mappings-without-an-fd)).

mod access;
mod container;
mod error;
mod host;
mod info;
mod mapping;
mod report;
mod tracking;
mod types;

pub use access::PinGuard;
pub use container::{Container, ContainerConfig, UnmapNotifier, UnmapRequest};
pub use error::{IommuError, Result};
pub use host::{AccessPath, Backing, RemoteMemory};
pub use info::{IOMMU_INFO_FULL_SIZE, IOVA_PGSIZES};
pub use report::BitmapRequest;
pub use tracking::{DirtyPagesDone, GetBitmapRange};
pub use types::{CONTAINER_PAGE_SIZE, DeviceId, DirtyScope, Prot};
/// The address type of every mapping, defined in `vfmig_memory` and named here because the
/// container's API speaks in it.
pub use vfmig_memory::Iova;
