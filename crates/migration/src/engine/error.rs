//! Why a migration failed. Every error names what failed (the device, the stream, the peer),
//! so the user learns which part to look at.

use vfmig_vfio_user::ClientError;
use vfmig_vmm::VmError;

use super::admit::NotAdmitted;
use super::policy::Limit;
use crate::stream::{ReadError, WriteError};
use crate::transport::TransportError;

/// A failed migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A device offers no migration region: it cannot migrate, and nothing was started.
    #[error(
        "device {device} ({profile}) cannot migrate: it offers no v1 migration region (region \
         type 3, subtype 1)"
    )]
    NotMigratable {
        /// The device.
        device: String,
        /// What it is (`pci:VVVV:DDDD`).
        profile: String,
    },
    /// A device request failed (its process may be gone).
    #[error("device {device}: {what}: {error}")]
    Device {
        /// The device.
        device: String,
        /// What was asked of it.
        what: &'static str,
        /// The error, with its errno.
        error: Box<ClientError>,
    },
    /// A device broke the migration region's protocol.
    #[error("device {device}: {what}")]
    DeviceProtocol {
        /// The device.
        device: String,
        /// What it did.
        what: String,
    },
    /// A device announced a chunk larger than the stream may carry.
    #[error("device {device}: a {size}-byte chunk exceeds the stream's limit")]
    ChunkTooLarge {
        /// The device.
        device: String,
        /// The size it announced.
        size: u64,
    },
    /// Connecting or listening failed.
    #[error("transport: {0}")]
    Transport(TransportError),
    /// Writing the stream failed (the destination may be gone).
    #[error("sending the stream: {0}")]
    Send(WriteError),
    /// A waiting destination refused a peer that did nothing wrong (see
    /// [`NotAdmitted`]).
    #[error("not admitted: {0}")]
    NotAdmitted(NotAdmitted),
    /// The destination refused the stream, and said why.
    #[error("the destination refused the stream: {reason}")]
    Refused {
        /// Its reason.
        reason: String,
    },
    /// Reading the stream failed: corrupt, truncated, or out of order.
    #[error("receiving the stream: {0}")]
    Receive(ReadError),
    /// The destination never confirmed that the VM runs there.
    #[error("the destination did not confirm the switch-over: {0}")]
    NoAck(String),
    /// The destination, ready, never got the source's go: it discards the VM, which runs on
    /// at the source.
    #[error("the source did not say go: {0}")]
    NoGo(String),
    /// The source told the destination to run the guest but did not hear that it does:
    /// the guest stays paused here (see [`MigrationState::Unconfirmed`]).
    ///
    /// [`MigrationState::Unconfirmed`]: crate::engine::MigrationState::Unconfirmed
    #[error(
        "the destination was told to run the guest but did not confirm it ({0}); the guest \
         stays paused here: check the destination before resuming it here"
    )]
    Unconfirmed(String),
    /// The stream named something this VMM cannot build.
    #[error("the stream's VM cannot be built here: {0}")]
    Config(String),
    /// Building the destination VM failed.
    #[error("building the destination VM: {0}")]
    Vm(Box<VmError>),
    /// The running VM failed: its dirty log, or its guest's state.
    #[error("the VM: {0}")]
    Guest(Box<VmError>),
    /// Guest RAM could not be read or written.
    #[error("guest RAM: {0}")]
    Ram(vfmig_vmm::RamError),
    /// Pre-copy reached a limit without converging: the guest runs on here, and the
    /// destination discards what it received.
    #[error(
        "pre-copy reached {limit} without converging ({left} bytes left, an expected downtime \
         of {expected_ms} ms); the guest runs on here"
    )]
    NotConverged {
        /// The limit reached.
        limit: Limit,
        /// Dirty RAM and device bytes left after the last iteration.
        left: u64,
        /// The downtime a switch-over would have taken, in ms (at the last bandwidth).
        expected_ms: u64,
    },
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
}

// The causes are part of each message; they are not also chained as `source`, so a report
// does not print them twice.
macro_rules! from_cause {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for MigrationError {
            fn from(e: $t) -> Self {
                MigrationError::$v(e)
            }
        }
    )*};
}

from_cause!(
    TransportError => Transport,
    WriteError => Send,
    ReadError => Receive,
    NotAdmitted => NotAdmitted,
    Box<VmError> => Vm,
    vfmig_vmm::RamError => Ram,
);
