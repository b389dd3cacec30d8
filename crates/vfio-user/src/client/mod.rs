//! The vfio-user client: what a VMM uses to drive a device served by another process.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant T as caller threads
//!     participant R as reader thread
//!     participant S as server
//!     T->>S: VERSION (ours: max_msg_fds, max_data_xfer_size, migration {4096, max_bitmap_size})
//!     S-->>T: VERSION reply: its caps are recorded and applied
//!     T->>S: REGION_WRITE (msg_id 7)
//!     S->>R: DMA_WRITE (the device writes guest memory while handling it)
//!     R->>R: ClientMemory::write, page recorded while tracking
//!     R-->>S: DMA_WRITE reply
//!     S-->>R: REGION_WRITE reply (msg_id 7)
//!     R->>T: routed to the caller waiting for msg_id 7
//! ```
//!
//! # Threads
//!
//! [`Client`] is `Send + Sync`: a migration thread can fetch dirty bitmaps while workload
//! threads access regions. Requests are **pipelined**: each caller registers a `msg_id`,
//! sends under a short send lock and waits for its own reply; the server answers in order. A
//! reader thread receives everything: it routes each reply to its caller by `msg_id`, and
//! serves the server's DMA_READ / DMA_WRITE itself, at any time, from the [`ClientMemory`] of
//! the fd-less mapping concerned. Changes of the mapping layout (map, unmap, dirty tracking,
//! GET) are serialized among themselves so each sees a stable layout; region accesses and
//! IRQ calls are not held back by them.
//!
//! # Limits
//!
//! After VERSION the client applies the server's capabilities: it sends at most its
//! `max_msg_fds` descriptors per message, splits region reads and writes into pieces of at
//! most its `max_data_xfer_size` (and small enough that a read's reply fits our
//! `max_msg_size`), and keeps every dirty bitmap request within the smaller of its
//! `max_bitmap_size` and ours. A mapping whose bitmap would exceed that is split into several
//! server mappings when it is made; the client knows the layout, so a GET of any range of
//! whole mappings is split into requests on the server's rules, with several small mappings
//! sharing one request while the bitmap fits.
//!
//! A server whose `migration` capability states no `max_bitmap_size` is taken for libvfio-user
//! v1, which never parses that key and has stricter rules than the spec's default (256 MiB)
//! suggests: a GET_BITMAP must cover exactly one of its regions and its `argsz` may not exceed
//! 1 MiB. The client then keeps each bitmap within 1 MiB - 40 bytes (so every mapping above
//! about 32 GiB is split when it is made) and sends one request per server mapping.
//!
//! # Reply deadlines
//!
//! Every request waits for its reply at most [`ClientConfig::reply_timeout`] (10 s by
//! default; VERSION too, by a read timeout on the socket before the reader thread starts); a
//! caller that knows a request makes the server work longer passes its own deadline
//! ([`Client::region_read_within`], [`Client::region_write_within`]). A call past its deadline
//! fails with [`ClientError::TimedOut`] (`ETIMEDOUT`) and breaks the connection: the socket is
//! shut down, and every other waiting and later call fails at once with
//! [`ClientError::Disconnected`] naming `ETIMEDOUT`. A hung server then stalls nobody, and a
//! reply that would come late cannot be taken for the answer to a later request, nor leave
//! the client's mapping layout and the server's disagreeing about a map whose fate is unknown.
//!
//! # Dirty pages written by DMA_WRITE
//!
//! A server keeps no dirty bitmap of memory mapped without an fd (libvfio-user does not, and
//! answers EINVAL to a GET of it): the pages it writes there through DMA_WRITE are the
//! client's record. While tracking is on, the reader records each such page; a GET never
//! names such a mapping (nor spans one), an unmap with bitmap unmaps it without asking for
//! one, and both report the recorded pages in its place. [`Client::stats`] counts the bitmap
//! requests sent (never one for such a mapping), the server's DMA messages and the pages
//! reported from the record.
//!
//! # Bitmaps without copies
//!
//! When one request covers the whole range asked for, the reader thread receives the bitmap
//! straight into the caller's `Vec<u64>` ([`Client::dirty_pages_get_into`] reuses it from one
//! sync to the next); only the 40 bytes before it are checked apart. Large bodies otherwise
//! land in recycled buffers. A 64 GiB GET costs about 1.2 to 1.6 times a 2 MiB memcpy plus
//! one 2 MiB socket transfer (`cargo bench -p vfmig-vfio-user --bench session`).

mod bits;
mod config;
mod dirty;
mod dma;
mod error;
mod irq;
mod mappings;
mod memory;
mod mmap;
mod negotiate;
mod regions;
mod stats;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub use config::{ClientConfig, DEFAULT_REPLY_TIMEOUT};
pub use error::ClientError;
pub use irq::IrqValues;
pub use memory::ClientMemory;
pub use mmap::MmapArea;
pub use regions::Region;
pub use stats::ClientStats;

use crate::connection::{Connection, Received};
use crate::errno::Errno;
use crate::limits::Limits;
use crate::message::{Command, DEFAULT_MAX_MSG_FDS, DeviceInfo, Reply, Request, Version};
use crate::peer::{Peer, run_reader};
use mappings::MappingTable;
use negotiate::{LIBVFIO_USER_MAX_BITMAP, Negotiated, negotiate};
use stats::Counters;

/// Bytes before the data of a REGION_READ reply: header and access.
const REGION_REPLY_PREFIX: u64 = 32;

/// What the client knows of the session, shared with its reader thread.
pub(crate) struct Shared {
    peer: Peer,
    config: ClientConfig,
    /// The server's VERSION.
    server: Version,
    /// Bytes per REGION_READ / REGION_WRITE.
    xfer: usize,
    /// Bytes of bitmap per dirty bitmap request (whole words).
    bitmap_cap: u64,
    /// Each GET_BITMAP covers exactly one server mapping.
    one_mapping_per_request: bool,
    table: Mutex<MappingTable>,
    /// Serializes map, unmap and dirty page calls.
    layout: Mutex<()>,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything that can panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, MappingTable> {
        lock(&self.table)
    }

    /// Sends `request` and waits for its reply.
    fn call(
        &self,
        request: &Request<'_>,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Received, ClientError> {
        self.peer
            .call(request, fds)
            .map_err(|err| ClientError::from_call(request.command(), err))
    }

    /// Sends a command whose body is `parts` and waits at most `timeout` for its reply.
    fn call_parts_within(
        &self,
        command: Command,
        parts: &[&[u8]],
        timeout: Duration,
    ) -> Result<Received, ClientError> {
        self.peer
            .call_into(command, parts, &[], None, Some(timeout))
            .map(|(received, _)| received)
            .map_err(|err| ClientError::from_call(command, err))
    }

    /// Decodes the reply to `command`; an error reply is [`ClientError::Remote`].
    fn reply<'r>(
        &self,
        command: Command,
        received: &'r Received,
    ) -> Result<Reply<'r>, ClientError> {
        let reply = received
            .reply(self.peer.limits())
            .map_err(|source| ClientError::BadReply { command, source })?;
        if reply.command() != command {
            return Err(ClientError::unexpected(
                command,
                "a reply to another command",
            ));
        }
        match reply {
            Reply::Error { errno, .. } => Err(ClientError::Remote {
                command,
                errno: Errno::from_wire(errno),
            }),
            reply => Ok(reply),
        }
    }
}

/// A connection to a vfio-user server (see the module docs).
pub struct Client {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
};

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shared.server)
            .field("xfer", &self.shared.xfer)
            .field("bitmap_cap", &self.shared.bitmap_cap)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the server listening at `path` and negotiates.
    pub fn connect(path: impl AsRef<Path>, config: ClientConfig) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            ClientError::Connection(crate::error::ConnectionError::Io {
                op: "connect",
                source,
            })
        })?;
        Self::from_stream(stream, config)
    }

    /// Negotiates over a connected stream (e.g. one end of a socket pair).
    pub fn from_stream(stream: UnixStream, config: ClientConfig) -> Result<Self, ClientError> {
        let limits = Limits {
            max_msg_size: config.max_msg_size,
            max_recv_fds: usize::try_from(config.max_msg_fds).unwrap_or(usize::MAX),
            max_send_fds: DEFAULT_MAX_MSG_FDS as usize,
            max_data_xfer_size: config.max_data_xfer_size,
        };
        let mut conn = Connection::with_limits(stream, limits)?;
        let Negotiated { server, legacy } = negotiate_within(&mut conn, &config)?;
        let caps = &server.capabilities;
        conn.set_limits(Limits {
            max_send_fds: usize::try_from(caps.max_msg_fds).unwrap_or(usize::MAX),
            ..limits
        });
        let reply_room = u64::from(config.max_msg_size).saturating_sub(REGION_REPLY_PREFIX);
        let xfer = caps
            .max_data_xfer_size
            .min(reply_room)
            .min(u32::MAX.into())
            .max(1);
        let server_bitmap = match caps.migration {
            Some(_) if legacy => LIBVFIO_USER_MAX_BITMAP,
            Some(m) => m.max_bitmap_size,
            None => u64::MAX,
        };
        let bitmap_cap = (server_bitmap / 8 * 8).clamp(8, config.bitmap_capacity());
        let one_mapping_per_request = config.one_mapping_per_request || legacy;
        tracing::debug!(
            ?server,
            xfer,
            bitmap_cap,
            legacy,
            "vfio-user client negotiated"
        );
        let shared = Arc::new(Shared {
            peer: Peer::new(conn.try_clone()?)?.with_reply_timeout(config.reply_timeout),
            config,
            server,
            xfer: usize::try_from(xfer).unwrap_or(usize::MAX),
            bitmap_cap,
            one_mapping_per_request,
            table: Mutex::new(MappingTable::default()),
            layout: Mutex::new(()),
            counters: Counters::default(),
        });
        let reader = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("vfio-user-client".into())
                .spawn(move || {
                    run_reader(conn, &shared.peer, |item| memory::serve(&shared, item));
                })
                .map_err(ClientError::Spawn)?
        };
        Ok(Self {
            shared,
            reader: Some(reader),
        })
    }

    /// The server's VERSION: its version and capabilities.
    pub fn server_version(&self) -> &Version {
        &self.shared.server
    }

    /// Bytes per REGION_READ / REGION_WRITE message.
    pub fn transfer_size(&self) -> usize {
        self.shared.xfer
    }

    /// Bytes of bitmap per dirty bitmap request; also bounds each server mapping's bitmap.
    pub fn bitmap_capacity(&self) -> u64 {
        self.shared.bitmap_cap
    }

    /// Whether each GET_BITMAP covers exactly one server mapping: asked for in the
    /// configuration, or because the server is taken for libvfio-user v1 (see the module docs).
    pub fn one_mapping_per_request(&self) -> bool {
        self.shared.one_mapping_per_request
    }

    /// What the client did so far (dirty bitmap requests, the server's DMA, pages reported
    /// from its own record).
    pub fn stats(&self) -> ClientStats {
        self.shared.counters.snapshot()
    }

    /// How long a request waits for its reply ([`ClientConfig::reply_timeout`]).
    pub fn reply_timeout(&self) -> Duration {
        self.shared.config.reply_timeout
    }

    /// `VFIO_USER_DEVICE_GET_INFO`.
    pub fn device_info(&self) -> Result<DeviceInfo, ClientError> {
        let command = Command::DeviceGetInfo;
        let received = self
            .shared
            .call(&Request::DeviceGetInfo(DeviceInfo::request()), &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DeviceGetInfo(info) => Ok(info),
            _ => Err(ClientError::unexpected(command, "not a device info")),
        }
    }

    /// `VFIO_USER_DEVICE_RESET`.
    pub fn reset(&self) -> Result<(), ClientError> {
        let command = Command::DeviceReset;
        let received = self.shared.call(&Request::DeviceReset, &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DeviceReset => Ok(()),
            _ => Err(ClientError::unexpected(command, "not a reset reply")),
        }
    }
}

/// [`negotiate`] with the VERSION reply awaited for at most the configured reply timeout (a
/// read timeout on the socket, lifted again before the reader thread starts: a server may
/// stay quiet as long as it likes between replies).
fn negotiate_within(
    conn: &mut Connection,
    config: &ClientConfig,
) -> Result<Negotiated, ClientError> {
    let io = |source| {
        ClientError::Connection(crate::error::ConnectionError::Io {
            op: "set a read timeout",
            source,
        })
    };
    conn.stream()
        .set_read_timeout(Some(config.reply_timeout.max(Duration::from_millis(1))))
        .map_err(io)?;
    let negotiated = negotiate(conn, config).map_err(|err| {
        let timed_out = [Errno::EAGAIN, Errno::ETIMEDOUT].contains(&err.errno());
        if timed_out {
            ClientError::TimedOut {
                command: Command::Version,
                after: config.reply_timeout,
            }
        } else {
            err
        }
    })?;
    conn.stream().set_read_timeout(None).map_err(io)?;
    Ok(negotiated)
}

impl Drop for Client {
    /// Shuts the socket down (the server sees the client go) and joins the reader thread.
    fn drop(&mut self) {
        self.shared.peer.shutdown();
        if let Some(reader) = self.reader.take()
            && reader.join().is_err()
        {
            tracing::error!("vfio-user client reader thread panicked");
        }
    }
}
