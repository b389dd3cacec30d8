//! The commands of a VM's control socket, and what each returns.
//!
//! ```text
//! -> {"execute": "migrate", "arguments": {"to": "tcp:10.0.0.2:4444", "downtime_ms": 300,
//!                                         "max_iterations": 30, "max_time_ms": 120000,
//!                                         "auto_converge": true, "max_bandwidth_mib": 100}}
//! <- {"return": {}}
//! -> {"execute": "stats"}
//! <- {"return": {"state": "active", "iteration": 3, ...}}
//! ```
//!
//! | command | arguments | returns |
//! |---|---|---|
//! | `status` | — | [`VmStatus`] |
//! | `migrate` | [`MigrateArgs`] | `{}` |
//! | `cancel` | — | `{}` |
//! | `stats` | — | [`MigrationStatus`] of the last migration |
//! | `digest` | — | [`VmDigest`] |
//! | `stop`, `cont`, `quit` | — | `{}` |
//!
//! Every argument of `migrate` but `to` may be left out: it then takes the engine's default
//! ([`DowntimeLimit::default`], the one place the defaults are written). The framing — lines,
//! envelope, error classes — is `vfmig_vmm::control`; [`ControlClient`] sends these commands over it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfmig_migration::engine::{DowntimeLimit, MigrationStatus, Refusals};
use vfmig_migration::transport::Address;
use vfmig_vmm::control::{RequestError, request};
use vfmig_vmm::viommu::ViommuCounters;
use vfmig_vmm::{KvmGuestReport, MigrationBlocker, VmDigest};

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "execute", content = "arguments", rename_all = "kebab-case")]
pub enum ControlCommand {
    /// The VM's state, devices, guest counters and last migration.
    Status,
    /// Starts a migration, on a thread of its own; `stats` follows it.
    Migrate(MigrateArgs),
    /// Cancels the running migration (the guest runs on here).
    Cancel,
    /// The last migration's status.
    Stats,
    /// Digests of guest RAM and of each device's state.
    Digest,
    /// Pauses the guest.
    Stop,
    /// Runs the guest (after an unconfirmed switch-over: takes it back, devices first).
    Cont,
    /// Ends the VM and its device processes.
    Quit,
}

impl ControlCommand {
    /// The `execute` name of every command.
    pub const NAMES: &'static [&'static str] = &[
        "status", "migrate", "cancel", "stats", "digest", "stop", "cont", "quit",
    ];

    /// The `execute` name of this command.
    pub fn name(&self) -> &'static str {
        match self {
            ControlCommand::Status => "status",
            ControlCommand::Migrate(_) => "migrate",
            ControlCommand::Cancel => "cancel",
            ControlCommand::Stats => "stats",
            ControlCommand::Digest => "digest",
            ControlCommand::Stop => "stop",
            ControlCommand::Cont => "cont",
            ControlCommand::Quit => "quit",
        }
    }
}

/// The arguments of `migrate`: where to, and the convergence policy's parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateArgs {
    /// The destination.
    pub to: Address,
    /// `downtime_ms`, `max_iterations`, `max_time_ms`, `auto_converge`, `max_bandwidth_mib`;
    /// each defaults to the engine's.
    #[serde(flatten)]
    pub policy: DowntimeLimit,
}

/// What a command returns.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ControlReply {
    /// Of `status`.
    Status(Box<VmStatus>),
    /// Of `stats`.
    Stats(Box<MigrationStatus>),
    /// Of `digest`.
    Digest(VmDigest),
    /// Of the other commands: `{}`.
    Done(Done),
}

/// The empty result, `{}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// Whether the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// No VM yet: an incoming migration is awaited.
    Incoming,
    /// The guest is paused.
    Paused,
    /// The guest runs.
    Running,
}

/// Where an incoming migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncomingState {
    /// Listening for the source.
    Waiting,
    /// The VM was received.
    Completed,
}

/// The reply to `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmStatus {
    /// Whether the guest runs.
    pub state: RunState,
    /// The incoming migration, for a VM started with `--incoming`.
    pub incoming: Option<IncomingState>,
    /// For a VM started with `--incoming`: the connections its destination refused before
    /// the commit point so far (how many, and why for the last few), seen while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_refusals: Option<Refusals>,
    /// The VM, once it exists.
    #[serde(flatten)]
    pub vm: Option<VmInfo>,
}

/// What `status` says of a VM that exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmInfo {
    /// Bytes of guest RAM.
    pub ram_bytes: u64,
    /// The devices.
    pub devices: Vec<DeviceStatus>,
    /// The devices that keep the VM from migrating (no v1 migration region), and why;
    /// `migrate` is refused while there are any.
    #[serde(default)]
    pub migration_blockers: Vec<MigrationBlocker>,
    /// What the guest did so far.
    pub guest: GuestCounters,
    /// The last migration started here, if any.
    pub migration: Option<MigrationStatus>,
    /// The emulated vIOMMU, if the VM has one.
    pub viommu: Option<ViommuCounters>,
    /// The KVM guest's own report (its status page) and what the VMM saw of it, if the VM
    /// runs one.
    #[serde(default)]
    pub kvm: Option<KvmGuestReport>,
}

/// One device of `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its id in the VM (`mtty0`, `dmaengine0`, `socket0`, ...).
    pub id: String,
    /// How it was attached: `mtty (spawned)`, `socket /run/dev.sock`.
    pub source: String,
    /// What it says it is: `pci:VVVV:DDDD`.
    pub profile: String,
    /// It has a v1 migration region.
    pub migratable: bool,
    /// It tracks the pages it dirties (else a migration counts all RAM dirty at every sync).
    pub dirty_tracking: bool,
    /// Its process, if the VMM spawned one.
    pub pid: Option<u32>,
    /// How it reaches guest RAM: mapped with fds (`shared`) or by DMA messages.
    #[serde(default)]
    pub dma: vfmig_vmm::DmaPath,
    /// What its vfio-user client did: dirty bitmap requests, the device's DMA messages,
    /// pages reported from the client's own record of DMA_WRITEs.
    #[serde(default)]
    pub client: vfmig_vmm::ClientStats,
    /// Its BARs as the KVM guest placed them: trapped accesses, and the areas mapped into
    /// the guest (whose accesses never exit). Empty without a KVM guest.
    #[serde(default)]
    pub bars: Vec<vfmig_vmm::BarStatus>,
    /// Its MSI and MSI-X as the KVM guest set them up and the VMM routes them. Empty without
    /// a KVM guest.
    #[serde(default)]
    pub interrupts: Option<vfmig_vmm::InterruptStatus>,
}

/// The guest's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCounters {
    /// RAM pages written.
    pub pages_written: u64,
    /// Device operations done.
    pub device_ops: u64,
    /// Device operations that failed.
    pub device_errors: u64,
}

/// The sending end of a control socket: one method per command, each returning its typed
/// result.
#[derive(Clone, Debug)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    /// A client of the control socket at `path` (connected afresh for each command).
    pub fn new(path: impl Into<PathBuf>) -> ControlClient {
        ControlClient { path: path.into() }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `status`.
    pub fn status(&self) -> Result<VmStatus, RequestError> {
        request(&self.path, &ControlCommand::Status)
    }

    /// `migrate`.
    pub fn migrate(&self, args: MigrateArgs) -> Result<(), RequestError> {
        self.done(&ControlCommand::Migrate(args))
    }

    /// `cancel`.
    pub fn cancel(&self) -> Result<(), RequestError> {
        self.done(&ControlCommand::Cancel)
    }

    /// `stats`.
    pub fn stats(&self) -> Result<MigrationStatus, RequestError> {
        request(&self.path, &ControlCommand::Stats)
    }

    /// `digest`.
    pub fn digest(&self) -> Result<VmDigest, RequestError> {
        request(&self.path, &ControlCommand::Digest)
    }

    /// `stop`.
    pub fn stop(&self) -> Result<(), RequestError> {
        self.done(&ControlCommand::Stop)
    }

    /// `cont`.
    pub fn cont(&self) -> Result<(), RequestError> {
        self.done(&ControlCommand::Cont)
    }

    /// `quit`.
    pub fn quit(&self) -> Result<(), RequestError> {
        self.done(&ControlCommand::Quit)
    }

    fn done(&self, command: &ControlCommand) -> Result<(), RequestError> {
        request::<_, Done>(&self.path, command).map(|Done {}| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn every_command() -> Vec<ControlCommand> {
        let to: Address = "tcp:127.0.0.1:4444".parse().unwrap();
        vec![
            ControlCommand::Status,
            ControlCommand::Migrate(MigrateArgs {
                to,
                policy: DowntimeLimit::default(),
            }),
            ControlCommand::Cancel,
            ControlCommand::Stats,
            ControlCommand::Digest,
            ControlCommand::Stop,
            ControlCommand::Cont,
            ControlCommand::Quit,
        ]
    }

    #[test]
    fn names_lists_the_execute_name_of_every_command() {
        let names: Vec<String> = every_command()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap()["execute"].to_string())
            .map(|n| n.trim_matches('"').to_string())
            .collect();
        assert_eq!(names, ControlCommand::NAMES);
        for c in every_command() {
            assert!(ControlCommand::NAMES.contains(&c.name()), "{c:?}");
        }
    }

    #[test]
    fn a_command_without_arguments_is_just_its_name() {
        assert_eq!(
            serde_json::to_value(ControlCommand::Status).unwrap(),
            json!({"execute": "status"})
        );
    }

    #[test]
    fn migrate_arguments_left_out_take_the_engines_defaults() {
        let c: ControlCommand =
            serde_json::from_value(json!({"execute": "migrate", "arguments": {"to": "unix:/s"}}))
                .unwrap();
        let ControlCommand::Migrate(args) = c else {
            panic!("{c:?}")
        };
        assert_eq!(args.policy, DowntimeLimit::default());
    }

    #[test]
    fn every_migrate_parameter_is_read_from_the_request() {
        let c: ControlCommand = serde_json::from_value(json!({"execute": "migrate", "arguments": {
            "to": "tcp:h:1", "downtime_ms": 5, "max_iterations": 6, "max_time_ms": 7,
            "auto_converge": false, "max_bandwidth_mib": 8
        }}))
        .unwrap();
        assert_eq!(
            c,
            ControlCommand::Migrate(MigrateArgs {
                to: "tcp:h:1".parse().unwrap(),
                policy: DowntimeLimit {
                    limit: Duration::from_millis(5),
                    max_iterations: 6,
                    max_time: Duration::from_millis(7),
                    auto_converge: false,
                    max_bandwidth: Some(8 << 20),
                    ..Default::default()
                },
            })
        );
    }

    #[test]
    fn a_bad_destination_is_refused_when_the_request_is_read() {
        let r = serde_json::from_value::<ControlCommand>(
            json!({"execute": "migrate", "arguments": {"to": "ftp:x"}}),
        );
        assert!(r.unwrap_err().to_string().contains("tcp: or unix:"));
    }

    #[test]
    fn an_incoming_status_has_no_vm_fields() {
        let s = VmStatus {
            state: RunState::Incoming,
            incoming: Some(IncomingState::Waiting),
            incoming_refusals: None,
            vm: None,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"state": "incoming", "incoming": "waiting"})
        );
    }

    #[test]
    fn a_waiting_destination_reports_its_refusals() {
        let s = VmStatus {
            state: RunState::Incoming,
            incoming: Some(IncomingState::Waiting),
            incoming_refusals: Some(Refusals {
                refused: 1,
                reasons: vec!["not a vfmig migration stream".into()],
            }),
            vm: None,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap()["incoming_refusals"],
            json!({"refused": 1, "reasons": ["not a vfmig migration stream"]})
        );
    }
}
