//! A TCP relay between a migration source and its destination that injects one [`Fault`]:
//! a flipped bit well inside the stream, the connection cut once the source has switched
//! over, or one message of the switch-over handshake lost.
//!
//! It forwards both directions (the destination's answer goes back to the source) and
//! closes both connections as soon as either side ends or fails, so each side sees what it
//! would see without the relay: the peer gone.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use vfmig_migration::engine::{ACK_READY, ACK_RUNNING, GO};
use vfmig_migration::stream::{MAGIC, SectionKind};

/// The stream header's length; then frames of an 8-byte header, the payload and a 4-byte
/// checksum.
const STREAM_HEADER: usize = 16;
const FRAME_HEADER: usize = 8;
const FRAME_TRAILER: usize = 4;

/// What the relay does to the source's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Flips one bit in the middle of the payload of the first `RamPages` section (inside
    /// the stream, inside a section the receiver must verify before use), then forwards
    /// the rest.
    FlipInFirstRamPages,
    /// Forwards nothing from the first `DeviceConfig` section on, and closes both
    /// connections: the source sends it only after pausing the guest and stopping the
    /// devices, so the connection is lost after the switch-over point.
    CutAtFirstDeviceConfig,
    /// Relays the whole stream, then drops the destination's `VFMIG-READY` and closes both
    /// connections: neither side has heard the other commit.
    DropReady,
    /// Relays the stream and `VFMIG-READY`, then drops the source's `VFMIG-GO` and closes
    /// both: the source has committed, the destination never heard it.
    DropGo,
    /// Relays everything up to the destination's `VFMIG-RUNNING`, drops that and closes
    /// both: the destination runs the guest, the source never heard it.
    DropRunning,
}

/// The relay, serving one connection.
pub(crate) struct FaultyProxy {
    address: SocketAddr,
    fault_at: Arc<Mutex<Option<u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultyProxy {
    /// Listens on 127.0.0.1 for the source; relays its one connection to `upstream`,
    /// injecting `fault`.
    pub(crate) fn start(upstream: SocketAddr, fault: Fault) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: listen");
        let address = listener.local_addr().expect("proxy: local address");
        let fault_at = Arc::new(Mutex::new(None));
        let record = fault_at.clone();
        let thread = thread::spawn(move || {
            let Ok((source, _)) = listener.accept() else {
                return;
            };
            let Ok(destination) = TcpStream::connect(upstream) else {
                return;
            };
            relay(source, destination, fault, &record);
        });
        FaultyProxy {
            address,
            fault_at,
            thread: Some(thread),
        }
    }

    /// The address to migrate to, `tcp:127.0.0.1:PORT`.
    pub(crate) fn address(&self) -> String {
        format!("tcp:{}", self.address)
    }

    /// Where the fault was injected, once it was: the stream offset (for a dropped answer,
    /// the offset of the answer in the destination's replies).
    pub(crate) fn fault_at(&self) -> Option<u64> {
        *self.fault_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        // The relay ends when either side closes; the test's processes are gone by now (or
        // go with it). Do not wait on an accept that never came.
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

fn relay(source: TcpStream, destination: TcpStream, fault: Fault, at: &Mutex<Option<u64>>) {
    let clones = source
        .try_clone()
        .and_then(|s| Ok((s, destination.try_clone()?)));
    let Ok((mut back_to, back_from)) = clones else {
        return;
    };
    let close = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    thread::scope(|scope| {
        scope.spawn(|| {
            let _ = answer(&back_from, &mut back_to, fault, at);
            close(&back_from, &back_to);
        });
        let (mut from, mut to) = (source, destination);
        let _ = forward(&mut from, &mut to, fault, at);
        close(&from, &to);
    });
}

/// Copies the destination's replies to the source line by line; drops the one the fault
/// names ([`Fault::DropReady`], [`Fault::DropRunning`]), recording its offset, and stops.
fn answer(
    from: &TcpStream,
    to: &mut TcpStream,
    fault: Fault,
    at: &Mutex<Option<u64>>,
) -> io::Result<()> {
    let dropped = match fault {
        Fault::DropReady => Some(ACK_READY),
        Fault::DropRunning => Some(ACK_RUNNING),
        _ => None,
    };
    let mut lines = BufReader::new(from);
    let mut offset = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if dropped == Some(line.trim_end()) {
            *at.lock().unwrap_or_else(|e| e.into_inner()) = Some(offset);
            return Ok(());
        }
        to.write_all(line.as_bytes())?;
        offset += line.len() as u64;
    }
}

/// Copies the stream from `from` to `to` frame by frame until the fault's section; injects
/// the fault there, recording its offset in `at`; then copies the rest as it comes
/// ([`Fault::FlipInFirstRamPages`]) or stops ([`Fault::CutAtFirstDeviceConfig`]). After
/// `End`, copies what follows (the source's go), or drops it ([`Fault::DropGo`]).
fn forward(
    from: &mut TcpStream,
    to: &mut TcpStream,
    fault: Fault,
    at: &Mutex<Option<u64>>,
) -> io::Result<()> {
    let mut header = [0u8; STREAM_HEADER];
    from.read_exact(&mut header)?;
    assert_eq!(header[..8], MAGIC, "proxy: not a migration stream");
    to.write_all(&header)?;
    let mut offset = STREAM_HEADER as u64;
    loop {
        let mut frame = [0u8; FRAME_HEADER];
        from.read_exact(&mut frame)?;
        let kind = u16::from_le_bytes([frame[0], frame[1]]);
        let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
        // The sender's own frames: at most 16 MiB of payload.
        let mut body = vec![0u8; len + FRAME_TRAILER];
        from.read_exact(&mut body)?;
        let record = |offset: u64| *at.lock().unwrap_or_else(|e| e.into_inner()) = Some(offset);
        match fault {
            Fault::FlipInFirstRamPages if kind == SectionKind::RamPages.to_wire() && len > 0 => {
                body[len / 2] ^= 0x10;
                record(offset + (FRAME_HEADER + len / 2) as u64);
                to.write_all(&frame)?;
                to.write_all(&body)?;
                io::copy(from, to)?;
                return Ok(());
            }
            Fault::CutAtFirstDeviceConfig if kind == SectionKind::DeviceConfig.to_wire() => {
                record(offset);
                return Ok(());
            }
            _ => {}
        }
        to.write_all(&frame)?;
        to.write_all(&body)?;
        offset += (FRAME_HEADER + len + FRAME_TRAILER) as u64;
        if kind == SectionKind::End.to_wire() {
            if fault != Fault::DropGo {
                io::copy(from, to)?;
                return Ok(());
            }
            let mut go = String::new();
            BufReader::new(from).read_line(&mut go)?;
            assert_eq!(go.trim_end(), GO, "proxy: the source did not say go");
            record(offset);
            return Ok(());
        }
    }
}
