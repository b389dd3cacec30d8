//! Memory shared between the processes of a VM, at the bottom of the workspace: the memfd
//! ([`memfd`], [`memfd_sealed`]) and what a file descriptor says of its memory ([`FileInfo`],
//! [`Seals`]), the one mapped-region type ([`Mmap`]), a memfd with its mapping
//! ([`SharedMemory`]), the host page size ([`host_page_size`]), and the guest address types
//! ([`Gpa`], [`Iova`]). It knows nothing of VFIO, dirty tracking or migration; every crate
//! above maps memory through it.
//!
//! | user | what it maps |
//! |---|---|
//! | `vfmig-iommu` | each DMA mapping backed by an fd: an [`Mmap::shared`] of the fd the client sent |
//! | `vfmig-vfio-user` | a client's sparse-mmap area of a device region: an [`Mmap::shared`] of the region's fd, volatile register accesses |
//! | `vfmig-device` | device memory and the migration region's data section: a [`SharedMemory`] whose fd the client maps |
//! | `vfmig-vmm` | guest RAM: one [`SharedMemory`] per region, whose fd every device process maps through DMA_MAP |
//! | `vfmig-migration` | the receiver's ring: one [`memfd`] laid twice over an anonymous [`Mmap`] with [`Mmap::overlay_shared`] |
//!
//! # Invariants
//!
//! * A mapping is never lent out as a Rust reference: another process (or thread) may change
//!   shared memory at any time, so bytes are copied in and out through raw pointers, and
//!   registers are read and written with single volatile accesses. Code that builds slices
//!   over a mapping (the migration ring) owns the memory alone and says so at its `unsafe`.
//! * Every access is bounds-checked (EINVAL outside) and access-checked (EACCES for a write
//!   to a read-only mapping); every failed syscall keeps its errno.
//! * A page of a file mapping can vanish when the file's owner shrinks it, and touching it
//!   raises SIGBUS. A file this process sends is sealed to its length ([`memfd_sealed`], which
//!   every [`SharedMemory`] uses); a file it receives is asked about ([`FileInfo`]: its size and
//!   its seals) and, unless it is sealed against shrinking and not on hugetlbfs
//!   ([`FileInfo::always_backed`]), copied to and from only through
//!   the kernel ([`Mmap::read_checked`], [`Mmap::write_checked`]), where a vanished page is
//!   EFAULT. Which copy a mapping gets is its user's choice (the IOMMU container's, per DMA
//!   mapping).
//! * Guest RAM regions expose what a KVM memslot needs: host address ([`Mmap::as_ptr`]),
//!   size ([`Mmap::len`]) and fd ([`SharedMemory::fd`]).
//!
//! # Why not rust-vmm `vm-memory` for guest RAM
//!
//! `vm-memory` 0.18 was judged for the guest-RAM part (`GuestMemoryMmap` of `GuestRegionMmap`
//! built with `MmapRegion::from_file` over the memfds, `GuestAddress`, `Bytes`). It would not
//! fight the memfd sharing: its file-backed regions are `MAP_SHARED | MAP_NORESERVE` as ours
//! are, and keep the file (`file_offset()`) for DMA_MAP and the host address and size for a
//! KVM memslot. It is not used, for what it would leave us with:
//!
//! * None of the migration path would go through it. The sender reads RAM with `mincore`
//!   and reads through the file for holes ([`SharedMemory::read_sparse`]), the receiver
//!   writes with streaming stores and zeroes by punching holes; `Bytes` has none of these, so
//!   each would be written against the region's raw address as it is here, and the measured
//!   path would be byte-for-byte the same code.
//! * Its dirty tracking (`AtomicBitmap` as the region's type parameter) marks pages but has
//!   no read-and-clear in the kernel's layout at any bit offset, which `vfmig-dirty` provides
//!   and the engine merges with the devices' bitmaps; guest RAM would carry two dirty
//!   mechanisms, or vm-memory's left at `()`.
//! * The workspace would then hold two mapped-region types, vm-memory's for RAM and this one
//!   for device memory, sparse-mmap areas, DMA mappings and the ring, the very repeat this
//!   crate removes; and two guest-address types for one meaning.
//!
//! A KVM VMM that wants vm-memory's traits can build a `GuestMemoryMmap` over the same memfds
//! (each region's fd, size and guest address are public) without this crate changing.

mod addr;
mod checked;
mod copy;
mod file;
mod memfd;
mod mmap;
mod shared;

pub use addr::{Gpa, Iova};
pub use file::{FileInfo, Seals, seal};
pub use memfd::{host_page_size, memfd, memfd_sealed};
pub use mmap::{Access, Mmap};
pub use shared::SharedMemory;
