//! Any reply message, decoded by its command number, with the rules that need the header or
//! the file descriptors: an error reply is its errno, whatever body or descriptors come with
//! it; descriptors only where a reply may carry them (the twin socket of VERSION, the region
//! fd of GET_REGION_INFO, the fds of GET_REGION_IO_FDS, each one named by an index that
//! exists).

use super::dirty::DirtyPagesReply;
use super::dma::{DmaAccess, DmaData, DmaUnmapReply};
use super::io_fds::RegionIoFdsReply;
use super::irq::IrqInfo;
use super::region::{RegionAccess, RegionData, RegionInfoReply};
use super::{Command, DeviceInfo, Header, MessageKind, Payload, Version};
use crate::error::MessageError;
use crate::limits::Limits;

/// A reply to any of the 14 commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// An error reply (`ERROR` flag): its errno; any body is not part of it.
    Error {
        /// The command that failed.
        command: Command,
        /// Its errno (0 is allowed by the spec).
        errno: u32,
    },
    /// `VFIO_USER_VERSION`.
    Version(Version),
    /// `VFIO_USER_DMA_MAP`: no payload.
    DmaMap,
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap(DmaUnmapReply<'a>),
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo(DeviceInfo),
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo(RegionInfoReply),
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds(RegionIoFdsReply),
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo(IrqInfo),
    /// `VFIO_USER_DEVICE_SET_IRQS`: no payload.
    DeviceSetIrqs,
    /// `VFIO_USER_REGION_READ`: the data read.
    RegionRead(RegionData<'a>),
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite(RegionAccess),
    /// `VFIO_USER_DMA_READ`: the data read.
    DmaRead(DmaData<'a>),
    /// `VFIO_USER_DMA_WRITE` (8-byte count).
    DmaWrite(DmaAccess),
    /// `VFIO_USER_DEVICE_RESET`: no payload.
    DeviceReset,
    /// `VFIO_USER_DIRTY_PAGES`.
    DirtyPages(DirtyPagesReply<'a>),
}

impl<'a> Reply<'a> {
    /// The command replied to.
    pub fn command(&self) -> Command {
        match self {
            Self::Error { command, .. } => *command,
            Self::Version(_) => Command::Version,
            Self::DmaMap => Command::DmaMap,
            Self::DmaUnmap(_) => Command::DmaUnmap,
            Self::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Self::DeviceGetRegionInfo(_) => Command::DeviceGetRegionInfo,
            Self::DeviceGetRegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Self::DeviceGetIrqInfo(_) => Command::DeviceGetIrqInfo,
            Self::DeviceSetIrqs => Command::DeviceSetIrqs,
            Self::RegionRead(_) => Command::RegionRead,
            Self::RegionWrite(_) => Command::RegionWrite,
            Self::DmaRead(_) => Command::DmaRead,
            Self::DmaWrite(_) => Command::DmaWrite,
            Self::DeviceReset => Command::DeviceReset,
            Self::DirtyPages(_) => Command::DirtyPages,
        }
    }

    /// Decodes the body of a reply to `command` that arrived with `fds` file descriptors;
    /// `error` is the header's errno if its `ERROR` flag is set.
    ///
    /// An error reply is its errno: a body after the header (libvfio-user echoes the access
    /// after a failed REGION_READ or REGION_WRITE) and any descriptors are ignored (the
    /// descriptors are closed with the message). A reply with no payload (DMA_MAP, SET_IRQS,
    /// DEVICE_RESET) ignores a body too: there is nothing in it to read.
    pub fn decode(
        command: Command,
        error: Option<u32>,
        body: &'a [u8],
        fds: usize,
    ) -> Result<Self, MessageError> {
        if let Some(errno) = error {
            return Ok(Self::Error { command, errno });
        }
        let reply = match command {
            Command::Version => Self::Version(Version::decode(body)?),
            Command::DmaMap => Self::DmaMap,
            Command::DmaUnmap => Self::DmaUnmap(DmaUnmapReply::decode(body)?),
            Command::DeviceGetInfo => Self::DeviceGetInfo(DeviceInfo::decode(body)?),
            Command::DeviceGetRegionInfo => {
                Self::DeviceGetRegionInfo(RegionInfoReply::decode(body)?)
            }
            Command::DeviceGetRegionIoFds => {
                Self::DeviceGetRegionIoFds(RegionIoFdsReply::decode(body)?)
            }
            Command::DeviceGetIrqInfo => Self::DeviceGetIrqInfo(IrqInfo::decode(body)?),
            Command::DeviceSetIrqs => Self::DeviceSetIrqs,
            Command::RegionRead => Self::RegionRead(RegionData::decode(body)?),
            Command::RegionWrite => Self::RegionWrite(RegionAccess::decode(body)?),
            Command::DmaRead => Self::DmaRead(DmaData::decode(body)?),
            Command::DmaWrite => Self::DmaWrite(DmaAccess::decode_write_reply(body)?),
            Command::DeviceReset => Self::DeviceReset,
            Command::DirtyPages => Self::DirtyPages(DirtyPagesReply::decode(body)?),
        };
        reply.check_fds(fds)?;
        Ok(reply)
    }

    /// Decodes a reply whose header was already read: the header must be a reply, of a known
    /// command, whose `msg_size` matches `body`.
    pub fn decode_message(
        header: &Header,
        body: &'a [u8],
        fds: usize,
        limits: &Limits,
    ) -> Result<Self, MessageError> {
        header.check_framing(MessageKind::Reply, body, limits)?;
        Self::decode(header.command()?, header.error(), body, fds)
    }

    /// Decodes a whole message (header and body) as a client receives it.
    pub fn parse(
        bytes: &'a [u8],
        fds: usize,
        limits: &Limits,
    ) -> Result<(Header, Self), MessageError> {
        let (header, body) = Header::split(bytes)?;
        Ok((header, Self::decode_message(&header, body, fds, limits)?))
    }

    /// The body bytes (empty for an error reply: its errno travels in the header).
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        match self {
            Self::Error { .. } | Self::DmaMap | Self::DeviceSetIrqs | Self::DeviceReset => {
                Ok(Vec::new())
            }
            Self::Version(v) => v.encode(),
            Self::DmaUnmap(u) => u.encode(),
            Self::DeviceGetInfo(i) => i.encode(),
            Self::DeviceGetRegionInfo(i) => i.encode(),
            Self::DeviceGetRegionIoFds(i) => i.encode(),
            Self::DeviceGetIrqInfo(i) => i.encode(),
            Self::RegionRead(d) => d.encode(),
            Self::RegionWrite(a) => a.encode(),
            Self::DmaRead(d) => d.encode(),
            Self::DmaWrite(a) => a.encode(),
            Self::DirtyPages(d) => d.encode(),
        }
    }

    /// The header of this reply to `request` with a body of `body_len` bytes.
    pub fn header(&self, request: &Header, body_len: usize) -> Result<Header, MessageError> {
        match self {
            Self::Error { errno, .. } => Ok(Header {
                error_no: *errno,
                ..Header::new_error_reply(request, 0)
            }),
            _ => Header::new_reply(request, body_len),
        }
    }

    /// The number of file descriptors this reply may carry, `(fewest, most)`.
    pub fn fd_range(&self) -> (usize, usize) {
        match self {
            Self::Version(v) => match v
                .capabilities
                .twin_socket
                .and_then(|t| t.enabled_fd_index())
            {
                Some(index) => {
                    let n = usize::try_from(index).map_or(usize::MAX, |i| i.saturating_add(1));
                    (n, n)
                }
                None => (0, 0),
            },
            Self::DeviceGetRegionInfo(info) => (0, info.max_fds()),
            Self::DeviceGetRegionIoFds(io) if !io.sub_regions.is_empty() => {
                (1, io.sub_regions.len().saturating_mul(2))
            }
            _ => (0, 0),
        }
    }

    /// Checks that `received` descriptors are allowed with this reply, and that every fd index
    /// it names exists.
    pub fn check_fds(&self, received: usize) -> Result<(), MessageError> {
        let (min, max) = self.fd_range();
        if !(min..=max).contains(&received) {
            return Err(MessageError::FdCount {
                command: self.command(),
                kind: MessageKind::Reply,
                received,
                min,
                max,
            });
        }
        match self {
            Self::DeviceGetRegionIoFds(io) => io.check_fd_indexes(received),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Capabilities, RegionIoFds, SubRegionIoFd, TwinSocket};

    #[test]
    fn error_reply_is_its_errno() {
        let request = Header::new_command(3, Command::DmaMap, 32).unwrap();
        let header = Header::new_error_reply(&request, libc::ENOENT);
        let reply = Reply::decode_message(&header, &[], 0, &Limits::default()).unwrap();
        assert_eq!(
            reply,
            Reply::Error {
                command: Command::DmaMap,
                errno: libc::ENOENT as u32
            }
        );
    }

    #[test]
    fn error_reply_with_a_body_and_fds_is_its_errno() {
        let reply = Reply::decode(Command::RegionRead, Some(22), &[0; 20], 1).unwrap();
        assert_eq!(
            reply,
            Reply::Error {
                command: Command::RegionRead,
                errno: 22
            }
        );
    }

    #[test]
    fn dma_map_reply_with_a_payload_is_done() {
        assert_eq!(
            Reply::decode(Command::DmaMap, None, &[0; 32], 0).unwrap(),
            Reply::DmaMap
        );
    }

    #[test]
    fn version_reply_with_twin_socket_needs_the_fd_it_names() {
        let caps = Capabilities {
            twin_socket: Some(TwinSocket {
                supported: true,
                fd_index: Some(0),
            }),
            ..Capabilities::default()
        };
        let body = Version {
            major: 0,
            minor: 2,
            capabilities: caps,
        }
        .encode()
        .unwrap();
        assert!(Reply::decode(Command::Version, None, &body, 1).is_ok());
        let err = Reply::decode(Command::Version, None, &body, 0).unwrap_err();
        assert!(matches!(
            err,
            MessageError::FdCount {
                command: Command::Version,
                received: 0,
                min: 1,
                ..
            }
        ));
    }

    #[test]
    fn plain_version_reply_carries_no_fd() {
        let body = Version {
            major: 0,
            minor: 2,
            capabilities: Capabilities::default(),
        }
        .encode()
        .unwrap();
        assert!(matches!(
            Reply::decode(Command::Version, None, &body, 1),
            Err(MessageError::FdCount { .. })
        ));
    }

    #[test]
    fn io_fds_reply_index_must_exist() {
        let entry = SubRegionIoFd {
            fd_index: 1,
            ..SubRegionIoFd::default()
        };
        let reply = RegionIoFdsReply {
            head: RegionIoFds {
                argsz: 64,
                flags: 0,
                index: 0,
                count: 1,
            },
            sub_regions: vec![entry],
        };
        let body = reply.encode().unwrap();
        assert!(Reply::decode(Command::DeviceGetRegionIoFds, None, &body, 2).is_ok());
        let err = Reply::decode(Command::DeviceGetRegionIoFds, None, &body, 1).unwrap_err();
        assert!(matches!(
            err,
            MessageError::FdIndex {
                index: 1,
                received: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_command_is_not_a_reply() {
        let header = Header::new_command(1, Command::DeviceReset, 0).unwrap();
        let err = Reply::decode_message(&header, &[], 0, &Limits::default()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::WrongMessageType {
                expected: MessageKind::Reply,
                ..
            }
        ));
    }
}
