//! IRQs: GET_IRQ_INFO and SET_IRQS with eventfds.

use std::borrow::Cow;
use std::os::fd::BorrowedFd;

use vfmig_abi::uapi::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

use super::Client;
use super::error::ClientError;
use crate::message::{Command, IrqAction, IrqInfo, IrqSet, IrqSetRequest, Reply, Request};

/// `argsz` of a SET_IRQS without data (eventfds travel as descriptors: the libvfio-user
/// sample sends `argsz` 20 with one eventfd); bool data adds its bytes.
const IRQ_SET_ARGSZ: u32 = 20;
const _: () = assert!(size_of::<IrqSet>() == IRQ_SET_ARGSZ as usize);

/// What a SET_IRQS acts on, by data type.
#[derive(Clone, Copy, Debug)]
pub enum IrqValues<'a> {
    /// `DATA_NONE`: `count` vectors from `start` (`count` 0 with TRIGGER: disable the index).
    None {
        /// Number of vectors.
        count: u32,
    },
    /// `DATA_BOOL`: one byte per vector.
    Bool(&'a [u8]),
    /// `DATA_EVENTFD`: one eventfd per vector.
    Eventfds(&'a [BorrowedFd<'a>]),
    /// `DATA_EVENTFD` without fds: de-assign `count` vectors.
    Deassign {
        /// Number of vectors.
        count: u32,
    },
}

fn action_flags(action: IrqAction) -> u32 {
    match action {
        IrqAction::Mask => VFIO_IRQ_SET_ACTION_MASK,
        IrqAction::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
        IrqAction::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
    }
}

fn count_of(len: usize) -> Result<u32, ClientError> {
    u32::try_from(len).map_err(|_| ClientError::invalid("too many vectors", len as u64))
}

impl Client {
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO` of IRQ index `index`.
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo, ClientError> {
        let command = Command::DeviceGetIrqInfo;
        let received = self
            .shared
            .call(&Request::DeviceGetIrqInfo(IrqInfo::request(index)), &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DeviceGetIrqInfo(info) if info.index == index => Ok(info),
            _ => Err(ClientError::unexpected(command, "not this index's info")),
        }
    }

    /// `VFIO_USER_DEVICE_SET_IRQS`: `action` on the vectors of IRQ `index` from `start`, as
    /// `values` says. Eventfds travel with the message (at most the server's `max_msg_fds`).
    pub fn set_irqs(
        &self,
        index: u32,
        start: u32,
        action: IrqAction,
        values: IrqValues<'_>,
    ) -> Result<(), ClientError> {
        let (data_flag, count, data, fds): (u32, u32, &[u8], &[BorrowedFd<'_>]) = match values {
            IrqValues::None { count } => (VFIO_IRQ_SET_DATA_NONE, count, &[], &[]),
            IrqValues::Bool(bools) => (VFIO_IRQ_SET_DATA_BOOL, count_of(bools.len())?, bools, &[]),
            IrqValues::Eventfds(fds) => (VFIO_IRQ_SET_DATA_EVENTFD, count_of(fds.len())?, &[], fds),
            IrqValues::Deassign { count } => (VFIO_IRQ_SET_DATA_EVENTFD, count, &[], &[]),
        };
        let request = Request::DeviceSetIrqs(IrqSetRequest {
            set: IrqSet {
                argsz: IRQ_SET_ARGSZ.saturating_add(count_of(data.len())?),
                flags: data_flag | action_flags(action),
                index,
                start,
                count,
            },
            data: Cow::Borrowed(data),
        });
        let command = Command::DeviceSetIrqs;
        let received = self.shared.call(&request, fds)?;
        match self.shared.reply(command, &received)? {
            Reply::DeviceSetIrqs => Ok(()),
            _ => Err(ClientError::unexpected(command, "not a SET_IRQS reply")),
        }
    }
}
