//! The wire messages of vfio-user 0.9.1, as libvfio-user v1 (`1569a37`) sends them.
//!
//! Every message is a 16-byte [`Header`] and a body. Each command's body is a fixed
//! `#[repr(C)]` struct read with zerocopy (its size checked at compile time, and against the
//! kernel's struct from `vfmig-abi` where the kernel has one) and, for some, trailing data: a
//! JSON text, a capability chain, sub-regions, IRQ bools, read/written bytes, a dirty bitmap.
//!
//! | cmd | request | reply |
//! |---|---|---|
//! | 1 VERSION | [`Version`] | [`Version`] (+ twin socket fd) |
//! | 2 DMA_MAP | [`DmaMap`] (+ ≤ 1 fd) | — |
//! | 3 DMA_UNMAP | [`DmaUnmapRequest`] | [`DmaUnmapReply`] |
//! | 4 DEVICE_GET_INFO | [`DeviceInfo`] | [`DeviceInfo`] |
//! | 5 DEVICE_GET_REGION_INFO | [`RegionInfo`] | [`RegionInfoReply`] (+ fd) |
//! | 6 DEVICE_GET_REGION_IO_FDS | [`RegionIoFds`] | [`RegionIoFdsReply`] (+ fds) |
//! | 7 DEVICE_GET_IRQ_INFO | [`IrqInfo`] | [`IrqInfo`] |
//! | 8 DEVICE_SET_IRQS | [`IrqSetRequest`] (+ eventfds) | — |
//! | 9 REGION_READ | [`RegionAccess`] | [`RegionData`] |
//! | 10 REGION_WRITE | [`RegionData`] | [`RegionAccess`] |
//! | 11 DMA_READ | [`DmaAccess`] | [`DmaData`] |
//! | 12 DMA_WRITE | [`DmaData`] | [`DmaAccess`] |
//! | 13 DEVICE_RESET | — | — |
//! | 14 DIRTY_PAGES | [`DirtyPagesRequest`] | [`DirtyPagesReply`] |
//!
//! [`Request`] and [`Reply`] decode any command by number and add the rules that need the
//! header, the file descriptors or the [`Limits`](crate::Limits).
//!
//! # Validation
//!
//! Nothing in a body is trusted before it is checked: the body must hold its fixed part and
//! the data its counts call for, `argsz` must cover the fixed reply, flags must be known and
//! combined as allowed, counts and offsets are compared in `u64`. Bytes after what a body
//! describes are ignored where its length carries no other meaning, as libvfio-user does;
//! data with a `count` must be exactly that long (the crate docs list every such rule, under
//! "Liberal in what we accept"). Decoding never panics and never allocates more than the
//! body's size. Encoding is strict: a value that encodes also decodes, to itself.
//!
//! All integers are little-endian on the wire; the crate reads wire structs in native order
//! and refuses to build for a big-endian target.

mod device;
mod dirty;
mod dma;
mod error;
mod header;
mod io_fds;
mod irq;
mod region;
mod region_caps;
mod reply;
mod request;
mod version;
mod version_caps;
mod wire;

pub use device::DeviceInfo;
pub use dirty::{
    BitmapRange, BitmapRangeWire, DirtyPages, DirtyPagesReply, DirtyPagesRequest,
    GET_BITMAP_PREFIX, check_bitmap_geometry, page_size,
};
pub use dma::{
    Bitmap, BitmapData, BitmapWire, DmaAccess, DmaData, DmaMap, DmaUnmap, DmaUnmapReply,
    DmaUnmapRequest,
};
pub use header::{
    Command, Direction, FLAGS_ERROR, FLAGS_KNOWN, FLAGS_NO_REPLY, FLAGS_TYPE_COMMAND,
    FLAGS_TYPE_MASK, FLAGS_TYPE_REPLY, HEADER_SIZE, Header, MessageKind,
};
pub use io_fds::{
    IO_FD_TYPE_IOEVENTFD, IO_FD_TYPE_IOEVENTFD_SHADOW, IO_FD_TYPE_IOREGIONFD, RegionIoFds,
    RegionIoFdsReply, SubRegionIoFd,
};
pub use irq::{IrqAction, IrqData, IrqInfo, IrqSet, IrqSetRequest};
pub use region::{RegionAccess, RegionData, RegionInfo, RegionInfoReply};
pub use region_caps::{
    CapHeader, RegionCap, RegionCapsBuilder, RegionTypeCap, SparseMmapArea, SparseMmapCap,
    encode_caps, parse_caps,
};
pub use reply::Reply;
pub use request::Request;
pub use version::{VERSION_MAJOR, VERSION_MINOR, Version, VersionHeader};
pub use version_caps::{
    Capabilities, DEFAULT_MAX_BITMAP_SIZE, DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_MSG_FDS,
    MigrationCapability, TwinSocket,
};

pub use error::MessageError;

/// The body of one command in one direction: decoded from and encoded to its wire bytes.
///
/// `decode` checks everything the body alone can tell; [`Request::decode`] and
/// [`Reply::decode`] add the checks that need file descriptors or limits. `encode` refuses a
/// value that `decode` would refuse, so `decode(&encode(x)?)` is `x`.
pub trait Payload<'a>: Sized {
    /// What this payload is, in error messages.
    const NAME: &'static str;

    /// Parses and validates a body.
    fn decode(body: &'a [u8]) -> Result<Self, MessageError>;

    /// The wire bytes of this body.
    fn encode(&self) -> Result<Vec<u8>, MessageError>;
}

#[cfg(test)]
mod proptests;
