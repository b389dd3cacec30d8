//! The 16-byte header that starts every message, and the command numbers.
//!
//! ```text
//! off size field
//!   0    2 msg_id     chosen by the sender, echoed in the reply
//!   2    2 cmd        command number, the same in the reply
//!   4    4 msg_size   whole message, header included
//!   8    4 flags      bits 0-3 type (0 command, 1 reply), 0x10 NO_REPLY, 0x20 ERROR,
//!                     bits 6-31 reserved (ignored)
//!  12    4 error_no   errno of an ERROR reply (may be 0); reserved in commands
//! ```

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::MessageError;
use crate::limits::Limits;

/// Size of the header.
pub const HEADER_SIZE: usize = 16;

/// `msg_size` of a message that is a header only.
const HEADER_MSG_SIZE: u32 = 16;
const _: () = assert!(HEADER_MSG_SIZE as usize == HEADER_SIZE);

/// Type bits of `flags`.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Type value of a command.
pub const FLAGS_TYPE_COMMAND: u32 = 0;
/// Type value of a reply.
pub const FLAGS_TYPE_REPLY: u32 = 1;
/// The sender wants no reply to this command, not even an error.
pub const FLAGS_NO_REPLY: u32 = 0x10;
/// This reply reports an error; `error_no` holds the errno.
pub const FLAGS_ERROR: u32 = 0x20;
/// Every flag bit 0.9.1 defines.
pub const FLAGS_KNOWN: u32 = FLAGS_TYPE_MASK | FLAGS_NO_REPLY | FLAGS_ERROR;

/// `struct vfio_user_header`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Header {
    /// Message id, echoed in the reply; not required to be unique.
    pub msg_id: u16,
    /// Command number (see [`Command`]).
    pub cmd: u16,
    /// Size of the whole message, header included.
    pub msg_size: u32,
    /// Type, `NO_REPLY`, `ERROR`.
    pub flags: u32,
    /// errno of an error reply.
    pub error_no: u32,
}

const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

/// Whether a message is a command or a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A command (type 0).
    Command,
    /// A reply (type 1).
    Reply,
}

/// Who sends a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The client (the VMM) sends it; the server (the device) replies.
    ClientToServer,
    /// The server sends it; the client replies (`DMA_READ`/`DMA_WRITE`).
    ServerToClient,
}

/// The commands of vfio-user 0.9.1.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// `VFIO_USER_VERSION`: the first message, version and capabilities.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`: client memory the server may access.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`: memory no longer accessible, optionally with its dirty bitmap.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ` (server to client).
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE` (server to client).
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
    /// `VFIO_USER_DIRTY_PAGES`: dirty page logging START/STOP/GET_BITMAP.
    DirtyPages = 14,
}

impl Command {
    /// Every command, in number order.
    pub const ALL: [Command; 14] = [
        Self::Version,
        Self::DmaMap,
        Self::DmaUnmap,
        Self::DeviceGetInfo,
        Self::DeviceGetRegionInfo,
        Self::DeviceGetRegionIoFds,
        Self::DeviceGetIrqInfo,
        Self::DeviceSetIrqs,
        Self::RegionRead,
        Self::RegionWrite,
        Self::DmaRead,
        Self::DmaWrite,
        Self::DeviceReset,
        Self::DirtyPages,
    ];

    /// The command number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The command with this number; unknown numbers are [`MessageError::UnknownCommand`].
    pub fn from_code(cmd: u16) -> Result<Self, MessageError> {
        Self::ALL
            .into_iter()
            .find(|c| c.code() == cmd)
            .ok_or(MessageError::UnknownCommand { cmd })
    }

    /// The spec's name, e.g. `VFIO_USER_DMA_MAP`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Version => "VFIO_USER_VERSION",
            Self::DmaMap => "VFIO_USER_DMA_MAP",
            Self::DmaUnmap => "VFIO_USER_DMA_UNMAP",
            Self::DeviceGetInfo => "VFIO_USER_DEVICE_GET_INFO",
            Self::DeviceGetRegionInfo => "VFIO_USER_DEVICE_GET_REGION_INFO",
            Self::DeviceGetRegionIoFds => "VFIO_USER_DEVICE_GET_REGION_IO_FDS",
            Self::DeviceGetIrqInfo => "VFIO_USER_DEVICE_GET_IRQ_INFO",
            Self::DeviceSetIrqs => "VFIO_USER_DEVICE_SET_IRQS",
            Self::RegionRead => "VFIO_USER_REGION_READ",
            Self::RegionWrite => "VFIO_USER_REGION_WRITE",
            Self::DmaRead => "VFIO_USER_DMA_READ",
            Self::DmaWrite => "VFIO_USER_DMA_WRITE",
            Self::DeviceReset => "VFIO_USER_DEVICE_RESET",
            Self::DirtyPages => "VFIO_USER_DIRTY_PAGES",
        }
    }

    /// Who sends this command.
    pub const fn direction(self) -> Direction {
        match self {
            Self::DmaRead | Self::DmaWrite => Direction::ServerToClient,
            _ => Direction::ClientToServer,
        }
    }
}

impl TryFrom<u16> for Command {
    type Error = MessageError;

    fn try_from(cmd: u16) -> Result<Self, Self::Error> {
        Self::from_code(cmd)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `msg_size` of a message with a body of `body_len` bytes.
fn msg_size_for(body_len: usize) -> Result<u32, MessageError> {
    body_len
        .checked_add(HEADER_SIZE)
        .and_then(|size| u32::try_from(size).ok())
        .ok_or(MessageError::EncodeTooLarge { body_len })
}

impl Header {
    /// The header of a command with a body of `body_len` bytes.
    pub fn new_command(
        msg_id: u16,
        command: Command,
        body_len: usize,
    ) -> Result<Self, MessageError> {
        Ok(Self {
            msg_id,
            cmd: command.code(),
            msg_size: msg_size_for(body_len)?,
            flags: FLAGS_TYPE_COMMAND,
            error_no: 0,
        })
    }

    /// The header of the reply to `request`, with a body of `body_len` bytes.
    pub fn new_reply(request: &Header, body_len: usize) -> Result<Self, MessageError> {
        Ok(Self {
            msg_id: request.msg_id,
            cmd: request.cmd,
            msg_size: msg_size_for(body_len)?,
            flags: FLAGS_TYPE_REPLY,
            error_no: 0,
        })
    }

    /// The error reply to `request`: a header only, `flags = REPLY | ERROR` (0x21), `error_no`
    /// the (positive) errno.
    pub fn new_error_reply(request: &Header, errno: i32) -> Self {
        Self {
            msg_id: request.msg_id,
            cmd: request.cmd,
            msg_size: HEADER_MSG_SIZE,
            flags: FLAGS_TYPE_REPLY | FLAGS_ERROR,
            error_no: errno.unsigned_abs(),
        }
    }

    /// This header with `NO_REPLY` set.
    #[must_use]
    pub fn with_no_reply(self) -> Self {
        Self {
            flags: self.flags | FLAGS_NO_REPLY,
            ..self
        }
    }

    /// Command or reply; an unknown type is an error. Flag bits 6–31, which 0.9.1 reserves,
    /// are ignored, as libvfio-user's bit-field header never reads them.
    pub fn kind(&self) -> Result<MessageKind, MessageError> {
        match self.flags & FLAGS_TYPE_MASK {
            FLAGS_TYPE_COMMAND => Ok(MessageKind::Command),
            FLAGS_TYPE_REPLY => Ok(MessageKind::Reply),
            _ => Err(MessageError::UnknownMessageType { flags: self.flags }),
        }
    }

    /// The command; unknown numbers are [`MessageError::UnknownCommand`].
    pub fn command(&self) -> Result<Command, MessageError> {
        Command::from_code(self.cmd)
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAGS_NO_REPLY != 0
    }

    /// The errno of an error reply (which may be 0), or `None` if `ERROR` is not set.
    pub fn error(&self) -> Option<u32> {
        (self.flags & FLAGS_ERROR != 0).then_some(self.error_no)
    }

    /// Bytes of body after the header; `msg_size < 16` is an error.
    pub fn body_len(&self) -> Result<usize, MessageError> {
        usize::try_from(self.msg_size)
            .ok()
            .and_then(|size| size.checked_sub(HEADER_SIZE))
            .ok_or(MessageError::MessageTooSmall {
                msg_size: self.msg_size,
            })
    }

    /// Bytes of body, checked against the message size cap of `limits`.
    pub fn checked_body_len(&self, limits: &Limits) -> Result<usize, MessageError> {
        let body_len = self.body_len()?;
        if self.msg_size > limits.max_msg_size {
            return Err(MessageError::MessageTooLarge {
                msg_size: self.msg_size,
                max: limits.max_msg_size,
            });
        }
        Ok(body_len)
    }

    /// Checks that this header frames `body` as a message of `kind`: the right type, and a
    /// `msg_size` within `limits` that matches the body read.
    pub fn check_framing(
        &self,
        kind: MessageKind,
        body: &[u8],
        limits: &Limits,
    ) -> Result<(), MessageError> {
        let found = self.kind()?;
        if found != kind {
            return Err(MessageError::WrongMessageType {
                expected: kind,
                found,
            });
        }
        if self.checked_body_len(limits)? != body.len() {
            return Err(MessageError::SizeMismatch {
                msg_size: self.msg_size,
                actual: body.len().saturating_add(16),
            });
        }
        Ok(())
    }

    /// Reads a header from the first 16 bytes of `bytes`, returning it and the rest.
    pub fn split(bytes: &[u8]) -> Result<(Self, &[u8]), MessageError> {
        Self::read_from_prefix(bytes).map_err(|_| MessageError::BodyTooShort {
            what: "header",
            need: HEADER_SIZE,
            got: bytes.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_little_endian_in_wire_order() {
        let header = Header::new_command(0x0102, Command::DmaMap, 32).unwrap();
        assert_eq!(
            header.as_bytes(),
            [0x02, 0x01, 0x02, 0x00, 48, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn error_reply_is_flags_0x21_and_header_only() {
        let request = Header::new_command(7, Command::DeviceGetInfo, 16).unwrap();
        let reply = Header::new_error_reply(&request, libc::EINVAL);
        assert_eq!(
            (reply.flags, reply.error_no, reply.msg_size),
            (0x21, 22, 16)
        );
        assert_eq!((reply.msg_id, reply.cmd), (7, 4));
        assert_eq!(reply.error(), Some(22));
    }

    #[test]
    fn every_command_number_round_trips() {
        for command in Command::ALL {
            assert_eq!(Command::from_code(command.code()).unwrap(), command);
        }
        assert_eq!(
            Command::ALL.map(Command::code),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        );
    }

    #[test]
    fn unknown_command_numbers_are_einval() {
        for cmd in [0, 15, 16, 0xffff] {
            let err = Command::from_code(cmd).unwrap_err();
            assert!(matches!(err, MessageError::UnknownCommand { cmd: c } if c == cmd));
            assert_eq!(err.errno(), libc::EINVAL);
        }
    }

    #[test]
    fn reserved_flag_bits_are_ignored() {
        let header = Header {
            flags: 0xffff_ffc1,
            ..Header::default()
        };
        assert_eq!(header.kind().unwrap(), MessageKind::Reply);
    }

    #[test]
    fn unknown_message_type_is_rejected() {
        let header = Header {
            flags: 2,
            ..Header::default()
        };
        assert!(matches!(
            header.kind(),
            Err(MessageError::UnknownMessageType { flags: 2 })
        ));
    }

    #[test]
    fn msg_size_below_header_is_too_small() {
        let header = Header {
            msg_size: 15,
            ..Header::default()
        };
        assert!(matches!(
            header.body_len(),
            Err(MessageError::MessageTooSmall { msg_size: 15 })
        ));
    }

    #[test]
    fn msg_size_above_the_cap_is_einval_as_libvfio_user_answers() {
        let limits = Limits {
            max_msg_size: 100,
            ..Limits::default()
        };
        let header = Header {
            msg_size: 101,
            ..Header::default()
        };
        let err = header.checked_body_len(&limits).unwrap_err();
        assert!(matches!(
            err,
            MessageError::MessageTooLarge {
                msg_size: 101,
                max: 100
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn body_too_big_for_msg_size_cannot_be_encoded() {
        let err = Header::new_command(0, Command::RegionWrite, u32::MAX as usize).unwrap_err();
        assert!(matches!(err, MessageError::EncodeTooLarge { .. }));
        assert_eq!(err.errno(), libc::E2BIG);
    }
}
