//! The trait a device implements to be migratable.
//!
//! It is small and honest: every method returns a `Result`, none has a default body. A device
//! that cannot migrate does not implement it, and then no migration region is offered for it:
//! a VMM learns at setup, not halfway through a migration, that the device cannot move.
//!
//! The migration region ([`crate::migration::MigrationRegion`]) drives it:
//!
//! ```text
//! source                                        destination
//! set_state(RUNNING -> PRE_COPY)                 set_state(RUNNING -> RESUMING)
//! loop: pending_bytes(), save_chunk()  ───────▶  load_chunk() per chunk, same sizes, same order
//! set_state(PRE_COPY -> STOP_COPY)
//! loop until pending_bytes() == 0: save_chunk()
//! set_state(STOP_COPY -> STOP)                   set_state(RESUMING -> RUNNING)
//! ```

use vfmig_abi::StateKind;

/// Why a device could not do what the migration region asked. Carries an errno, which the
/// region returns to the client unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} (errno {errno})")]
pub struct MigratableError {
    /// The errno for the client.
    pub errno: i32,
    /// What went wrong.
    pub what: String,
}

impl MigratableError {
    /// An error with an errno and a message.
    pub fn new(errno: i32, what: impl Into<String>) -> Self {
        MigratableError {
            errno,
            what: what.into(),
        }
    }

    /// A chunk the device cannot understand: EINVAL.
    pub fn bad_chunk(what: impl Into<String>) -> Self {
        MigratableError::new(libc::EINVAL, what)
    }
}

/// A device whose internal state can be saved while it runs and restored elsewhere.
pub trait Migratable: Send {
    /// Moves the device from `from` to `to`. The region calls it only for transitions it allows
    /// (never to or from [`StateKind::Error`]); it returns once the device is in `to` (stopped
    /// means stopped, with no DMA in flight). An error puts the device in the error state.
    fn set_state(&mut self, from: StateKind, to: StateKind) -> Result<(), MigratableError>;

    /// Bytes the device still has to save now: in pre-copy what it would send if asked (it may
    /// grow while the device runs), in stop-and-copy what remains. 0 ends stop-and-copy.
    fn pending_bytes(&mut self) -> Result<u64, MigratableError>;

    /// Writes the next chunk of saved state into `buf` and returns its length (at most
    /// `buf.len()`, possibly 0). Called in pre-copy and stop-and-copy; a chunk, once returned, is
    /// the device's to forget: the region keeps it until the client has read it.
    fn save_chunk(&mut self, buf: &mut [u8]) -> Result<usize, MigratableError>;

    /// Consumes one chunk produced by `save_chunk` on the source, in the same order and with the
    /// same length. Called while resuming. An error puts the device in the error state.
    fn load_chunk(&mut self, chunk: &[u8]) -> Result<(), MigratableError>;
}
