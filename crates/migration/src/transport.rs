//! Transports: TCP and UNIX stream sockets, named by an [`Address`] (`tcp:HOST:PORT`,
//! `unix:PATH`), dialled with [`connect`] or served with [`listen`] and
//! [`Listener::accept`]. Either way the result is a [`Connection`]: `Read + Write` (also
//! through `&Connection`, so one thread can read while another writes), and
//! [`Connection::shutdown`], which a cancelled sender calls to make the receiver see the end
//! of the stream at once.
//!
//! Socket options:
//! * TCP: `TCP_NODELAY`, so the small sections (markers, `End`, the receiver's answers)
//!   leave at once instead of waiting for an ACK. Socket buffers are left to the kernel:
//!   Linux grows them up to `net.ipv4.tcp_{w,r}mem` as the connection runs, and setting
//!   `SO_SNDBUF`/`SO_RCVBUF` would pin them and turn that auto-tuning off.
//! * UNIX: `SO_SNDBUF` and `SO_RCVBUF` of [`UNIX_SOCKET_BUFFER`] (the kernel caps them at
//!   `net.core.{w,r}mem_max`), since UNIX sockets do not auto-tune and their default of
//!   about 200 KiB makes the writer block every 200 KiB.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The socket buffer size asked for on UNIX sockets.
pub const UNIX_SOCKET_BUFFER: usize = 4 << 20;

/// The longest UNIX socket path (`sizeof(sun_path)` less the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Where a migration stream goes or comes from.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Address {
    /// A TCP endpoint: a host name or IP address (IPv6 without brackets), and a port (0 to
    /// listen on any free port).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A UNIX stream socket at a path.
    Unix(PathBuf),
}

/// Why an address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Neither `tcp:` nor `unix:`.
    #[error("address {input:?} must start with tcp: or unix:")]
    Scheme {
        /// The string.
        input: String,
    },
    /// `tcp:` without `HOST:PORT`.
    #[error("address {input:?} must be tcp:HOST:PORT (IPv6 hosts in brackets)")]
    TcpForm {
        /// The string.
        input: String,
    },
    /// A port that is not a number from 0 to 65535.
    #[error("address {input:?} has an invalid port")]
    Port {
        /// The string.
        input: String,
    },
    /// `unix:` with an empty path, a NUL byte, or a path longer than [`MAX_UNIX_PATH`].
    #[error("address {input:?} must be unix:PATH with a path of 1 to {MAX_UNIX_PATH} bytes")]
    UnixPath {
        /// The string.
        input: String,
    },
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Address, AddressError> {
        if let Some(rest) = input.strip_prefix("tcp:") {
            let tcp_form = || AddressError::TcpForm {
                input: input.to_owned(),
            };
            let (host, port) = rest.rsplit_once(':').ok_or_else(tcp_form)?;
            let host = match host.strip_prefix('[') {
                Some(bracketed) => bracketed.strip_suffix(']').ok_or_else(tcp_form)?,
                None if host.contains(':') => return Err(tcp_form()),
                None => host,
            };
            if host.is_empty() || host.contains(['[', ']']) {
                return Err(tcp_form());
            }
            let port = port.parse().map_err(|_| AddressError::Port {
                input: input.to_owned(),
            })?;
            Ok(Address::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() || path.len() > MAX_UNIX_PATH || path.contains('\0') {
                return Err(AddressError::UnixPath {
                    input: input.to_owned(),
                });
            }
            Ok(Address::Unix(PathBuf::from(path)))
        } else {
            Err(AddressError::Scheme {
                input: input.to_owned(),
            })
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An address travels as its string (`tcp:HOST:PORT`, `unix:PATH`), parsed on arrival.
impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

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
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connected stream socket, TCP or UNIX, with its options set.
#[derive(Debug)]
pub struct Connection {
    socket: Socket,
}

impl Connection {
    /// Wraps a connected TCP socket, setting `TCP_NODELAY`.
    ///
    /// # Errors
    /// [`TransportError::SocketOption`].
    pub fn from_tcp(stream: TcpStream) -> Result<Connection, TransportError> {
        stream
            .set_nodelay(true)
            .map_err(|source| TransportError::SocketOption {
                option: "TCP_NODELAY",
                source,
            })?;
        Ok(Connection {
            socket: Socket::Tcp(stream),
        })
    }

    /// Wraps a connected UNIX socket, enlarging its buffers.
    ///
    /// # Errors
    /// [`TransportError::SocketOption`].
    pub fn from_unix(stream: UnixStream) -> Result<Connection, TransportError> {
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
        Ok(Connection {
            socket: Socket::Unix(stream),
        })
    }

    /// Two connected UNIX sockets, for a sender and a receiver in one process (tests, or a
    /// local migration).
    ///
    /// # Errors
    /// [`TransportError::Connect`] if `socketpair` fails; [`TransportError::SocketOption`].
    pub fn unix_pair() -> Result<(Connection, Connection), TransportError> {
        let (a, b) = UnixStream::pair().map_err(|source| TransportError::Connect {
            address: Address::Unix(PathBuf::from("(socketpair)")),
            source,
        })?;
        Ok((Connection::from_unix(a)?, Connection::from_unix(b)?))
    }

    /// Shuts both directions down: the peer reads the end of the stream, and a thread of
    /// ours blocked reading or writing this connection returns. What a cancelled sender does.
    ///
    /// # Errors
    /// The `shutdown` errno (`ENOTCONN` if the peer is gone already).
    pub fn shutdown(&self) -> io::Result<()> {
        self.shutdown_how(Shutdown::Both)
    }

    /// Shuts the writing direction down: the peer reads the end of the stream, and can
    /// still answer.
    ///
    /// # Errors
    /// The `shutdown` errno.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown_how(Shutdown::Write)
    }

    fn shutdown_how(&self, how: Shutdown) -> io::Result<()> {
        match &self.socket {
            Socket::Tcp(stream) => stream.shutdown(how),
            Socket::Unix(stream) => stream.shutdown(how),
        }
    }

    /// Another handle to the same socket (a `dup`), e.g. for a thread that cancels.
    ///
    /// # Errors
    /// The `dup` errno.
    pub fn try_clone(&self) -> io::Result<Connection> {
        let socket = match &self.socket {
            Socket::Tcp(stream) => Socket::Tcp(stream.try_clone()?),
            Socket::Unix(stream) => Socket::Unix(stream.try_clone()?),
        };
        Ok(Connection { socket })
    }

    /// Sets (or with `None` clears) how long a read may block before it fails with
    /// `WouldBlock`/`TimedOut`.
    ///
    /// # Errors
    /// `EINVAL` for a zero duration.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.socket {
            Socket::Tcp(stream) => stream.set_read_timeout(timeout),
            Socket::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    /// Sets (or clears) how long a write may block.
    ///
    /// # Errors
    /// `EINVAL` for a zero duration.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.socket {
            Socket::Tcp(stream) => stream.set_write_timeout(timeout),
            Socket::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    /// Whether this is a TCP connection.
    pub fn is_tcp(&self) -> bool {
        matches!(self.socket, Socket::Tcp(_))
    }

    /// Whether `TCP_NODELAY` is set (`false` for a UNIX socket).
    ///
    /// # Errors
    /// The `getsockopt` errno.
    pub fn nodelay(&self) -> io::Result<bool> {
        match &self.socket {
            Socket::Tcp(stream) => stream.nodelay(),
            Socket::Unix(_) => Ok(false),
        }
    }
}

impl Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.socket {
            Socket::Tcp(stream) => (&*stream).read(buf),
            Socket::Unix(stream) => (&*stream).read(buf),
        }
    }
}

impl Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.socket {
            Socket::Tcp(stream) => (&*stream).write(buf),
            Socket::Unix(stream) => (&*stream).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match &self.socket {
            Socket::Tcp(stream) => (&*stream).write_vectored(bufs),
            Socket::Unix(stream) => (&*stream).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Connection {
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

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Tcp(stream) => stream.as_fd(),
            Socket::Unix(stream) => stream.as_fd(),
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Connects to `address`: for TCP, to each address the host resolves to in turn.
///
/// # Errors
/// [`TransportError::Resolve`], [`TransportError::Connect`] (the last address's error),
/// [`TransportError::SocketOption`].
pub fn connect(address: &Address) -> Result<Connection, TransportError> {
    match address {
        Address::Tcp { host, port } => {
            let targets = (host.as_str(), *port).to_socket_addrs().map_err(|source| {
                TransportError::Resolve {
                    address: address.clone(),
                    source,
                }
            })?;
            let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to nothing");
            for target in targets {
                match TcpStream::connect(target) {
                    Ok(stream) => return Connection::from_tcp(stream),
                    Err(err) => last = err,
                }
            }
            Err(TransportError::Connect {
                address: address.clone(),
                source: last,
            })
        }
        Address::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(|source| TransportError::Connect {
                address: address.clone(),
                source,
            })?;
            Connection::from_unix(stream)
        }
    }
}

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
}

/// Listens on `address`: for TCP, on the first address the host resolves to (port 0 picks
/// a free port; [`Listener::address`] tells which). A UNIX socket path must not exist.
///
/// # Errors
/// [`TransportError::Resolve`], [`TransportError::Listen`] (e.g. `EADDRINUSE`).
pub fn listen(address: &Address) -> Result<Listener, TransportError> {
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
            })
        }
        Address::Unix(path) => {
            let socket = UnixListener::bind(path).map_err(listen_error)?;
            Ok(Listener {
                socket: ListenSocket::Unix(socket),
                address: address.clone(),
            })
        }
    }
}

impl Listener {
    /// The address it listens on, with the port the kernel chose for TCP port 0.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for one connection.
    ///
    /// # Errors
    /// [`TransportError::Accept`], [`TransportError::SocketOption`].
    pub fn accept(&self) -> Result<Connection, TransportError> {
        let accept_error = |source| TransportError::Accept {
            address: self.address.clone(),
            source,
        };
        match &self.socket {
            ListenSocket::Tcp(socket) => {
                let (stream, _) = socket.accept().map_err(accept_error)?;
                Connection::from_tcp(stream)
            }
            ListenSocket::Unix(socket) => {
                let (stream, _) = socket.accept().map_err(accept_error)?;
                Connection::from_unix(stream)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<Address, AddressError> {
        input.parse()
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for input in [
            "tcp:127.0.0.1:4444",
            "tcp:localhost:0",
            "tcp:[::1]:80",
            "unix:/tmp/vfmig.sock",
            "unix:relative/sock",
        ] {
            assert_eq!(parse(input).unwrap().to_string(), input);
        }
        assert_eq!(
            parse("tcp:[::1]:80").unwrap(),
            Address::Tcp {
                host: "::1".into(),
                port: 80
            }
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        assert!(matches!(parse("udp:x:1"), Err(AddressError::Scheme { .. })));
        assert!(matches!(
            parse("tcp:4444"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp::4444"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp:::1:80"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp:[::1:80"),
            Err(AddressError::TcpForm { .. })
        ));
        assert!(matches!(
            parse("tcp:h:65536"),
            Err(AddressError::Port { .. })
        ));
        assert!(matches!(parse("tcp:h:"), Err(AddressError::Port { .. })));
        assert!(matches!(parse("unix:"), Err(AddressError::UnixPath { .. })));
        let long = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH));
        assert!(matches!(parse(&long), Err(AddressError::UnixPath { .. })));
    }
}
