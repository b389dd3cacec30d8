//! The migration engine: a sender and a receiver, as two state machines over the stream.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source VMM
//!     participant D as source devices
//!     participant R as destination VMM
//!     Note over S,D: Sender::setup
//!     S->>R: Config (RAM layout, devices: id and profile)
//!     R->>R: build the VM: RAM, its own devices matched by id and profile, DMA_MAP; RESUMING
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
//!
//! # Who may end a waiting destination
//!
//! Anyone who reaches the port can connect, so a connection is not yet a migration. The
//! receiver commits to a peer only once it passed the **commit point**: accepted, the TLS
//! handshake done (with TLS), a valid stream header, a `Config` section whose VM this
//! destination can build and, with an expected VM, is that VM. Until then nothing is built
//! or applied, and a failure (a port scan's connect-and-close, random bytes, a bad header,
//! a certificate refused, a peer that stays silent or trickles bytes, a VM of another
//! shape) is that peer's alone: the receiver tells it why (`VFMIG-FAILED reason`, where
//! the stream got far enough to have a channel), logs a warning, records it in the
//! receive's [`RefusalLog`] (its [`ReceiveStats::refused`] at the end, and what a status
//! request reads meanwhile) and listens on. Past the commit point a failure is a failed
//! migration, and [`receive_into`] returns it.
//!
//! Several peers are on their way to the commit point at once, each on a thread of its own
//! (see `admit.rs`), at most [`MAX_PENDING_PEERS`]: a connection accepted while that many
//! are pending is closed at once and refused ([`NotAdmitted::TooManyPeers`]), never queued.
//! So a real source is taken at once beside peers that stall, rather than behind each of
//! them in turn; only a flood that keeps every slot taken can hold it off, and then it is
//! refused at once rather than left waiting. The first peer past the commit point is
//! admitted; every other pending peer has its reads stopped and is refused
//! ([`NotAdmitted::AnotherAdmitted`], told where its stream got far enough), and its thread
//! ends at once, never holding up the admitted migration.
//!
//! Every read has a bound ([`ReceiveTimeouts`]): before the commit point, deadlines for
//! the handshake and for the header and `Config` together, which no trickle of bytes
//! extends, so one peer holds a slot for at most their sum (and up to 4 s more in which
//! its refusal is delivered); after it, the longest one
//! read may wait on the source (the stream may take as long as it takes while bytes
//! come); after `VFMIG-READY`, a deadline for the go.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Accept
//!     Accept --> Accept: all MAX_PENDING_PEERS slots taken (closed, refused)
//!     Accept --> Handshake: TLS, on the peer's own thread
//!     Accept --> Setup: plain, on the peer's own thread
//!     Handshake --> Setup: peer authenticated
//!     Setup --> Committed: header, Config, shape check; the first peer there
//!     Handshake --> Refused: failed, timed out, or another peer admitted
//!     Setup --> Refused: failed, timed out, or another peer admitted (VFMIG-FAILED to it)
//!     Refused --> [*]: the slot is free again
//!     Committed --> Ready: stream applied, reads idle-bounded
//!     Ready --> [*]: VFMIG-GO within the go timeout
//!     Committed --> [*]: failure ends the receive
//!     Ready --> [*]: no go: the VM is discarded
//! ```
//!
//! The source bounds its side as well: a TCP connect of at most
//! [`CONNECT_TIMEOUT`](crate::transport::CONNECT_TIMEOUT), a TLS handshake of
//! [`SOURCE_HANDSHAKE_TIMEOUT`](crate::transport::SOURCE_HANDSHAKE_TIMEOUT) (longer than a
//! destination may spend on the peer before it), each write at most 30 s, and a deadline
//! of 30 s for each of `VFMIG-READY` and `VFMIG-RUNNING`. A source the destination's TLS
//! refuses reports the alert it received.
//!
//! # Devices
//!
//! The engine knows a device only by what it answered when it was attached (its
//! [`DeviceProfile`](vfmig_vmm::DeviceProfile)): whether it came from a process the VMM
//! started or from a socket someone else serves, and who wrote it, make no difference. Its
//! migration data is opaque bytes, one stream chunk per device transaction.
//!
//! * **Blockers.** A device without a v1 migration region cannot migrate: `migrate` fails
//!   with [`MigrationError::NotMigratable`], naming it, before it connects to the
//!   destination.
//! * **Untracked devices.** A device that offers no dirty tracking (no migration capability
//!   in its VERSION) or refuses DIRTY_PAGES START is counted, as QEMU counts it, as dirtying
//!   every page it has mapped — all of guest RAM — at every sync. The statistics list it
//!   ([`MigrationStats::untracked_devices`]) and the convergence estimate says so
//!   ([`Estimate::all_mapped`]): since every sync finds all RAM dirty again, another
//!   iteration cannot shrink what is left, so [`DowntimeLimit`] switches over after the first
//!   iteration (unless the rest already fits the limit). The stop-and-copy then sends all of
//!   RAM once more, with the guest paused: the downtime is what it costs to send all RAM, the
//!   price of a device that cannot say what it wrote.
//! * **Destination devices.** The stream names each device by its id and profile
//!   (`pci:VVVV:DDDD`); the destination attaches its own devices and puts each in the place
//!   of the source's device of the same id, refusing the stream, naming the device, when an
//!   id has no counterpart or a profile differs.

mod admit;
mod device;
mod dirty;
mod error;
mod policy;
mod receiver;
mod sender;
mod stats;
mod status;
mod timed;

pub use admit::{MAX_PENDING_PEERS, NotAdmitted, REFUSALS_KEPT, RefusalLog, Refusals};
pub use device::{DeviceLink, MAX_CHUNK};
pub use error::MigrationError;
pub use policy::{
    Convergence, Decision, DowntimeLimit, Estimate, Limit, SETTLED_DOWNTIME, SwitchReason,
    THROTTLE_FIRST, THROTTLE_FLOOR, THROTTLE_STEP,
};
pub use receiver::{ReceiveOptions, ReceiveStats, ReceiveTimeouts, receive, receive_into};
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

/// What the stream's `Config` says of each device: its id, by which the destination finds
/// its own device for it; the section's `kind` is the device's profile (`pci:VVVV:DDDD`),
/// which that device must match. How the source attached it (a process it started, a
/// socket) is its own business and does not travel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeviceName {
    /// The device's id in the VM.
    pub(crate) id: String,
}

/// What the stream carries for each device in its `DeviceConfig` section: its id, and what
/// the guest programmed into its PCI configuration (absent without a KVM guest), written
/// back on the destination after the device's own data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeviceRecord {
    /// The device's id.
    pub(crate) id: String,
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

/// The stream's configuration of `vm`: its RAM layout, and each device's profile and id.
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
                kind: d.profile().name(),
                config: serde_json::to_vec(&DeviceName {
                    id: d.id().to_string(),
                })
                .map_err(|e| MigrationError::Config(e.to_string()))?,
            })
        })
        .collect::<Result<_, MigrationError>>()?;
    StreamConfig::new(ram, devices).map_err(|e| MigrationError::Config(e.to_string()))
}
