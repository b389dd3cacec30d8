//! Small types that carry meaning: protections, devices, dirty scopes. Addresses
//! ([`Iova`](vfmig_memory::Iova)) are `vfmig_memory`'s.

use std::fmt;

use vfmig_abi::uapi::{VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE};
use vfmig_dirty::PageSize;

/// The container page size: the smallest (and only) page size of the dirty bitmaps, and the
/// alignment of every mapping. 4 KiB, the host page size.
pub const CONTAINER_PAGE_SIZE: PageSize = PageSize::SIZE_4K;

/// What a device may do with a mapping, from the device's side (the `VFIO_DMA_MAP_FLAG_*`
/// bits): READ lets it read guest memory, WRITE lets it write.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Prot {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Prot {
    /// Read only.
    pub const READ: Prot = Prot {
        read: true,
        write: false,
    };
    /// Write only.
    pub const WRITE: Prot = Prot {
        read: false,
        write: true,
    };
    /// Read and write.
    pub const READ_WRITE: Prot = Prot {
        read: true,
        write: true,
    };

    /// The protection of `VFIO_DMA_MAP_FLAG_*` flags; other bits are ignored here and refused
    /// by [`crate::Container::map_dma`].
    pub const fn from_map_flags(flags: u32) -> Prot {
        Prot {
            read: flags & VFIO_DMA_MAP_FLAG_READ != 0,
            write: flags & VFIO_DMA_MAP_FLAG_WRITE != 0,
        }
    }

    /// True if `self` allows everything `need` asks for.
    pub const fn allows(self, need: Prot) -> bool {
        (self.read || !need.read) && (self.write || !need.write)
    }
}

/// A device attached to the container, as the container knows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DeviceId(pub(crate) u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}", self.0)
    }
}

/// Which guest pages a device may have written, as far as the container can tell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DirtyScope {
    /// Precise: the device writes only through the container (pinned pages, reported writes,
    /// `write`), so the bitmap holds exactly what it dirtied. The kernel's
    /// `pinned_page_dirty_scope`.
    Pinned,
    /// The device may DMA anywhere it is mapped, so every mapped page is reported dirty on every
    /// GET, as type1 does for IOMMU-backed groups. A device in this scope is promoted to
    /// [`DirtyScope::Pinned`] by its first pin.
    AllMapped,
}
