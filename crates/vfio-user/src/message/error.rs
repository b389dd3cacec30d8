//! [`MessageError`]: a message that is not valid vfio-user 0.9.1, with the errno a peer is
//! told for it (see the crate's `error` module for the mapping).

use crate::message::{Command, MessageKind};

/// A message that is not valid vfio-user 0.9.1. The errno of each variant is [`Self::errno`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The header's command number is not one of 1–14.
    #[error("unknown command {cmd}")]
    UnknownCommand {
        /// The number found.
        cmd: u16,
    },
    /// The header's type bits are neither command (0) nor reply (1).
    #[error("unknown message type in flags {flags:#x}")]
    UnknownMessageType {
        /// The header's flags.
        flags: u32,
    },
    /// A reply arrived where a command was expected, or the other way round.
    #[error("expected a {expected:?} message, got a {found:?}")]
    WrongMessageType {
        /// What the receiver expected.
        expected: MessageKind,
        /// What the header says.
        found: MessageKind,
    },
    /// `msg_size` is smaller than the 16-byte header.
    #[error("msg_size {msg_size} is smaller than the header")]
    MessageTooSmall {
        /// The header's `msg_size`.
        msg_size: u32,
    },
    /// `msg_size` is above the receiver's cap ([`crate::Limits::max_msg_size`]).
    #[error("msg_size {msg_size} is above the limit of {max} bytes")]
    MessageTooLarge {
        /// The header's `msg_size`.
        msg_size: u32,
        /// The cap in force.
        max: u32,
    },
    /// `msg_size` does not match the bytes that make up the message.
    #[error("msg_size {msg_size} does not match the {actual} bytes of the message")]
    SizeMismatch {
        /// The header's `msg_size`.
        msg_size: u32,
        /// The bytes present (header included).
        actual: usize,
    },
    /// A body we were asked to encode does not fit a 32-bit `msg_size`.
    #[error("a {body_len}-byte body does not fit in one message")]
    EncodeTooLarge {
        /// The body length.
        body_len: usize,
    },
    /// The body is shorter than the fixed part of its payload.
    #[error("{what}: body of {got} bytes, needs at least {need}")]
    BodyTooShort {
        /// The payload being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// The body is not exactly as long as its fixed part and its counts say.
    #[error("{what}: body of {got} bytes, expected exactly {expected}")]
    BodyLength {
        /// The payload being decoded.
        what: &'static str,
        /// Bytes the payload's fields call for.
        expected: u64,
        /// Bytes present.
        got: usize,
    },
    /// `argsz` is smaller than the fixed part it must cover.
    #[error("{what}: argsz {argsz} is below the minimum of {min}")]
    ArgszTooSmall {
        /// The payload being decoded.
        what: &'static str,
        /// The `argsz` found.
        argsz: u32,
        /// The smallest valid `argsz`.
        min: u64,
    },
    /// A `flags` field has bits that are unknown or may not be combined.
    #[error("{what}: invalid flags {flags:#x}")]
    InvalidFlags {
        /// The payload being decoded.
        what: &'static str,
        /// The flags found.
        flags: u32,
    },
    /// A field that must be zero is not.
    #[error("{what}: field {field} must be zero, is {value:#x}")]
    NotZero {
        /// The payload being decoded.
        what: &'static str,
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// `DMA_UNMAP` with `VFIO_DMA_UNMAP_FLAG_ALL` names a range.
    #[error("DMA_UNMAP of all mappings must have addr = size = 0, has {addr:#x}+{size:#x}")]
    UnmapAllWithRange {
        /// The `addr` found.
        addr: u64,
        /// The `size` found.
        size: u64,
    },
    /// `SET_IRQS` with `count = 0` other than `start = 0`, `DATA_NONE | ACTION_TRIGGER`.
    #[error(
        "SET_IRQS with count 0 must be start 0, DATA_NONE|ACTION_TRIGGER; is start {start} flags {flags:#x}"
    )]
    IrqDisableForm {
        /// The `start` found.
        start: u32,
        /// The flags found.
        flags: u32,
    },
    /// A `count` of data is above the negotiated `max_data_xfer_size`.
    #[error("{what}: count {count} is above max_data_xfer_size {max}")]
    TransferTooLarge {
        /// The payload being decoded.
        what: &'static str,
        /// The `count` found.
        count: u64,
        /// The limit in force.
        max: u64,
    },
    /// The message carried a number of file descriptors its command does not allow.
    #[error("{command} {kind:?}: {received} file descriptors, allowed {min}..={max}")]
    FdCount {
        /// The command.
        command: Command,
        /// Command or reply.
        kind: MessageKind,
        /// Descriptors received.
        received: usize,
        /// Fewest allowed.
        min: usize,
        /// Most allowed.
        max: usize,
    },
    /// A payload names a file descriptor index beyond those that arrived.
    #[error("{what}: fd index {index} but only {received} file descriptors arrived")]
    FdIndex {
        /// The payload being decoded.
        what: &'static str,
        /// The index found.
        index: u64,
        /// Descriptors received.
        received: usize,
    },
    /// A dirty bitmap page size that is not a power of two of at least 4 KiB.
    #[error("bitmap page size {pgsize:#x} is not a power of two of at least 4 KiB")]
    BadPageSize {
        /// The page size found.
        pgsize: u64,
    },
    /// A dirty bitmap whose byte size is not the one its range and page size call for.
    #[error(
        "bitmap of {bitmap_size} bytes for {size:#x} bytes of {pgsize:#x}-byte pages, needs {expected}"
    )]
    BitmapSize {
        /// Bytes of IOVA space covered.
        size: u64,
        /// Page size of the bitmap.
        pgsize: u64,
        /// The bitmap size found.
        bitmap_size: u64,
        /// The only valid bitmap size (`DIRTY_BITMAP_BYTES`).
        expected: u64,
    },
    /// The VERSION JSON is not valid JSON of the expected shape.
    #[error("VERSION capabilities: {0}")]
    Json(#[from] serde_json::Error),
    /// A capability value is out of the range the protocol allows.
    #[error("capability {key} = {value} is above {max}")]
    CapabilityValue {
        /// The key, e.g. `max_msg_fds`.
        key: &'static str,
        /// The value found.
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A region-info capability (or its `next`) points outside the reply.
    #[error("capability at offset {offset} needs {need} bytes, reply has {len}")]
    CapOutOfBounds {
        /// Offset of the capability, from the start of the region info.
        offset: u64,
        /// End offset the capability needs.
        need: u64,
        /// Bytes in the reply.
        len: usize,
    },
    /// A capability offset points backwards or into the previous capability.
    #[error("capability offset {offset} is below {min}: chains only go forward")]
    CapNotForward {
        /// The offset found.
        offset: u32,
        /// The smallest offset allowed there.
        min: u64,
    },
    /// The `CAPS` flag, `cap_offset` and the capabilities present disagree.
    #[error(
        "region info flags {flags:#x} and cap_offset {cap_offset} disagree with the capabilities sent"
    )]
    CapsInconsistent {
        /// The region info flags.
        flags: u32,
        /// The region info `cap_offset`.
        cap_offset: u32,
    },
    /// An IO-FD sub-region of a type 0.9.1 does not define.
    #[error("sub-region IO-FD type {kind} is unknown")]
    IoFdType {
        /// The type found.
        kind: u32,
    },
}

impl MessageError {
    /// The errno a peer is told about this fault, as libvfio-user answers it.
    pub fn errno(&self) -> i32 {
        match self {
            // The peer sent something malformed: libvfio-user answers EINVAL to all of these.
            Self::UnknownCommand { .. }
            | Self::UnknownMessageType { .. }
            | Self::WrongMessageType { .. }
            | Self::MessageTooSmall { .. }
            | Self::MessageTooLarge { .. }
            | Self::SizeMismatch { .. }
            | Self::BodyTooShort { .. }
            | Self::BodyLength { .. }
            | Self::ArgszTooSmall { .. }
            | Self::InvalidFlags { .. }
            | Self::NotZero { .. }
            | Self::UnmapAllWithRange { .. }
            | Self::IrqDisableForm { .. }
            | Self::TransferTooLarge { .. }
            | Self::FdCount { .. }
            | Self::FdIndex { .. }
            | Self::BadPageSize { .. }
            | Self::BitmapSize { .. }
            | Self::Json(_)
            | Self::CapabilityValue { .. }
            | Self::CapOutOfBounds { .. }
            | Self::CapNotForward { .. }
            | Self::CapsInconsistent { .. }
            | Self::IoFdType { .. } => libc::EINVAL,
            // Our own message is too big for the wire's 32-bit size.
            Self::EncodeTooLarge { .. } => libc::E2BIG,
        }
    }
}
