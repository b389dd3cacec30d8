//! A VM: guest RAM, attached devices, the guest, and the gate that pauses it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vfmig_device::digest::Digest;
use vfmig_iommu::CONTAINER_PAGE_SIZE;

use crate::devices::{AttachError, AttachedDevice, DeviceSpec};
use crate::gate::Gate;
use crate::machine::{GuestProgram, Machine, MachineError, MachineRam};
use crate::pci::{PciBus, PciConfigState};
use crate::ram::{GuestRam, RamError};
use crate::viommu::{Viommu, ViommuCounters, WINDOW};
use crate::workload::{Workload, WorkloadConfig, init_drivers};

/// Below 4 GiB, RAM ends at 3 GiB (the rest is the PCI hole); above, it continues at 4 GiB.
const LOW_RAM_END: u64 = 3 << 30;
const HIGH_RAM_START: u64 = 4 << 30;

/// Why a VM could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest RAM.
    #[error(transparent)]
    Ram(#[from] RamError),
    /// A device.
    #[error(transparent)]
    Device(#[from] AttachError),
    /// The KVM guest.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A configuration that cannot be run.
    #[error("invalid VM configuration: {0}")]
    Config(String),
}

/// What a VM is made of.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// Guest RAM as `(gpa, size)` regions.
    pub ram: Vec<(u64, u64)>,
    /// Devices, in attach order.
    pub devices: Vec<DeviceSpec>,
}

impl VmConfig {
    /// A VM with `mem` bytes of RAM laid out as a PC does (up to 3 GiB low, the rest from
    /// 4 GiB), and `devices`.
    pub fn with_memory(mem: u64, devices: Vec<DeviceSpec>) -> Result<VmConfig, VmError> {
        if mem == 0 || !mem.is_multiple_of(2 << 20) || mem > 16 << 30 {
            return Err(VmError::Config(format!(
                "guest RAM of {mem} bytes: need a multiple of 2 MiB up to 16 GiB"
            )));
        }
        let mut ram = vec![(0, mem.min(LOW_RAM_END))];
        if mem > LOW_RAM_END {
            ram.push((HIGH_RAM_START, mem - LOW_RAM_END));
        }
        Ok(VmConfig { ram, devices })
    }
}

/// The guest a VM runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GuestPlan {
    /// The guest program on KVM vCPUs.
    Kvm(GuestProgram),
    /// Host threads that write RAM and drive the devices (for hosts without `/dev/kvm`).
    Synthetic(WorkloadConfig),
}

/// What a KVM guest reports of itself (its status page) and what the VMM saw of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvmGuestReport {
    /// vCPUs.
    pub vcpus: u32,
    /// vCPUs that entered the guest.
    pub vcpus_started: u32,
    /// Main-loop iterations, all vCPUs.
    pub loops: u64,
    /// Working-set pages stamped.
    pub pages_written: u64,
    /// Pages found holding their last stamp when visited again.
    pub pages_verified: u64,
    /// mtty bytes read back and checked.
    pub mtty_checked: u64,
    /// DMA copies checked.
    pub dma_checked: u64,
    /// Blocks of the dma-engine's shared memory (BAR4) found holding their last stamp.
    pub shared_checked: u64,
    /// MSIs from mtty.
    pub irq_mtty: u64,
    /// MSIs from the dma-engine (with MSI-X: its vector 0).
    pub irq_dma: u64,
    /// Interrupts of the dma-engine's MSI-X vector 1.
    pub irq_dma_vector1: u64,
    /// The guest drives the dma-engine by MSI-X (else by MSI).
    pub dma_msix: bool,
    /// LAPIC timer interrupts.
    pub irq_timer: u64,
    /// Errors the guest found.
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
    /// A vCPU stopped on a fatal error.
    pub fatal: bool,
    /// Port and MMIO exits handled by the VMM.
    pub exits: u64,
    /// Of them, device accesses that failed (the guest read all ones).
    pub failed_exits: u64,
    /// A vCPU run loop that ended in an error.
    pub vcpu_failure: Option<String>,
    /// The share of time the vCPUs may run (100: not throttled).
    pub throttle_percent: u8,
}

/// Where the VMM runs device processes.
#[derive(Clone, Debug)]
pub struct DeviceHost {
    /// The `vfmig` program (its `device` subcommand serves a device).
    pub program: PathBuf,
    /// Directory for the device sockets.
    pub dir: PathBuf,
    /// Emulate a guest vIOMMU that remaps the devices' DMA window ([`crate::viommu`]).
    pub viommu: bool,
}

/// Digests of a VM's state: equal digests mean equal guests (as far as devices without a
/// digest region can be told apart: not at all).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmDigest {
    /// All guest RAM.
    pub ram: u64,
    /// Each device's state, by id; `None` for a device without a state digest region (one
    /// vfmig did not write).
    pub devices: Vec<(String, Option<u64>)>,
}

/// A device that keeps its VM from migrating, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrationBlocker {
    /// The device's id.
    pub device: String,
    /// Why it blocks.
    pub reason: String,
}

/// A running (or paused) VM.
pub struct Vm {
    config: VmConfig,
    ram: Arc<GuestRam>,
    devices: Arc<Vec<AttachedDevice>>,
    gate: Arc<Gate>,
    workload: Mutex<Option<Workload>>,
    /// The KVM guest, once booted or migrated in.
    machine: OnceLock<Machine>,
    /// Its KVM VM and memslots, made ahead by [`Vm::prepare_machine`].
    prepared: Mutex<Option<MachineRam>>,
    viommu: Option<Arc<Viommu>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("config", &self.config)
            .field("paused", &self.gate.is_paused())
            .finish()
    }
}

impl Vm {
    /// Builds the VM: RAM, device processes started (or, for specs naming a socket,
    /// connected) and probed, RAM mapped into every device. With `fresh`, the guest's drivers
    /// program the devices; a migration destination passes `false` and receives their state.
    /// The guest starts paused.
    pub fn build(config: VmConfig, host: &DeviceHost, fresh: bool) -> Result<Vm, VmError> {
        let ram = Arc::new(GuestRam::new(&config.ram)?);
        Vm::build_with_ram(config, ram, host, fresh)
    }

    /// [`Vm::build`] with RAM made beforehand (a migration destination prepares it while it
    /// waits); its layout must be the configuration's.
    pub fn build_with_ram(
        config: VmConfig,
        ram: Arc<GuestRam>,
        host: &DeviceHost,
        fresh: bool,
    ) -> Result<Vm, VmError> {
        if ram.layout() != config.ram {
            return Err(VmError::Config(format!(
                "RAM laid out as {:x?}, the VM needs {:x?}",
                ram.layout(),
                config.ram
            )));
        }
        let viommu = host.viommu.then(|| Arc::new(Viommu::new()));
        let window = viommu.as_ref().map(|_| WINDOW);
        let mut devices = Vec::with_capacity(config.devices.len());
        for spec in &config.devices {
            let dev = AttachedDevice::attach(spec.clone(), &host.program, &host.dir)?;
            dev.map_ram(&ram, window)?;
            devices.push(dev);
        }
        if fresh {
            init_drivers(&devices)?;
        }
        let gate = Arc::new(Gate::new());
        gate.pause();
        Ok(Vm {
            config,
            ram,
            devices: Arc::new(devices),
            gate,
            workload: Mutex::new(None),
            machine: OnceLock::new(),
            prepared: Mutex::new(None),
            viommu,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The devices.
    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// The devices that keep the VM from migrating: those without a v1 migration region.
    /// Empty when it can migrate.
    pub fn migration_blockers(&self) -> Vec<MigrationBlocker> {
        self.devices
            .iter()
            .filter(|d| d.profile().migration_region.is_none())
            .map(|d| MigrationBlocker {
                device: d.id().to_string(),
                reason: format!(
                    "{} offers no v1 migration region (region type 3, subtype 1)",
                    d.profile().name()
                ),
            })
            .collect()
    }

    /// The gate that pauses the guest.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The KVM guest, if the VM has one.
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.get()
    }

    /// A KVM guest over this VM's RAM and devices: a new KVM VM, the PCI bus its exits and
    /// MSIs go through, and `program.vcpus` vCPUs, booted at the guest program (`boot`) or
    /// waiting, paused, for [`Vm::restore_machine`]. Once per VM.
    fn make_machine(&self, program: &GuestProgram, boot: bool) -> Result<&Machine, VmError> {
        if self.machine.get().is_some() {
            return Err(VmError::Config("the VM has a KVM guest already".into()));
        }
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let slots = match prepared {
            Some(slots) => slots,
            None => MachineRam::new(self.ram.clone())?,
        };
        let bus = Arc::new(PciBus::new(
            self.devices.clone(),
            Machine::router_for(slots.kvm()),
            Some(Machine::mapper_for(&slots)),
        )?);
        let machine = Machine::new(slots, bus, program.clone(), boot)?;
        Ok(self.machine.get_or_init(|| machine))
    }

    /// Boots the KVM guest program (with devices programmed by it, not by the VMM) and lets
    /// it run.
    pub fn boot(&self, program: &GuestProgram) -> Result<(), VmError> {
        self.make_machine(program, true)?;
        self.resume();
        Ok(())
    }

    /// The KVM state of the guest (`None` without a KVM guest). Call it paused.
    pub fn save_machine(&self) -> Result<Option<Vec<u8>>, VmError> {
        self.machine
            .get()
            .map(|m| m.save().map_err(VmError::from))
            .transpose()
    }

    /// Makes the KVM VM and registers guest RAM as its memslots ahead of the KVM guest a
    /// migration will bring ([`MachineRam`]), so that restoring it at the switch-over only
    /// adds the vCPUs. Once a guest exists (or where KVM does not work) this does nothing
    /// but return the error; a VM whose stream brings no KVM guest drops it unused.
    pub fn prepare_machine(&self) -> Result<(), VmError> {
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if self.machine.get().is_none() && prepared.is_none() {
            *prepared = Some(MachineRam::new(self.ram.clone())?);
        }
        Ok(())
    }

    /// Builds the KVM guest a migration brings (`program` as the source ran it) and restores
    /// its KVM state; it stays paused. RAM must be in place.
    pub fn restore_machine(&self, program: &GuestProgram, state: &[u8]) -> Result<(), VmError> {
        self.make_machine(program, false)?.restore(state)?;
        Ok(())
    }

    /// What the guest programmed into each device's PCI configuration (`None` without a
    /// KVM guest: no guest program touched it).
    pub fn pci_state(&self) -> Option<Vec<PciConfigState>> {
        self.machine.get().map(|m| m.bus().save())
    }

    /// Writes back what the guest programmed into each device's PCI configuration, after the
    /// devices' own state: BARs, command, MSI and its routes.
    pub fn restore_pci(&self, states: &[PciConfigState]) -> Result<(), VmError> {
        let machine = self.machine.get().ok_or_else(|| {
            VmError::Config("PCI configuration for a VM without a KVM guest".into())
        })?;
        Ok(machine.bus().restore(states)?)
    }

    /// ORs the pages of RAM region `index` written since the last call — by the VMM and by
    /// the KVM guest's vCPUs — into `out`, and clears them in their logs.
    pub fn take_dirty(&self, index: usize, out: &mut [u64]) -> Result<(), VmError> {
        self.ram.take_dirty(index, out)?;
        if let Some(m) = self.machine.get() {
            m.take_dirty(index, out)?;
        }
        Ok(())
    }

    /// Lets the vCPUs run only `run_percent` of the time (auto-converge); `None` lifts it.
    /// A VM without a KVM guest cannot be throttled.
    pub fn set_throttle(&self, run_percent: Option<u8>) -> Result<(), VmError> {
        match self.machine.get() {
            Some(m) => m
                .set_throttle(run_percent)
                .map_err(|e| VmError::Config(format!("throttling the vCPUs: {e}"))),
            None if run_percent.is_none() => Ok(()),
            None => Err(VmError::Config("only a KVM guest can be throttled".into())),
        }
    }

    /// The vCPUs' share of time in percent (100: not throttled).
    pub fn throttle(&self) -> u8 {
        self.machine.get().map_or(100, Machine::throttle)
    }

    /// Starts the guest's workload (replacing a running one) and lets the guest run.
    pub fn start_workload(&self, config: &WorkloadConfig) {
        let workload = Workload::start(
            config,
            self.ram.clone(),
            self.devices.clone(),
            self.gate.clone(),
            self.viommu.clone(),
        );
        *self.workload.lock().unwrap_or_else(|e| e.into_inner()) = Some(workload);
        self.gate.resume();
    }

    /// Starts the guest of `plan` once: a KVM guest booted, or the synthetic workload. A VM
    /// that already has its KVM guest (migrated in) or that came from a migration without
    /// one (the source ran the synthetic guest) runs what it has: the guest continues.
    pub fn start_guest(&self, plan: &GuestPlan, fresh: bool) -> Result<(), VmError> {
        match plan {
            _ if self.machine.get().is_some() => {
                self.resume();
                Ok(())
            }
            GuestPlan::Kvm(program) if fresh => self.boot(program),
            GuestPlan::Kvm(_) => {
                self.start_workload(&WorkloadConfig::default());
                Ok(())
            }
            GuestPlan::Synthetic(config) => {
                self.start_workload(config);
                Ok(())
            }
        }
    }

    /// What the KVM guest reports of itself (`None` without one).
    pub fn kvm_report(&self) -> Option<KvmGuestReport> {
        let m = self.machine.get()?;
        let (exits, failed_exits) = m.exit_counters();
        let report = match m.status() {
            Ok(s) => KvmGuestReport {
                vcpus: m.program().vcpus,
                vcpus_started: s.vcpus_started,
                loops: s.total(|v| v.loops),
                pages_written: s.total(|v| v.pages_written),
                pages_verified: s.total(|v| v.pages_verified),
                mtty_checked: s.total(|v| v.mtty_checked),
                dma_checked: s.total(|v| v.dma_checked),
                shared_checked: s.total(|v| v.shared_checked),
                irq_mtty: s.total(|v| v.irq_mtty),
                irq_dma: s.total(|v| v.irq_dma),
                irq_dma_vector1: s.irq_dma_vector1,
                dma_msix: s.dma_msix != 0,
                irq_timer: s.total(|v| v.irq_timer),
                errors: s.errors,
                first_error: s.first_error().map(|e| e.to_string()),
                fatal: s.fatal != 0,
                exits,
                failed_exits,
                vcpu_failure: m.failure(),
                throttle_percent: m.throttle(),
            },
            Err(e) => KvmGuestReport {
                vcpus: m.program().vcpus,
                vcpu_failure: Some(format!("status page unreadable: {e}")),
                exits,
                failed_exits,
                ..KvmGuestReport::default()
            },
        };
        Some(report)
    }

    /// Pages written, device operations done, and errors, by the guest so far. For a KVM
    /// guest: pages it stamped; DMA copies and mtty bytes it checked; the errors it found,
    /// device accesses that failed and a vCPU that stopped.
    pub fn guest_counters(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(r) = self.kvm_report() {
            let errors = r.errors + r.failed_exits + u64::from(r.vcpu_failure.is_some());
            return (r.pages_written, r.dma_checked + r.mtty_checked, errors);
        }
        let w = self.workload.lock().unwrap_or_else(|e| e.into_inner());
        w.as_ref().map_or((0, 0, 0), |w| {
            let s = w.stats();
            (
                s.pages_written.load(Relaxed),
                s.device_ops.load(Relaxed),
                s.device_errors.load(Relaxed),
            )
        })
    }

    /// Tells the VM whether its devices track dirty pages (the migration sender sets it after
    /// DIRTY_PAGES START and clears it at STOP): the vIOMMU then unmaps with bitmaps.
    pub fn set_device_tracking(&self, on: bool) {
        if let Some(v) = &self.viommu {
            v.set_tracking(on);
        }
    }

    /// What the emulated vIOMMU did, if there is one.
    pub fn viommu_counters(&self) -> Option<ViommuCounters> {
        self.viommu.as_ref().map(|v| v.counters())
    }

    /// Pauses the guest: on return nothing of it runs (no synthetic operation in flight, no
    /// vCPU in the guest).
    pub fn pause(&self) {
        self.gate.pause();
        if let Some(m) = self.machine.get() {
            m.pause();
        }
    }

    /// Lets the guest run.
    pub fn resume(&self) {
        if let Some(m) = self.machine.get() {
            m.resume();
        }
        self.gate.resume();
    }

    /// True while the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// Digests of guest RAM and of every device that has a state digest region (read from
    /// it). Call it with the guest paused, or the value is a moving target.
    pub fn digest(&self) -> Result<VmDigest, VmError> {
        let mut d = Digest::new();
        let mut page = vec![0u8; CONTAINER_PAGE_SIZE.bytes_usize()];
        for r in self.ram.regions() {
            for p in 0..r.pages() {
                self.ram
                    .read(r.gpa() + p * CONTAINER_PAGE_SIZE.bytes(), &mut page)?;
                d.update(&page);
            }
        }
        let mut devices = Vec::with_capacity(self.devices.len());
        for dev in self.devices.iter() {
            let digest = match dev.profile().digest_region {
                Some(region) => {
                    let mut b = [0u8; 8];
                    dev.client()
                        .region_read(region, 0, &mut b)
                        .map_err(|e| dev.request("read the state digest", e))?;
                    Some(u64::from_le_bytes(b))
                }
                None => None,
            };
            devices.push((dev.id().to_string(), digest));
        }
        Ok(VmDigest {
            ram: d.finish(),
            devices,
        })
    }

    /// Stops the guest for good and detaches the devices (their processes end).
    pub fn shutdown(&self) {
        if let Some(m) = self.machine.get() {
            m.shutdown();
        }
        self.gate.stop();
        self.workload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
