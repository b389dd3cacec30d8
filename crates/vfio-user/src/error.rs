//! Errors of the protocol layer, each mapped on purpose to the errno a peer is told.
//!
//! [`MessageError`] is a message that does not follow 0.9.1 as libvfio-user sends it; the
//! errno is what libvfio-user answers for the same fault, which is `EINVAL` for every malformed
//! message (including one larger than the receiver's cap: libvfio-user's `is_valid_header`
//! answers `EINVAL`, not `E2BIG`, to `msg_size > SERVER_MAX_MSG_SIZE`). Only a message *we*
//! cannot encode (a body that does not fit the 32-bit `msg_size`) is `E2BIG`.
//!
//! [`ConnectionError`] is a transport failure. A failed syscall keeps its errno; a message that
//! carried more file descriptors than the receiver accepts is `EFAULT`, as libvfio-user answers
//! `MSG_CTRUNC`.

use std::io;

use crate::message::Header;
pub use crate::message::MessageError;

/// A failure of the transport: the socket, framing, or file descriptor passing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer closed the connection cleanly, between two messages.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("the peer closed the connection {received} bytes into a {expected}-byte message")]
    Truncated {
        /// Bytes the message needed (the header's 16 while it was being read).
        expected: u64,
        /// Bytes received before the end of the stream.
        received: u64,
    },
    /// A socket call failed; the errno is kept.
    #[error("{op}: {source}")]
    Io {
        /// The call that failed.
        op: &'static str,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// A header whose `msg_size` cannot be framed (below 16 or above the cap). The body was not
    /// read, so the stream cannot be used any more; the header is kept to answer the message.
    #[error("message {:#x} (command {}): {source}", .header.msg_id, .header.cmd)]
    BadHeader {
        /// The header received.
        header: Header,
        /// Why it cannot be framed.
        #[source]
        source: MessageError,
    },
    /// The message carried more file descriptors than we accept (`MSG_CTRUNC`, or more than
    /// the limit fit in the control buffer's padding). The ones that arrived were closed and the
    /// body was read, so the stream is still in step.
    #[error("message {:#x} (command {}) carried more than {limit} file descriptors; the {arrived} that arrived were closed", .header.msg_id, .header.cmd)]
    TooManyFdsReceived {
        /// The header received.
        header: Header,
        /// Descriptors we accept per message.
        limit: usize,
        /// Descriptors that arrived (and were closed).
        arrived: usize,
    },
    /// We were asked to send more file descriptors than the peer accepts.
    #[error("cannot send {count} file descriptors: the peer accepts {max}")]
    TooManyFdsToSend {
        /// Descriptors given.
        count: usize,
        /// The peer's `max_msg_fds`.
        max: usize,
    },
    /// A message we were asked to send does not encode; nothing was sent.
    #[error("cannot encode the message: {0}")]
    Encode(#[source] MessageError),
    /// We were asked to send a header whose `msg_size` does not match the body given.
    #[error("header msg_size {msg_size} does not match the {actual} bytes given")]
    SizeMismatch {
        /// The header's `msg_size`.
        msg_size: u32,
        /// Header plus body bytes given.
        actual: u64,
    },
}

impl ConnectionError {
    /// The errno this failure stands for.
    ///
    /// A clean close is `ENOTCONN` and a close mid-message `ECONNRESET`; a failed syscall keeps
    /// its errno (`EIO` if it had none); too many descriptors received is `EFAULT`, as
    /// libvfio-user answers `MSG_CTRUNC`.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Closed => libc::ENOTCONN,
            Self::Truncated { .. } => libc::ECONNRESET,
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Self::BadHeader { source, .. } | Self::Encode(source) => source.errno(),
            Self::TooManyFdsReceived { .. } => libc::EFAULT,
            Self::TooManyFdsToSend { .. } | Self::SizeMismatch { .. } => libc::EINVAL,
        }
    }

    /// The header of the message this error is about, if one was read: a server answers it
    /// with an error reply (unless it asked for none).
    pub fn header(&self) -> Option<&Header> {
        match self {
            Self::BadHeader { header, .. } | Self::TooManyFdsReceived { header, .. } => {
                Some(header)
            }
            Self::Closed
            | Self::Truncated { .. }
            | Self::Io { .. }
            | Self::TooManyFdsToSend { .. }
            | Self::Encode(_)
            | Self::SizeMismatch { .. } => None,
        }
    }

    /// Whether the stream is out of step (or gone) and the connection must be dropped.
    ///
    /// After a non-fatal error the whole message was consumed (or nothing was sent), and the
    /// next [`crate::Connection::recv`] or `send` works on the next message.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Closed | Self::Truncated { .. } | Self::Io { .. } | Self::BadHeader { .. } => {
                true
            }
            Self::TooManyFdsReceived { .. }
            | Self::TooManyFdsToSend { .. }
            | Self::Encode(_)
            | Self::SizeMismatch { .. } => false,
        }
    }
}
