//! The container's errors. Every variant maps to the errno `vfio_iommu_type1` returns for the
//! same condition ([`IommuError::errno`]), so a vfio-user server can answer with it unchanged.

use std::io;

use vfmig_dirty::PageSize;
use vfmig_memory::Iova;

use crate::types::DeviceId;

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IommuError {
    /// A flags word has bits the operation does not know.
    #[error("unknown flags {flags:#x} (known: {known:#x})")]
    UnknownFlags {
        /// The flags that were passed.
        flags: u32,
        /// The flags the operation accepts.
        known: u32,
    },
    /// `argsz` is smaller than the structure the operation needs.
    #[error("argsz {argsz} is below the minimum {min}")]
    ArgszTooSmall {
        /// The `argsz` that was passed.
        argsz: u32,
        /// The smallest acceptable value.
        min: u32,
    },
    /// DIRTY_PAGES was asked for no operation, or for more than one at once.
    #[error("DIRTY_PAGES needs exactly one of START, STOP, GET_BITMAP (flags {flags:#x})")]
    NotOneDirtyOperation {
        /// The flags that were passed.
        flags: u32,
    },
    /// A mapping was requested with neither READ nor WRITE.
    #[error("a mapping needs READ, WRITE or both")]
    NoProtection,
    /// A size of zero where a range is required.
    #[error("{what} size is zero")]
    ZeroSize {
        /// What the size belongs to.
        what: &'static str,
    },
    /// An address, size or offset is not a multiple of the container page size.
    #[error("{what} {value:#x} is not aligned to the {page_size}-byte page size")]
    Unaligned {
        /// What the value is.
        what: &'static str,
        /// The value.
        value: u64,
        /// The alignment required.
        page_size: u64,
    },
    /// `iova + size` wraps around the 64-bit space.
    #[error("range {iova} + {size:#x} wraps")]
    Wraps {
        /// Start of the range.
        iova: Iova,
        /// Its size.
        size: u64,
    },
    /// A new mapping overlaps an existing one.
    #[error("range {iova} + {size:#x} overlaps the mapping at {existing} + {existing_size:#x}")]
    Overlap {
        /// Start of the refused mapping.
        iova: Iova,
        /// Its size.
        size: u64,
        /// Start of the mapping it overlaps.
        existing: Iova,
        /// Size of the mapping it overlaps.
        existing_size: u64,
    },
    /// The container already holds its limit of mappings.
    #[error("the container holds its limit of {limit} mappings")]
    TooManyMappings {
        /// The limit.
        limit: usize,
    },
    /// A range cuts through a mapping (type1 v2 forbids bisecting one).
    #[error("range {iova} + {size:#x} bisects the mapping at {mapping} + {mapping_size:#x}")]
    Bisects {
        /// Start of the range.
        iova: Iova,
        /// Its size.
        size: u64,
        /// Start of the mapping it cuts.
        mapping: Iova,
        /// Size of that mapping.
        mapping_size: u64,
    },
    /// Dirty tracking is off, and the operation needs it on.
    #[error("dirty page tracking is not started")]
    TrackingOff,
    /// A GET_BITMAP or unmap-with-bitmap names a mapping without an fd, which has no dirty
    /// bitmap: the peer that owns its memory records what was written to it (libvfio-user's
    /// rule, and its errno).
    #[error("the mapping at {mapping} has no fd and so no dirty bitmap")]
    Untracked {
        /// Start of that mapping.
        mapping: Iova,
    },
    /// A bitmap page size other than the container page size.
    #[error("bitmap page size {requested} is not the container page size {container}")]
    PageSizeMismatch {
        /// The page size requested.
        requested: PageSize,
        /// The only one the container accepts.
        container: PageSize,
    },
    /// The kernel's `verify_bitmap_size`: no pages, no bitmap, a bitmap over 256 MiB, or a
    /// bitmap too small for the pages.
    #[error("a {bitmap_size}-byte bitmap cannot carry {pages} pages")]
    BitmapSize {
        /// Pages the request covers.
        pages: u64,
        /// Bitmap size the caller gave, in bytes.
        bitmap_size: u64,
    },
    /// The buffer passed for the bitmap is smaller than the bitmap size the caller declared
    /// (the kernel's `access_ok` check).
    #[error("bitmap buffer of {buffer} bytes is smaller than its declared {declared} bytes")]
    BitmapBuffer {
        /// Bytes the caller declared.
        declared: u64,
        /// Bytes actually provided.
        buffer: u64,
    },
    /// A mapping has more pages than one bitmap may cover (`INT_MAX`).
    #[error("mapping at {iova} has {pages} pages, more than a dirty bitmap can cover")]
    TooManyPages {
        /// The mapping.
        iova: Iova,
        /// Its page count.
        pages: u64,
    },
    /// Giving a mapping its dirty bitmap would take the container's bitmaps over their budget,
    /// [`crate::ContainerConfig::max_bitmap_bytes`].
    #[error(
        "the {bytes}-byte dirty bitmap of the mapping at {iova} does not fit the {limit}-byte \
         bitmap budget ({in_use} bytes charged before it)"
    )]
    BitmapBudget {
        /// The mapping refused a bitmap.
        iova: Iova,
        /// Bytes of its bitmap.
        bytes: u64,
        /// Bytes of bitmaps charged before it: the other mappings' while tracking, or at START
        /// the mappings below it.
        in_use: u64,
        /// The budget.
        limit: u64,
    },
    /// Unmap-all was combined with a range or with GET_DIRTY_BITMAP.
    #[error("unmap-all takes no range and no bitmap")]
    UnmapAllMisused,
    /// Pages in the range are still pinned after the pinning devices were asked to unpin.
    #[error("range {iova} + {size:#x} still has pinned pages")]
    Busy {
        /// Start of the range.
        iova: Iova,
        /// Its size.
        size: u64,
    },
    /// A device access touches memory no mapping covers.
    #[error("{iova} + {len:#x} is not mapped")]
    NotMapped {
        /// Start of the access.
        iova: Iova,
        /// Its length.
        len: u64,
    },
    /// A device access goes against the mapping's protection.
    #[error("{iova}: the mapping does not allow device {access}")]
    Permission {
        /// Where the access was refused.
        iova: Iova,
        /// "read" or "write".
        access: &'static str,
    },
    /// The mapping has no memory in this process (it was mapped without a file descriptor), so
    /// it cannot be pinned.
    #[error("the mapping at {iova} has no host memory in this process")]
    NotHostMapped {
        /// Start of the mapping.
        iova: Iova,
    },
    /// A pin range crosses from one mapping into another; a pin lends one contiguous piece of
    /// one mapping.
    #[error("pin range {iova} + {len:#x} crosses mappings")]
    PinCrossesMappings {
        /// Start of the range.
        iova: Iova,
        /// Its length.
        len: u64,
    },
    /// No device with this id is attached.
    #[error("{0} is not attached")]
    NoSuchDevice(DeviceId),
    /// Mapping the file descriptor into this process failed.
    #[error("mmap of {size:#x} bytes at fd offset {offset:#x} failed: {source}")]
    Mmap {
        /// Size of the mapping.
        size: u64,
        /// Offset in the file.
        offset: u64,
        /// The OS error, errno kept.
        source: io::Error,
    },
    /// The file of a new mapping ends before the mapping does: its pages past the end would
    /// raise SIGBUS when touched. The kernel's MAP_DMA fails to pin them with EFAULT.
    #[error(
        "mapping of {size:#x} bytes at fd offset {offset:#x} runs past the file's end \
         ({file_size:#x} bytes)"
    )]
    BeyondFile {
        /// Offset of the mapping in the file.
        offset: u64,
        /// Size of the mapping.
        size: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// A device access to host memory failed: the page is gone (the client shrank the file
    /// under its mapping), EFAULT.
    #[error("DMA at {iova} + {len:#x} failed: {source}")]
    Fault {
        /// Where the failed piece of the access starts.
        iova: Iova,
        /// Its length.
        len: u64,
        /// The error, errno kept.
        source: io::Error,
    },
    /// A mapping without an fd was reached through its remote accessor, and that failed.
    #[error("remote DMA at {iova} failed: {source}")]
    Remote {
        /// Where the access started.
        iova: Iova,
        /// The error, errno kept.
        source: io::Error,
    },
    /// A dirty bitmap could not be built.
    #[error("dirty bitmap: {0}")]
    Bitmap(#[from] vfmig_dirty::DirtyError),
}

impl IommuError {
    /// The errno `vfio_iommu_type1` returns for this condition.
    pub fn errno(&self) -> i32 {
        use IommuError::*;
        match self {
            UnknownFlags { .. }
            | ArgszTooSmall { .. }
            | NotOneDirtyOperation { .. }
            | NoProtection
            | ZeroSize { .. }
            | Unaligned { .. }
            | Wraps { .. }
            | Bisects { .. }
            | TrackingOff
            | Untracked { .. }
            | PageSizeMismatch { .. }
            | BitmapSize { .. }
            | BitmapBuffer { .. }
            | TooManyPages { .. }
            | UnmapAllMisused
            | PinCrossesMappings { .. }
            | NoSuchDevice(_) => libc::EINVAL,
            Overlap { .. } => libc::EEXIST,
            TooManyMappings { .. } => libc::ENOSPC,
            Busy { .. } => libc::EBUSY,
            NotMapped { .. } | NotHostMapped { .. } | BeyondFile { .. } => libc::EFAULT,
            Permission { .. } => libc::EPERM,
            Bitmap(_) | BitmapBudget { .. } => libc::ENOMEM,
            Mmap { source, .. } | Remote { source, .. } | Fault { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
        }
    }
}

/// Result of a container operation.
pub type Result<T, E = IommuError> = std::result::Result<T, E>;
