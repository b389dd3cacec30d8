//! A VM: guest RAM, attached devices, the guest, and the gate that pauses it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vfmig_device::DIGEST_REGION_INDEX;
use vfmig_device::digest::Digest;
use vfmig_iommu::CONTAINER_PAGE_SIZE;

use crate::devices::{AttachedDevice, DeviceError, DeviceSpec};
use crate::gate::Gate;
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
    Device(#[from] DeviceError),
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

/// Digests of a VM's state: equal digests mean equal guests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmDigest {
    /// All guest RAM.
    pub ram: u64,
    /// Each device's state, by id.
    pub devices: Vec<(String, u64)>,
}

/// A running (or paused) VM.
pub struct Vm {
    config: VmConfig,
    ram: Arc<GuestRam>,
    devices: Arc<Vec<AttachedDevice>>,
    gate: Arc<Gate>,
    workload: Mutex<Option<Workload>>,
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
    /// Builds the VM: RAM, device processes started (or, for specs naming a socket in
    /// `sockets`, connected), RAM mapped into every device. With `fresh`, the guest's drivers
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
            let dev = AttachedDevice::spawn(spec.clone(), &host.program, &host.dir)?;
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

    /// The gate that pauses the guest.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
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

    /// Pages written and device operations done by the guest so far.
    pub fn guest_counters(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
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

    /// Pauses the guest: on return nothing of it runs.
    pub fn pause(&self) {
        self.gate.pause();
    }

    /// Lets the guest run.
    pub fn resume(&self) {
        self.gate.resume();
    }

    /// Digests of guest RAM and of every device (read from its state digest region). Call it
    /// with the guest paused, or the value is a moving target.
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
            let mut b = [0u8; 8];
            dev.client()
                .region_read(DIGEST_REGION_INDEX, 0, &mut b)
                .map_err(|e| dev.request("read the state digest", e))?;
            devices.push((dev.id().to_string(), u64::from_le_bytes(b)));
        }
        Ok(VmDigest {
            ram: d.finish(),
            devices,
        })
    }

    /// Stops the guest for good and detaches the devices (their processes end).
    pub fn shutdown(&self) {
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
