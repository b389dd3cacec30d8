//! What the control socket of `vfmig vm run` does: the VM's commands, with migration run on a
//! thread of its own so `status` and `cancel` answer while it goes on.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use vfmig_migration::engine::{DowntimeLimit, MigrationState, Progress, migrate, reclaim};
use vfmig_migration::transport::Address;
use vfmig_vmm::control::{ControlError, ControlHandler};
use vfmig_vmm::{Vm, WorkloadConfig};

/// The VM behind a control socket. The VM itself arrives later for an incoming migration.
pub(crate) struct VmHandler {
    vm: OnceLock<Arc<Vm>>,
    /// The VM's runtime directory (device sockets), removed at `quit`.
    runtime_dir: std::path::PathBuf,
    workload: WorkloadConfig,
    workload_started: Mutex<bool>,
    migration: Mutex<Option<Progress>>,
    incoming: Mutex<Option<String>>,
}

impl VmHandler {
    pub(crate) fn new(workload: WorkloadConfig, runtime_dir: std::path::PathBuf) -> Self {
        VmHandler {
            vm: OnceLock::new(),
            runtime_dir,
            workload,
            workload_started: Mutex::new(false),
            migration: Mutex::new(None),
            incoming: Mutex::new(None),
        }
    }

    /// Installs the VM (once).
    pub(crate) fn set_vm(&self, vm: Arc<Vm>) {
        let _ = self.vm.set(vm);
    }

    /// Notes an incoming migration's state for `status` before the VM exists.
    pub(crate) fn set_incoming(&self, state: Option<String>) {
        *self.incoming.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Starts the guest's workload, once.
    pub(crate) fn start_guest(&self) -> Result<(), ControlError> {
        let vm = self.vm()?;
        let mut started = self
            .workload_started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *started {
            vm.resume();
        } else {
            vm.start_workload(&self.workload);
            *started = true;
        }
        Ok(())
    }

    fn vm(&self) -> Result<&Arc<Vm>, ControlError> {
        self.vm
            .get()
            .ok_or_else(|| ControlError::generic("no VM yet (an incoming migration is pending)"))
    }

    fn status(&self) -> Value {
        let migration = self
            .migration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Progress::status);
        let incoming = self
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(vm) = self.vm.get() else {
            return json!({ "state": "incoming", "incoming": incoming });
        };
        let (pages, ops, errors) = vm.guest_counters();
        let devices: Vec<Value> = vm
            .devices()
            .iter()
            .map(|d| json!({ "id": d.id(), "kind": d.spec().kind, "pid": d.pid() }))
            .collect();
        json!({
            "state": if vm.gate().is_paused() { "paused" } else { "running" },
            "ram_bytes": vm.ram().size(),
            "devices": devices,
            "guest": { "pages_written": pages, "device_ops": ops, "device_errors": errors },
            "migration": migration,
            "incoming": incoming,
            "viommu": vm.viommu_counters(),
        })
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

    fn start_migration(&self, args: &Value) -> Result<Value, ControlError> {
        let vm = self.vm()?.clone();
        let to = args
            .get("to")
            .and_then(Value::as_str)
            .ok_or_else(|| ControlError::invalid("migrate needs \"to\""))?;
        let to: Address = to
            .parse()
            .map_err(|e| ControlError::invalid(format!("{e}")))?;
        let mut policy = DowntimeLimit::default();
        if let Some(ms) = args.get("downtime_ms") {
            let ms = ms
                .as_u64()
                .ok_or_else(|| ControlError::invalid("downtime_ms must be a number"))?;
            policy.limit = Duration::from_millis(ms);
        }
        if let Some(n) = args.get("max_iterations") {
            policy.max_iterations = n
                .as_u64()
                .ok_or_else(|| ControlError::invalid("max_iterations must be a number"))?;
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
        thread::spawn(move || {
            let _ = migrate(&vm, &to, &mut policy, &progress);
        });
        Ok(json!({}))
    }
}

impl ControlHandler for VmHandler {
    fn execute(&self, command: &str, arguments: &Value) -> Result<Value, ControlError> {
        match command {
            "status" => Ok(self.status()),
            "migrate" => self.start_migration(arguments),
            "cancel" => {
                let slot = self.migration.lock().unwrap_or_else(|e| e.into_inner());
                let p = slot
                    .as_ref()
                    .ok_or_else(|| ControlError::generic("no migration to cancel"))?;
                p.cancel();
                Ok(json!({}))
            }
            "stats" => {
                let slot = self.migration.lock().unwrap_or_else(|e| e.into_inner());
                let status = slot
                    .as_ref()
                    .map(Progress::status)
                    .ok_or_else(|| ControlError::generic("no migration yet"))?;
                serde_json::to_value(status).map_err(|e| ControlError::generic(e.to_string()))
            }
            "digest" => {
                let d = self
                    .vm()?
                    .digest()
                    .map_err(|e| ControlError::generic(e.to_string()))?;
                serde_json::to_value(d).map_err(|e| ControlError::generic(e.to_string()))
            }
            "stop" => {
                self.vm()?.pause();
                Ok(json!({}))
            }
            "cont" => {
                if self.last_migration_state() == Some(MigrationState::Unconfirmed) {
                    // The operator found no VM at the destination: the guest comes back here,
                    // devices first.
                    reclaim(self.vm()?).map_err(|e| ControlError::generic(e.to_string()))?;
                    self.set_last_migration_state(MigrationState::Failed);
                }
                self.start_guest()?;
                Ok(json!({}))
            }
            "quit" => {
                if let Some(vm) = self.vm.get() {
                    vm.shutdown();
                }
                let _ = std::fs::remove_dir_all(&self.runtime_dir);
                thread::spawn(|| {
                    thread::sleep(Duration::from_millis(50));
                    std::process::exit(0);
                });
                Ok(json!({}))
            }
            other => Err(ControlError::not_found(other)),
        }
    }
}
