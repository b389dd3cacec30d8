//! Errors of migration-region accesses; each maps to the errno the client gets.

use vfmig_abi::migration_info::Field;
use vfmig_abi::{DeviceState, StateKind};

use crate::migratable::MigratableError;

/// Why an access to the migration region was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// Not a whole field at its native width and alignment, or no field at all.
    #[error("{len}-byte access at offset {offset:#x} names no migration register")]
    NotAField {
        /// Offset of the access.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// A write to `pending_bytes` or `data_offset`, or to `data_size` while saving.
    #[error("{} is read-only here", field.name())]
    ReadOnly {
        /// The field.
        field: Field,
    },
    /// An access the save or resume sequence does not allow now.
    #[error("out of sequence: {what} in {state}")]
    OutOfSequence {
        /// What was attempted.
        what: &'static str,
        /// The device state then.
        state: DeviceState,
    },
    /// A data-section access outside the chunk (saving) or the section (resuming).
    #[error("data section access at {offset:#x} + {len:#x} is outside {limit:#x} bytes")]
    OutsideData {
        /// Offset of the access in the region.
        offset: u64,
        /// Its length.
        len: usize,
        /// The end of what may be accessed, as a region offset.
        limit: u64,
    },
    /// `data_size` larger than the data section.
    #[error("data_size {size:#x} exceeds the {capacity:#x}-byte data section")]
    ChunkTooLarge {
        /// The size written.
        size: u64,
        /// The data section's size.
        capacity: u64,
    },
    /// A value `VFIO_DEVICE_STATE_VALID` rejects (101b, 111b, or the error state 110b).
    #[error("{0} is not a state a user may write")]
    InvalidState(DeviceState),
    /// A transition the region does not allow; the state is unchanged.
    #[error("transition {from} -> {to} is not allowed")]
    NotAllowed {
        /// The current state.
        from: StateKind,
        /// The state asked for.
        to: StateKind,
    },
    /// The device is in the error state: only a reset leaves it.
    #[error("the device is in the error state; only a reset leaves it")]
    InError,
    /// The device failed; a failed transition or load left it in the error state.
    #[error("device: {0}")]
    Device(#[from] MigratableError),
    /// The shared data section could not be accessed.
    #[error("data section: {0}")]
    Memory(String),
}

impl AccessError {
    /// The errno for the client.
    pub fn errno(&self) -> i32 {
        match self {
            AccessError::Device(e) => e.errno,
            AccessError::Memory(_) => libc::EFAULT,
            _ => libc::EINVAL,
        }
    }
}
