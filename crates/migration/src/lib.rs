//! The vfmig migration stream and its transports: the bytes a source VMM sends to a
//! destination VMM during a live migration, and the sockets they travel on.
//!
//! * [`stream`]: the format, our own (not QEMU's): a versioned header, then typed sections,
//!   each framed with a type, flags, a length capped per type, and a CRC32C.
//!   [`stream::StreamWriter`] writes one (reading guest RAM through
//!   [`stream::ReadGuestMemory`] and eliding zero pages); [`stream::StreamReader`] reads one,
//!   returning each section only once it is verified.
//! * [`transport`]: `tcp:HOST:PORT` and `unix:PATH` addresses, [`transport::connect`],
//!   [`transport::listen`], and a [`transport::StreamConnection`] that can be shut down to cancel;
//!   on TCP, plain or mutual TLS ([`transport::TransportSecurity`]).
//!
//! The sender and receiver state machines (pre-copy, stop-and-copy, resume) build on these;
//! this crate decides nothing about when to send what, beyond the order rules of the format.
//!
//! # The stream
//!
//! ```text
//!   offset 0                                                       all integers little-endian
//!   ┌──────────────────────────┬─────────┬─────────┬─────────────┐
//!   │ magic "VFMIGSTR" (8)     │ major 2 │ minor 2 │ crc32c (4)  │  stream header, 16 bytes
//!   └──────────────────────────┴─────────┴─────────┴─────────────┘  crc over the 12 before it
//!   ┌────────┬─────────┬────────────┬─────────────────┬──────────┐
//!   │ type 2 │ flags 2 │ length 4   │ payload         │ crc32c 4 │  section #0: Config
//!   └────────┴─────────┴────────────┴─────────────────┴──────────┘  crc over type..payload
//!   ┌────────┬─────────┬────────────┬─────────────────┬──────────┐
//!   │ type   │ flags   │ length     │ payload         │ crc32c   │  section #1 … #n-1:
//!   └────────┴─────────┴────────────┴─────────────────┴──────────┘  RamPages, DeviceChunk,
//!      ⋮                                                             DeviceConfig, Iteration
//!   ┌────────┬─────────┬────────────┬─────────────────┬──────────┐
//!   │ 6 End  │ 0       │ 16         │ n │ offset      │ crc32c   │  section #n: End
//!   └────────┴─────────┴────────────┴─────────────────┴──────────┘
//!
//!   payloads
//!   Config        page_size=4096 | nregions | ndevices | 0 | {gpa, size}* |
//!                 {id, kind_len, 0, config_len, kind, config}*  (kind: pci:VVVV:DDDD)
//!   RamPages      nruns | 0 | {gpa u64, pages u32, flags u32 (1 = zero)}* | data of non-zero runs
//!   DeviceChunk   device u32 | phase u16 | 0 u16 | iteration u64 | data (one device transaction)
//!   DeviceConfig  device u32 | 0 u32 | config
//!   Iteration     number u64 | pages u64
//!   End           sections before it u64 | bytes before it u64
//! ```
//!
//! A typical stream: `Config`, then for each pre-copy iteration an `Iteration` marker, the
//! dirty RAM as `RamPages` and any device pre-copy `DeviceChunk`s; then, with the guest
//! stopped, the last RAM and the stop-copy chunks; then each device's `DeviceConfig`; `End`.
//!
//! # Invariants
//!
//! * **Nothing unverified reaches the receiver.** [`stream::StreamReader::next_section`]
//!   returns a section only after reading all of it, matching its CRC32C, decoding its
//!   payload and checking its place in the stream. A corrupted byte anywhere is reported
//!   (bad magic, header checksum, unknown type or flags, length above the cap, section
//!   checksum, or truncation), with the section's index, type and byte offset; CRC32C
//!   detects every error burst of up to 32 bits, so one corrupted byte is never accepted.
//! * **Bounded memory.** A section's length is checked against the cap of its type before a
//!   byte of its payload is read, and the reader's buffer grows only as payload bytes
//!   arrive; every count inside a payload is checked against the bytes present before
//!   anything is allocated for it. No input makes the reader panic (fuzzed: `fuzz/`).
//! * **Truncation is detected.** The stream ends only with `End`, which carries the number of
//!   sections and bytes before it; a stream cut anywhere, even between sections, is refused.
//! * **RAM lands only in RAM.** Every run of a `RamPages` section lies inside one region of
//!   the `Config` layout; a [`stream::RamPages`] cannot exist otherwise, so
//!   [`stream::RamPages::apply`] writes only declared RAM. Zero pages travel as runs without
//!   data; the receiver zeroes them (its RAM may hold older data for them).
//! * **Device data is carried as produced.** One device transaction is one `DeviceChunk`,
//!   never merged or split, so the destination writes back the same transactions in the
//!   same order. A device's `DeviceConfig` comes after its last chunk, and every device of
//!   the config sends one before `End`.
//! * **A stranger cannot end or hold a waiting destination.** The receiver
//!   ([`engine::receive_into`]) commits to a peer only once its TLS handshake (with TLS),
//!   stream header and `Config` passed, and its VM is the expected one; any failure before
//!   that refuses the peer and the destination accepts the next. Every read of a peer has a
//!   bound: a deadline per phase before the commit and for the switch-over lines (no
//!   trickle of bytes extends it), an idle timeout per read of the stream after it
//!   ([`engine::ReceiveTimeouts`]).
//! * **Versioning.** A reader refuses another major version, naming both; it accepts a
//!   higher minor, whose additions are new section types flagged optional, which it verifies
//!   and skips. Reserved fields and unknown flags must be zero.
//!
//! # Why these caps
//!
//! | section | cap | why |
//! |---|---|---|
//! | `Config` | 1 MiB | a VM layout and a few hundred device descriptions; not data |
//! | `RamPages` | 8 MiB of pages, 8192 runs | room for senders that prefer fewer, larger sections (the encoder's default is 1 MiB, which measured fastest); small enough to stay in the last-level cache between checksum and apply; 8192 runs cover alternating zero and data pages |
//! | `DeviceChunk` | 16 MiB | one device transaction: devices expose data areas of a few MiB, and the sender never reads more than this at once |
//! | `DeviceConfig` | 1 MiB | configuration space and small state |
//! | `Iteration`, `End` | 16 bytes | fixed layout |
//! | unknown, optional | 1 MiB | read only to verify and drop |
//!
//! The largest cap bounds what a peer can make the reader allocate: 16 MiB and 16 bytes.
//!
//! # Cost
//!
//! The sender copies each page once out of guest memory into the section buffer (it must:
//! the guest keeps writing during pre-copy, and the checksum must match the bytes sent):
//! resident pages straight from the mapping, pages never written as zeros without touching
//! them (`mincore`, then the memfd). It scans each page for zero a 64-byte block at a time (a
//! non-zero page usually stops at the first block), checksums the section (CRC32C by
//! carry-less multiplication, 75–100 GiB/s on cached data), and writes the frame in one
//! vectored `write` straight from that buffer. Sections carry 1 MiB of pages by default, so a
//! page stays in the cache from the copy to the socket. The engine sends RAM on two threads
//! ([`StreamWriter::write_ram_parallel`](stream::StreamWriter::write_ram_parallel)), each
//! making whole sections and writing each under a lock, so one's copy overlaps the other's
//! socket write. The receiver reads into one 2 MiB ring (a memfd mapped twice, back to back,
//! so a section that wraps around its end is still contiguous and no byte is ever moved),
//! taking everything the socket holds per `read`, verifies each section there and copies its
//! pages into guest memory with streaming stores (which do not read the destination lines
//! first). Two alternatives were measured and dropped: a thread of its own reading the socket
//! ahead (on two cores shared with the sender, its hand-offs cost more than the overlap won),
//! and reading each section's data straight from the socket into guest memory with one
//! vectored read (the kernel's copy into RAM that is not in the cache cost the receiver more
//! than the ring's cached copy and the streaming stores together). `benches/stream.rs`
//! measures the format against a plain TCP copy of the same memory in 1 MiB writes, and
//! `benches/migrate.rs` a whole migration of 2 GiB against a plain copy of 2 GiB.

pub mod crc;
pub mod engine;
pub mod stream;
pub mod transport;
mod types;

pub use types::{DeviceIndex, PageRun, STREAM_PAGE_SIZE};
/// The address type of the stream's RAM sections and [`PageRun`]s, defined in `vfmig_memory`.
pub use vfmig_memory::Gpa;
