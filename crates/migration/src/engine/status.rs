//! What a running migration looks like from outside: its state, progress, and the way to
//! cancel it. Shared between the migration thread and whoever watches (the control socket).
//!
//! What was sent is counted as it goes, so a watcher sees it grow within an iteration, not
//! only at its end: stream bytes as they reach the transport, and guest state as its
//! sections are written (RAM pages at their full size, zero pages too, and device data:
//! [`MigrationStatus::covered`]). What is left of the current pass
//! ([`MigrationStatus::pass_remaining`]) is the last sync's dirty bytes less the state
//! covered since.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use vfmig_iommu::CONTAINER_PAGE_SIZE;

use super::stats::{IterationStats, MigrationStats};
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
    /// Guest state sent so far, in the unit of `remaining`: each RAM page at its full size (a
    /// zero page too, though it costs the stream almost nothing) and device data.
    #[serde(default)]
    pub covered: u64,
    /// Of `remaining`, what the current pass has not sent yet: `remaining` less what was
    /// covered since that sync.
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
    /// The pre-copy iterations so far, each with its throttle; kept when the migration fails
    /// (the final statistics repeat them).
    #[serde(default)]
    pub iterations: Vec<IterationStats>,
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
            covered: 0,
            pass_remaining: 0,
            run_percent: full_speed(),
            expected_downtime_ms: 0,
            bandwidth: 0.0,
            iterations: Vec::new(),
            stats: None,
            error: None,
        }
    }
}

fn full_speed() -> u8 {
    100
}

/// What was sent: stream bytes, device data, and the state covered as of the last sync (the
/// RAM pages are counted by the stream writer, in [`Progress::ram_pages`]).
#[derive(Debug, Default)]
struct Sent {
    stream: AtomicU64,
    device: AtomicU64,
    covered_at_sync: AtomicU64,
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
        self.sent.stream.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    // The stream writer hands a section's header and payload in one vectored write; the
    // default would pass only the first slice each time.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        self.sent.stream.fetch_add(n as u64, Ordering::Relaxed);
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
    ram_pages: Arc<AtomicU64>,
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
        let covered = self.covered();
        let since_sync = covered.saturating_sub(self.sent.covered_at_sync.load(Ordering::Relaxed));
        status.transferred = self.sent.stream.load(Ordering::Relaxed);
        status.covered = covered;
        status.pass_remaining = status.remaining.saturating_sub(since_sync);
        status
    }

    fn covered(&self) -> u64 {
        let pages = self.ram_pages.load(Ordering::Relaxed);
        pages
            .saturating_mul(CONTAINER_PAGE_SIZE.bytes())
            .saturating_add(self.sent.device.load(Ordering::Relaxed))
    }

    /// A new migration begins: state `Setup`, nothing sent.
    pub(crate) fn start(&self) {
        self.update(|s| {
            *s = MigrationStatus::default();
            s.state = MigrationState::Setup;
        });
        for counter in [
            &self.sent.stream,
            &self.sent.device,
            &self.sent.covered_at_sync,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.ram_pages.store(0, Ordering::Relaxed);
    }

    /// Where the stream writer counts the RAM pages it writes
    /// ([`StreamWriter::count_pages_into`](crate::stream::StreamWriter::count_pages_into)).
    pub(crate) fn ram_pages(&self) -> Arc<AtomicU64> {
        self.ram_pages.clone()
    }

    /// `bytes` of device data were sent.
    pub(crate) fn device_data(&self, bytes: u64) {
        self.sent.device.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `inner`, counting the bytes it accepts as sent by this migration.
    pub(crate) fn counting<W: Write>(&self, inner: W) -> Counting<W> {
        Counting {
            inner,
            sent: self.sent.clone(),
        }
    }

    /// A sync found `remaining` bytes to send: a new pass starts from what was covered so far.
    pub(crate) fn synced(&self, remaining: u64) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.remaining = remaining;
        let covered = self.covered();
        self.sent.covered_at_sync.store(covered, Ordering::Relaxed);
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
    fn the_pass_remaining_is_the_last_syncs_bytes_less_the_state_covered_since() {
        let progress = Progress::new();
        progress.start();
        progress.device_data(100);
        progress.synced(10_000);
        progress.ram_pages().fetch_add(2, Ordering::Relaxed);
        progress.device_data(400);
        let status = progress.status();
        let page = CONTAINER_PAGE_SIZE.bytes();
        assert_eq!(status.covered, 2 * page + 500);
        assert_eq!(status.pass_remaining, 10_000 - 2 * page - 400);
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
