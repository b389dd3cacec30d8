//! [`ClientError`]: every way a client call fails, each with its errno.

use std::io;

use vfmig_memory::Iova;

use crate::errno::Errno;
use crate::error::{ConnectionError, MessageError};
use crate::message::Command;
use crate::peer::CallError;

/// Why a client call failed. [`ClientError::errno`] is the errno it stands for: the server's
/// for an error reply, the socket's for a transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error reply.
    #[error("{command} failed on the server: {errno}")]
    Remote {
        /// The command refused.
        command: Command,
        /// The server's errno.
        errno: Errno,
    },
    /// The connection went away before the reply came (`ECONNRESET`), or was gone already
    /// (`ENOTCONN`); either with `ETIMEDOUT` if it was broken by a call that timed out.
    #[error("{command}: the connection is gone ({errno})")]
    Disconnected {
        /// The command that got no reply.
        command: Command,
        /// `ECONNRESET`, `ENOTCONN` or `ETIMEDOUT`.
        errno: Errno,
    },
    /// No reply came within the deadline (`ETIMEDOUT`). The connection is broken: every other
    /// call waiting and every later one fails at once as [`ClientError::Disconnected`] with
    /// `ETIMEDOUT`, and a reply that comes late is never taken for another.
    #[error("{command}: no reply within {after:?} (timed out); the connection is broken")]
    TimedOut {
        /// The command that got no reply.
        command: Command,
        /// The deadline it had.
        after: std::time::Duration,
    },
    /// The socket failed; its errno is kept.
    #[error("transport: {0}")]
    Connection(#[from] ConnectionError),
    /// A request we were asked to send does not encode.
    #[error("{command}: cannot encode the request: {source}")]
    Encode {
        /// The command.
        command: Command,
        /// Why.
        #[source]
        source: MessageError,
    },
    /// The server's reply is not valid vfio-user (`EPROTO`).
    #[error("{command}: malformed reply: {source}")]
    BadReply {
        /// The command replied to.
        command: Command,
        /// Why it does not decode.
        #[source]
        source: MessageError,
    },
    /// The server's reply decodes but does not answer the request (another command, or not
    /// echoing what it must) (`EPROTO`).
    #[error("{command}: the reply does not answer the request: {what}")]
    UnexpectedReply {
        /// The command replied to.
        command: Command,
        /// What is wrong.
        what: &'static str,
    },
    /// The server speaks a version we do not (`ENOTSUP`).
    #[error("the server speaks vfio-user {major}.{minor}; we speak 0.x")]
    Version {
        /// Its major version.
        major: u16,
        /// Its minor version.
        minor: u16,
    },
    /// The server's dirty page size is not 4096 (`EINVAL`).
    #[error("the server's dirty page size is {pgsize}; we use 4 KiB")]
    PageSize {
        /// Its page size.
        pgsize: vfmig_dirty::PageSize,
    },
    /// An argument is refused before anything is sent (`EINVAL`).
    #[error("{what}: {value:#x}")]
    InvalidArgument {
        /// What is wrong.
        what: &'static str,
        /// The value at fault.
        value: u64,
    },
    /// A DMA mapping would overlap one we already made (`EEXIST`).
    #[error("{iova} + {size:#x} overlaps an existing mapping")]
    Overlap {
        /// Start of the refused mapping.
        iova: Iova,
        /// Its size.
        size: u64,
    },
    /// A mapping without an fd needs a [`super::ClientMemory`] to serve the server's DMA, and
    /// none was given (`EINVAL`).
    #[error("{iova}: a mapping without an fd needs client memory to serve DMA from")]
    NoMemory {
        /// Start of the refused mapping.
        iova: Iova,
    },
    /// `mmap` of a region area failed; its errno is kept.
    #[error("mmap of a region area failed: {0}")]
    Mmap(#[source] io::Error),
    /// The reader thread could not be started.
    #[error("cannot start the reader thread: {0}")]
    Spawn(#[source] io::Error),
}

impl ClientError {
    /// The errno this failure stands for.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Remote { errno, .. } | Self::Disconnected { errno, .. } => *errno,
            Self::TimedOut { .. } => Errno::ETIMEDOUT,
            Self::Connection(err) => Errno::from(err),
            Self::Encode { source, .. } => Errno::from(source),
            Self::BadReply { .. } | Self::UnexpectedReply { .. } => Errno::EPROTO,
            Self::Version { .. } => Errno::ENOTSUP,
            Self::PageSize { .. } | Self::InvalidArgument { .. } | Self::NoMemory { .. } => {
                Errno::EINVAL
            }
            Self::Overlap { .. } => Errno::EEXIST,
            Self::Mmap(err) | Self::Spawn(err) => Errno::from(err),
        }
    }

    /// The failure of a call of `command`.
    pub(super) fn from_call(command: Command, err: CallError) -> Self {
        match err {
            CallError::Encode(source) => Self::Encode { command, source },
            CallError::Send(err) | CallError::Receive(err) => Self::Connection(err),
            CallError::Closed(errno) => Self::Disconnected { command, errno },
            CallError::TimedOut(after) => Self::TimedOut { command, after },
        }
    }

    /// An argument refused with EINVAL.
    pub(super) fn invalid(what: &'static str, value: u64) -> Self {
        Self::InvalidArgument { what, value }
    }

    /// A reply that does not answer `command`.
    pub(super) fn unexpected(command: Command, what: &'static str) -> Self {
        Self::UnexpectedReply { command, what }
    }
}
