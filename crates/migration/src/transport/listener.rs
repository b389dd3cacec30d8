//! The destination's side of a transport: a listening socket, the connections it accepts
//! (before and after their handshake), and a handle that stops one's reads.

use std::io;
use std::net::{Shutdown, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Address, HANDSHAKE_TIMEOUT, Socket, StreamConnection, TransportError, TransportSecurity,
};

#[derive(Debug)]
enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket. A UNIX listener removes its socket file when dropped.
#[derive(Debug)]
pub struct Listener {
    socket: ListenSocket,
    address: Address,
    /// With TLS, the destination's configuration: each accepted peer is authenticated.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Listens on `address` in plain: for TCP, on the first address the host resolves to (port 0
/// picks a free port; [`Listener::address`] tells which). A UNIX socket path must not exist.
///
/// # Errors
/// [`TransportError::Resolve`], [`TransportError::Listen`] (e.g. `EADDRINUSE`).
pub fn listen(address: &Address) -> Result<Listener, TransportError> {
    listen_with(address, &TransportSecurity::Plain)
}

/// Listens on `address` as [`listen`] does; with [`TransportSecurity::Tls`],
/// [`Listener::accept`] returns only peers that completed the handshake with a client
/// certificate the CA signed (and on the allow-list).
///
/// # Errors
/// As [`listen`]; [`TransportError::TlsNeedsTcp`], [`TransportError::Creds`] (no server
/// pair).
pub fn listen_with(
    address: &Address,
    security: &TransportSecurity,
) -> Result<Listener, TransportError> {
    let tls = match (address, security) {
        (_, TransportSecurity::Plain) => None,
        (Address::Tcp { .. }, TransportSecurity::Tls(creds)) => Some(creds.server_config()?),
        (Address::Unix(_), TransportSecurity::Tls(_)) => {
            return Err(TransportError::TlsNeedsTcp {
                address: address.clone(),
            });
        }
    };
    let listen_error = |source| TransportError::Listen {
        address: address.clone(),
        source,
    };
    match address {
        Address::Tcp { host, port } => {
            let target = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|source| TransportError::Resolve {
                    address: address.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| TransportError::Resolve {
                    address: address.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "host resolved to nothing"),
                })?;
            let socket = TcpListener::bind(target).map_err(listen_error)?;
            let local = socket.local_addr().map_err(listen_error)?;
            Ok(Listener {
                socket: ListenSocket::Tcp(socket),
                address: Address::Tcp {
                    host: local.ip().to_string(),
                    port: local.port(),
                },
                tls,
            })
        }
        Address::Unix(path) => {
            let socket = UnixListener::bind(path).map_err(listen_error)?;
            Ok(Listener {
                socket: ListenSocket::Unix(socket),
                address: address.clone(),
                tls,
            })
        }
    }
}

impl Listener {
    /// The address it listens on, with the port the kernel chose for TCP port 0.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Whether accepted peers are authenticated with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Waits for one connection; with TLS, runs the handshake as the server (done within
    /// [`HANDSHAKE_TIMEOUT`]) and returns the connection only once the peer's certificate
    /// is verified. A refused peer is an error here: nothing it sent past the handshake is
    /// read.
    ///
    /// # Errors
    /// [`TransportError::Accept`], [`TransportError::SocketOption`],
    /// [`TransportError::Handshake`], [`TransportError::HandshakeTimeout`].
    pub fn accept(&self) -> Result<StreamConnection, TransportError> {
        self.accept_within(HANDSHAKE_TIMEOUT)
    }

    /// [`Listener::accept`] with the TLS handshake done within `handshake`. Only
    /// [`TransportError::Accept`] is the listener's own failure; any other error is the
    /// peer's (or its socket's), and the listener serves the next one as before.
    ///
    /// # Errors
    /// As [`Listener::accept`].
    pub fn accept_within(&self, handshake: Duration) -> Result<StreamConnection, TransportError> {
        self.accept_socket()?.into_connection(handshake)
    }

    /// Waits for one connection and accepts it, leaving its handshake to
    /// [`Accepted::into_connection`] (which another thread may run, while this one accepts
    /// the next).
    ///
    /// # Errors
    /// [`TransportError::Accept`], the listener's own failure (or the connection's, lost
    /// before it was accepted).
    pub fn accept_socket(&self) -> Result<Accepted, TransportError> {
        let accept_error = |source| TransportError::Accept {
            address: self.address.clone(),
            source,
        };
        let (socket, peer) = match &self.socket {
            ListenSocket::Tcp(socket) => {
                let (stream, peer) = socket.accept().map_err(accept_error)?;
                let peer = Address::Tcp {
                    host: peer.ip().to_string(),
                    port: peer.port(),
                };
                (Socket::Tcp(stream), peer)
            }
            ListenSocket::Unix(socket) => {
                let (stream, _) = socket.accept().map_err(accept_error)?;
                (Socket::Unix(stream), self.address.clone())
            }
        };
        Ok(Accepted {
            socket,
            peer,
            tls: self.tls.clone(),
        })
    }

    /// Whether a connection waits to be accepted, waiting at most `within` for one: a
    /// thread that accepts can look at other work in between.
    ///
    /// # Errors
    /// [`TransportError::Accept`] with the `poll` errno.
    pub fn wait_for_connection(&self, within: Duration) -> Result<bool, TransportError> {
        let mut fd = libc::pollfd {
            fd: self.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is one live `pollfd` and the count says one; the listening socket
        // stays open for the duration of the borrow of `self`.
        let ready = unsafe { libc::poll(&raw mut fd, 1, timeout) };
        match ready {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let source = io::Error::last_os_error();
                if source.kind() == io::ErrorKind::Interrupted {
                    return Ok(false);
                }
                Err(TransportError::Accept {
                    address: self.address.clone(),
                    source,
                })
            }
        }
    }
}

/// A connection just accepted, before anything is read from it: with TLS, its peer is not
/// authenticated yet.
#[derive(Debug)]
pub struct Accepted {
    socket: Socket,
    peer: Address,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Accepted {
    /// Who connected: the peer's TCP address, or the listener's UNIX path.
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// A handle that ends this connection's reads (see [`ReadStop`]), to be used from
    /// another thread than the one that reads it.
    ///
    /// # Errors
    /// The `dup` errno.
    pub fn read_stop(&self) -> io::Result<ReadStop> {
        let socket = match &self.socket {
            Socket::Tcp(stream) => Socket::Tcp(stream.try_clone()?),
            Socket::Unix(stream) => Socket::Unix(stream.try_clone()?),
        };
        Ok(ReadStop(socket))
    }

    /// Sets the socket's options and, with TLS, runs the handshake as the server, done
    /// within `handshake`: the connection is handed out only once the peer's certificate is
    /// verified, and nothing the peer sent past the handshake is read.
    ///
    /// # Errors
    /// [`TransportError::SocketOption`], [`TransportError::Handshake`],
    /// [`TransportError::HandshakeTimeout`]: the peer's failures (or its socket's), not the
    /// listener's.
    pub fn into_connection(self, handshake: Duration) -> Result<StreamConnection, TransportError> {
        let Accepted { socket, peer, tls } = self;
        match (socket, tls) {
            (Socket::Tcp(stream), Some(config)) => {
                let tls = rustls::ServerConnection::new(config).map_err(|e| {
                    TransportError::Handshake {
                        peer: peer.clone(),
                        source: io::Error::new(io::ErrorKind::InvalidInput, e),
                    }
                })?;
                StreamConnection::tls(stream, tls.into(), peer, handshake)
            }
            (Socket::Tcp(stream), None) => StreamConnection::from_tcp(stream),
            // `listen_with` refuses TLS on a UNIX socket.
            (Socket::Unix(stream), _) => StreamConnection::from_unix(stream),
        }
    }
}

/// A second handle to an accepted connection's socket that can end its reads: a thread
/// blocked reading it (in the handshake, or the stream after it) sees the end of the stream
/// at once, and every later read does too, while writes still go out, so the thread can
/// still tell the peer why. Dropping it leaves the connection open.
#[derive(Debug)]
pub struct ReadStop(Socket);

impl ReadStop {
    /// Shuts the connection's reading direction down.
    ///
    /// # Errors
    /// The `shutdown` errno (`ENOTCONN` if the peer is gone already).
    pub fn stop(&self) -> io::Result<()> {
        match &self.0 {
            Socket::Tcp(stream) => stream.shutdown(Shutdown::Read),
            Socket::Unix(stream) => stream.shutdown(Shutdown::Read),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            ListenSocket::Tcp(socket) => socket.as_fd(),
            ListenSocket::Unix(socket) => socket.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(path) = &self.address {
            remove_socket_file(path);
        }
    }
}

fn remove_socket_file(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        tracing::debug!(path = %path.display(), %err, "could not remove the socket file");
    }
}
