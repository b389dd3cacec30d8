//! Any command message, decoded by its command number, with the rules that need the header,
//! the file descriptors or the limits: type, size, descriptors per command, transfer counts.

use super::dirty::DirtyPagesRequest;
use super::dma::{DmaAccess, DmaData, DmaMap, DmaUnmapRequest};
use super::io_fds::RegionIoFds;
use super::irq::{IrqData, IrqInfo, IrqSetRequest};
use super::region::{RegionAccess, RegionData, RegionInfo};
use super::{Command, DeviceInfo, Header, MessageKind, Payload, Version};
use crate::error::MessageError;
use crate::limits::Limits;

/// A command message of any of the 14 commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `VFIO_USER_VERSION`.
    Version(Version),
    /// `VFIO_USER_DMA_MAP` (with 0 or 1 fd).
    DmaMap(DmaMap),
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap(DmaUnmapRequest),
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo(DeviceInfo),
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo(RegionInfo),
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds(RegionIoFds),
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo(IrqInfo),
    /// `VFIO_USER_DEVICE_SET_IRQS` (with eventfds for DATA_EVENTFD).
    DeviceSetIrqs(IrqSetRequest<'a>),
    /// `VFIO_USER_REGION_READ`.
    RegionRead(RegionAccess),
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite(RegionData<'a>),
    /// `VFIO_USER_DMA_READ` (server to client).
    DmaRead(DmaAccess),
    /// `VFIO_USER_DMA_WRITE` (server to client).
    DmaWrite(DmaData<'a>),
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset,
    /// `VFIO_USER_DIRTY_PAGES`.
    DirtyPages(DirtyPagesRequest),
}

fn check_transfer(what: &'static str, count: u64, limits: &Limits) -> Result<(), MessageError> {
    if count <= limits.max_data_xfer_size {
        Ok(())
    } else {
        Err(MessageError::TransferTooLarge {
            what,
            count,
            max: limits.max_data_xfer_size,
        })
    }
}

impl<'a> Request<'a> {
    /// The command.
    pub fn command(&self) -> Command {
        match self {
            Self::Version(_) => Command::Version,
            Self::DmaMap(_) => Command::DmaMap,
            Self::DmaUnmap(_) => Command::DmaUnmap,
            Self::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Self::DeviceGetRegionInfo(_) => Command::DeviceGetRegionInfo,
            Self::DeviceGetRegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Self::DeviceGetIrqInfo(_) => Command::DeviceGetIrqInfo,
            Self::DeviceSetIrqs(_) => Command::DeviceSetIrqs,
            Self::RegionRead(_) => Command::RegionRead,
            Self::RegionWrite(_) => Command::RegionWrite,
            Self::DmaRead(_) => Command::DmaRead,
            Self::DmaWrite(_) => Command::DmaWrite,
            Self::DeviceReset => Command::DeviceReset,
            Self::DirtyPages(_) => Command::DirtyPages,
        }
    }

    /// Decodes the body of a `command` that arrived with `fds` file descriptors.
    ///
    /// Checks, beyond the payload's own rules: the number of descriptors the command allows
    /// (VERSION none, DMA_MAP at most 1, SET_IRQS with DATA_EVENTFD `count` or none to
    /// de-assign, every other command none), and data counts against
    /// [`Limits::max_data_xfer_size`].
    pub fn decode(
        command: Command,
        body: &'a [u8],
        fds: usize,
        limits: &Limits,
    ) -> Result<Self, MessageError> {
        let request = match command {
            Command::Version => Self::Version(Version::decode(body)?),
            Command::DmaMap => Self::DmaMap(DmaMap::decode(body)?),
            Command::DmaUnmap => Self::DmaUnmap(DmaUnmapRequest::decode(body)?),
            Command::DeviceGetInfo => Self::DeviceGetInfo(DeviceInfo::decode(body)?),
            Command::DeviceGetRegionInfo => Self::DeviceGetRegionInfo(RegionInfo::decode(body)?),
            Command::DeviceGetRegionIoFds => Self::DeviceGetRegionIoFds(RegionIoFds::decode(body)?),
            Command::DeviceGetIrqInfo => Self::DeviceGetIrqInfo(IrqInfo::decode(body)?),
            Command::DeviceSetIrqs => Self::DeviceSetIrqs(IrqSetRequest::decode(body)?),
            Command::RegionRead => {
                let access = RegionAccess::decode(body)?;
                check_transfer("REGION_READ", access.count.into(), limits)?;
                Self::RegionRead(access)
            }
            Command::RegionWrite => {
                let data = RegionData::decode(body)?;
                check_transfer("REGION_WRITE", data.access.count.into(), limits)?;
                Self::RegionWrite(data)
            }
            Command::DmaRead => {
                let access = DmaAccess::decode(body)?;
                check_transfer("DMA_READ", access.count, limits)?;
                Self::DmaRead(access)
            }
            Command::DmaWrite => {
                let data = DmaData::decode(body)?;
                check_transfer("DMA_WRITE", data.access.count, limits)?;
                Self::DmaWrite(data)
            }
            // libvfio-user never looks at a reset's body; neither do we.
            Command::DeviceReset => Self::DeviceReset,
            Command::DirtyPages => Self::DirtyPages(DirtyPagesRequest::decode(body)?),
        };
        request.check_fds(fds)?;
        Ok(request)
    }

    /// Decodes a command whose header was already read (as [`crate::Connection::recv`] gives
    /// it): the header must be a command, of a known number, whose `msg_size` matches `body`.
    pub fn decode_message(
        header: &Header,
        body: &'a [u8],
        fds: usize,
        limits: &Limits,
    ) -> Result<Self, MessageError> {
        header.check_framing(MessageKind::Command, body, limits)?;
        Self::decode(header.command()?, body, fds, limits)
    }

    /// Decodes a whole message (header and body) as a server receives it.
    pub fn parse(
        bytes: &'a [u8],
        fds: usize,
        limits: &Limits,
    ) -> Result<(Header, Self), MessageError> {
        let (header, body) = Header::split(bytes)?;
        Ok((header, Self::decode_message(&header, body, fds, limits)?))
    }

    /// The body bytes.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        match self {
            Self::Version(v) => v.encode(),
            Self::DmaMap(m) => m.encode(),
            Self::DmaUnmap(u) => u.encode(),
            Self::DeviceGetInfo(i) => i.encode(),
            Self::DeviceGetRegionInfo(i) => i.encode(),
            Self::DeviceGetRegionIoFds(i) => i.encode(),
            Self::DeviceGetIrqInfo(i) => i.encode(),
            Self::DeviceSetIrqs(s) => s.encode(),
            Self::RegionRead(a) => a.encode(),
            Self::RegionWrite(d) => d.encode(),
            Self::DmaRead(a) => a.encode(),
            Self::DmaWrite(d) => d.encode(),
            Self::DeviceReset => Ok(Vec::new()),
            Self::DirtyPages(d) => d.encode(),
        }
    }

    /// The number of file descriptors this request may carry, `(fewest, most)`; SET_IRQS with
    /// DATA_EVENTFD may also carry none (de-assign).
    pub fn fd_range(&self) -> (usize, usize) {
        match self {
            Self::DmaMap(_) => (0, 1),
            Self::DeviceSetIrqs(set) if matches!(set.set.data_type(), Ok(IrqData::Eventfd)) => {
                let count = usize::try_from(set.set.count).unwrap_or(usize::MAX);
                (count, count)
            }
            _ => (0, 0),
        }
    }

    /// Checks that `received` descriptors are allowed with this request.
    pub fn check_fds(&self, received: usize) -> Result<(), MessageError> {
        let (min, max) = self.fd_range();
        let deassign = received == 0 && matches!(self, Self::DeviceSetIrqs(_));
        if deassign || (min..=max).contains(&received) {
            Ok(())
        } else {
            Err(MessageError::FdCount {
                command: self.command(),
                kind: MessageKind::Command,
                received,
                min,
                max,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use vfmig_abi::uapi::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};
    use zerocopy::IntoBytes;

    use super::*;
    use crate::message::IrqSet;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn version_with_an_fd_is_einval() {
        let body = Version {
            major: 0,
            minor: 2,
            capabilities: Default::default(),
        }
        .encode()
        .unwrap();
        let err = Request::decode(Command::Version, &body, 1, &limits()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::FdCount {
                command: Command::Version,
                received: 1,
                max: 0,
                ..
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn dma_map_with_two_fds_is_einval() {
        let body = DmaMap::new(3, 0, 0, 4096).encode().unwrap();
        assert!(Request::decode(Command::DmaMap, &body, 1, &limits()).is_ok());
        let err = Request::decode(Command::DmaMap, &body, 2, &limits()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::FdCount {
                received: 2,
                max: 1,
                ..
            }
        ));
    }

    #[test]
    fn set_irqs_eventfd_takes_count_fds_or_none() {
        let set = IrqSet {
            argsz: 20,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: 2,
            start: 0,
            count: 3,
        };
        let body = set.as_bytes();
        for ok in [0, 3] {
            assert!(Request::decode(Command::DeviceSetIrqs, body, ok, &limits()).is_ok());
        }
        let err = Request::decode(Command::DeviceSetIrqs, body, 2, &limits()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::FdCount {
                received: 2,
                min: 3,
                max: 3,
                ..
            }
        ));
    }

    #[test]
    fn region_read_above_max_data_xfer_size_is_einval() {
        let body = RegionAccess {
            offset: 0,
            region: 0,
            count: (1 << 20) + 1,
        }
        .encode()
        .unwrap();
        let err = Request::decode(Command::RegionRead, &body, 0, &limits()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::TransferTooLarge {
                count: 0x10_0001,
                max: 0x10_0000,
                ..
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn dma_read_above_max_data_xfer_size_is_einval() {
        let body = DmaAccess {
            addr: 0,
            count: 4096,
        }
        .encode()
        .unwrap();
        let small = Limits {
            max_data_xfer_size: 1024,
            ..limits()
        };
        assert!(matches!(
            Request::decode(Command::DmaRead, &body, 0, &small),
            Err(MessageError::TransferTooLarge {
                count: 4096,
                max: 1024,
                ..
            })
        ));
    }

    #[test]
    fn reset_with_a_payload_is_a_reset() {
        let request = Request::decode(Command::DeviceReset, &[0], 0, &limits()).unwrap();
        assert_eq!(request, Request::DeviceReset);
    }

    #[test]
    fn empty_body_is_einval_for_every_command_but_reset() {
        for command in Command::ALL {
            let result = Request::decode(command, &[], 0, &limits());
            assert_eq!(result.is_ok(), command == Command::DeviceReset, "{command}");
        }
    }

    #[test]
    fn a_reply_is_not_a_request() {
        let request = Header::new_command(1, Command::DeviceReset, 0).unwrap();
        let reply = Header::new_reply(&request, 0).unwrap();
        let err = Request::decode_message(&reply, &[], 0, &limits()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::WrongMessageType {
                expected: MessageKind::Command,
                found: MessageKind::Reply
            }
        ));
    }

    #[test]
    fn unknown_command_in_a_header_is_einval() {
        let header = Header {
            cmd: 15,
            msg_size: 16,
            ..Header::default()
        };
        assert!(matches!(
            Request::decode_message(&header, &[], 0, &limits()),
            Err(MessageError::UnknownCommand { cmd: 15 })
        ));
    }

    #[test]
    fn msg_size_must_match_the_body() {
        let header = Header::new_command(1, Command::DeviceReset, 4).unwrap();
        let err = Request::decode_message(&header, &[], 0, &limits()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::SizeMismatch {
                msg_size: 20,
                actual: 16
            }
        ));
    }
}
