//! The vfio-user server: serves one client at a time for a device [`Backend`], with DMA
//! mappings and dirty pages kept by a [`Container`].
//!
//! ```mermaid
//! sequenceDiagram
//!     participant C as client
//!     participant R as reader thread
//!     participant S as server thread
//!     participant D as backend / container
//!     C->>S: VERSION (first message, read before the reader starts)
//!     S-->>C: VERSION reply (max_msg_fds 8, max_data_xfer_size 1 MiB, migration {4096, max_bitmap_size})
//!     C->>R: command
//!     R->>S: in-order queue
//!     S->>D: check_command, then the command's handler
//!     D->>R: (device DMA to fd-less memory) DMA_WRITE / DMA_READ to the client
//!     C-->>R: DMA reply, routed by msg_id to the waiting device thread
//!     S-->>C: reply, or error reply with the errno (none with NO_REPLY)
//!     C->>R: end of stream
//!     S->>D: unmap all, stop dirty tracking, disable every IRQ index, client_gone()
//! ```
//!
//! # Threads
//!
//! Each session has a reader thread that receives every message. Replies (to the DMA_READ /
//! DMA_WRITE the device sends for memory mapped without an fd) go straight to the thread that
//! waits for them, which may be the server thread in the middle of a command (a REGION_WRITE
//! that starts a DMA) or any device thread. Commands go through a queue, bounded in bytes, to
//! the server thread, which handles them strictly in order, one small handler per command.
//! Sends are serialized by a lock. When the client goes, waiting DMA calls fail with
//! `ECONNRESET`, later ones with `ENOTCONN`; nothing hangs.
//!
//! # Errors
//!
//! Every failure is answered with its errno and the session goes on: a message that does not
//! decode is `EINVAL` (its body was read, so the stream is in step), one with too many
//! descriptors `EFAULT`, a refused command the backend's or the container's errno. A command
//! with `NO_REPLY` gets no reply, not even an error. A header that cannot be framed
//! (`msg_size` below 16 or above [`Limits::max_msg_size`]) is answered `EINVAL` and the client
//! is dropped, since the stream cannot be resynchronized; the server then waits for the next
//! client. So is a first message other than a valid VERSION.
//!
//! # Who holds the device
//!
//! The server serves one client at a time; others wait in the listen backlog. A connected
//! client must complete VERSION within [`HANDSHAKE_TIMEOUT`] (or the time set with
//! [`Server::set_handshake_timeout`]): one that sends nothing, or stops in the middle of its
//! VERSION, is dropped when it runs out and the next client is accepted. Once negotiated, a
//! client holds the device until it closes its socket, however long it stays idle: it is the
//! VMM the device is attached to, and an idle VM is no fault. Its messages arrive on its own
//! schedule, so the session's reads wait for them; a client that dies is seen at once (the
//! socket closes with it). The other way round, a DMA_READ or DMA_WRITE the server sends for
//! an fd-less mapping waits at most [`DMA_REPLY_TIMEOUT`] (or the time set with
//! [`Server::set_dma_reply_timeout`]) for the client's reply: past it the device's access
//! fails with `ETIMEDOUT` and the connection is broken, so a hung client cannot hang the
//! device, and the next client is served.
//!
//! # Deviations from libvfio-user v1, on purpose
//!
//! * DMA_MAP, DMA_UNMAP and DIRTY_PAGES follow the container, whose rules are Linux type1 v2:
//!   unmap and GET_BITMAP take any range of whole mappings (libvfio-user: exactly one region,
//!   ENOENT or ENOTSUP otherwise), an unmap of a hole succeeds unmapping nothing (ENOENT),
//!   mapping the exact same range twice is EEXIST (accepted), there is no 16-region limit
//!   (65535 mappings), and a bitmap is bounded by our message size cap (4 MiB by default: one
//!   request covers 128 GiB), not 1 MiB. As in libvfio-user, fd-less mappings have no bitmap
//!   here: a GET_BITMAP or unmap-with-bitmap that names one is EINVAL, and the client reports
//!   the pages the device wrote into them through DMA_WRITE.
//! * We accept more than libvfio-user where the meaning is clear (see the crate docs,
//!   "Liberal in what we accept"): JSON without its NUL, reserved header flag bits.
//! * DEVICE_GET_REGION_IO_FDS answers every valid region with no sub-regions (ioeventfds are
//!   not offered).
//! * Twin-socket mode is declined.

mod backend;
mod handlers;
mod negotiate;
mod queue;
mod remote;
mod session;

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vfmig_abi::uapi::{
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE,
};
use vfmig_iommu::{Container, UnmapRequest};

pub use backend::{
    Backend, DeviceDescription, IrqDescription, IrqSetData, RegionDescription, RegionMmap,
};

use crate::connection::Connection;
use crate::errno::Errno;
use crate::error::ConnectionError;
use crate::limits::Limits;
use crate::message::{DEFAULT_MAX_MSG_FDS, IrqSet};
use crate::peer::{Peer, run_reader};
use negotiate::{ClientCaps, negotiate};
use queue::CommandQueue;
use session::Session;

/// Most bytes of message bodies queued for the server thread before the reader stops reading.
const QUEUE_BUDGET: usize = 64 << 20;

/// `argsz` of a SET_IRQS without data.
const IRQ_SET_ARGSZ: u32 = 20;
const _: () = assert!(size_of::<IrqSet>() == IRQ_SET_ARGSZ as usize);

/// How long a connected client has to complete VERSION before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits for the client's reply to a DMA_READ or DMA_WRITE it sent (an
/// access to an fd-less mapping) before the access fails with `ETIMEDOUT` and the client is
/// dropped (see "Who holds the device").
pub const DMA_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a session ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The client closed the connection.
    Closed,
    /// The client was dropped: the stream failed, or a header could not be framed.
    Dropped(ConnectionError),
    /// The first message was not an acceptable VERSION; the client was told this errno.
    NegotiationFailed {
        /// The errno sent.
        errno: Errno,
    },
}

impl SessionEnd {
    fn from_connection(err: ConnectionError) -> Self {
        match err {
            ConnectionError::Closed => Self::Closed,
            err => Self::Dropped(err),
        }
    }
}

/// Shuts the socket and closes the queue when dropped, so the reader thread ends.
struct StopReader<'a> {
    peer: &'a Peer,
    queue: &'a CommandQueue,
}

impl Drop for StopReader<'_> {
    fn drop(&mut self) {
        self.peer.shutdown();
        self.queue.close();
    }
}

/// A vfio-user server for one device (see the module docs).
pub struct Server<B: Backend> {
    backend: B,
    container: Container,
    limits: Limits,
    handshake_timeout: Duration,
    dma_reply_timeout: Duration,
}

impl<B: Backend> Server<B> {
    /// A server for `backend`, keeping the client's DMA mappings in `container` (a handle the
    /// device also holds, to reach guest memory). `limits` bound what a client may send:
    /// `max_msg_size` (also the largest reply we build: it bounds the dirty bitmap of one
    /// request), `max_recv_fds` (advertised as `max_msg_fds`) and `max_data_xfer_size`
    /// (advertised as such). `max_send_fds` is taken from each client's VERSION.
    pub fn new(backend: B, container: Container, limits: Limits) -> Self {
        Self {
            backend,
            container,
            limits,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            dma_reply_timeout: DMA_REPLY_TIMEOUT,
        }
    }

    /// How long a connected client has to complete VERSION ([`HANDSHAKE_TIMEOUT`] unless set;
    /// a socket timeout cannot be zero, so zero is taken as one millisecond).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout.max(Duration::from_millis(1));
    }

    /// How long a DMA_READ / DMA_WRITE the server sends waits for the client's reply
    /// ([`DMA_REPLY_TIMEOUT`] unless set).
    pub fn set_dma_reply_timeout(&mut self, timeout: Duration) {
        self.dma_reply_timeout = timeout;
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (between sessions).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The container.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Gives the backend back.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Serves clients one after the other, forever: accepts one, serves it until it goes,
    /// cleans up, and accepts the next, with the device state kept. Returns only if `accept`
    /// fails.
    pub fn serve(&mut self, listener: UnixListener) -> io::Error {
        loop {
            match self.serve_one(&listener) {
                Ok(end) => tracing::info!(?end, "vfio-user client gone"),
                Err(err) => return err,
            }
        }
    }

    /// Accepts one client on `listener` and serves it until it goes.
    pub fn serve_one(&mut self, listener: &UnixListener) -> io::Result<SessionEnd> {
        let (stream, _) = listener.accept()?;
        let conn = Connection::with_limits(stream, self.limits).map_err(|err| match err {
            ConnectionError::Io { source, .. } => source,
            other => io::Error::other(other),
        })?;
        Ok(self.serve_connection(conn))
    }

    /// Serves one connected client until it goes (or is dropped), then unmaps all its memory,
    /// stops dirty tracking, disables every IRQ index and calls [`Backend::client_gone`].
    pub fn serve_connection(&mut self, mut conn: Connection) -> SessionEnd {
        // Until VERSION says otherwise, the client accepts the spec's default of one fd.
        conn.set_limits(Limits {
            max_send_fds: DEFAULT_MAX_MSG_FDS as usize,
            ..self.limits
        });
        let migration = self.backend.migration_capable();
        // A client that does not complete VERSION in time is dropped (see "Who holds the
        // device"); after it, reads wait for the client's next message.
        if let Err(source) = conn.stream().set_read_timeout(Some(self.handshake_timeout)) {
            return SessionEnd::Dropped(ConnectionError::Io {
                op: "set the handshake timeout",
                source,
            });
        }
        let client = match negotiate(&mut conn, &self.limits, migration) {
            Ok(client) => client,
            Err(end) => {
                let _ = conn.stream().shutdown(Shutdown::Both);
                return end;
            }
        };
        if let Err(source) = conn.stream().set_read_timeout(None) {
            let _ = conn.stream().shutdown(Shutdown::Both);
            return SessionEnd::Dropped(ConnectionError::Io {
                op: "clear the handshake timeout",
                source,
            });
        }
        conn.set_limits(Limits {
            max_send_fds: usize::try_from(client.max_msg_fds).unwrap_or(usize::MAX),
            ..self.limits
        });
        let end = self.run(conn, client);
        self.clean_up();
        end
    }

    /// The session proper: the reader thread feeds the queue, this thread serves it.
    fn run(&mut self, conn: Connection, client: ClientCaps) -> SessionEnd {
        let peer = match conn.try_clone().and_then(Peer::new) {
            Ok(peer) => Arc::new(peer.with_reply_timeout(self.dma_reply_timeout)),
            Err(err) => return SessionEnd::Dropped(err),
        };
        let queue = CommandQueue::new(QUEUE_BUDGET);
        thread::scope(|scope| {
            let spawned = thread::Builder::new()
                .name("vfio-user-reader".into())
                .spawn_scoped(scope, || {
                    run_reader(conn, &peer, |item| queue.push(item));
                    queue.close();
                });
            let reader = match spawned {
                Ok(reader) => reader,
                Err(source) => {
                    return SessionEnd::Dropped(ConnectionError::Io {
                        op: "spawn reader",
                        source,
                    });
                }
            };
            // Even if the backend panics, the reader must be woken, or the scope would wait
            // for it forever.
            let stop = StopReader {
                peer: &peer,
                queue: &queue,
            };
            let mut session = Session::new(
                &mut self.backend,
                &self.container,
                &peer,
                self.limits,
                client,
            );
            let end = session.run(&queue);
            drop(stop);
            if reader.join().is_err() {
                tracing::error!("vfio-user reader thread panicked");
            }
            end
        })
    }

    /// What a departed client leaves behind is undone; the device state stays.
    fn clean_up(&mut self) {
        let all = UnmapRequest {
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            iova: 0,
            size: 0,
            bitmap: None,
        };
        if let Err(err) = self.container.unmap_dma(&all, None) {
            tracing::warn!(%err, "unmapping a departed client's memory failed");
        }
        self.container.stop_dirty_tracking();
        for index in 0..self.backend.device_info().num_irqs {
            let disable = IrqSet {
                argsz: IRQ_SET_ARGSZ,
                flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                index,
                start: 0,
                count: 0,
            };
            if let Err(errno) = self.backend.set_irqs(&disable, IrqSetData::None) {
                tracing::debug!(index, %errno, "disabling an IRQ index failed");
            }
        }
        self.backend.client_gone();
    }
}
