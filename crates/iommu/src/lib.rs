//! An IOMMU container with the dirty-tracking rules of Linux 5.10 `vfio_iommu_type1`, in user
//! space: the one place that knows which guest pages a device may have written.
//!
//! A [`Container`] holds DMA mappings (IOVA ranges backed by a file descriptor mapped into this
//! process, or by a peer reached through [`RemoteMemory`]) and the devices attached to it. It
//! behaves like a type1 v2 container in every rule a VMM can observe — the same checks, in the
//! same order, with the same errnos ([`IommuError::errno`]) — without the kernel's known bugs:
//!
//! * map: page-aligned, no wrap, no overlap (EEXIST), at most 65535 mappings (ENOSPC);
//! * unmap: whole mappings only (a bisected one is EINVAL), holes unmap nothing, the bytes
//!   unmapped are returned; with GET_DIRTY_BITMAP the removed mappings' dirty pages are reported
//!   first; unmap-all; pinned pages are first asked back through an [`UnmapNotifier`], and if a
//!   device keeps them, the unmap fails with EBUSY and removes nothing;
//! * dirty tracking: START / STOP (idempotent), GET_BITMAP over any range of whole mappings,
//!   read-and-clear except that pinned pages stay dirty;
//! * the vendor-driver side: [`Container::pin`] (a [`PinGuard`] lends the host memory),
//!   [`Container::read`] / [`Container::write`] (writes mark dirty), and
//!   [`Container::mark_dirty`] for a device that writes some other way;
//! * dirty scope: a device is [`DirtyScope::AllMapped`] (every mapped page is reported on every
//!   GET) until its first pin makes it [`DirtyScope::Pinned`]; detaching an `AllMapped` device
//!   while tracking marks every mapped page dirty;
//! * [`Container::info`]: page sizes and the migration capability in the kernel's layout.
//!
//! # Concurrency
//!
//! Device threads pin, read, write and mark under the shared side of the container lock, as
//! does GET_BITMAP; map, unmap, START and STOP take it exclusively. Dirty bits live in
//! [`vfmig_dirty::DirtyBitmap`]s, which never lose a bit set during a read-and-clear and lock
//! only one small chunk at a time, so a marker never waits for a whole large-bitmap copy. GETs
//! are serialized among themselves, because each clears and then re-sets the pinned pages.
//!
//! # Deviations from the kernel, on purpose
//!
//! * GET_BITMAP with a bitmap page size of 0 is EINVAL (the kernel computes `__ffs(0)`).
//! * A failed bitmap allocation at START leaks and frees nothing twice (5.10's unwind bug).
//! * A range may not end exactly at 2^64 (the kernel's `iova + size - 1` check allows it).

mod access;
mod container;
mod error;
mod host;
mod info;
mod mapping;
mod tracking;
mod types;

pub use access::PinGuard;
pub use container::{Container, ContainerConfig, UnmapNotifier, UnmapRequest};
pub use error::{IommuError, Result};
pub use host::{Backing, RemoteMemory};
pub use info::{IOMMU_INFO_FULL_SIZE, IOVA_PGSIZES};
pub use tracking::{BitmapRequest, DirtyPagesDone, GetBitmapRange};
pub use types::{CONTAINER_PAGE_SIZE, DeviceId, DirtyScope, Iova, Prot};
