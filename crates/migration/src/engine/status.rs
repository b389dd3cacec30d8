//! What a running migration looks like from outside: its state, progress, and the way to
//! cancel it. Shared between the migration thread and whoever watches (the control socket).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

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
    /// Bytes sent so far.
    pub transferred: u64,
    /// Dirty bytes still to send (RAM and device data), as of the last sync.
    pub remaining: u64,
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
            expected_downtime_ms: 0,
            bandwidth: 0.0,
            iterations: Vec::new(),
            stats: None,
            error: None,
        }
    }
}

/// Shared progress of one migration.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    status: Arc<Mutex<MigrationStatus>>,
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
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
