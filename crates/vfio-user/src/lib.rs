//! vfio-user 0.9.1, as libvfio-user v1 (`1569a37`) puts it on the wire: messages, a connection
//! that carries them with file descriptors, a client for the VMM and a server for a device.
//!
//! * [`message`]: the 16-byte [`message::Header`] and the payload of each of the 14 commands,
//!   request and reply, as `#[repr(C)]` zerocopy structs with compile-time size checks;
//!   [`message::Request`] and [`message::Reply`] decode any of them. Where the spec and the
//!   bytes libvfio-user v1 sends differ, the bytes win (the 32-byte dirty bitmap range, the
//!   8-byte DMA_WRITE reply count, 48-byte IO-FD entries).
//! * [`Connection`]: a UNIX stream socket that sends a header, its body and its descriptors in
//!   one `sendmsg`, and receives them with the descriptors collected on the header read.
//! * [`server`]: [`Server`] serves one client at a time for a device [`Backend`], keeping DMA
//!   mappings and dirty pages in a [`vfmig_iommu::Container`] (the kernel's type1 rules).
//! * [`client`]: [`Client`], a typed API over a session, `Send + Sync`, serving the server's
//!   DMA from [`ClientMemory`] at any time.
//! * [`Errno`]: what every failure is reduced to at the protocol boundary.
//!
//! # A session
//!
//! ```mermaid
//! sequenceDiagram
//!     participant C as client (VMM)
//!     participant S as server (device process)
//!     C->>S: VERSION 0.2 {max_msg_fds, max_data_xfer_size, migration {pgsize 4096, max_bitmap_size}}
//!     S-->>C: VERSION 0.2 {8, 1 MiB, migration {4096, max_bitmap_size}}
//!     C->>S: DEVICE_GET_INFO, GET_REGION_INFO (argsz 32, then the argsz needed: caps + fd)
//!     C->>S: DMA_MAP guest RAM (+ memfd), DMA_MAP without fd (server DMAs by message)
//!     C->>S: SET_IRQS (+ eventfds)
//!     C->>S: DIRTY_PAGES START
//!     C->>S: REGION_WRITE (a doorbell)
//!     S->>C: DMA_WRITE (device writes fd-less memory; client records the page)
//!     C-->>S: DMA_WRITE reply (addr, 8-byte count)
//!     S-->>C: REGION_WRITE reply
//!     C->>S: DIRTY_PAGES GET_BITMAP (whole fd-backed mappings, bitmap within max_bitmap_size)
//!     S-->>C: range + bitmap (read and cleared); client ORs in its recorded pages
//!     C->>S: DMA_UNMAP with GET_DIRTY_BITMAP, DIRTY_PAGES STOP
//!     Note over C,S: end of stream: server unmaps all, stops tracking, disables IRQs,<br/>keeps the device state, waits for the next client
//! ```
//!
//! # Invariants
//!
//! * Nothing a peer sends is trusted before it is checked: sizes against [`Limits`] before any
//!   allocation, `argsz` and counts against the bytes present, flags against the known ones,
//!   descriptors against what the command allows. Decoding cannot panic on any input (fuzzed,
//!   see `fuzz/`), and every error maps to the errno libvfio-user would answer
//!   ([`MessageError::errno`], [`ConnectionError::errno`]).
//! * Every failure a peer causes is answered with its errno and the session goes on; a
//!   command with `NO_REPLY` is never answered. Only a header that cannot be framed (or a
//!   broken stream) ends a session, since the stream cannot be resynchronized.
//! * Both ends have one reader thread that receives everything: replies go to the caller
//!   waiting for their `msg_id` (registered before the request is sent), commands are served
//!   (by the server in arrival order). So a side always receives the other's DMA or reply
//!   while it waits, and when the connection goes every waiting call fails (`ECONNRESET`,
//!   later ones `ENOTCONN`) instead of hanging. The client waits for each reply within a
//!   deadline ([`ClientConfig::reply_timeout`], 10 s by default; VERSION too): a server that
//!   hangs fails the call with `ETIMEDOUT` and breaks the connection (waiting and later
//!   calls fail with `ETIMEDOUT` too), so a late reply is never taken for another's.
//! * Dirty bitmaps are the kernel's user layout (bit *n* is page `iova + n * 4096`, LSB-first
//!   in little-endian `u64` words); one request never carries more than both sides' bitmap
//!   limits, and the pages a server writes by DMA_WRITE are always in the client's result.
//! * A received descriptor is an [`std::os::fd::OwnedFd`] from the moment it is read, so no
//!   error path leaks one; descriptors are received close-on-exec.
//! * `unsafe` is confined to `connection/socket.rs` (`sendmsg`, `recvmsg`, cmsg handling, `recv`
//!   into a buffer's spare capacity) and `client/mmap.rs` (the client's mapping of a region's
//!   sparse areas).
//! * The wire is little-endian; wire structs are read in native order, so the crate only
//!   builds for little-endian targets.
//!
//! # Liberal in what we accept
//!
//! We send exactly the bytes the spec and libvfio-user send; we accept what a reasonable peer
//! sends as long as its meaning is clear, because refusing it would fail a command that a
//! reference peer carries out. Each rule, and why:
//!
//! 1. **A body longer than its fixed part is read for that part** (DMA_MAP, DMA_UNMAP,
//!    DEVICE_GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS, GET_IRQ_INFO, a REGION_READ
//!    request and a REGION_WRITE reply, a DMA_READ request, DIRTY_PAGES), in both directions.
//!    The spec makes `msg_size` the request's length and `argsz` only the room for the reply,
//!    so a sender may pass its whole buffer: libvfio-user's own client sends GET_REGION_INFO
//!    with `argsz` bytes (96 for `argsz` 80), a kernel-style caller sends the 24-byte
//!    `vfio_device_info`, and libvfio-user's server refuses only a body that is too short.
//! 2. **SET_IRQS data beyond what its flags call for is ignored** (the `count` bytes of
//!    DATA_BOOL, none otherwise): a client forwarding the kernel's struct leaves its array of
//!    eventfd numbers in, the descriptors themselves travel as `SCM_RIGHTS`.
//! 3. **An error reply is its errno**: a body after the header and any descriptors are
//!    dropped, and the session goes on. The spec says an error reply is a header, but
//!    libvfio-user echoes the access after a failed REGION_WRITE (32 bytes) or REGION_READ
//!    (36 bytes).
//! 4. **A reply with no payload ignores a body** (DMA_MAP, SET_IRQS, DEVICE_RESET, and
//!    DIRTY_PAGES START / STOP, which may also echo the 8-byte request): there is nothing in
//!    it to read, and the command succeeded.
//! 5. **A GET_REGION_INFO reply may be padded**: without CAPS, bytes after the 32-byte struct
//!    are ignored (libvfio-user sends as many bytes as the request's `argsz` when the caps do
//!    not fit, zeros after the struct); with CAPS, bytes after `argsz` are.
//! 6. **A DMA_WRITE reply's `count` may be 4 or 8 bytes**: libvfio-user sends and expects 8,
//!    the spec's table says 4, and a client written from the spec sends a 12-byte reply.
//! 7. **VERSION JSON need not end in a NUL**: `msg_size` bounds it already; the NUL is only
//!    for a C reader (libvfio-user's server refuses JSON without it; we send it).
//! 8. **Header flag bits 6–31 are ignored**: 0.9.1 reserves them, and libvfio-user's
//!    bit-field header never reads them.
//! 9. **DEVICE_RESET ignores a body**: libvfio-user never reads one either.
//! 10. **GET_REGION_IO_FDS entries may be 40 bytes** (the spec's) as well as 48
//!     (libvfio-user's): the spec tells a client to find the entry size from `argsz` and
//!     `count`, and only the shadow-ioeventfd type needs the longer entry.
//!
//! What stays strict, and why: data with a `count` (REGION_WRITE, DMA_WRITE, the replies of
//! REGION_READ and DMA_READ, dirty bitmaps) must be exactly that long, since the count is the
//! data's only length and a mismatch is a framing bug (libvfio-user refuses a REGION_WRITE
//! whose count and body disagree); unknown flags and commands, whose meaning we cannot know;
//! `argsz` below the fixed reply; descriptors a command cannot carry; anything over the
//! [`Limits`], which bound what a peer can make us allocate.
//!
//! # Mappings without an fd
//!
//! The server keeps dirty bitmaps only for mappings that came with an fd, as libvfio-user
//! does: for one without, its device's writes go to the client as DMA_WRITE messages, so the
//! client sees each of them and keeps the record. A GET_BITMAP or unmap-with-bitmap naming a
//! mapping without an fd is answered EINVAL, and such mappings cost no bitmap memory (see
//! [`vfmig_iommu`]). Our client never asks for those bitmaps: it unmaps such a mapping
//! without one and reports the pages it recorded as written, merged into the bitmap it
//! returns for the range.
//!
//! This crate is mechanism only: the device backend decides what a region access means and
//! which commands its state allows, the container what a DMA mapping is, the VMM where guest
//! memory lives and when to fetch dirty pages.

pub mod client;
pub mod connection;
pub mod errno;
pub mod error;
pub mod limits;
pub mod message;
mod peer;
pub mod server;

pub use client::{Client, ClientConfig, ClientError, ClientMemory, ClientStats};
pub use connection::{BodyBuffer, Connection, Received, Tail};
pub use errno::Errno;
pub use error::{ConnectionError, MessageError};
pub use limits::Limits;
pub use server::{Backend, Server};

#[cfg(test)]
mod roundtrip_tests;

const _: () = assert!(
    cfg!(target_endian = "little"),
    "vfio-user 0.9.1 is little-endian and wire structs are read in native byte order"
);
