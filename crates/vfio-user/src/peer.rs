//! One end of a live session, shared by the client and the server: sends serialized by a lock,
//! replies routed by `msg_id` to the thread waiting for them, and the reader loop that feeds
//! both.
//!
//! ```text
//!  caller threads ──call()──▶ [send lock] ──sendmsg──▶ socket
//!        ▲                                                │
//!        │ reply (by msg_id)                              ▼
//!  waiting map ◀──── reply ───── reader thread ◀──── recvmsg (every message)
//!                                     │
//!                                     └── command ──▶ on_command (server: the in-order queue;
//!                                                      client: serve DMA_READ/DMA_WRITE)
//! ```
//!
//! Only the reader thread receives. A caller registers its `msg_id` before sending, so a reply
//! can never arrive before its waiter exists. When the reader stops (end of stream, a fatal
//! framing error, or [`Peer::shutdown`]), every waiter is woken with an error and later calls
//! fail at once: nobody waits for a reply that cannot come.
//!
//! A call may wait for its reply within a deadline ([`Peer::with_reply_timeout`], or per call).
//! One that passes it fails with [`CallError::TimedOut`] (`ETIMEDOUT`) and **breaks the
//! connection**: the peer is marked closed, every other waiter is woken and later calls fail
//! at once, all with [`CallError::Closed`]`(ETIMEDOUT)` (the cause, not `ECONNRESET` /
//! `ENOTCONN`), and the socket is shut down. A reply that would come late
//! can then never be taken for the answer to a later request (`msg_id`s wrap), and a request
//! whose fate is unknown (a DMA_MAP the server may yet carry out) leaves no layout to disagree on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use crate::connection::{BodyBuffer, Connection, Received, Tail};
use crate::errno::Errno;
use crate::error::{ConnectionError, MessageError};
use crate::limits::Limits;
use crate::message::{Command, Header, MessageKind, Reply, Request};

/// What the reader hands on: a message, or the failure to read one.
pub(crate) type Delivery = Result<Received, ConnectionError>;

/// What a caller gets: its reply (with the words of its split body, if it gave a sink), or the
/// failure to read it.
type ReplyDelivery = Result<(Received, Tail), ConnectionError>;

/// Where a caller wants the tail of its reply's body: `head` bytes go to the body, the rest,
/// if the reply has exactly that size, over the words of `tail` (a dirty bitmap, received
/// without a copy).
pub(crate) struct Sink {
    /// Bytes before the words.
    pub(crate) head: usize,
    /// The words expected.
    pub(crate) tail: Vec<u64>,
}

/// Why a call got no reply.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request does not encode.
    Encode(MessageError),
    /// Sending failed.
    Send(ConnectionError),
    /// The reply arrived but could not be read (e.g. it carried too many descriptors).
    Receive(ConnectionError),
    /// The connection is gone: `ENOTCONN` if it was before the call, `ECONNRESET` if it went
    /// while the call waited.
    Closed(Errno),
    /// No reply within the deadline (`ETIMEDOUT`); the connection is broken (module docs).
    TimedOut(Duration),
}

impl CallError {
    /// The errno this failure stands for.
    pub(crate) fn errno(&self) -> Errno {
        match self {
            Self::Encode(err) => Errno::from(err),
            Self::Send(err) | Self::Receive(err) => Errno::from(err),
            Self::Closed(errno) => *errno,
            Self::TimedOut(_) => Errno::ETIMEDOUT,
        }
    }
}

/// Bodies at least this large are read into recycled buffers.
const POOL_MIN: usize = 64 << 10;
/// Most buffers kept for reuse.
const POOL_MAX: usize = 2;

struct Waiter {
    reply: mpsc::Sender<ReplyDelivery>,
    sink: Option<Sink>,
}

struct Calls {
    next_id: u16,
    waiting: HashMap<u16, Waiter>,
    closed: bool,
    /// Why the connection was broken on our side, if it was: what waiters and later calls
    /// fail with.
    broken: Option<Errno>,
}

/// The shared end of a connection (see the module docs).
pub(crate) struct Peer {
    send: Mutex<Connection>,
    calls: Mutex<Calls>,
    /// A handle on the socket used only to shut it down, never blocked behind a send.
    shutdown: UnixStream,
    limits: Limits,
    /// How long a call waits for its reply unless told otherwise; `None`: for ever.
    reply_timeout: Option<Duration>,
    /// Large bodies already read, kept to receive the next large ones into: a 2 MiB bitmap
    /// then costs no allocation and no page faults.
    buffers: Mutex<Vec<Vec<u8>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything that can panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Peer {
    /// Wraps the sending half of a connection (a [`Connection::try_clone`] of the reader's).
    pub(crate) fn new(send: Connection) -> Result<Self, ConnectionError> {
        let shutdown = send
            .stream()
            .try_clone()
            .map_err(|source| ConnectionError::Io { op: "dup", source })?;
        let limits = *send.limits();
        Ok(Self {
            send: Mutex::new(send),
            calls: Mutex::new(Calls {
                next_id: 0,
                waiting: HashMap::new(),
                closed: false,
                broken: None,
            }),
            shutdown,
            limits,
            reply_timeout: None,
            buffers: Mutex::new(Vec::new()),
        })
    }

    /// The same peer, each call waiting at most `timeout` for its reply (module docs).
    pub(crate) fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = Some(timeout);
        self
    }

    /// How long a call waits for its reply unless told otherwise.
    pub(crate) fn reply_timeout(&self) -> Option<Duration> {
        self.reply_timeout
    }

    /// The limits replies are decoded with.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sends `request` with `fds` and waits for its reply.
    pub(crate) fn call(
        &self,
        request: &Request<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Received, CallError> {
        let body = request.encode().map_err(CallError::Encode)?;
        self.call_parts(request.command(), &[&body], fds)
    }

    /// Sends a command whose body is `parts` (already valid wire bytes) and waits for its reply.
    pub(crate) fn call_parts(
        &self,
        command: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Received, CallError> {
        self.call_into(command, parts, fds, None, self.reply_timeout)
            .map(|(received, _)| received)
    }

    /// As [`Self::call_parts`], the reply's body split as `sink` says if it has that size, the
    /// reply awaited for at most `timeout` (`None`: for ever).
    pub(crate) fn call_into(
        &self,
        command: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        sink: Option<Sink>,
        timeout: Option<Duration>,
    ) -> Result<(Received, Tail), CallError> {
        let body_len = parts.iter().map(|p| p.len()).fold(0, usize::saturating_add);
        let (msg_id, reply) = self.register(sink)?;
        let sent = Header::new_command(msg_id, command, body_len)
            .map_err(CallError::Encode)
            .and_then(|header| {
                lock(&self.send)
                    .send_vectored(&header, parts, fds)
                    .map_err(CallError::Send)
            });
        if let Err(err) = sent {
            lock(&self.calls).waiting.remove(&msg_id);
            return Err(err);
        }
        let delivered = match timeout {
            None => reply.recv().map_err(|mpsc::RecvError| None),
            Some(timeout) => reply.recv_timeout(timeout).map_err(|err| match err {
                mpsc::RecvTimeoutError::Timeout => Some(timeout),
                mpsc::RecvTimeoutError::Disconnected => None,
            }),
        };
        match delivered {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(err)) => Err(CallError::Receive(err)),
            Err(None) => Err(CallError::Closed(
                lock(&self.calls).broken.unwrap_or(Errno::ECONNRESET),
            )),
            Err(Some(timeout)) => self.timed_out(msg_id, command, &reply, timeout),
        }
    }

    /// The call `msg_id` saw no reply within `timeout`: the connection is broken (module
    /// docs), unless the reply slipped in meanwhile.
    fn timed_out(
        &self,
        msg_id: u16,
        command: Command,
        reply: &mpsc::Receiver<ReplyDelivery>,
        timeout: Duration,
    ) -> Result<(Received, Tail), CallError> {
        lock(&self.calls).waiting.remove(&msg_id);
        // Delivered between the deadline and the removal: it is this call's.
        match reply.try_recv() {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(err)) => return Err(CallError::Receive(err)),
            Err(_) => {}
        }
        tracing::warn!(%command, msg_id, ?timeout, "no reply in time: the connection is broken");
        lock(&self.calls).broken = Some(Errno::ETIMEDOUT);
        self.close();
        self.shutdown();
        Err(CallError::TimedOut(timeout))
    }

    /// Picks a `msg_id` no other call is waiting on and registers a waiter for it.
    fn register(
        &self,
        sink: Option<Sink>,
    ) -> Result<(u16, mpsc::Receiver<ReplyDelivery>), CallError> {
        let mut calls = lock(&self.calls);
        if calls.closed {
            return Err(CallError::Closed(calls.broken.unwrap_or(Errno::ENOTCONN)));
        }
        // At most 65536 calls can wait; a thread per call makes that unreachable, but the
        // search is bounded all the same.
        for _ in 0..=u16::MAX {
            let id = calls.next_id;
            calls.next_id = id.wrapping_add(1);
            if let Entry::Vacant(slot) = calls.waiting.entry(id) {
                let (reply, rx) = mpsc::channel();
                slot.insert(Waiter { reply, sink });
                return Ok((id, rx));
            }
        }
        Err(CallError::Closed(Errno::new(libc::EAGAIN)))
    }

    /// Sends the reply to the command whose header is `request` (nothing if it asked for none).
    pub(crate) fn reply(
        &self,
        request: &Header,
        reply: &Reply<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        lock(&self.send).send_reply(request, reply, fds)
    }

    /// Sends a reply whose body is `parts` (already valid wire bytes), unless the command asked
    /// for none.
    pub(crate) fn reply_parts(
        &self,
        request: &Header,
        parts: &[&[u8]],
    ) -> Result<(), ConnectionError> {
        if request.no_reply() {
            return Ok(());
        }
        let body_len = parts.iter().map(|p| p.len()).fold(0, usize::saturating_add);
        let header = Header::new_reply(request, body_len).map_err(ConnectionError::Encode)?;
        lock(&self.send).send_vectored(&header, parts, &[])
    }

    /// Sends the error reply `errno` (nothing if the command asked for no reply).
    pub(crate) fn reply_error(
        &self,
        request: &Header,
        errno: Errno,
    ) -> Result<(), ConnectionError> {
        lock(&self.send).send_error(request, errno.raw())
    }

    /// A buffer to read a body of `len` bytes into: a recycled one for a large body.
    fn buffer_for(&self, len: usize) -> Vec<u8> {
        if len < POOL_MIN {
            return Vec::new();
        }
        lock(&self.buffers).pop().unwrap_or_default()
    }

    /// Gives back the body of a message that was handled, to read a later large one into.
    pub(crate) fn recycle(&self, body: Vec<u8>) {
        let max = usize::try_from(self.limits.max_msg_size).unwrap_or(usize::MAX);
        if (POOL_MIN..=max).contains(&body.capacity()) {
            let mut buffers = lock(&self.buffers);
            if buffers.len() < POOL_MAX {
                buffers.push(body);
            }
        }
    }

    /// Where the body of the message with `header` goes: the sink of the call it answers, if
    /// that call gave one and the message is a reply of the sink's size without ERROR; else a
    /// (recycled, if large) vector.
    fn body_buffer(&self, header: &Header, len: usize) -> BodyBuffer {
        let is_reply = matches!(header.kind(), Ok(MessageKind::Reply)) && header.error().is_none();
        if is_reply {
            let mut calls = lock(&self.calls);
            if let Some(waiter) = calls.waiting.get_mut(&header.msg_id)
                && let Some(sink) = waiter
                    .sink
                    .take_if(|s| s.head.checked_add(s.tail.len().saturating_mul(8)) == Some(len))
            {
                return BodyBuffer::Split {
                    head: sink.head,
                    tail: sink.tail,
                };
            }
        }
        BodyBuffer::Whole(self.buffer_for(len))
    }

    /// Hands a reply (or the failure to read one) to the call waiting for its `msg_id`, with
    /// the sink it gave back if the reply did not use it.
    fn deliver(&self, msg_id: u16, item: ReplyDelivery) {
        let waiter = lock(&self.calls).waiting.remove(&msg_id);
        let Some(waiter) = waiter else {
            tracing::debug!(msg_id, "reply to no outstanding call dropped");
            return;
        };
        let item = item.map(|(received, tail)| match (tail, waiter.sink) {
            (Tail::None, Some(sink)) => (received, Tail::Unused(sink.tail)),
            (tail, _) => (received, tail),
        });
        // The waiter may be gone only if its thread panicked; nothing to do then.
        drop(waiter.reply.send(item));
    }

    /// Marks the connection closed and wakes every waiter with an error.
    fn close(&self) {
        let mut calls = lock(&self.calls);
        calls.closed = true;
        // Dropping the senders wakes the receivers with `RecvError`.
        calls.waiting.clear();
    }

    /// Shuts the socket down both ways: the reader sees the end of the stream and stops, and
    /// the peer sees it too.
    pub(crate) fn shutdown(&self) {
        if let Err(err) = self.shutdown.shutdown(Shutdown::Both) {
            // ENOTCONN: already shut down by the other side.
            tracing::trace!(%err, "socket shutdown");
        }
    }
}

/// The `msg_id` of a message (or of the one that failed) if it is a reply.
fn is_reply(item: &ReplyDelivery) -> Option<u16> {
    let header = match item {
        Ok((received, _)) => Some(&received.header),
        Err(err) => err.header(),
    }?;
    matches!(header.kind(), Ok(MessageKind::Reply)).then_some(header.msg_id)
}

/// The reader loop: receives every message on `conn`, routes replies to their waiters and hands
/// everything else (commands, and failures that are not about a reply) to `on_command`, which
/// returns `false` to stop. Stops at the end of the stream or a fatal error, then closes `peer`.
pub(crate) fn run_reader(
    mut conn: Connection,
    peer: &Peer,
    mut on_command: impl FnMut(Delivery) -> bool,
) {
    loop {
        let item = conn.recv_into(|header, len| peer.body_buffer(header, len));
        let fatal = item.as_ref().is_err_and(ConnectionError::is_fatal);
        let go_on = match is_reply(&item) {
            Some(msg_id) => {
                peer.deliver(msg_id, item);
                true
            }
            None => on_command(item.map(|(received, _)| received)),
        };
        if fatal || !go_on {
            break;
        }
    }
    peer.close();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;
    use crate::message::DeviceInfo;

    fn answer_device_info(server: &mut Connection) {
        let received = server.recv().unwrap();
        let info = DeviceInfo {
            argsz: 16,
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        };
        server
            .send_reply(&received.header, &Reply::DeviceGetInfo(info), &[])
            .unwrap();
    }

    #[test]
    fn a_reply_reaches_its_caller() {
        let (client, mut server) = Connection::pair().unwrap();
        let peer = Arc::new(Peer::new(client.try_clone().unwrap()).unwrap());
        let reader = {
            let peer = Arc::clone(&peer);
            thread::spawn(move || run_reader(client, &peer, |_| true))
        };
        let server = thread::spawn(move || answer_device_info(&mut server));
        let received = peer
            .call(&Request::DeviceGetInfo(DeviceInfo::request()), &[])
            .unwrap();
        let reply = received.reply(peer.limits()).unwrap();
        assert!(matches!(reply, Reply::DeviceGetInfo(i) if i.num_regions == 9));
        server.join().unwrap();
        peer.shutdown();
        reader.join().unwrap();
    }

    #[test]
    fn a_waiting_call_fails_with_econnreset_when_the_peer_goes() {
        let (client, mut server) = Connection::pair().unwrap();
        let peer = Arc::new(Peer::new(client.try_clone().unwrap()).unwrap());
        let reader = {
            let peer = Arc::clone(&peer);
            thread::spawn(move || run_reader(client, &peer, |_| true))
        };
        // The server reads the request and hangs up without answering.
        let server = thread::spawn(move || drop(server.recv().unwrap()));
        let err = peer
            .call(&Request::DeviceGetInfo(DeviceInfo::request()), &[])
            .unwrap_err();
        assert_eq!(err.errno(), Errno::ECONNRESET);
        server.join().unwrap();
        reader.join().unwrap();
        let err = peer.call(&Request::DeviceReset, &[]).unwrap_err();
        assert_eq!(err.errno(), Errno::ENOTCONN);
    }

    #[test]
    fn a_reply_to_nobody_is_dropped_and_reading_goes_on() {
        let (client, mut server) = Connection::pair().unwrap();
        let peer = Arc::new(Peer::new(client.try_clone().unwrap()).unwrap());
        let reader = {
            let peer = Arc::clone(&peer);
            thread::spawn(move || run_reader(client, &peer, |_| true))
        };
        let stray = Header::new_command(0x7777, Command::DeviceReset, 0).unwrap();
        server.send_reply(&stray, &Reply::DeviceReset, &[]).unwrap();
        let server = thread::spawn(move || answer_device_info(&mut server));
        assert!(
            peer.call(&Request::DeviceGetInfo(DeviceInfo::request()), &[])
                .is_ok()
        );
        server.join().unwrap();
        peer.shutdown();
        reader.join().unwrap();
    }
}
