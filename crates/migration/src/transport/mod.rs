//! Transports: TCP and UNIX stream sockets, named by an [`Address`] (`tcp:HOST:PORT`,
//! `unix:PATH`), dialled with [`connect`] or served with [`listen`] and
//! [`Listener::accept`]. Either way the result is a [`StreamConnection`]: `Read + Write` (also
//! through `&StreamConnection`, so one thread can read while another writes), and
//! [`StreamConnection::shutdown`], which a cancelled sender calls to make the receiver see the end
//! of the stream at once.
//!
//! # Who is at the other end
//!
//! A plain TCP connection authenticates nothing and hides nothing: whoever reaches the port
//! is a peer, and whoever is on the path reads and can rewrite the stream (its CRC32Cs
//! detect accidents, not forgery). A UNIX socket is guarded by its file's permissions.
//!
//! [`connect_with`] and [`listen_with`] with [`TransportSecurity::Tls`] make a `tcp:`
//! connection mutual TLS 1.3 (rustls with the `ring` provider; credentials from a directory
//! laid out as QEMU's `tls-creds-x509`, see [`creds`]). Authenticated, before
//! [`connect_with`] or [`Listener::accept`] returns:
//! * the destination: its certificate chains to the CA, is valid now, and names the host
//!   the source dialled;
//! * the source: it holds a certificate the same CA signed (the destination refuses a
//!   handshake without one);
//! * with an allow-list, each end's certificate names an allowed peer.
//!
//! A peer that fails any of these fails the handshake, so the engine never sees it: no byte
//! it sends past the handshake is read. A destination that takes several peers at once
//! splits the two steps: [`Listener::accept_socket`] accepts, and
//! [`Accepted::into_connection`] runs the handshake, on a thread of the peer's own. A
//! handshake has a deadline as a whole ([`HANDSHAKE_TIMEOUT`] for a destination unless
//! [`Listener::accept_within`] or [`Accepted::into_connection`] says otherwise,
//! [`SOURCE_HANDSHAKE_TIMEOUT`] for a source), which a peer trickling bytes does not
//! extend. A source that the destination refuses learns the TLS alert it sent
//! ([`tls_alert`]). From then on the
//! stream is encrypted and each record authenticated, so a change on the path is an error,
//! not different guest memory. Not covered: revocation (no CRL is read) and which of the
//! CA's holders is which, beyond the allow-list.
//!
//! ```mermaid
//! sequenceDiagram
//!   participant S as source (connect_with)
//!   participant D as destination (accept)
//!   S->>D: ClientHello
//!   D->>S: ServerHello … Certificate, CertificateRequest, Finished
//!   Note over S: destination's chain, host name, allow-list
//!   S->>D: Certificate, CertificateVerify, Finished
//!   Note over D: source's chain, allow-list
//!   Note over S,D: only now: a StreamConnection; the stream, ready, go, running
//! ```
//!
//! A TLS connection's clones share one session, so the engine's pattern (one thread writes
//! the stream while another reads the answers, a third shuts it down on cancel) holds; see
//! `tls.rs` for the locking. Timeouts and shutdown keep their meaning; a shutdown sends no
//! `close_notify`, so the peer sees a cut stream, while [`StreamConnection::shutdown_write`]
//! sends one and the peer reads a clean end.
//!
//! Socket options:
//! * TCP: `TCP_NODELAY`, so the small sections (markers, `End`, the receiver's answers)
//!   leave at once instead of waiting for an ACK. Socket buffers are left to the kernel:
//!   Linux grows them up to `net.ipv4.tcp_{w,r}mem` as the connection runs, and setting
//!   `SO_SNDBUF`/`SO_RCVBUF` would pin them and turn that auto-tuning off.
//! * UNIX: `SO_SNDBUF` and `SO_RCVBUF` of [`UNIX_SOCKET_BUFFER`] (the kernel caps them at
//!   `net.core.{w,r}mem_max`), since UNIX sockets do not auto-tune and their default of
//!   about 200 KiB makes the writer block every 200 KiB.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod address;
pub mod creds;
mod listener;
mod pace;
mod tls;

pub use address::{Address, AddressError, MAX_UNIX_PATH};
pub use creds::{CredsError, TlsCreds};
pub use listener::{Accepted, Listener, ReadStop, listen, listen_with};
pub use pace::Paced;
pub use tls::{HANDSHAKE_TIMEOUT, SOURCE_HANDSHAKE_TIMEOUT};

/// How long a source's TCP connect may take (a host that drops the SYN would otherwise
/// hold it for minutes). A destination busy with another peer still completes the TCP
/// handshake at once: the kernel queues the connection for it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS alert in a read's error, if the peer sent one: e.g. `UnknownCA` when a
/// destination refused our certificate (TLS 1.3 lets the source finish its part of the
/// handshake first, so it learns of the refusal at its next read).
pub fn tls_alert(error: &io::Error) -> Option<String> {
    tls::alert(error).map(|alert| format!("{alert:?}"))
}

/// Whether a `tcp:` connection is plain or mutually authenticated TLS.
#[derive(Clone, Debug, Default)]
pub enum TransportSecurity {
    /// Bytes as they are: anyone who reaches the port is a peer, and anyone on the path
    /// reads and changes the stream.
    #[default]
    Plain,
    /// TLS 1.3, each end proving itself with a certificate the CA of the credentials
    /// signed (see [`creds`]).
    Tls(Arc<TlsCreds>),
}

/// The socket buffer size asked for on UNIX sockets.
pub const UNIX_SOCKET_BUFFER: usize = 4 << 20;

/// A transport operation that failed. Each keeps the address and the `io::Error` (errno).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The host name did not resolve.
    #[error("resolving {address}: {source}")]
    Resolve {
        /// The address.
        address: Address,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Connecting failed (for every address the host resolved to; this is the last error).
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The address.
        address: Address,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Binding or listening failed.
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: Address,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Accepting a connection failed.
    #[error("accepting on {address}: {source}")]
    Accept {
        /// The listening address.
        address: Address,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A socket option could not be set.
    #[error("setting {option}: {source}")]
    SocketOption {
        /// The option.
        option: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: the peer's certificate was refused (not signed by the CA,
    /// not valid now, not for the host dialled, not on the allow-list), the peer refused
    /// ours, or the socket failed. The `io::Error` wraps rustls' error.
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        /// The peer.
        peer: Address,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The peer did not complete the handshake in time.
    #[error("TLS handshake with {peer}: not complete within {} ms", within.as_millis())]
    HandshakeTimeout {
        /// The peer.
        peer: Address,
        /// The time it had.
        within: Duration,
    },
    /// The credentials lack what this end needs.
    #[error("TLS credentials: {0}")]
    Creds(#[from] CredsError),
    /// TLS asked for on a `unix:` address, which its file permissions guard instead.
    #[error("TLS is for tcp: addresses, not {address}")]
    TlsNeedsTcp {
        /// The address.
        address: Address,
    },
    /// The host dialled cannot be checked against a certificate.
    #[error("host {host:?} is not a DNS name or an IP address, so TLS cannot check it")]
    ServerName {
        /// The host.
        host: String,
    },
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

#[derive(Clone, Copy)]
enum SocketRef<'a> {
    Tcp(&'a TcpStream),
    Unix(&'a UnixStream),
}

impl SocketRef<'_> {
    fn shutdown(self, how: Shutdown) -> io::Result<()> {
        match self {
            SocketRef::Tcp(stream) => stream.shutdown(how),
            SocketRef::Unix(stream) => stream.shutdown(how),
        }
    }
}

#[derive(Debug)]
enum Link {
    Plain(Socket),
    /// Shared by every handle of the connection: a TLS session cannot be `dup`ed.
    Tls(Arc<tls::TlsStream>),
}

/// A connected stream socket, TCP or UNIX, with its options set; on TCP, plain or TLS
/// (authenticated before the connection is handed out).
#[derive(Debug)]
pub struct StreamConnection {
    link: Link,
}

impl StreamConnection {
    /// Wraps a connected TCP socket, setting `TCP_NODELAY`.
    ///
    /// # Errors
    /// [`TransportError::SocketOption`].
    pub fn from_tcp(stream: TcpStream) -> Result<StreamConnection, TransportError> {
        set_nodelay(&stream)?;
        Ok(StreamConnection {
            link: Link::Plain(Socket::Tcp(stream)),
        })
    }

    /// Wraps a connected UNIX socket, enlarging its buffers.
    ///
    /// # Errors
    /// [`TransportError::SocketOption`].
    pub fn from_unix(stream: UnixStream) -> Result<StreamConnection, TransportError> {
        set_buffer(stream.as_fd(), libc::SO_SNDBUF, UNIX_SOCKET_BUFFER).map_err(|source| {
            TransportError::SocketOption {
                option: "SO_SNDBUF",
                source,
            }
        })?;
        set_buffer(stream.as_fd(), libc::SO_RCVBUF, UNIX_SOCKET_BUFFER).map_err(|source| {
            TransportError::SocketOption {
                option: "SO_RCVBUF",
                source,
            }
        })?;
        Ok(StreamConnection {
            link: Link::Plain(Socket::Unix(stream)),
        })
    }

    /// Two connected UNIX sockets, for a sender and a receiver in one process (tests, or a
    /// local migration).
    ///
    /// # Errors
    /// [`TransportError::Connect`] if `socketpair` fails; [`TransportError::SocketOption`].
    pub fn unix_pair() -> Result<(StreamConnection, StreamConnection), TransportError> {
        let (a, b) = UnixStream::pair().map_err(|source| TransportError::Connect {
            address: Address::Unix(PathBuf::from("(socketpair)")),
            source,
        })?;
        Ok((
            StreamConnection::from_unix(a)?,
            StreamConnection::from_unix(b)?,
        ))
    }

    /// The TCP or UNIX socket; for TLS, the one under the session (not to be read or
    /// written past it).
    fn socket(&self) -> SocketRef<'_> {
        match &self.link {
            Link::Plain(Socket::Tcp(stream)) => SocketRef::Tcp(stream),
            Link::Plain(Socket::Unix(stream)) => SocketRef::Unix(stream),
            Link::Tls(session) => SocketRef::Tcp(session.socket()),
        }
    }

    /// Shuts both directions down: the peer reads the end of the stream, and a thread of
    /// ours blocked reading or writing this connection returns. What a cancelled sender does.
    /// Over TLS no `close_notify` is sent first (a writer may be blocked on the peer), so
    /// the peer reads a cut stream: an error, as a cancel should be.
    ///
    /// # Errors
    /// The `shutdown` errno (`ENOTCONN` if the peer is gone already).
    pub fn shutdown(&self) -> io::Result<()> {
        match &self.link {
            Link::Tls(session) => session.shutdown(),
            Link::Plain(_) => self.socket().shutdown(Shutdown::Both),
        }
    }

    /// Shuts the writing direction down: the peer reads the end of the stream, and can
    /// still answer. Over TLS, `close_notify` is sent first, so the peer reads a clean end.
    ///
    /// # Errors
    /// The `shutdown` errno; over TLS, the errno of sending `close_notify`.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match &self.link {
            Link::Tls(session) => session.shutdown_write(),
            Link::Plain(_) => self.socket().shutdown(Shutdown::Write),
        }
    }

    /// Another handle to the same connection, e.g. for a thread that cancels: a `dup` of a
    /// plain socket; over TLS, a share of the one session (and its socket).
    ///
    /// # Errors
    /// The `dup` errno.
    pub fn try_clone(&self) -> io::Result<StreamConnection> {
        let link = match &self.link {
            Link::Plain(Socket::Tcp(stream)) => Link::Plain(Socket::Tcp(stream.try_clone()?)),
            Link::Plain(Socket::Unix(stream)) => Link::Plain(Socket::Unix(stream.try_clone()?)),
            Link::Tls(session) => Link::Tls(Arc::clone(session)),
        };
        Ok(StreamConnection { link })
    }

    /// Sets (or with `None` clears) how long a read may block before it fails with
    /// `WouldBlock`/`TimedOut`.
    ///
    /// # Errors
    /// `EINVAL` for a zero duration.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self.socket() {
            SocketRef::Tcp(stream) => stream.set_read_timeout(timeout),
            SocketRef::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    /// Sets (or clears) how long a write may block.
    ///
    /// # Errors
    /// `EINVAL` for a zero duration.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self.socket() {
            SocketRef::Tcp(stream) => stream.set_write_timeout(timeout),
            SocketRef::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    /// Whether this is a TCP connection (plain or TLS).
    pub fn is_tcp(&self) -> bool {
        matches!(self.socket(), SocketRef::Tcp(_))
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.link, Link::Tls(_))
    }

    /// Whether `TCP_NODELAY` is set (`false` for a UNIX socket).
    ///
    /// # Errors
    /// The `getsockopt` errno.
    pub fn nodelay(&self) -> io::Result<bool> {
        match self.socket() {
            SocketRef::Tcp(stream) => stream.nodelay(),
            SocketRef::Unix(_) => Ok(false),
        }
    }
}

impl Read for &StreamConnection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.link {
            Link::Plain(Socket::Tcp(stream)) => (&*stream).read(buf),
            Link::Plain(Socket::Unix(stream)) => (&*stream).read(buf),
            Link::Tls(session) => session.read(buf),
        }
    }
}

impl Write for &StreamConnection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.link {
            Link::Plain(Socket::Tcp(stream)) => (&*stream).write(buf),
            Link::Plain(Socket::Unix(stream)) => (&*stream).write(buf),
            Link::Tls(session) => session.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match &self.link {
            Link::Plain(Socket::Tcp(stream)) => (&*stream).write_vectored(bufs),
            Link::Plain(Socket::Unix(stream)) => (&*stream).write_vectored(bufs),
            Link::Tls(session) => session.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for StreamConnection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for StreamConnection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket, to poll it; over TLS, bytes read or written on it bypass the session and
/// break it.
impl AsFd for StreamConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self.socket() {
            SocketRef::Tcp(stream) => stream.as_fd(),
            SocketRef::Unix(stream) => stream.as_fd(),
        }
    }
}

impl AsRawFd for StreamConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Connects to `address` in plain: for TCP, to each address the host resolves to in turn.
///
/// # Errors
/// [`TransportError::Resolve`], [`TransportError::Connect`] (the last address's error),
/// [`TransportError::SocketOption`].
pub fn connect(address: &Address) -> Result<StreamConnection, TransportError> {
    connect_with(address, &TransportSecurity::Plain)
}

/// Connects to `address` as [`connect`] does, then, with [`TransportSecurity::Tls`], runs
/// the handshake as the client: the destination's certificate must chain to the CA, name
/// the host dialled and be on the allow-list, and ours is sent for it to check. A
/// destination that refuses our certificate is seen at the first read or write (TLS 1.3
/// ends the client's part of the handshake first); either way it never applied a byte of
/// the stream.
///
/// # Errors
/// As [`connect`]; [`TransportError::TlsNeedsTcp`], [`TransportError::ServerName`],
/// [`TransportError::Creds`] (no client pair), [`TransportError::Handshake`],
/// [`TransportError::HandshakeTimeout`].
pub fn connect_with(
    address: &Address,
    security: &TransportSecurity,
) -> Result<StreamConnection, TransportError> {
    match (address, security) {
        (Address::Tcp { host, port }, TransportSecurity::Tls(creds)) => {
            let config = creds.client_config()?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| TransportError::ServerName { host: host.clone() })?;
            let stream = connect_tcp(address, host, *port)?;
            let tls = rustls::ClientConnection::new(config, name).map_err(|e| {
                TransportError::Handshake {
                    peer: address.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, e),
                }
            })?;
            StreamConnection::tls(
                stream,
                tls.into(),
                address.clone(),
                SOURCE_HANDSHAKE_TIMEOUT,
            )
        }
        (Address::Unix(_), TransportSecurity::Tls(_)) => Err(TransportError::TlsNeedsTcp {
            address: address.clone(),
        }),
        (Address::Tcp { host, port }, TransportSecurity::Plain) => {
            StreamConnection::from_tcp(connect_tcp(address, host, *port)?)
        }
        (Address::Unix(path), TransportSecurity::Plain) => {
            let stream = UnixStream::connect(path).map_err(|source| TransportError::Connect {
                address: address.clone(),
                source,
            })?;
            StreamConnection::from_unix(stream)
        }
    }
}

impl StreamConnection {
    /// Sets `TCP_NODELAY` on `stream` and runs the handshake of `tls` on it, done within
    /// `within`.
    fn tls(
        stream: TcpStream,
        tls: rustls::Connection,
        peer: Address,
        within: Duration,
    ) -> Result<StreamConnection, TransportError> {
        set_nodelay(&stream)?;
        let session = tls::TlsStream::handshake(stream, tls, within).map_err(|e| match e {
            tls::HandshakeError::Timeout => TransportError::HandshakeTimeout { peer, within },
            tls::HandshakeError::Io(source) => TransportError::Handshake { peer, source },
        })?;
        Ok(StreamConnection {
            link: Link::Tls(Arc::new(session)),
        })
    }
}

/// A TCP connection to the first address `host` resolves to that accepts, each tried for at
/// most [`CONNECT_TIMEOUT`].
fn connect_tcp(address: &Address, host: &str, port: u16) -> Result<TcpStream, TransportError> {
    let targets = (host, port)
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            address: address.clone(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to nothing");
    for target in targets {
        match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(TransportError::Connect {
        address: address.clone(),
        source: last,
    })
}

fn set_nodelay(stream: &TcpStream) -> Result<(), TransportError> {
    stream
        .set_nodelay(true)
        .map_err(|source| TransportError::SocketOption {
            option: "TCP_NODELAY",
            source,
        })
}

/// Sets a `SOL_SOCKET` buffer size option.
fn set_buffer(fd: BorrowedFd<'_>, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(0);
    // SAFETY: `fd` is an open socket for the duration of the borrow; `value` is a live
    // `c_int` and `len` is its size, which is what SO_SNDBUF/SO_RCVBUF read.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            len,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
