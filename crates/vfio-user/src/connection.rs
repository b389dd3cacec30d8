//! A vfio-user connection: one UNIX stream socket, messages framed by their header, file
//! descriptors passed with `SCM_RIGHTS`.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as sender
//!     participant R as receiver
//!     S->>R: sendmsg(header + body, SCM_RIGHTS fds)
//!     Note over R: recvmsg(exactly 16 bytes, cmsg buffer for max_recv_fds)<br/>fds wrapped in OwnedFd at once (CLOEXEC)
//!     Note over R: msg_size checked against Limits, then the body is allocated
//!     Note over R: read(msg_size - 16 bytes), short reads resumed
//! ```
//!
//! This is how libvfio-user frames messages: the descriptors ride on the `sendmsg` that carries
//! the header, so the receiver collects them on the header read. A message that carried more
//! descriptors than we accept (`MSG_CTRUNC`) is read to its end, its descriptors closed, and
//! reported as [`ConnectionError::TooManyFdsReceived`] (errno `EFAULT`, as libvfio-user): the
//! stream stays in step and the next message can be read. A header whose `msg_size` cannot be
//! framed is fatal ([`ConnectionError::is_fatal`]).
//!
//! A body is read straight into the storage a receiver provides ([`Connection::recv_with`],
//! [`Connection::recv_into`]): a recycled buffer, or for a dirty bitmap the caller's own
//! `u64` words, so a 2 MiB bitmap is neither allocated nor copied on its way in.
//!
//! The socket is used in blocking mode. Sends and receives each need `&mut self`; a client that
//! must receive server commands while it sends can [`Connection::try_clone`] the connection and
//! use one clone only to receive and the other only to send.

mod socket;

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use zerocopy::IntoBytes;

use crate::error::{ConnectionError, MessageError};
use crate::limits::{Limits, MAX_MSG_FDS_LIMIT};
use crate::message::{HEADER_SIZE, Header, Reply, Request};
use socket::ControlBuffer;

/// A message as it arrived: header, body and file descriptors, not yet decoded.
#[derive(Debug)]
pub struct Received {
    /// The header; its `msg_size` is `16 + body.len()`, except for a body split by
    /// [`Connection::recv_into`] (then the rest of it is in the [`Tail`]).
    pub header: Header,
    /// The body.
    pub body: Vec<u8>,
    /// The descriptors that came with it, owned (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

impl Received {
    /// Decodes the message as a command (what a server receives, or a client receives from a
    /// server: DMA_READ/DMA_WRITE).
    pub fn request(&self, limits: &Limits) -> Result<Request<'_>, MessageError> {
        Request::decode_message(&self.header, &self.body, self.fds.len(), limits)
    }

    /// Decodes the message as a reply.
    pub fn reply(&self, limits: &Limits) -> Result<Reply<'_>, MessageError> {
        Reply::decode_message(&self.header, &self.body, self.fds.len(), limits)
    }

    /// Takes the descriptors, leaving none.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// Where [`Connection::recv_into`] reads a body.
#[derive(Debug)]
pub enum BodyBuffer {
    /// All of it into this vector's storage (its contents are discarded).
    Whole(Vec<u8>),
    /// The first `head` bytes into [`Received::body`], the rest, which must be exactly
    /// `tail.len()` little-endian `u64` words, over the words of `tail`: a dirty bitmap lands
    /// in the caller's buffer without a copy.
    Split {
        /// Bytes before the words.
        head: usize,
        /// The words, as many as the body is expected to carry.
        tail: Vec<u64>,
    },
}

/// What became of the words of a [`BodyBuffer::Split`].
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// No split was asked for.
    None,
    /// The words were read from the body.
    Filled(Vec<u64>),
    /// The body did not have the size of the split (an error reply, say): it was read whole
    /// into [`Received::body`] and the words are given back untouched.
    Unused(Vec<u64>),
}

/// One end of a vfio-user socket.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    limits: Limits,
    control: ControlBuffer,
}

fn io_error(op: &'static str) -> impl FnOnce(io::Error) -> ConnectionError {
    move |source| ConnectionError::Io { op, source }
}

impl Connection {
    /// Wraps a connected stream, with default [`Limits`]. The stream is set to blocking.
    pub fn new(stream: UnixStream) -> Result<Self, ConnectionError> {
        Self::with_limits(stream, Limits::default())
    }

    /// Wraps a connected stream with `limits`. The stream is set to blocking.
    pub fn with_limits(stream: UnixStream, limits: Limits) -> Result<Self, ConnectionError> {
        stream
            .set_nonblocking(false)
            .map_err(io_error("set blocking"))?;
        Ok(Self {
            stream,
            limits,
            control: ControlBuffer::new(limits.recv_fds()),
        })
    }

    /// Connects to a server listening at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ConnectionError> {
        Self::new(UnixStream::connect(path).map_err(io_error("connect"))?)
    }

    /// Two connected ends, e.g. for a device served in-process, or for tests.
    pub fn pair() -> Result<(Self, Self), ConnectionError> {
        let (a, b) = UnixStream::pair().map_err(io_error("socketpair"))?;
        Ok((Self::new(a)?, Self::new(b)?))
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits, e.g. after VERSION negotiation.
    pub fn set_limits(&mut self, limits: Limits) {
        if limits.recv_fds() != self.limits.recv_fds() {
            self.control = ControlBuffer::new(limits.recv_fds());
        }
        self.limits = limits;
    }

    /// A second handle on the same socket with the same limits (see the module docs).
    pub fn try_clone(&self) -> Result<Self, ConnectionError> {
        let stream = self.stream.try_clone().map_err(io_error("dup"))?;
        Ok(Self {
            stream,
            limits: self.limits,
            control: ControlBuffer::new(self.limits.recv_fds()),
        })
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives the socket back.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Sends `header` and `body` in one `sendmsg` carrying `fds` (resuming with the rest of the
    /// bytes if the kernel takes only part of them).
    pub fn send(
        &mut self,
        header: &Header,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        self.send_vectored(header, &[body], fds)
    }

    /// As [`Self::send`], with the body given in parts (e.g. a reply struct and a bitmap).
    pub fn send_vectored(
        &mut self,
        header: &Header,
        body: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        let body_len = body
            .iter()
            .map(|part| part.len() as u64)
            .fold(0u64, u64::saturating_add);
        let actual = body_len.saturating_add(HEADER_SIZE as u64);
        if u64::from(header.msg_size) != actual {
            return Err(ConnectionError::SizeMismatch {
                msg_size: header.msg_size,
                actual,
            });
        }
        let max = self.limits.max_send_fds.min(MAX_MSG_FDS_LIMIT);
        if fds.len() > max {
            return Err(ConnectionError::TooManyFdsToSend {
                count: fds.len(),
                max,
            });
        }
        tracing::trace!(
            msg_id = header.msg_id,
            cmd = header.cmd,
            size = header.msg_size,
            fds = fds.len(),
            "vfio-user send"
        );
        let mut slices: Vec<IoSlice<'_>> = std::iter::once(header.as_bytes())
            .chain(body.iter().copied())
            .filter(|part| !part.is_empty())
            .map(IoSlice::new)
            .collect();
        let mut remaining = slices.as_mut_slice();
        let mut fds = fds;
        while !remaining.is_empty() {
            let sent = socket::send_with_fds(self.stream.as_fd(), remaining, fds)
                .map_err(io_error("sendmsg"))?;
            if sent == 0 {
                return Err(ConnectionError::Io {
                    op: "sendmsg",
                    source: io::ErrorKind::WriteZero.into(),
                });
            }
            // The descriptors went with the first byte.
            fds = &[];
            IoSlice::advance_slices(&mut remaining, sent);
        }
        Ok(())
    }

    /// Encodes and sends a command, returning its header.
    pub fn send_request(
        &mut self,
        msg_id: u16,
        request: &Request<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Header, ConnectionError> {
        let body = request.encode().map_err(ConnectionError::Encode)?;
        let header = Header::new_command(msg_id, request.command(), body.len())
            .map_err(ConnectionError::Encode)?;
        self.send(&header, &body, fds)?;
        Ok(header)
    }

    /// Encodes and sends the reply to the command whose header is `request`, unless that
    /// command asked for no reply (`NO_REPLY`), in which case nothing is sent.
    pub fn send_reply(
        &mut self,
        request: &Header,
        reply: &Reply<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        if request.no_reply() {
            return Ok(());
        }
        let body = reply.encode().map_err(ConnectionError::Encode)?;
        let header = reply
            .header(request, body.len())
            .map_err(ConnectionError::Encode)?;
        self.send(&header, &body, fds)
    }

    /// Sends the error reply `errno` to the command whose header is `request`, unless it asked
    /// for no reply.
    pub fn send_error(&mut self, request: &Header, errno: i32) -> Result<(), ConnectionError> {
        if request.no_reply() {
            return Ok(());
        }
        self.send(&Header::new_error_reply(request, errno), &[], &[])
    }

    /// Receives one message: the header with its descriptors, then the body.
    pub fn recv(&mut self) -> Result<Received, ConnectionError> {
        self.recv_with(|_| Vec::new())
    }

    /// As [`Self::recv`], reading the body into the storage of the vector `buffer` returns for
    /// the body's length (its contents are discarded; no byte is zeroed first). A receiver that
    /// recycles the bodies of large messages this way avoids allocating, and faulting in, a
    /// fresh buffer for each.
    pub fn recv_with(
        &mut self,
        buffer: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<Received, ConnectionError> {
        self.recv_into(|_, len| BodyBuffer::Whole(buffer(len)))
            .map(|(received, _)| received)
    }

    /// Receives one message, its body read where `choose` says once the header is known (and
    /// its size checked): into one vector, or split (see [`BodyBuffer::Split`]). A split body
    /// is returned as [`Tail::Filled`], and then [`Received::body`] holds only its head. A split
    /// whose size is not the body's is not used: the body is read whole and the vector given
    /// back as [`Tail::Unused`].
    pub fn recv_into(
        &mut self,
        choose: impl FnOnce(&Header, usize) -> BodyBuffer,
    ) -> Result<(Received, Tail), ConnectionError> {
        let mut header_bytes = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let mut got = 0;
        let mut truncated = false;
        while got < HEADER_SIZE {
            let buf = header_bytes.get_mut(got..).unwrap_or_default();
            let (n, ctrunc) =
                socket::recv_with_fds(self.stream.as_fd(), buf, &mut self.control, &mut fds)
                    .map_err(io_error("recvmsg"))?;
            truncated |= ctrunc;
            if n == 0 {
                // Any descriptors that came are closed as `fds` drops.
                return Err(if got == 0 {
                    ConnectionError::Closed
                } else {
                    ConnectionError::Truncated {
                        expected: HEADER_SIZE as u64,
                        received: got as u64,
                    }
                });
            }
            got = got.saturating_add(n);
        }
        let header: Header = zerocopy::transmute!(header_bytes);
        let body_len = header
            .checked_body_len(&self.limits)
            .map_err(|source| ConnectionError::BadHeader { header, source })?;
        // Capped by `max_msg_size` above, before anything is allocated.
        let (mut body, head, words, split) = match choose(&header, body_len) {
            BodyBuffer::Whole(body) => (body, body_len, None, false),
            BodyBuffer::Split { head, tail }
                if head.checked_add(tail.len().saturating_mul(8)) == Some(body_len) =>
            {
                (Vec::new(), head, Some(tail), true)
            }
            BodyBuffer::Split { tail, .. } => (Vec::new(), body_len, Some(tail), false),
        };
        body.clear();
        body.reserve_exact(head);
        self.read_body(&mut body, head, header.msg_size)?;
        let tail = match words {
            None => Tail::None,
            Some(mut words) if split => {
                self.read_exact(words.as_mut_bytes(), header.msg_size, head)?;
                Tail::Filled(words)
            }
            Some(words) => Tail::Unused(words),
        };
        let limit = self.limits.recv_fds();
        if truncated || fds.len() > limit {
            let arrived = fds.len();
            drop(fds);
            return Err(ConnectionError::TooManyFdsReceived {
                header,
                limit,
                arrived,
            });
        }
        tracing::trace!(
            msg_id = header.msg_id,
            cmd = header.cmd,
            size = header.msg_size,
            fds = fds.len(),
            "vfio-user recv"
        );
        Ok((Received { header, body, fds }, tail))
    }

    /// Fills `buf`, the part of the body after its first `done` bytes, resuming short reads.
    fn read_exact(
        &mut self,
        buf: &mut [u8],
        msg_size: u32,
        done: usize,
    ) -> Result<(), ConnectionError> {
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|rest| !rest.is_empty()) {
            match (&self.stream).read(rest) {
                Ok(0) => {
                    return Err(ConnectionError::Truncated {
                        expected: msg_size.into(),
                        received: (HEADER_SIZE as u64)
                            .saturating_add(done as u64)
                            .saturating_add(got as u64),
                    });
                }
                Ok(n) => got = got.saturating_add(n),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(ConnectionError::Io {
                        op: "recv",
                        source: err,
                    });
                }
            }
        }
        Ok(())
    }

    /// Appends exactly `len` bytes of body to the empty `body`, resuming short reads.
    fn read_body(
        &mut self,
        body: &mut Vec<u8>,
        len: usize,
        msg_size: u32,
    ) -> Result<(), ConnectionError> {
        while body.len() < len {
            match socket::recv_append(self.stream.as_fd(), body, len - body.len()) {
                Ok(0) => {
                    return Err(ConnectionError::Truncated {
                        expected: msg_size.into(),
                        received: (HEADER_SIZE as u64).saturating_add(body.len() as u64),
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    return Err(ConnectionError::Io {
                        op: "recv",
                        source: err,
                    });
                }
            }
        }
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
