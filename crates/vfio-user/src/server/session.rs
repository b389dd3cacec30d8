//! One client's session on the server thread: takes commands off the queue in order, decodes
//! them, asks the backend's state policy, runs the command's handler, and answers every
//! failure with its errno.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use vfmig_iommu::Container;

use super::SessionEnd;
use super::backend::{Backend, DeviceDescription};
use super::handlers;
use super::negotiate::ClientCaps;
use super::queue::CommandQueue;
use crate::connection::Received;
use crate::errno::Errno;
use crate::error::ConnectionError;
use crate::limits::Limits;
use crate::message::{Header, Reply, Request};
use crate::peer::Peer;

/// Everything a handler may use.
pub(super) struct Session<'a, B: Backend> {
    /// The device.
    pub(super) backend: &'a mut B,
    /// The client's DMA mappings and dirty pages.
    pub(super) container: &'a Container,
    /// The connection, shared with the reader thread and with remote DMA.
    pub(super) peer: &'a Arc<Peer>,
    /// Our limits.
    pub(super) limits: Limits,
    /// What the client stated in VERSION.
    pub(super) client: ClientCaps,
    /// The device, as it was when the session started.
    pub(super) device: DeviceDescription,
    /// Size of each region, by index (asked once: VFIO regions do not change size).
    region_sizes: Vec<u64>,
    /// The buffer dirty bitmaps are built in, kept from one request to the next, and all
    /// zero between requests (see [`Session::bitmap_buffer`]).
    pub(super) bitmap: Vec<u64>,
}

impl<'a, B: Backend> Session<'a, B> {
    pub(super) fn new(
        backend: &'a mut B,
        container: &'a Container,
        peer: &'a Arc<Peer>,
        limits: Limits,
        client: ClientCaps,
    ) -> Self {
        let device = backend.device_info();
        let region_sizes = (0..device.num_regions)
            .map(|index| backend.region_info(index).map_or(0, |region| region.size))
            .collect();
        Self {
            backend,
            container,
            peer,
            limits,
            client,
            device,
            region_sizes,
            bitmap: Vec::new(),
        }
    }

    /// Serves the queue until it is closed and empty; returns how the session ended.
    pub(super) fn run(&mut self, queue: &CommandQueue) -> SessionEnd {
        let mut end = SessionEnd::Closed;
        while let Some(item) = queue.pop() {
            match item {
                Ok(received) => self.handle(received),
                Err(err) => {
                    if let Some(header) = err.header() {
                        self.answer_error(header, Errno::from(&err));
                    }
                    if err.is_fatal() {
                        end = SessionEnd::from_connection(err);
                    }
                }
            }
        }
        end
    }

    fn handle(&mut self, mut received: Received) {
        let header = received.header;
        let fds = received.take_fds();
        if let Err(errno) = self.execute(&header, &received.body, fds) {
            self.answer_error(&header, errno);
        }
        self.peer.recycle(received.body);
    }

    fn execute(&mut self, header: &Header, body: &[u8], fds: Vec<OwnedFd>) -> Result<(), Errno> {
        let request = Request::decode_message(header, body, fds.len(), &self.limits)
            .inspect_err(|err| tracing::debug!(msg_id = header.msg_id, %err, "bad command"))?;
        self.backend.check_command(request.command())?;
        handlers::dispatch(self, header, request, fds)
    }

    fn answer_error(&self, header: &Header, errno: Errno) {
        tracing::trace!(msg_id = header.msg_id, cmd = header.cmd, %errno, "error reply");
        self.sent(self.peer.reply_error(header, errno));
    }

    fn sent(&self, result: Result<(), ConnectionError>) {
        // A failed send means the client is gone; the reader sees the end of the stream and
        // the session ends there.
        if let Err(err) = result {
            tracing::debug!(%err, "reply not sent");
        }
    }

    /// Sends a reply.
    pub(super) fn reply(&self, header: &Header, reply: &Reply<'_>) {
        self.sent(self.peer.reply(header, reply, &[]));
    }

    /// Sends a reply with file descriptors.
    pub(super) fn reply_with_fds(
        &self,
        header: &Header,
        reply: &Reply<'_>,
        fds: &[BorrowedFd<'_>],
    ) {
        self.sent(self.peer.reply(header, reply, fds));
    }

    /// Sends a reply whose body is `parts`, without copying them into one buffer.
    pub(super) fn reply_parts(&self, header: &Header, parts: &[&[u8]]) {
        self.sent(self.peer.reply_parts(header, parts));
    }

    /// Fails with EINVAL unless region `index` exists and `[offset, offset + count)` is inside
    /// it.
    pub(super) fn check_region_access(
        &self,
        index: u32,
        offset: u64,
        count: u64,
    ) -> Result<(), Errno> {
        let size = usize::try_from(index)
            .ok()
            .and_then(|i| self.region_sizes.get(i))
            .ok_or(Errno::EINVAL)?;
        match offset.checked_add(count) {
            Some(end) if end <= *size => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Fails with EINVAL unless region `index` exists.
    pub(super) fn check_region_index(&self, index: u32) -> Result<(), Errno> {
        if index < self.device.num_regions {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// Fails with EINVAL unless IRQ index `index` exists.
    pub(super) fn check_irq_index(&self, index: u32) -> Result<(), Errno> {
        if index < self.device.num_irqs {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// The first `words` words of the bitmap buffer, all zero. Give them back with
    /// [`Session::rezero_bitmap`] once the reply is sent, so the zeroing is off the path of
    /// the next request (and done while the client reads this reply).
    pub(super) fn bitmap_buffer(&mut self, words: usize) -> &mut [u64] {
        if self.bitmap.len() < words {
            self.bitmap.resize(words, 0);
        }
        self.bitmap.get_mut(..words).unwrap_or_default()
    }

    /// The first `words` words of the bitmap buffer, as they were filled.
    pub(super) fn bitmap_words(&self, words: usize) -> &[u64] {
        self.bitmap.get(..words).unwrap_or_default()
    }

    /// Zeroes the first `words` words of the bitmap buffer again.
    pub(super) fn rezero_bitmap(&mut self, words: usize) {
        if let Some(used) = self.bitmap.get_mut(..words) {
            used.fill(0);
        }
    }
}
