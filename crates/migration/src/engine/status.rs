//! What a running migration looks like from outside: its state, progress, and the way to
//! cancel it. Shared between the migration thread and whoever watches (the control socket).
//!
//! The bytes sent are counted as they reach the transport ([`Progress::counting`]), so a
//! watcher sees them grow within an iteration, not only at its end; what is left of the
//! current pass ([`MigrationStatus::pass_remaining`]) is the last sync's dirty bytes less
//! what went out since.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::stats::MigrationStats;
use crate::transport::StreamConnection;

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// None ran yet.
    None,
    /// Connecting, tracking dirty pages, devices entering pre-copy.
    Setup,
    /// Pre-copy iterations, the guest running.
    Active,
    /// The guest paused: the last RAM and device state are on their way.
    StopCopy,
    /// The VM runs on the destination.
    Completed,
    /// Failed; the guest runs on here.
    Failed,
    /// Cancelled; the guest runs on here.
    Cancelled,
    /// The destination was told to run the guest (the source had committed) but the
    /// connection failed before it confirmed. The guest stays paused here, devices stopped:
    /// it most likely runs on the destination, and resuming it here too would run it twice.
    /// Check the destination (`vfmig vm status`); only if it has no VM, resume the guest
    /// here (`cont`).
    Unconfirmed,
}

impl MigrationState {
    /// Whether the migration is over (completed, failed, cancelled or unconfirmed).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationState::Completed
                | MigrationState::Failed
                | MigrationState::Cancelled
                | MigrationState::Unconfirmed
        )
    }
}

/// A snapshot of a migration's progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The state.
    pub state: MigrationState,
    /// The current pre-copy iteration.
    pub iteration: u64,
    /// Stream bytes handed to the transport so far (counted as they go, within an
    /// iteration too).
    pub transferred: u64,
    /// Dirty bytes still to send (RAM and device data), as of the last sync.
    pub remaining: u64,
    /// Of `remaining`, what the current pass has not sent yet: `remaining` less the stream
    /// bytes sent since that sync. An estimate (zero pages cost almost nothing on the wire).
    #[serde(default)]
    pub pass_remaining: u64,
    /// The share of time the vCPUs may run in the current iteration, in percent (100: not
    /// throttled).
    #[serde(default = "full_speed")]
    pub run_percent: u8,
    /// Estimated downtime if the switch-over happened now, in ms.
    pub expected_downtime_ms: u64,
    /// Measured bandwidth, stream bytes per second.
    pub bandwidth: f64,
    /// The final statistics, once completed.
    pub stats: Option<MigrationStats>,
    /// Why it failed.
    pub error: Option<String>,
}

impl Default for MigrationStatus {
    fn default() -> Self {
        MigrationStatus {
            state: MigrationState::None,
            iteration: 0,
            transferred: 0,
            remaining: 0,
            pass_remaining: 0,
            run_percent: full_speed(),
            expected_downtime_ms: 0,
            bandwidth: 0.0,
            stats: None,
            error: None,
        }
    }
}

fn full_speed() -> u8 {
    100
}

/// Stream bytes: all sent, and all sent as of the last sync.
#[derive(Debug, Default)]
struct Sent {
    total: AtomicU64,
    at_sync: AtomicU64,
}

/// A transport that counts what it accepts into its migration's [`Progress`].
#[derive(Debug)]
pub(crate) struct Counting<W> {
    inner: W,
    sent: Arc<Sent>,
}

impl<W> Counting<W> {
    /// The transport.
    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.total.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Shared progress of one migration.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    status: Arc<Mutex<MigrationStatus>>,
    sent: Arc<Sent>,
    cancel: Arc<AtomicBool>,
    /// The migration's connection while it runs: a cancel shuts it down, so a sender blocked
    /// writing to a stalled destination returns at once.
    connection: Arc<Mutex<Option<StreamConnection>>>,
}

impl Progress {
    /// A fresh progress, state `None`.
    pub fn new() -> Self {
        Progress::default()
    }

    /// The status now.
    pub fn status(&self) -> MigrationStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let total = self.sent.total.load(Ordering::Relaxed);
        let since_sync = total.saturating_sub(self.sent.at_sync.load(Ordering::Relaxed));
        status.transferred = total;
        status.pass_remaining = status.remaining.saturating_sub(since_sync);
        status
    }

    /// A new migration begins: state `Setup`, nothing sent.
    pub(crate) fn start(&self) {
        self.update(|s| {
            *s = MigrationStatus::default();
            s.state = MigrationState::Setup;
        });
        self.sent.total.store(0, Ordering::Relaxed);
        self.sent.at_sync.store(0, Ordering::Relaxed);
    }

    /// `inner`, counting the bytes it accepts as sent by this migration.
    pub(crate) fn counting<W: Write>(&self, inner: W) -> Counting<W> {
        Counting {
            inner,
            sent: self.sent.clone(),
        }
    }

    /// A sync found `remaining` bytes to send: a new pass starts from what was sent so far.
    pub(crate) fn synced(&self, remaining: u64) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.remaining = remaining;
        let total = self.sent.total.load(Ordering::Relaxed);
        self.sent.at_sync.store(total, Ordering::Relaxed);
    }

    /// Changes the status.
    pub fn update(&self, f: impl FnOnce(&mut MigrationStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Asks the migration to stop: it rolls back at its next check, or at once if it is
    /// blocked on the connection (which is shut down).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
        if let Some(conn) = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = conn.shutdown();
        }
    }

    /// Registers (or, with `None`, forgets) the connection a cancel shuts down.
    pub(crate) fn set_connection(&self, conn: Option<StreamConnection>) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_through_a_counting_transport_are_transferred_at_once() {
        let progress = Progress::new();
        progress.start();
        let mut out = progress.counting(Vec::new());
        out.write_all(&[0; 300]).unwrap();
        assert_eq!(progress.status().transferred, 300);
    }

    #[test]
    fn the_pass_remaining_is_the_last_syncs_bytes_less_those_sent_since() {
        let progress = Progress::new();
        progress.start();
        let mut out = progress.counting(Vec::new());
        out.write_all(&[0; 100]).unwrap();
        progress.synced(1000);
        out.write_all(&[0; 400]).unwrap();
        let status = progress.status();
        assert_eq!((status.remaining, status.pass_remaining), (1000, 600));
    }

    #[test]
    fn a_new_migration_starts_from_nothing_sent() {
        let progress = Progress::new();
        progress.counting(Vec::new()).write_all(&[0; 10]).unwrap();
        progress.start();
        let status = progress.status();
        assert_eq!(
            (status.state, status.transferred),
            (MigrationState::Setup, 0)
        );
    }
}
