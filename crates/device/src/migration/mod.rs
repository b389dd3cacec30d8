//! The v1 migration region (type 3, subtype 1), exactly as the series' uAPI describes it.
//!
//! ```text
//! region offset
//!      0 +------------------------------+  trapped: struct vfio_device_migration_info
//!        | device_state | reserved      |  (4-byte device_state, 8-byte others, nothing else)
//!        | pending_bytes                |
//!        | data_offset  (= 4096)        |
//!        | data_size                    |
//!     32 +------------------------------+  no field: every access EINVAL
//!   4096 +------------------------------+  data section: trapped (REGION_READ/WRITE) or
//!        |  one chunk of device state   |  mmapped (a sparse-mmap area over a memfd);
//!        |  (capacity bytes)            |  page-aligned, so the client may use either
//!        +------------------------------+
//! ```
//!
//! Saving, per chunk: read `pending_bytes` (starts an iteration; repeated reads have no side
//! effect), read `data_offset` (the device produces the chunk before the read returns), read
//! `data_size`, read the data, read `pending_bytes` again (acknowledges the chunk). Resuming,
//! per chunk: read `data_offset`, write the data, write `data_size` (the device has consumed the
//! chunk when the write returns). Anything out of this order is EINVAL, as is any access that is
//! not a whole field at its native width.
//!
//! ```mermaid
//! stateDiagram-v2
//!   RUNNING --> STOP
//!   RUNNING --> PRE_COPY
//!   RUNNING --> STOP_COPY
//!   RUNNING --> RESUMING
//!   PRE_COPY --> STOP_COPY
//!   PRE_COPY --> RUNNING: cancelled
//!   PRE_COPY --> STOP
//!   STOP_COPY --> STOP
//!   STOP_COPY --> RUNNING: cancelled
//!   STOP --> RUNNING
//!   STOP --> STOP_COPY: paused guest
//!   RESUMING --> RUNNING
//!   note right of RUNNING: a failed transition goes to ERROR (110b); only reset leaves it
//! ```

mod error;
mod region;
mod transitions;

pub use error::AccessError;
pub use region::{DATA_OFFSET, DEFAULT_DATA_CAPACITY, MigrationRegion};
pub use transitions::allowed;

#[cfg(test)]
mod tests;
