//! Helpers shared by the integration tests: a server with the dummy device on a real socket,
//! guest memory for fd-less mappings, eventfds, and a raw client that sends bytes as given.
#![allow(dead_code, unreachable_pub, clippy::cast_possible_truncation)]

pub mod dummy;
pub mod relay;

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

pub use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_iommu::{Container, Iova};
use vfmig_vfio_user::message::{
    Capabilities, Command, Header, MigrationCapability, Payload, Reply, Request, Version,
};
use vfmig_vfio_user::server::SessionEnd;
use vfmig_vfio_user::{Client, ClientConfig, ClientMemory, Connection, Errno, Limits, Server};

#[allow(unused_imports)]
pub use dummy::{Dummy, DummyState, memfd};

/// The container page size.
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// A server thread with the dummy device, and what the tests look at.
pub struct TestServer {
    /// The device's state.
    pub state: Arc<Mutex<DummyState>>,
    /// The container the server keeps the client's mappings in (shared with the device).
    pub container: Container,
    handle: Option<JoinHandle<Vec<SessionEnd>>>,
}

impl TestServer {
    /// Waits for the server to finish its sessions; returns how each ended.
    pub fn join(mut self) -> Vec<SessionEnd> {
        self.handle.take().unwrap().join().unwrap()
    }
}

/// A server with the dummy device (migration capable) serving one connection; returns the
/// client's end of the socket.
pub fn spawn_server(limits: Limits) -> (UnixStream, TestServer) {
    spawn_server_with(limits, true)
}

/// As [`spawn_server`], choosing whether the device can migrate.
pub fn spawn_server_with(limits: Limits, migration: bool) -> (UnixStream, TestServer) {
    spawn_server_configured(limits, migration, |_| {})
}

/// As [`spawn_server_with`], the server set up by `configure` before it serves.
pub fn spawn_server_configured(
    limits: Limits,
    migration: bool,
    configure: impl FnOnce(&mut Server<Dummy>) + Send + 'static,
) -> (UnixStream, TestServer) {
    let (client, server_end) = UnixStream::pair().unwrap();
    let container = Container::default();
    let (dummy, state) = Dummy::new(container.clone(), migration);
    let server_container = container.clone();
    let handle = thread::spawn(move || {
        let mut server = Server::new(dummy, server_container, limits);
        configure(&mut server);
        let conn = Connection::with_limits(server_end, limits).unwrap();
        vec![server.serve_connection(conn)]
    });
    (
        client,
        TestServer {
            state,
            container,
            handle: Some(handle),
        },
    )
}

/// A unique socket path in the temporary directory.
pub fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("vfmig-vu-{}-{}-{name}.sock", std::process::id(), n));
    let _ = std::fs::remove_file(&path);
    path
}

/// A server listening at a fresh path that serves `clients` clients one after the other.
pub fn spawn_listener(clients: usize) -> (PathBuf, TestServer) {
    spawn_listener_with(clients, vfmig_vfio_user::server::HANDSHAKE_TIMEOUT)
}

/// As [`spawn_listener`], giving each client `handshake_timeout` to complete VERSION.
pub fn spawn_listener_with(
    clients: usize,
    handshake_timeout: std::time::Duration,
) -> (PathBuf, TestServer) {
    let path = socket_path("listener");
    let listener = UnixListener::bind(&path).unwrap();
    let container = Container::default();
    let (dummy, state) = Dummy::new(container.clone(), true);
    let server_container = container.clone();
    let socket = path.clone();
    let handle = thread::spawn(move || {
        let mut server = Server::new(dummy, server_container, Limits::default());
        server.set_handshake_timeout(handshake_timeout);
        let ends = (0..clients)
            .map(|_| server.serve_one(&listener).unwrap())
            .collect();
        let _ = std::fs::remove_file(socket);
        ends
    });
    (
        path,
        TestServer {
            state,
            container,
            handle: Some(handle),
        },
    )
}

/// A client connected to a fresh server (default limits on both sides).
pub fn connect() -> (Client, TestServer) {
    connect_with(ClientConfig::default(), Limits::default())
}

/// A client with `config` connected to a fresh server with `limits`.
pub fn connect_with(config: ClientConfig, limits: Limits) -> (Client, TestServer) {
    let (stream, server) = spawn_server(limits);
    (Client::from_stream(stream, config).unwrap(), server)
}

/// Guest memory for fd-less mappings: a buffer starting at `base`.
pub struct VecMemory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
}

impl VecMemory {
    /// `len` zero bytes at IOVA `base`.
    pub fn new(base: u64, len: usize) -> Arc<Self> {
        Arc::new(Self {
            base,
            bytes: Mutex::new(vec![0; len]),
        })
    }

    /// A copy of `len` bytes at `iova`.
    pub fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let at = (iova - self.base) as usize;
        self.bytes.lock().unwrap()[at..at + len].to_vec()
    }

    /// Stores `data` at `iova`.
    pub fn set(&self, iova: u64, data: &[u8]) {
        let at = (iova - self.base) as usize;
        self.bytes.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
    }

    fn range(&self, iova: Iova, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        let at = iova.raw().checked_sub(self.base).ok_or(Errno::EFAULT)? as usize;
        let end = at.checked_add(len).ok_or(Errno::EFAULT)?;
        (end <= self.bytes.lock().unwrap().len())
            .then_some(at..end)
            .ok_or(Errno::EFAULT)
    }
}

impl ClientMemory for VecMemory {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), Errno> {
        let range = self.range(iova, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[range]);
        Ok(())
    }

    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), Errno> {
        let range = self.range(iova, data.len())?;
        self.bytes.lock().unwrap()[range].copy_from_slice(data);
        Ok(())
    }
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd has no memory effects; the fd is checked and owned at once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The eventfd's counter, reset to 0 (0 if it was not signalled).
pub fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut file = File::from(fd.try_clone().unwrap());
    let mut bytes = [0; 8];
    match file.read(&mut bytes) {
        Ok(8) => u64::from_ne_bytes(bytes),
        _ => 0,
    }
}

/// The set page indexes of a bitmap.
pub fn pages_of(bits: &[u64]) -> Vec<u64> {
    let mut pages = Vec::new();
    for (w, &word) in bits.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            let bit = u64::from(word.trailing_zeros());
            pages.push(w as u64 * 64 + bit);
            word &= word - 1;
        }
    }
    pages
}

/// The VERSION a minimal client sends.
pub fn client_version() -> Version {
    Version {
        major: 0,
        minor: 2,
        capabilities: Capabilities {
            max_msg_fds: 8,
            max_data_xfer_size: 1 << 20,
            migration: Some(MigrationCapability {
                pgsize: Some(CONTAINER_PAGE_SIZE),
                max_bitmap_size: 4 << 20,
            }),
            twin_socket: None,
        },
    }
}

/// A client that sends whatever bytes a test gives it and reads replies one by one.
pub struct RawClient {
    /// The connection.
    pub conn: Connection,
    next_id: u16,
}

impl RawClient {
    /// Wraps a connection without negotiating.
    pub fn new(stream: UnixStream) -> Self {
        let limits = Limits {
            max_send_fds: 16,
            ..Limits::default()
        };
        Self {
            conn: Connection::with_limits(stream, limits).unwrap(),
            next_id: 1,
        }
    }

    /// Wraps a connection and negotiates VERSION.
    pub fn negotiated(stream: UnixStream) -> Self {
        let mut raw = Self::new(stream);
        let reply = raw.request(&Request::Version(client_version()));
        assert!(
            reply.header.error().is_none(),
            "VERSION refused: {:?}",
            reply.header
        );
        raw
    }

    /// The next msg_id.
    pub fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends `header` and `body` as given (no check).
    pub fn send_raw(&mut self, header: Header, body: &[u8]) {
        self.send_raw_with_fds(header, body, &[]);
    }

    /// Sends `header`, `body` and `fds` as given.
    pub fn send_raw_with_fds(
        &mut self,
        header: Header,
        body: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) {
        // `send` checks msg_size against the body; bypass it for deliberately wrong sizes.
        let mut bytes = zerocopy::IntoBytes::as_bytes(&header).to_vec();
        bytes.extend_from_slice(body);
        if header.msg_size as usize == bytes.len() {
            self.conn.send(&header, body, fds).unwrap();
        } else {
            assert!(fds.is_empty());
            std::io::Write::write_all(&mut self.conn.stream(), &bytes).unwrap();
        }
    }

    /// Sends a command with this body and the next msg_id; returns the header sent.
    pub fn send_body(&mut self, command: Command, body: &[u8]) -> Header {
        let header = Header::new_command(self.next_id(), command, body.len()).unwrap();
        self.send_raw(header, body);
        header
    }

    /// Receives one message.
    pub fn recv(&mut self) -> vfmig_vfio_user::Received {
        self.conn.recv().unwrap()
    }

    /// Sends `request` and returns its reply (whatever it is).
    pub fn request(&mut self, request: &Request<'_>) -> vfmig_vfio_user::Received {
        let id = self.next_id();
        self.conn.send_request(id, request, &[]).unwrap();
        let reply = self.recv();
        assert_eq!(reply.header.msg_id, id);
        reply
    }

    /// Sends a command with this body and returns the errno of its reply (`None`: success).
    pub fn errno_of(&mut self, command: Command, body: &[u8]) -> Option<u32> {
        let sent = self.send_body(command, body);
        let reply = self.recv();
        assert_eq!(reply.header.msg_id, sent.msg_id, "replies come in order");
        reply.header.error()
    }

    /// Asserts the server still answers a good command.
    pub fn assert_alive(&mut self) {
        let body = vfmig_vfio_user::message::DeviceInfo::request()
            .encode()
            .unwrap();
        let sent = self.send_body(Command::DeviceGetInfo, &body);
        let reply = self.recv();
        assert_eq!(reply.header.msg_id, sent.msg_id);
        assert!(
            matches!(
                reply.reply(self.conn.limits()).unwrap(),
                Reply::DeviceGetInfo(info) if info.num_regions == 2
            ),
            "DEVICE_GET_INFO works"
        );
    }
}

/// A client connected to a scripted server: VERSION is answered (with migration), then
/// `script` runs on the server's end of the socket.
pub fn scripted(
    config: ClientConfig,
    script: impl FnOnce(&mut Connection) + Send + 'static,
) -> (Client, JoinHandle<()>) {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let handle = thread::spawn(move || {
        let mut conn = Connection::new(server_end).unwrap();
        let received = conn.recv().unwrap();
        let reply = Version {
            major: 0,
            minor: 2,
            capabilities: Capabilities {
                migration: Some(MigrationCapability {
                    pgsize: Some(CONTAINER_PAGE_SIZE),
                    max_bitmap_size: 1 << 20,
                }),
                ..Capabilities::default()
            },
        };
        conn.send_reply(&received.header, &Reply::Version(reply), &[])
            .unwrap();
        script(&mut conn);
    });
    (Client::from_stream(client_end, config).unwrap(), handle)
}

/// Answers the next command (which must be `command`) with `reply`.
pub fn answer(conn: &mut Connection, command: Command, reply: Reply<'_>) {
    let received = conn.recv().unwrap();
    assert_eq!(received.header.cmd, command.code());
    conn.send_reply(&received.header, &reply, &[]).unwrap();
}

/// Maps one page of a fresh memfd at IOVA 0 for `client`'s device; returns the memfd.
pub fn map_one_page(client: &Client) -> OwnedFd {
    let fd = memfd(CONTAINER_PAGE_SIZE.bytes());
    client
        .dma_map(
            vfmig_iommu::Iova(0),
            CONTAINER_PAGE_SIZE.bytes(),
            vfmig_iommu::Prot::READ_WRITE,
            Some((std::os::fd::AsFd::as_fd(&fd), 0)),
        )
        .unwrap();
    fd
}
