//! The migration engine: a sender and a receiver, as two state machines over the stream.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source VMM
//!     participant D as source devices
//!     participant R as destination VMM
//!     Note over S,D: Sender::setup
//!     S->>R: Config (RAM layout, devices)
//!     R->>R: build the VM: RAM, device processes, DMA_MAP; devices RESUMING
//!     S->>D: DIRTY_PAGES START; RAM log on; device_state = PRE_COPY
//!     loop Sender::pre_copy_iteration, the guest running
//!         S->>R: Iteration, dirty RAM (log ∪ every device's GET_BITMAP), device chunks
//!         S->>S: sync, estimate, ask the convergence policy (at its limit: fail, roll back)
//!     end
//!     Note over S,D: Sender::stop_and_copy
//!     S->>S: pause the guest
//!     S->>D: STOP_COPY; final GET_BITMAP; chunks until pending_bytes = 0; STOP; DIRTY_PAGES STOP
//!     S->>R: the rest of RAM, stop-copy chunks, DeviceConfig, End
//!     R->>R: devices RUNNING, the guest still paused
//!     Note over S,R: Sender::switch_over
//!     R-->>S: VFMIG-READY
//!     S->>R: VFMIG-GO (the source commits: it never resumes the guest on its own again)
//!     R->>R: the guest may run
//!     R-->>S: VFMIG-RUNNING (the downtime ends here)
//! ```
//!
//! Each `Note` and the loop name the function of the sender (`sender.rs`) that runs that
//! phase.
//!
//! Failure anywhere before `VFMIG-GO` is sent — the destination gone, a device error, a
//! corrupt stream, a cancel, no `VFMIG-READY`, pre-copy at its iteration or time limit
//! without converging (see the policy's module for why that fails) — rolls the source back
//! (`Sender::roll_back`): devices RUNNING, tracking stopped, the guest resumed; the source closes the connection, and the
//! destination, which runs the VM only on `VFMIG-GO`, discards what it built. So the guest
//! never runs on both sides, whichever message is lost: the destination runs it only once
//! told to, and the source never resumes it once it has told. If the connection fails after
//! `VFMIG-GO` went out and before `VFMIG-RUNNING` came back, the source cannot know which
//! side has the guest: it leaves it paused and reports the migration
//! [`MigrationState::Unconfirmed`] (see that state for what to do).

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
pub use policy::{
    Convergence, Decision, DowntimeLimit, Estimate, Limit, SETTLED_DOWNTIME, SwitchReason,
    THROTTLE_FIRST, THROTTLE_FLOOR, THROTTLE_STEP,
};
pub use receiver::{ReceiveStats, receive, receive_into};
pub use sender::{migrate, migrate_with, reclaim};
pub use stats::{DowntimeStats, IterationStats, MigrationStats};
pub use status::{MigrationState, MigrationStatus, Progress};

use vfmig_vmm::Vm;

use crate::DeviceIndex;
use crate::stream::{DeviceDesc, RamLayout, RegionDesc, StreamConfig};

/// The destination's report that it applied the whole stream, devices RUNNING, and waits
/// for [`GO`] to run the guest.
pub const ACK_READY: &str = "VFMIG-READY";
/// The source's word to the destination, after [`ACK_READY`], to run the guest: from then
/// on the source never resumes it on its own.
pub const GO: &str = "VFMIG-GO";
/// The destination's confirmation, after [`GO`], that the VM runs there.
pub const ACK_RUNNING: &str = "VFMIG-RUNNING";
/// The destination's report of a failure, followed by the reason.
pub const ACK_FAILED: &str = "VFMIG-FAILED";

/// What the stream carries for each device in its `DeviceConfig` section: the device as the
/// source attached it, and what the guest programmed into its PCI configuration (absent
/// without a KVM guest), written back on the destination after the device's own data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeviceRecord {
    /// The device.
    pub(crate) spec: vfmig_vmm::DeviceSpec,
    /// The guest's PCI configuration of it.
    pub(crate) pci: Option<vfmig_vmm::PciConfigState>,
}

/// The longest line of the switch-over handshake either side reads (a failure's reason).
const MAX_REPLY: usize = 4096;

/// Reads one line of the handshake from `conn`, without its end of line, reading a byte at a
/// time so nothing after the line is consumed: `pending` holds bytes already received (the
/// stream reader's leftovers) and is used first. An empty line means the peer closed the
/// connection; a line longer than [`MAX_REPLY`] is an error.
fn read_line(conn: &mut impl std::io::Read, pending: &mut Vec<u8>) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = if pending.is_empty() {
            let mut byte = [0u8; 1];
            match conn.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => byte[0],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        } else {
            pending.remove(0)
        };
        if byte == b'\n' {
            break;
        }
        if line.len() == MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a handshake line longer than {MAX_REPLY} bytes"),
            ));
        }
        line.push(byte);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The stream's configuration of `vm`: its RAM layout, and each device's kind and spec.
fn stream_config(vm: &Vm) -> Result<StreamConfig, MigrationError> {
    let ram = RamLayout::new(
        vm.ram()
            .regions()
            .iter()
            .map(|r| RegionDesc {
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
                id: DeviceIndex(
                    u32::try_from(i).map_err(|e| MigrationError::Config(e.to_string()))?,
                ),
                kind: d.spec().kind.clone(),
                config: serde_json::to_vec(d.spec())
                    .map_err(|e| MigrationError::Config(e.to_string()))?,
            })
        })
        .collect::<Result<_, MigrationError>>()?;
    StreamConfig::new(ram, devices).map_err(|e| MigrationError::Config(e.to_string()))
}
