//! Admission: which of the peers connecting to a waiting destination it commits to.
//!
//! One loop accepts connections. Each is taken towards the commit point (its TLS handshake,
//! stream header, `Config` and VM shape check, each within its deadline; see "Who may end
//! a waiting destination" in the [engine](super) docs) on a thread of its own, at most
//! [`MAX_PENDING_PEERS`] at once, so a peer that is slow, silent or hostile holds one slot,
//! not the port. A connection accepted while every slot is taken is closed at once and
//! refused. The first peer past the commit point is admitted; the loop then ends the reads
//! of every other pending peer, whose thread refuses it ("another migration was admitted",
//! told to the peer where its stream got that far) and ends.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant L as accept loop
//!     participant P as a peer's thread (at most MAX_PENDING_PEERS)
//!     participant R as receive_into
//!     L->>P: accepted (a read stop kept by the loop)
//!     L->>L: accepted while the slots are full: closed, refused
//!     P->>P: handshake, header, Config, shape check, within their deadlines
//!     P-->>L: the first past the commit point: admitted
//!     L->>P: every other: reads stopped; refused, told why, the thread ends
//!     L->>R: the admitted peer's stream, to receive
//! ```
//!
//! A peer's thread returns why it refused its peer; the accept loop collects it, records the
//! refusal in the receive's [`RefusalLog`] (where a status reader sees it while the
//! destination still waits) and frees the slot, together: once a refusal shows, its slot is
//! free. The threads are scoped to [`receive_into`](super::receive_into), which collects the
//! refused ones after the admitted migration (they ended long before: a stopped thread ends
//! at once, and none waits longer than its own deadlines).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use vfmig_vmm::VmConfig;

use super::error::MigrationError;
use super::receiver::{IncomingDevices, ReceiveOptions, read_config, tell_source};
use super::timed::Timed;
use crate::stream::StreamReader;
use crate::transport::{Accepted, Listener, ReadStop, StreamConnection, TransportError};

/// How many peers a waiting destination takes towards the commit point at once. Each holds
/// a thread and two socket descriptors for at most its deadlines (the handshake and the
/// setup, 10 s each by default), so a flood of connections costs a few threads, not one
/// per connection; while a real source is taken at once unless this many peers stall
/// together (one at a time, it waited behind each of them in turn). Beyond it a connection
/// is refused at once rather than queued: a queue would bring the wait back.
pub const MAX_PENDING_PEERS: usize = 4;

/// How often the accept loop, while peers are pending, looks whether one of them passed
/// the commit point: the longest an admitted migration waits to start.
const ADMIT_POLL: Duration = Duration::from_millis(20);

/// How long to wait before accepting again after an `accept` that failed for want of
/// resources (`EMFILE`, `ENOBUFS`, …), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many refusal reasons [`Refusals::reasons`] keeps.
pub const REFUSALS_KEPT: usize = 8;

/// The connections a waiting destination refused before the commit point.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusals {
    /// How many.
    pub refused: u64,
    /// Why, for the last [`REFUSALS_KEPT`] of them, oldest first.
    pub reasons: Vec<String>,
}

impl Refusals {
    fn push(&mut self, reason: String) {
        self.refused += 1;
        if self.reasons.len() == REFUSALS_KEPT {
            self.reasons.remove(0);
        }
        self.reasons.push(reason);
    }
}

/// A receive's [`Refusals`] as they happen. Its clones share one record: give one to the
/// receive in [`ReceiveOptions::refusals`] and read another (a status request) while the
/// destination waits.
#[derive(Clone, Debug, Default)]
pub struct RefusalLog(Arc<Mutex<Refusals>>);

impl RefusalLog {
    /// The refusals so far.
    pub fn get(&self) -> Refusals {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Logs the refusal of a peer, and records it.
    fn refuse(&self, e: &MigrationError) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e.to_string());
        tracing::warn!(error = %e, "refused a connection before the commit point");
    }
}

/// Why a peer was refused for no fault of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// Another peer passed the commit point first.
    #[error("another migration was admitted")]
    AnotherAdmitted,
    /// [`MAX_PENDING_PEERS`] peers were on their way to the commit point already.
    #[error("too many peers before the commit point ({MAX_PENDING_PEERS} pending)")]
    TooManyPeers,
    /// The listening socket failed, and the receive ended.
    #[error("the destination stopped listening")]
    ListenerFailed,
}

/// A connection past the commit point: its stream read up to the `Config`, and the VM it
/// describes.
pub(super) struct Admitted {
    pub(super) reader: StreamReader<Timed>,
    pub(super) config: VmConfig,
    /// The stream's devices, in its order: `(id, profile)`.
    pub(super) incoming: IncomingDevices,
    pub(super) ack: StreamConnection,
    pub(super) start: Instant,
}

/// A peer on its way to the commit point: its thread (which returns why it refused the
/// peer, or nothing for the admitted one), and a handle to stop its reads.
pub(super) struct Pending<'scope> {
    id: u64,
    thread: ScopedJoinHandle<'scope, Option<MigrationError>>,
    stop: ReadStop,
}

/// What the accept loop shares with the peers' threads.
pub(super) struct Admission<'a> {
    listener: &'a Listener,
    options: &'a ReceiveOptions<'a>,
    /// Why a pending peer is refused now, once that is settled: set once, by the first peer
    /// past the commit point (which that makes the admitted one) or by a listener failure.
    closed: OnceLock<NotAdmitted>,
}

/// Whether a failed `accept` leaves the listener unusable (rather than one connection lost,
/// or resources short for a moment).
fn listener_broken(e: &TransportError) -> bool {
    matches!(e, TransportError::Accept { source, .. } if matches!(
        source.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT)
    ))
}

impl<'a> Admission<'a> {
    pub(super) fn new(listener: &'a Listener, options: &'a ReceiveOptions<'a>) -> Self {
        Admission {
            listener,
            options,
            closed: OnceLock::new(),
        }
    }

    /// Accepts connections until one passes the commit point and returns it, each peer
    /// taken there on a thread of `scope`; refuses the others. The peers still pending then
    /// are stopped, and returned for [`Admission::collect`].
    ///
    /// # Errors
    /// A failure of the listener itself; never a peer's.
    pub(super) fn admit<'scope, 'env>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
    ) -> Result<(Admitted, Vec<Pending<'scope>>), MigrationError> {
        let (admitted_tx, admitted_rx) = mpsc::channel();
        let mut pending: Vec<Pending<'scope>> = Vec::new();
        let mut next_id = 0u64;
        loop {
            // Joined, so what an ended thread sent is seen below.
            let ended = pending.extract_if(.., |p| p.thread.is_finished()).collect();
            self.collect(ended);
            if let Ok((id, admitted)) = admitted_rx.try_recv() {
                stop_all_but(&pending, Some(id));
                return Ok((admitted, pending));
            }
            let (accepted, stop) = match self.next_connection(!pending.is_empty()) {
                Ok(Some(connection)) => connection,
                Ok(None) => continue,
                Err(e) if listener_broken(&e) => {
                    if self.closed.set(NotAdmitted::ListenerFailed).is_err()
                        && let Ok((id, admitted)) = admitted_rx.recv()
                    {
                        // A peer passed the commit point meanwhile: it is the migration.
                        stop_all_but(&pending, Some(id));
                        return Ok((admitted, pending));
                    }
                    stop_all_but(&pending, None);
                    self.collect(pending);
                    return Err(e.into());
                }
                Err(e) => {
                    self.options.refusals.refuse(&e.into());
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            if pending.len() >= MAX_PENDING_PEERS {
                drop((accepted, stop));
                self.options
                    .refusals
                    .refuse(&NotAdmitted::TooManyPeers.into());
                continue;
            }
            let id = next_id;
            next_id += 1;
            let admitted = admitted_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("vfmig-admit".into())
                .spawn_scoped(scope, move || self.take_to_commit(id, accepted, &admitted));
            match spawned {
                Ok(thread) => pending.push(Pending { id, thread, stop }),
                Err(source) => {
                    let e = TransportError::Accept {
                        address: self.listener.address().clone(),
                        source,
                    };
                    self.options.refusals.refuse(&e.into());
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Waits for the threads of `peers` to end, and records the refusal each returns.
    pub(super) fn collect(&self, peers: Vec<Pending<'_>>) {
        for peer in peers {
            match peer.thread.join() {
                Ok(Some(refusal)) => self.options.refusals.refuse(&refusal),
                Ok(None) => {}
                Err(_) => tracing::error!("the thread of a peer before the commit point panicked"),
            }
        }
    }

    /// The next connection, with a handle to stop its reads. While peers are pending
    /// (`polling`), waits at most [`ADMIT_POLL`] for one, so the loop looks at them again.
    fn next_connection(
        &self,
        polling: bool,
    ) -> Result<Option<(Accepted, ReadStop)>, TransportError> {
        if polling && !self.listener.wait_for_connection(ADMIT_POLL)? {
            return Ok(None);
        }
        let accepted = self.listener.accept_socket()?;
        let stop = accepted
            .read_stop()
            .map_err(|source| TransportError::Accept {
                address: self.listener.address().clone(),
                source,
            })?;
        Ok(Some((accepted, stop)))
    }

    /// A peer's thread: takes it to the commit point; there, admits it if it is the first
    /// and sends it to the accept loop, or else refuses it, telling it why where its stream
    /// got far enough, and returns why.
    fn take_to_commit(
        &self,
        id: u64,
        accepted: Accepted,
        admitted: &mpsc::Sender<(u64, Admitted)>,
    ) -> Option<MigrationError> {
        let mut peer = match self.to_commit_point(accepted) {
            Ok(peer) => peer,
            Err(refusal) => return Some(refusal),
        };
        if self.closed.set(NotAdmitted::AnotherAdmitted).is_ok() {
            // Fails only if the accept loop is gone; the connection closes then.
            let _ = admitted.send((id, peer));
            return None;
        }
        let refusal = self.refusal(NotAdmitted::AnotherAdmitted.into());
        tell_source(&mut peer.ack, &refusal);
        Some(refusal)
    }

    /// Why a peer that failed with `own` is refused: once admission is settled, for that
    /// (its failure may be no more than its reads stopped).
    fn refusal(&self, own: MigrationError) -> MigrationError {
        self.closed.get().map_or(own, |&why| why.into())
    }

    /// The pre-commit phases of one peer: the handshake, then the header and `Config`
    /// (checked), each within its deadline. A peer that fails is told why, once its stream
    /// has a channel for it.
    fn to_commit_point(&self, accepted: Accepted) -> Result<Admitted, MigrationError> {
        let conn = accepted
            .into_connection(self.options.timeouts.handshake)
            .map_err(|e| self.refusal(e.into()))?;
        let start = Instant::now();
        let mut ack = conn
            .try_clone()
            .map_err(|e| self.refusal(MigrationError::NoAck(e.to_string())))?;
        match read_config(conn, self.options) {
            Ok((reader, config, incoming)) => Ok(Admitted {
                reader,
                config,
                incoming,
                ack,
                start,
            }),
            Err(e) => {
                let refusal = self.refusal(e);
                tell_source(&mut ack, &refusal);
                Err(refusal)
            }
        }
    }
}

/// Ends the reads of every pending peer but `admitted`: each thread then refuses its peer
/// and ends.
fn stop_all_but(pending: &[Pending<'_>], admitted: Option<u64>) {
    for peer in pending.iter().filter(|p| Some(p.id) != admitted) {
        if let Err(e) = peer.stop.stop() {
            tracing::debug!(error = %e, "could not stop a pending peer's reads (gone already?)");
        }
    }
}
