//! The KVM guest: vCPUs running the guest program of `vfmig-guest` in a KVM VM whose RAM is
//! the VM's [`GuestRam`] (every region a memslot with dirty logging, so the memfds the device
//! processes map are the very pages the guest writes), whose port and MMIO exits go to the
//! [`PciBus`], and whose device interrupts arrive by irqfd without passing through the VMM.
//!
//! ```text
//!  vCPU thread i:  KVM_RUN ──exit──▶ PciBus (0xCF8/0xCFC, BAR windows) ──▶ REGION_READ/WRITE
//!  device process: eventfd (SET_IRQS MSI) ──irqfd──▶ GSI 24 + slot ──route──▶ LAPIC vector
//!  migration:      pause (immediate_exit + kick) ─ dirty log (GET + CLEAR) ─ KVM state
//! ```
//!
//! A fresh machine boots: the VMM writes the boot contract's tables, the image and the boot
//! page into RAM, and every vCPU enters long mode at the image. A migration destination's
//! machine does not boot: it waits, paused, for the source's [`Machine::restore`], and the guest
//! continues where it was.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vfmig_guest::{BOOT_PAGE_GPA, BootPage, IMAGE, STATUS_PAGE_GPA, StatusPage, Workloads};
use vfmig_kvm::{
    DirtyTracking, EventFd, ExitHandler, FIRST_MSI_GSI, KvmVm, MAX_GSI, Memslot, MsiMessage,
    Snapshot, Throttle, VcpuControl, VcpuStateHandle,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::pci::{GuestMapper, InterruptRouter, PciBus};
use crate::ram::GuestRam;

/// Bytes of low RAM the boot writes: the tables, the boot page and the image.
const BOOT_AREA: usize = vfmig_kvm::MIN_RAM;

/// The shortest time a throttled guest's vCPUs run in each throttle period. A shorter run
/// share is a longer period, not a shorter run: the thread that closes the gate wakes some
/// milliseconds late on a loaded host, and over a 1 ms run share (5 % of 20 ms) that lateness
/// let a guest run four times longer than asked.
pub const THROTTLE_MIN_RUN: Duration = Duration::from_millis(10);

/// Why the KVM guest could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// KVM refused something, with its errno.
    #[error("KVM: {0}")]
    Kvm(#[from] vfmig_kvm::KvmError),
    /// Capturing or restoring KVM state failed.
    #[error("KVM state: {0}")]
    State(#[from] vfmig_kvm::StateError),
    /// The state bytes from the source do not decode.
    #[error("KVM state from the source: {0}")]
    Snapshot(#[from] vfmig_kvm::SnapshotError),
    /// The boot layout does not fit.
    #[error("boot: {0}")]
    Boot(#[from] vfmig_kvm::BootError),
    /// A vCPU could not be put at the boot entry.
    #[error("boot: {0}")]
    BootState(#[from] vfmig_kvm::BootStateError),
    /// Guest RAM.
    #[error(transparent)]
    Ram(#[from] crate::ram::RamError),
    /// A thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(io::Error),
    /// A configuration that cannot run.
    #[error("invalid KVM guest: {0}")]
    Config(String),
}

/// What the guest program does: the parameters of its boot page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestProgram {
    /// vCPUs, 1..=16.
    pub vcpus: u32,
    /// Bytes of the working set the dirtier stamps (from 4 MiB up).
    pub working_set: u64,
    /// Pages each vCPU stamps per second (0: as fast as it can).
    pub dirty_rate: u64,
    /// Device rounds per second (0: as fast as it can).
    pub device_rate: u64,
    /// Stamp and check the working set.
    pub dirtier: bool,
    /// Drive the devices it finds.
    pub devices: bool,
}

impl Default for GuestProgram {
    fn default() -> Self {
        GuestProgram {
            vcpus: 1,
            working_set: 64 << 20,
            dirty_rate: 20_000,
            device_rate: 200,
            dirtier: true,
            devices: true,
        }
    }
}

/// Where the working set starts: right after the guest's scratch area.
pub const WORKING_SET_GPA: u64 = vfmig_guest::layout::SCRATCH_END;

/// The guest's interrupts: one irqfd and MSI route per line of the PCI bus (a function's MSI
/// or one of its MSI-X vectors), on GSI 24 + line.
struct Router {
    kvm: Arc<KvmVm>,
    /// Lines whose eventfd is registered as an irqfd.
    registered: Mutex<Vec<u32>>,
}

fn os(e: vfmig_kvm::KvmError) -> io::Error {
    io::Error::other(e.to_string())
}

/// The GSI of `line`.
fn gsi(line: u32) -> io::Result<u32> {
    FIRST_MSI_GSI
        .checked_add(line)
        .filter(|&g| g <= MAX_GSI)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "interrupt line past KVM's GSIs",
            )
        })
}

impl InterruptRouter for Router {
    fn route_msi(&self, line: u32, eventfd: &EventFd, address: u64, data: u32) -> io::Result<()> {
        let gsi = gsi(line)?;
        self.kvm
            .set_msi_route(gsi, MsiMessage { address, data })
            .map_err(os)?;
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if !registered.contains(&line) {
            self.kvm.register_irqfd(eventfd, gsi).map_err(os)?;
            registered.push(line);
        }
        Ok(())
    }

    fn unroute_msi(&self, line: u32, eventfd: &EventFd) -> io::Result<()> {
        let gsi = gsi(line)?;
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = registered.iter().position(|&l| l == line) {
            self.kvm.unregister_irqfd(eventfd, gsi).map_err(os)?;
            registered.swap_remove(at);
        }
        self.kvm.remove_msi_route(gsi).map_err(os)
    }
}

/// Device memory in the guest: each mapping a memslot (without dirty logging: the device
/// saves that memory itself), numbered after guest RAM's.
struct DeviceMemslots {
    kvm: Arc<KvmVm>,
    first: u32,
}

impl GuestMapper for DeviceMemslots {
    unsafe fn map(&self, id: u32, gpa: u64, host: *mut u8, len: usize) -> io::Result<()> {
        let slot = Memslot {
            slot: self.first.checked_add(id).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "memslot number overflows")
            })?,
            gpa,
            host: host as u64,
            size: len as u64,
            log_dirty: false,
        };
        // SAFETY: the caller keeps the mapping valid until `unmap` (this fn's contract).
        unsafe { self.kvm.add_memslot(slot) }.map_err(os)
    }

    fn unmap(&self, id: u32) -> io::Result<()> {
        let slot = self.first.checked_add(id).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "memslot number overflows")
        })?;
        self.kvm.remove_memslot(slot).map_err(os)
    }
}

/// What the vCPUs' exits go to: the PCI bus; ports and addresses no device decodes read as
/// all ones and ignore writes, as on a PC.
struct Exits {
    bus: Arc<PciBus>,
    /// Exits handled, and device accesses that failed (the guest saw all ones).
    exits: AtomicU64,
    failed: AtomicU64,
}

impl Exits {
    fn result(&self, r: Result<bool, crate::devices::AttachError>, data: Option<&mut [u8]>) {
        self.exits.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(true) => {}
            Ok(false) => {
                if let Some(d) = data {
                    d.fill(0xff);
                }
            }
            Err(e) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "a guest device access failed (reads all ones)");
                }
                if let Some(d) = data {
                    d.fill(0xff);
                }
            }
        }
    }
}

impl ExitHandler for Exits {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> io::Result<()> {
        let r = self.bus.pio_read(port, data);
        self.result(r, Some(data));
        Ok(())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> io::Result<()> {
        let r = self.bus.pio_write(port, data);
        self.result(r, None);
        Ok(())
    }

    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> io::Result<()> {
        let r = self.bus.mmio_read(gpa, data);
        self.result(r, Some(data));
        Ok(())
    }

    fn mmio_write(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        let r = self.bus.mmio_write(gpa, data);
        self.result(r, None);
        Ok(())
    }
}

/// A KVM VM with guest RAM registered as its memslots (dirty logging on) and no vCPU yet:
/// the part of a [`Machine`] that does not depend on the guest program. Creating the VM and
/// registering a 2 GiB slot takes 1–10 ms on this host; a migration destination makes it
/// while the stream's RAM still arrives, so its share of the downtime is only the vCPUs and
/// their state. Its drop removes the memslots, so they never outlive the RAM they point into.
pub struct MachineRam {
    kvm: Arc<KvmVm>,
    ram: Arc<GuestRam>,
}

impl std::fmt::Debug for MachineRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineRam")
            .field("regions", &self.ram.regions().len())
            .finish()
    }
}

impl MachineRam {
    /// A new KVM VM ([`Machine::create_vm`]) with every region of `ram` as a memslot. RAM
    /// must start at 0 and hold the boot area.
    pub fn new(ram: Arc<GuestRam>) -> Result<MachineRam, MachineError> {
        let low = ram.regions().first().map_or(0, |r| r.size());
        if ram.regions().first().map(|r| r.gpa()) != Some(0) || low < BOOT_AREA as u64 {
            return Err(MachineError::Config(format!(
                "RAM must start at 0 with at least {} MiB",
                BOOT_AREA >> 20
            )));
        }
        let kvm = Machine::create_vm()?;
        // Built before the first memslot, so an error below removes those already added.
        let made = MachineRam { kvm, ram };
        for (i, region) in made.ram.regions().iter().enumerate() {
            let slot = Memslot {
                slot: u32::try_from(i)
                    .map_err(|_| MachineError::Config("too many regions".into()))?,
                gpa: region.gpa(),
                host: region.host_address(),
                size: region.size(),
                log_dirty: true,
            };
            // SAFETY: the region's mapping lives as long as `made.ram`, which `made` holds
            // until its drop has removed every memslot.
            unsafe { made.kvm.add_memslot(slot)? };
        }
        Ok(made)
    }

    /// The KVM VM.
    pub fn kvm(&self) -> &Arc<KvmVm> {
        &self.kvm
    }
}

impl Drop for MachineRam {
    fn drop(&mut self) {
        // The VM may outlive this (the bus's router holds it): its memslots must not outlive
        // the RAM mappings they point into. Removing a slot never added fails harmlessly.
        for slot in 0..self.ram.regions().len() {
            if let Ok(slot) = u32::try_from(slot)
                && let Err(e) = self.kvm.remove_memslot(slot)
            {
                tracing::debug!(slot, error = %e, "removing a memslot failed");
            }
        }
    }
}

/// The KVM guest of a VM.
pub struct Machine {
    kvm: Arc<KvmVm>,
    control: VcpuControl,
    bus: Arc<PciBus>,
    exits: Arc<Exits>,
    ram: Arc<GuestRam>,
    handles: Vec<VcpuStateHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The first vCPU run loop that ended in an error.
    failure: Arc<Mutex<Option<String>>>,
    program: GuestProgram,
    /// The VM's memslots, removed when the machine drops (after its vCPU threads ended).
    _slots: MachineRam,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.handles.len())
            .field("paused", &self.control.is_paused())
            .finish()
    }
}

impl Machine {
    /// The KVM VM of `slots`, over its RAM, with `program.vcpus` vCPUs and the devices of
    /// `bus` (whose interrupt router it becomes, through [`Machine::router_for`]). With `boot`,
    /// the guest program is loaded and every vCPU put at its entry; without, the vCPUs wait
    /// for [`Machine::restore`]. The vCPU threads start paused.
    pub fn new(
        slots: MachineRam,
        bus: Arc<PciBus>,
        program: GuestProgram,
        boot: bool,
    ) -> Result<Machine, MachineError> {
        let (kvm, ram) = (slots.kvm.clone(), slots.ram.clone());
        let vcpus = program.vcpus;
        if vcpus == 0 || vcpus > vfmig_kvm::MAX_VCPUS {
            return Err(MachineError::Config(format!(
                "{vcpus} vCPUs: from 1 to {}",
                vfmig_kvm::MAX_VCPUS
            )));
        }
        let mut vcpus = (0..vcpus)
            .map(|index| kvm.create_vcpu(index))
            .collect::<Result<Vec<_>, _>>()?;
        if boot {
            let tsc_hz = vcpus.first().map_or(Ok(0), |v| v.tsc_hz())?;
            write_boot(&ram, &program, tsc_hz)?;
        }
        let control = VcpuControl::new();
        control.pause();
        let exits = Arc::new(Exits {
            bus: bus.clone(),
            exits: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let failure = Arc::new(Mutex::new(None));
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for mut vcpu in vcpus.drain(..) {
            let index = vcpu.index();
            if boot {
                vcpu.set_boot_state()?;
            }
            handles.push(vcpu.state_handle(&kvm)?);
            let (exits, control, failure) = (exits.clone(), control.clone(), failure.clone());
            let thread = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Err(e) = vcpu.run(exits.as_ref(), &control) {
                        tracing::error!(vcpu = index, error = %e, "vCPU stopped");
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("vCPU {index}: {e}"));
                    }
                })
                .map_err(MachineError::Thread)?;
            threads.push(thread);
        }
        Ok(Machine {
            kvm,
            control,
            bus,
            exits,
            ram,
            handles,
            threads: Mutex::new(threads),
            failure,
            program,
            _slots: slots,
        })
    }

    /// What maps a [`PciBus`]'s device memory into this KVM VM: memslots numbered after those
    /// of `slots`' RAM.
    pub fn mapper_for(slots: &MachineRam) -> Arc<dyn GuestMapper> {
        Arc::new(DeviceMemslots {
            kvm: slots.kvm.clone(),
            first: u32::try_from(slots.ram.regions().len()).unwrap_or(u32::MAX),
        })
    }

    /// The interrupt router a [`PciBus`] of this KVM VM needs.
    pub fn router_for(kvm: &Arc<KvmVm>) -> Arc<dyn InterruptRouter> {
        Arc::new(Router {
            kvm: kvm.clone(),
            registered: Mutex::new(Vec::new()),
        })
    }

    /// A KVM VM with the dirty bitmap (measured faster than the dirty ring here: see
    /// `vfmig-kvm`'s docs).
    pub fn create_vm() -> Result<Arc<KvmVm>, MachineError> {
        Ok(Arc::new(KvmVm::new(vfmig_kvm::KvmConfig {
            pit: false,
            dirty_tracking: DirtyTracking::Bitmap,
        })?))
    }

    /// True if this host can run a KVM guest (`/dev/kvm` opens and has what we need).
    pub fn available() -> bool {
        KvmVm::new(vfmig_kvm::KvmConfig::default()).is_ok()
    }

    /// What the guest program was started with.
    pub fn program(&self) -> &GuestProgram {
        &self.program
    }

    /// The PCI bus.
    pub fn bus(&self) -> &Arc<PciBus> {
        &self.bus
    }

    /// Stops every vCPU; on return no guest instruction runs until [`Machine::resume`].
    pub fn pause(&self) {
        self.control.pause();
    }

    /// Lets the vCPUs run.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Lets the vCPUs run only `run_percent` of the time (auto-converge); `None` or 100
    /// lifts the throttle. Each period lets them run [`THROTTLE_MIN_RUN`] at least, and lasts
    /// 20 ms at least: at 5 % a period is 200 ms, 10 ms run and 190 ms held.
    pub fn set_throttle(&self, run_percent: Option<u8>) -> io::Result<()> {
        let throttle = run_percent.filter(|&p| p < 100).map(|p| {
            let p = p.max(1);
            Throttle {
                run_percent: p,
                period: (THROTTLE_MIN_RUN * 100 / u32::from(p)).max(Duration::from_millis(20)),
            }
        });
        self.control.set_throttle(throttle)
    }

    /// The share of time the vCPUs may run now, in percent.
    pub fn throttle(&self) -> u8 {
        self.control.throttle().map_or(100, |t| t.run_percent)
    }

    /// ORs the pages the guest wrote in RAM region `index` since the last call into `out`
    /// (bit k = the region's page k) and re-arms them; returns how many there were.
    pub fn take_dirty(&self, index: usize, out: &mut [u64]) -> Result<u64, MachineError> {
        let slot = u32::try_from(index).map_err(|_| MachineError::Config("region".into()))?;
        Ok(self.kvm.dirty_log().read_slot_words(slot, out)?)
    }

    /// The KVM state of the VM and every vCPU, as bytes for the stream. Call it paused.
    pub fn save(&self) -> Result<Vec<u8>, MachineError> {
        Ok(self.kvm.save_state(&self.handles)?.to_bytes())
    }

    /// Restores KVM state saved by [`Machine::save`] (RAM in place first). Paused.
    pub fn restore(&self, bytes: &[u8]) -> Result<(), MachineError> {
        let snapshot = Snapshot::from_bytes(bytes)?;
        Ok(self.kvm.restore_state(&self.handles, &snapshot)?)
    }

    /// The guest's status page, read while it runs (see `vfmig-guest`'s layout docs).
    pub fn status(&self) -> Result<StatusPage, MachineError> {
        let mut page = vec![0u8; size_of::<StatusPage>()];
        self.ram.read(STATUS_PAGE_GPA, &mut page)?;
        StatusPage::read_from_bytes(&page)
            .map_err(|_| MachineError::Config("status page size".into()))
    }

    /// Exits handled, and device accesses that failed, so far.
    pub fn exit_counters(&self) -> (u64, u64) {
        (
            self.exits.exits.load(Ordering::Relaxed),
            self.exits.failed.load(Ordering::Relaxed),
        )
    }

    /// The first vCPU failure, if a run loop ended in an error.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the vCPU threads for good.
    pub fn shutdown(&self) {
        self.control.stop();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The vCPUs stop before the memslots go (with `_slots`, after this).
        self.shutdown();
    }
}

/// Writes the boot contract's tables, the image and the boot page into low RAM.
fn write_boot(ram: &GuestRam, program: &GuestProgram, tsc_hz: u64) -> Result<(), MachineError> {
    let mut low = vec![0u8; BOOT_AREA];
    vfmig_kvm::write_tables(&mut low)?;
    vfmig_kvm::load_image(&mut low, IMAGE)?;
    let mut workloads = Workloads(0);
    if program.dirtier {
        workloads = workloads | Workloads::DIRTIER;
    }
    if program.devices {
        workloads = workloads | Workloads::MTTY | Workloads::DMA;
    }
    let ram_end = ram.regions().first().map_or(0, |r| r.size());
    let ws_size = program.working_set / 4096 * 4096;
    if ws_size < u64::from(program.vcpus) * 4096 || WORKING_SET_GPA + ws_size > ram_end {
        return Err(MachineError::Config(format!(
            "a working set of {} bytes does not fit in {} MiB of low RAM above {WORKING_SET_GPA:#x}",
            program.working_set,
            ram_end >> 20
        )));
    }
    let mut boot = BootPage::new(program.vcpus, ram.size(), tsc_hz, workloads);
    boot.ws_base = WORKING_SET_GPA;
    boot.ws_size = ws_size;
    boot.dirty_rate = program.dirty_rate;
    boot.device_rate = program.device_rate;
    let at = usize::try_from(BOOT_PAGE_GPA).unwrap_or(0);
    if let Some(page) = low.get_mut(at..at + size_of::<BootPage>()) {
        page.copy_from_slice(boot.as_bytes());
    }
    ram.write(0, &low)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::test_support::served;

    /// A booted KVM guest with `kinds` devices and 64 MiB of RAM, its sockets, paused.
    struct Booted {
        machine: Machine,
        sockets: Vec<PathBuf>,
    }

    impl Drop for Booted {
        fn drop(&mut self) {
            self.machine.shutdown();
            for s in &self.sockets {
                let _ = std::fs::remove_file(s);
            }
        }
    }

    fn boot(kinds: &[&str], program: GuestProgram) -> Booted {
        boot_with(kinds, program, true)
    }

    /// [`boot`], the devices' mappable BAR areas mapped into the guest or (`direct` false)
    /// all their accesses trapped.
    fn boot_with(kinds: &[&str], program: GuestProgram, direct: bool) -> Booted {
        let (devices, sockets): (Vec<_>, Vec<_>) = kinds.iter().map(|k| served(k)).unzip();
        let ram = Arc::new(GuestRam::new(&[(0, 64 << 20)]).unwrap());
        for d in &devices {
            d.map_ram(&ram, None).unwrap();
        }
        let slots = MachineRam::new(ram).unwrap();
        let bus = Arc::new(
            PciBus::new(
                Arc::new(devices),
                Machine::router_for(slots.kvm()),
                direct.then(|| Machine::mapper_for(&slots)),
            )
            .unwrap(),
        );
        let machine = Machine::new(slots, bus, program, true).unwrap();
        Booted { machine, sockets }
    }

    fn small(devices: bool) -> GuestProgram {
        GuestProgram {
            vcpus: 1,
            working_set: 8 << 20,
            dirty_rate: 2000,
            device_rate: 50,
            dirtier: true,
            devices,
        }
    }

    /// Runs the guest until `done` holds of its status page (30 s at most).
    fn run_until(m: &Machine, what: &str, done: impl Fn(&StatusPage) -> bool) -> StatusPage {
        m.resume();
        let start = Instant::now();
        loop {
            let s = m.status().unwrap();
            assert_eq!(m.failure(), None);
            assert_eq!(s.errors, 0, "guest error: {:?}", s.first_error());
            if done(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{what}: {s:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_guest_finds_both_devices_on_the_bus() {
        let b = boot(&["mtty", "dma-engine"], small(true));
        let s = run_until(&b.machine, "devices found", |s| s.devices == 0b11);
        assert_eq!(s.pci_functions, 2);
    }

    #[test]
    fn the_guest_moves_bytes_through_mtty_by_interrupt() {
        let b = boot(&["mtty", "dma-engine"], small(true));
        let s = run_until(&b.machine, "mtty bytes checked", |s| {
            s.total(|v| v.mtty_checked) >= 64
        });
        assert!(s.total(|v| v.irq_mtty) > 0);
    }

    #[test]
    fn the_guest_copies_through_the_dma_engine_with_completion_msis() {
        let b = boot(&["mtty", "dma-engine"], small(true));
        let s = run_until(&b.machine, "DMA checked", |s| {
            s.total(|v| v.dma_checked) >= 8
        });
        assert!(s.total(|v| v.irq_dma) > 0);
    }

    #[test]
    fn the_dirty_log_reports_the_pages_the_guest_stamps() {
        let b = boot(&[], small(false));
        run_until(&b.machine, "pages written", |s| {
            s.total(|v| v.pages_written) > 64
        });
        b.machine.pause();
        let mut words = vec![0u64; (64 << 20) / 4096 / 64];
        b.machine.take_dirty(0, &mut words).unwrap();
        let first_ws_page = usize::try_from(WORKING_SET_GPA / 4096).unwrap();
        let ws_dirty: u32 = words[first_ws_page / 64..]
            .iter()
            .map(|w| w.count_ones())
            .sum();
        assert!(ws_dirty > 0);
        // Paused, nothing more is written: a second read is empty.
        let mut again = vec![0u64; words.len()];
        b.machine.take_dirty(0, &mut again).unwrap();
        assert!(again.iter().all(|&w| w == 0));
    }

    /// The dma-engine's BAR4 (64 KiB of memory it lets its client map), as the bus shows it.
    fn bar4(m: &Machine) -> crate::pci::BarStatus {
        m.bus()
            .bars(0)
            .into_iter()
            .find(|b| b.index == 4)
            .expect("the dma-engine has a BAR4")
    }

    #[test]
    fn the_guests_accesses_to_a_mapped_bar_area_never_exit() {
        let b = boot(&["dma-engine"], small(true));
        let s = run_until(&b.machine, "BAR4 blocks checked", |s| {
            s.total(|v| v.shared_checked) >= 8
        });
        let bar = bar4(&b.machine);
        assert_eq!(bar.direct, [(0, 64 << 10, Some(s.dma_shared))]);
        assert_eq!(bar.trapped, 0, "{bar:?}");
    }

    #[test]
    fn without_a_mapper_the_guests_accesses_to_the_same_area_are_trapped() {
        let b = boot_with(&["dma-engine"], small(true), false);
        run_until(&b.machine, "BAR4 blocks checked", |s| {
            s.total(|v| v.shared_checked) >= 8
        });
        let bar = bar4(&b.machine);
        assert!(bar.direct.is_empty(), "{bar:?}");
        assert!(bar.trapped > 0, "{bar:?}");
    }

    #[test]
    fn the_guest_takes_dma_completions_on_both_msix_vectors() {
        let b = boot(&["dma-engine"], small(true));
        let s = run_until(&b.machine, "completions on both vectors", |s| {
            s.total(|v| v.irq_dma) >= 4 && s.irq_dma_vector1 >= 4
        });
        assert_eq!(s.dma_msix, 1, "the guest fell back to MSI");
    }

    #[test]
    fn the_bus_shows_both_msix_vectors_routed() {
        let b = boot(&["dma-engine"], small(true));
        run_until(&b.machine, "a completion on vector 1", |s| {
            s.irq_dma_vector1 >= 1
        });
        let irqs = b.machine.bus().interrupts(0);
        assert_eq!(
            (irqs.msix_vectors, irqs.msix_enabled, irqs.msix_routed),
            (2, true, 2)
        );
    }
}
