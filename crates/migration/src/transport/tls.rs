//! A TLS session over a TCP socket that several handles use at once: one thread reads while
//! another writes, and a third shuts the socket down (the engine's pattern).
//!
//! The rustls connection (its keys, sequence numbers and buffers) sits behind one lock,
//! held only to encrypt or decrypt, never across a socket call:
//!
//! * reading: under the read lock (one reader at a time, owner of the ciphertext buffer),
//!   plaintext already decrypted is returned; otherwise buffered ciphertext is fed to rustls;
//!   otherwise the socket is read with the TLS lock released, so a writer is never held up
//!   by a read that waits on the peer;
//! * writing: under the write lock (owner of the outgoing buffer), the plaintext is
//!   encrypted into records and the records are taken out, both under the TLS lock; the
//!   records are then sent with only the write lock held. Records leave in the order they
//!   were made, since whoever takes them out holds the write lock until they are sent, and
//!   looks again (under the TLS lock) before letting it go;
//! * records a read produces (an alert, a key update) are sent by the reader if the write
//!   lock is free, or else by the writer holding it, which looks again before it lets go.
//!
//! The socket's read and write timeouts apply to the socket calls, as on a plain
//! connection. A shutdown of the socket ends a blocked read (it sees the end of the stream)
//! and a blocked write (`EPIPE`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Ciphertext read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// Plaintext rustls holds for sending before it must be taken out; a write encrypts at most
/// this much at a time.
const SEND_BUFFER: usize = 256 << 10;

/// How long a destination's accept waits for a source to complete the handshake, unless
/// told otherwise ([`Listener::accept_within`](super::Listener::accept_within)).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a source's connect waits for the destination to complete the handshake: longer
/// than a destination's [`HANDSHAKE_TIMEOUT`] and the receiver's setup timeout together,
/// with room for a loaded machine. A destination takes several peers at once, so a source
/// waits this long only for one that never accepts it (committed to another migration
/// already: its connection stays in the kernel's queue).
pub const SOURCE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Ciphertext received and not yet given to rustls.
struct Incoming {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Records taken out of rustls and not yet sent; and whether a send failed part-way (then
/// the record stream is cut, and nothing more may follow it).
struct Outgoing {
    buf: Vec<u8>,
    broken: bool,
}

/// One TLS session, shared by every handle of a [`StreamConnection`](super::StreamConnection).
pub(super) struct TlsStream {
    socket: TcpStream,
    tls: Mutex<rustls::Connection>,
    incoming: Mutex<Incoming>,
    outgoing: Mutex<Outgoing>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a handshake failed.
#[derive(Debug)]
pub(super) enum HandshakeError {
    /// Not complete by the deadline.
    Timeout,
    /// The peer or its certificate was refused, the peer refused ours, or the socket failed.
    Io(io::Error),
}

/// The socket, each read and write given only the time left until a deadline: a peer that
/// trickles a byte now and then does not stretch the handshake past it.
struct Until<'a> {
    socket: &'a TcpStream,
    deadline: Instant,
}

impl Until<'_> {
    /// The time left, set as the socket's timeouts; `TimedOut` once there is none.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.socket.set_read_timeout(Some(left))?;
        self.socket.set_write_timeout(Some(left))
    }
}

impl Read for Until<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.socket.read(buf)
    }
}

impl Write for Until<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    /// Runs the handshake on `socket`, done within `timeout` in all (however the peer spaces
    /// its bytes): on success the peer is authenticated (for a server, once the client's
    /// certificate is verified; for a client, once the server's is and the client's
    /// `Finished` is sent). The socket's timeouts are cleared afterwards.
    pub(super) fn handshake(
        socket: TcpStream,
        mut tls: rustls::Connection,
        timeout: Duration,
    ) -> Result<TlsStream, HandshakeError> {
        let mut io = Until {
            socket: &socket,
            deadline: Instant::now() + timeout,
        };
        let done = (|| {
            while tls.is_handshaking() {
                tls.complete_io(&mut io)?;
            }
            while tls.wants_write() {
                tls.write_tls(&mut io)?;
            }
            Ok(())
        })();
        done.map_err(|e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HandshakeError::Timeout,
            _ => HandshakeError::Io(e),
        })?;
        socket
            .set_read_timeout(None)
            .and_then(|()| socket.set_write_timeout(None))
            .map_err(HandshakeError::Io)?;
        tls.set_buffer_limit(Some(SEND_BUFFER));
        Ok(TlsStream {
            socket,
            tls: Mutex::new(tls),
            incoming: Mutex::new(Incoming {
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
                start: 0,
                end: 0,
            }),
            outgoing: Mutex::new(Outgoing {
                buf: Vec::with_capacity(SEND_BUFFER + (16 << 10)),
                broken: false,
            }),
        })
    }

    /// The socket under the session.
    pub(super) fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Reads plaintext: `Ok(0)` once the peer closed with `close_notify`; `UnexpectedEof` if
    /// the socket ended without it (a cut connection, or a shutdown here); `InvalidData` for
    /// a record that fails to decrypt or an alert from the peer.
    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut incoming = lock(&self.incoming);
        loop {
            let records_to_send = {
                let mut tls = lock(&self.tls);
                loop {
                    match tls.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    if incoming.start == incoming.end {
                        break;
                    }
                    let Incoming {
                        buf: raw,
                        start,
                        end,
                    } = &mut *incoming;
                    let mut pending = raw.get(*start..*end).unwrap_or_default();
                    let fed = tls.read_tls(&mut pending)?;
                    if fed == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "TLS took none of the records received",
                        ));
                    }
                    *start += fed;
                    if let Err(e) = tls.process_new_packets() {
                        drop(tls);
                        // The alert that tells the peer why, if one is due.
                        let _ = self.send_queued();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                tls.wants_write()
            };
            if records_to_send {
                self.send_queued()?;
            }
            let n = (&self.socket).read(&mut incoming.buf)?;
            incoming.start = 0;
            incoming.end = n;
            if n == 0 {
                // The end of the socket's stream: rustls tells a close_notify from a cut.
                let mut eof: &[u8] = &[];
                lock(&self.tls).read_tls(&mut eof)?;
            }
        }
    }

    /// Encrypts and sends up to `buf.len()` bytes; returns how many were taken.
    pub(super) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_with(|tls| tls.writer().write(buf))
    }

    /// [`TlsStream::write`] of several buffers, as one run of records.
    pub(super) fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.write_with(|tls| tls.writer().write_vectored(bufs))
    }

    fn write_with(
        &self,
        encrypt: impl FnOnce(&mut rustls::Connection) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut outgoing = lock(&self.outgoing);
        if outgoing.broken {
            return Err(broken());
        }
        let taken = {
            let mut tls = lock(&self.tls);
            let taken = encrypt(&mut tls)?;
            take_records(&mut tls, &mut outgoing.buf)?;
            taken
        };
        self.send(outgoing)?;
        Ok(taken)
    }

    /// Sends `close_notify`: the peer reads the end of the stream (`Ok(0)`), and can still
    /// answer. Then shuts the socket's writing direction down.
    pub(super) fn shutdown_write(&self) -> io::Result<()> {
        let mut outgoing = lock(&self.outgoing);
        if !outgoing.broken {
            let mut tls = lock(&self.tls);
            tls.send_close_notify();
            take_records(&mut tls, &mut outgoing.buf)?;
            drop(tls);
            self.send(outgoing)?;
        }
        self.socket.shutdown(Shutdown::Write)
    }

    /// Shuts the socket down, without `close_notify` (a writer blocked on a stalled peer
    /// holds the write lock, and a cancel must not wait for it): blocked calls here return,
    /// and the peer sees a cut stream, which it reports as an error.
    pub(super) fn shutdown(&self) -> io::Result<()> {
        self.socket.shutdown(Shutdown::Both)
    }

    /// Sends records a read produced, unless a writer holds the write lock (it sends them).
    fn send_queued(&self) -> io::Result<()> {
        let outgoing = match self.outgoing.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        if outgoing.broken {
            return Ok(());
        }
        self.send(outgoing)
    }

    /// Sends what `outgoing` holds, then whatever rustls made meanwhile, until rustls has
    /// nothing left; the write lock is let go while the TLS lock is held, so a record queued
    /// by a reader after the last look finds the write lock free.
    fn send(&self, mut outgoing: MutexGuard<'_, Outgoing>) -> io::Result<()> {
        loop {
            if !outgoing.buf.is_empty() {
                let sent = (&self.socket).write_all(&outgoing.buf);
                outgoing.buf.clear();
                if let Err(e) = sent {
                    outgoing.broken = true;
                    return Err(e);
                }
            }
            let mut tls = lock(&self.tls);
            take_records(&mut tls, &mut outgoing.buf)?;
            if outgoing.buf.is_empty() {
                drop(outgoing);
                drop(tls);
                return Ok(());
            }
        }
    }
}

/// Moves every record rustls has made into `out`.
fn take_records(tls: &mut rustls::Connection, out: &mut Vec<u8>) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(out)?;
    }
    Ok(())
}

/// The alert the peer sent, if `error` is a read that failed on one (e.g. `UnknownCA` from a
/// destination that refused our certificate).
pub(super) fn alert(error: &io::Error) -> Option<rustls::AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "an earlier write failed part-way through a TLS record",
    )
}
