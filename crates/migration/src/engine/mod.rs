//! The migration engine: a sender and a receiver, as two state machines over the stream.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source VMM
//!     participant D as source devices
//!     participant R as destination VMM
//!     S->>R: Config (RAM layout, devices)
//!     R->>R: build the VM: RAM, device processes, DMA_MAP; devices RESUMING
//!     S->>D: DIRTY_PAGES START; RAM log on; device_state = PRE_COPY
//!     loop pre-copy, the guest running
//!         S->>R: Iteration, dirty RAM (log ∪ every device's GET_BITMAP), device chunks
//!         S->>S: sync, estimate, ask the convergence policy
//!     end
//!     S->>S: pause the guest
//!     S->>D: STOP_COPY; final GET_BITMAP; chunks until pending_bytes = 0; STOP; DIRTY_PAGES STOP
//!     S->>R: the rest of RAM, stop-copy chunks, DeviceConfig, End
//!     R->>R: devices RUNNING
//!     R-->>S: VFMIG-RUNNING (the downtime ends here)
//! ```
//!
//! Failure anywhere before the confirmation — the destination gone, a device error, a
//! corrupt stream, a cancel — rolls the source back: devices RUNNING, tracking stopped, the
//! guest resumed. The destination discards what it built.

mod device;
mod dirty;
mod error;
mod policy;
mod receiver;
mod sender;
mod stats;
mod status;

pub use device::{DeviceLink, MAX_CHUNK};
pub use error::MigrationError;
pub use policy::{Convergence, Decision, DowntimeLimit, Estimate, SwitchReason};
pub use receiver::{ReceiveStats, receive, receive_into};
pub use sender::migrate;
pub use stats::{IterationStats, MigrationStats};
pub use status::{MigrationState, MigrationStatus, Progress};

use vfmig_vmm::Vm;

use crate::DeviceId;
use crate::stream::{DeviceDesc, RamLayout, RamRegion, VmConfig};

/// The destination's confirmation that the VM runs there.
pub const ACK_RUNNING: &str = "VFMIG-RUNNING";
/// The destination's report of a failure, followed by the reason.
pub const ACK_FAILED: &str = "VFMIG-FAILED";

/// The stream's configuration of `vm`: its RAM layout, and each device's kind and spec.
fn stream_config(vm: &Vm) -> Result<VmConfig, MigrationError> {
    let ram = RamLayout::new(
        vm.ram()
            .regions()
            .iter()
            .map(|r| RamRegion {
                gpa: crate::Gpa(r.gpa()),
                size: r.size(),
            })
            .collect(),
    )
    .map_err(|e| MigrationError::Config(e.to_string()))?;
    let devices = vm
        .devices()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(DeviceDesc {
                id: DeviceId(u32::try_from(i).map_err(|e| MigrationError::Config(e.to_string()))?),
                kind: d.spec().kind.clone(),
                config: serde_json::to_vec(d.spec())
                    .map_err(|e| MigrationError::Config(e.to_string()))?,
            })
        })
        .collect::<Result<_, MigrationError>>()?;
    VmConfig::new(ram, devices).map_err(|e| MigrationError::Config(e.to_string()))
}
