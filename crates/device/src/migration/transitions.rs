//! Which `device_state` writes the region accepts.

use vfmig_abi::StateKind::{self, *};

/// True if a device in `from` may be asked to move to `to`.
///
/// The series requires RUNNING→STOP, RUNNING→STOP_COPY→STOP, RUNNING→PRE_COPY→STOP_COPY→STOP
/// and RUNNING→RESUMING→RUNNING. A VMM also needs PRE_COPY→RUNNING and STOP_COPY→RUNNING (a
/// cancelled migration), STOP→RUNNING (a paused guest resumed), STOP→STOP_COPY (saving a paused
/// guest) and PRE_COPY→STOP. Writing the current state is a no-op and always accepted, except
/// in ERROR, which only a device reset leaves.
pub const fn allowed(from: StateKind, to: StateKind) -> bool {
    matches!(
        (from, to),
        (Stop, Stop)
            | (Stop, Running)
            | (Stop, StopCopy)
            | (Running, Running)
            | (Running, Stop)
            | (Running, StopCopy)
            | (Running, PreCopy)
            | (Running, Resuming)
            | (PreCopy, PreCopy)
            | (PreCopy, StopCopy)
            | (PreCopy, Running)
            | (PreCopy, Stop)
            | (StopCopy, StopCopy)
            | (StopCopy, Stop)
            | (StopCopy, Running)
            | (Resuming, Resuming)
            | (Resuming, Running)
    )
}
