//! What the control socket of `vfmig vm run` does: the VM's commands, with migration run on a
//! thread of its own so `status` and `cancel` answer while it goes on.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use vfmig::control::{
    ControlCommand, ControlReply, DeviceStatus, Done, GuestCounters, IncomingState, MigrateArgs,
    RunState, VmInfo, VmStatus,
};
use vfmig_migration::engine::{
    MigrationError, MigrationState, MigrationStats, Progress, RefusalLog, migrate_with, reclaim,
};
use vfmig_migration::transport::TransportSecurity;
use vfmig_vmm::control::{ControlError, ControlHandler};
use vfmig_vmm::{GuestPlan, Vm};

/// The VM behind a control socket. The VM itself arrives later for an incoming migration.
pub(crate) struct VmHandler {
    vm: OnceLock<Arc<Vm>>,
    /// The VM's runtime directory (device sockets), removed at `quit`.
    runtime_dir: std::path::PathBuf,
    plan: GuestPlan,
    /// Plain TCP, or mutual TLS, for the streams this VM sends.
    security: TransportSecurity,
    /// The VM was built here, not migrated in: its guest boots.
    fresh: std::sync::atomic::AtomicBool,
    workload_started: Mutex<bool>,
    migration: Mutex<Option<Progress>>,
    incoming: Mutex<Option<IncomingState>>,
    /// The refusals of the incoming migration's destination, as they happen.
    incoming_refusals: OnceLock<RefusalLog>,
}

impl VmHandler {
    pub(crate) fn new(
        plan: GuestPlan,
        security: TransportSecurity,
        runtime_dir: std::path::PathBuf,
    ) -> Self {
        VmHandler {
            vm: OnceLock::new(),
            runtime_dir,
            plan,
            security,
            fresh: std::sync::atomic::AtomicBool::new(false),
            workload_started: Mutex::new(false),
            migration: Mutex::new(None),
            incoming: Mutex::new(None),
            incoming_refusals: OnceLock::new(),
        }
    }

    /// Installs the VM (once): `fresh` if it was built here (its guest boots), not migrated
    /// in (its guest continues).
    pub(crate) fn set_vm(&self, vm: Arc<Vm>, fresh: bool) {
        self.fresh
            .store(fresh, std::sync::atomic::Ordering::Relaxed);
        let _ = self.vm.set(vm);
    }

    /// Notes an incoming migration's state for `status` before the VM exists.
    pub(crate) fn set_incoming(&self, state: Option<IncomingState>) {
        *self.incoming.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Shows the refusals of the incoming migration's destination in `status` (once).
    pub(crate) fn set_incoming_refusals(&self, refusals: RefusalLog) {
        let _ = self.incoming_refusals.set(refusals);
    }

    /// Starts the guest, once; later, resumes it.
    pub(crate) fn start_guest(&self) -> Result<(), ControlError> {
        let vm = self.vm()?;
        let mut started = self
            .workload_started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *started {
            vm.resume();
        } else {
            let fresh = self.fresh.load(std::sync::atomic::Ordering::Relaxed);
            vm.start_guest(&self.plan, fresh)
                .map_err(|e| ControlError::generic(format!("starting the guest: {e}")))?;
            *started = true;
        }
        Ok(())
    }

    fn vm(&self) -> Result<&Arc<Vm>, ControlError> {
        self.vm
            .get()
            .ok_or_else(|| ControlError::generic("no VM yet (an incoming migration is pending)"))
    }

    fn status(&self) -> VmStatus {
        let migration = self
            .migration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Progress::status);
        let incoming = *self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        let incoming_refusals = self.incoming_refusals.get().map(RefusalLog::get);
        let Some(vm) = self.vm.get() else {
            return VmStatus {
                state: RunState::Incoming,
                incoming,
                incoming_refusals,
                vm: None,
            };
        };
        let (pages_written, device_ops, device_errors) = vm.guest_counters();
        let bus = vm.machine().map(|m| m.bus());
        let devices = vm
            .devices()
            .iter()
            .enumerate()
            .map(|(slot, d)| DeviceStatus {
                id: d.id().to_string(),
                source: d.spec().source.to_string(),
                profile: d.profile().name(),
                migratable: d.profile().migration_region.is_some(),
                dirty_tracking: d.profile().dirty_tracking,
                pid: d.pid(),
                dma: d.spec().dma,
                client: d.client_stats(),
                bars: bus.map(|b| b.bars(slot)).unwrap_or_default(),
                interrupts: bus.map(|b| b.interrupts(slot)),
            })
            .collect();
        VmStatus {
            state: if vm.gate().is_paused() {
                RunState::Paused
            } else {
                RunState::Running
            },
            incoming,
            incoming_refusals,
            vm: Some(VmInfo {
                ram_bytes: vm.ram().size(),
                devices,
                migration_blockers: vm.migration_blockers(),
                guest: GuestCounters {
                    pages_written,
                    device_ops,
                    device_errors,
                },
                migration,
                viommu: vm.viommu_counters(),
                kvm: vm.kvm_report(),
            }),
        }
    }

    /// The state of the last migration started here, if any.
    fn last_migration_state(&self) -> Option<MigrationState> {
        self.migration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.status().state)
    }

    /// Overrides the state of the last migration (its error stays).
    fn set_last_migration_state(&self, state: MigrationState) {
        if let Some(p) = self
            .migration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            p.update(|s| s.state = state);
        }
    }

    fn start_migration(&self, args: MigrateArgs) -> Result<Done, ControlError> {
        let vm = self.vm()?.clone();
        // A device that cannot migrate refuses the command itself: nothing starts.
        if let Some(b) = vm.migration_blockers().first() {
            return Err(ControlError::generic(format!(
                "cannot migrate: device {}: {}",
                b.device, b.reason
            )));
        }
        let mut slot = self.migration.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            let state = p.status().state;
            if !state.is_final() {
                return Err(ControlError::generic("a migration is already running"));
            }
            if state == MigrationState::Unconfirmed {
                // The guest may run at the destination: a second copy must not leave here.
                return Err(ControlError::generic(
                    "the last switch-over is unconfirmed: the guest may run at its \
                     destination; `cont` here first if it does not",
                ));
            }
        }
        let progress = Progress::new();
        // Running from now on, before the lock is let go: a second `migrate` is refused.
        progress.update(|s| s.state = MigrationState::Setup);
        *slot = Some(progress.clone());
        let recorded = progress.clone();
        let security = self.security.clone();
        let spawned = thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                let mut policy = args.policy;
                let result = migrate_with(&vm, &args.to, &security, &mut policy, &progress);
                record_outcome(&progress, &result);
            });
        if let Err(e) = spawned {
            let e = ControlError::generic(format!("starting the migration thread: {e}"));
            recorded.update(|s| {
                s.state = MigrationState::Failed;
                s.error = Some(e.desc.clone());
            });
            return Err(e);
        }
        Ok(Done {})
    }
}

/// Records how a migration ended where `stats` and `status` read it. The engine records the
/// end of every migration that got as far as a connection; one that fails before (a device
/// that cannot be linked, a destination that does not answer) would otherwise stay in
/// `setup` for ever, and refuse the next `migrate`.
fn record_outcome(progress: &Progress, result: &Result<MigrationStats, MigrationError>) {
    match result {
        Ok(stats) => tracing::info!(
            downtime_ms = stats.downtime_ms,
            iterations = stats.iterations.len(),
            "migration completed"
        ),
        Err(e) => {
            progress.update(|s| {
                if !s.state.is_final() {
                    s.state = MigrationState::Failed;
                    s.error = Some(e.to_string());
                }
            });
            tracing::warn!(error = %e, "migration failed");
        }
    }
}

impl ControlHandler for VmHandler {
    type Command = ControlCommand;
    type Reply = ControlReply;
    const COMMANDS: &'static [&'static str] = ControlCommand::NAMES;

    fn execute(&self, command: ControlCommand) -> Result<ControlReply, ControlError> {
        let done = ControlReply::Done(Done {});
        match command {
            ControlCommand::Status => Ok(ControlReply::Status(Box::new(self.status()))),
            ControlCommand::Migrate(args) => self.start_migration(args).map(ControlReply::Done),
            ControlCommand::Cancel => {
                let slot = self.migration.lock().unwrap_or_else(|e| e.into_inner());
                let p = slot
                    .as_ref()
                    .ok_or_else(|| ControlError::generic("no migration to cancel"))?;
                p.cancel();
                Ok(done)
            }
            ControlCommand::Stats => {
                let slot = self.migration.lock().unwrap_or_else(|e| e.into_inner());
                let status = slot
                    .as_ref()
                    .map(Progress::status)
                    .ok_or_else(|| ControlError::generic("no migration yet"))?;
                Ok(ControlReply::Stats(Box::new(status)))
            }
            ControlCommand::Digest => self
                .vm()?
                .digest()
                .map(ControlReply::Digest)
                .map_err(|e| ControlError::generic(e.to_string())),
            ControlCommand::Stop => {
                self.vm()?.pause();
                Ok(done)
            }
            ControlCommand::Cont => {
                if self.last_migration_state() == Some(MigrationState::Unconfirmed) {
                    // The operator found no VM at the destination: the guest comes back here,
                    // devices first.
                    reclaim(self.vm()?).map_err(|e| ControlError::generic(e.to_string()))?;
                    self.set_last_migration_state(MigrationState::Failed);
                }
                self.start_guest()?;
                Ok(done)
            }
            ControlCommand::Quit => {
                if let Some(vm) = self.vm.get() {
                    vm.shutdown();
                }
                let _ = std::fs::remove_dir_all(&self.runtime_dir);
                thread::spawn(|| {
                    thread::sleep(Duration::from_millis(50));
                    std::process::exit(0);
                });
                Ok(done)
            }
        }
    }
}
