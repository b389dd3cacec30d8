//! vfio-user 0.9.1: the wire messages and a connection that carries them with file
//! descriptors. The client and the server build on these two layers.
//!
//! * [`message`]: the 16-byte [`message::Header`] and the payload of each of the 14 commands,
//!   request and reply, as `#[repr(C)]` zerocopy structs with compile-time size checks;
//!   [`message::Request`] and [`message::Reply`] decode any of them. Where the spec and the
//!   bytes libvfio-user v1 sends differ, the bytes win (the 32-byte dirty bitmap range, the
//!   8-byte DMA_WRITE reply count, 48-byte IO-FD entries).
//! * [`Connection`]: a UNIX stream socket that sends a header, its body and its descriptors in
//!   one `sendmsg`, and receives them with the descriptors collected on the header read.
//!
//! # Invariants
//!
//! * Nothing a peer sends is trusted before it is checked: sizes against [`Limits`] before any
//!   allocation, `argsz` and counts against the bytes present, flags against the known ones,
//!   descriptors against what the command allows. Decoding cannot panic on any input (fuzzed,
//!   see `fuzz/`), and every error maps to the errno libvfio-user would answer
//!   ([`MessageError::errno`], [`ConnectionError::errno`]).
//! * A received descriptor is an [`std::os::fd::OwnedFd`] from the moment it is read, so no
//!   error path leaks one; descriptors are received close-on-exec.
//! * `unsafe` is confined to `connection/socket.rs` (`sendmsg`, `recvmsg`, cmsg handling).
//! * The wire is little-endian; wire structs are read in native order, so the crate only
//!   builds for little-endian targets.
//!
//! This crate is mechanism only: it does not decide what a region access or a DMA mapping
//! means, nor which version to accept (see the client and server for that).

pub mod client;
pub mod connection;
pub mod errno;
pub mod error;
pub mod limits;
pub mod message;
mod peer;
pub mod server;

pub use client::{Client, ClientConfig, ClientError, ClientMemory};
pub use connection::{Connection, Received};
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
