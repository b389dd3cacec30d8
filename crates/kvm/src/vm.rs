//! [`KvmVm`]: the VM file descriptor, its in-kernel interrupt controllers and its memslots.
//!
//! Guest RAM is owned elsewhere (memfd mappings shared with the device processes); a memslot
//! only tells KVM where the caller's mapping is, so adding one is `unsafe`: the caller
//! promises the mapping outlives the slot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::KvmError;
use crate::dirty_log::{DirtyLog, DirtyTracking};
use crate::irq::MsiRoutes;
use crate::memslot::{Memslot, check_slot, region_of};
use crate::vcpu::Vcpu;

/// Where KVM puts the three pages of the real-mode TSS that Intel VMX needs (KVM_SET_TSS_ADDR):
/// just below the IOAPIC, outside RAM and outside the PCI window of the boot contract.
pub const TSS_ADDRESS: u64 = 0xFEBF_D000;
/// The one page of the EPT identity map (KVM_SET_IDENTITY_MAP_ADDR), right after the TSS.
pub const IDENTITY_MAP_ADDRESS: u64 = 0xFEBF_C000;

/// How to build a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmConfig {
    /// The in-kernel PIT (KVM_CREATE_PIT2). The boot contract's guests do not use it; it is
    /// here for guests that do, and its state migrates when it exists.
    pub pit: bool,
    /// Which of KVM's dirty tracking interfaces the VM uses; fixed for its life because the
    /// dirty ring must be enabled before the first vCPU exists.
    pub dirty_tracking: DirtyTracking,
}

impl Default for KvmConfig {
    fn default() -> KvmConfig {
        KvmConfig {
            pit: false,
            dirty_tracking: DirtyTracking::Bitmap,
        }
    }
}

/// A KVM virtual machine with an in-kernel irqchip.
///
/// Shared by reference (`Arc`) between the vCPU threads and the migration thread: every
/// method takes `&self`.
#[derive(Debug)]
pub struct KvmVm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    config: KvmConfig,
    slots: Mutex<BTreeMap<u32, Memslot>>,
    dirty: Arc<DirtyLog>,
    routes: Mutex<MsiRoutes>,
    cpuid: CpuId,
    saveable_msrs: OnceLock<Vec<u32>>,
}

impl KvmVm {
    /// Opens `/dev/kvm` and creates a VM: TSS and identity-map addresses, the in-kernel
    /// irqchip (PIC, IOAPIC, one LAPIC per vCPU), the PIT if asked, the legacy interrupt
    /// routes, and the dirty tracking of `config`.
    ///
    /// # Errors
    /// [`KvmError::Ioctl`] with the errno of the first ioctl that fails, or
    /// [`KvmError::MissingCapability`].
    pub fn new(config: KvmConfig) -> Result<KvmVm, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::ioctl("open /dev/kvm"))?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let fd = Arc::new(kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?);
        let tss =
            usize::try_from(TSS_ADDRESS).map_err(|_| KvmError::InvalidArgument("TSS address"))?;
        fd.set_tss_address(tss)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        if config.pit {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit)
                .map_err(KvmError::ioctl("KVM_CREATE_PIT2"))?;
        }
        let dirty = Arc::new(DirtyLog::enable(Arc::clone(&fd), config.dirty_tracking)?);
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let routes = MsiRoutes::new();
        routes.apply(&fd)?;
        Ok(KvmVm {
            kvm,
            fd,
            config,
            slots: Mutex::new(BTreeMap::new()),
            dirty,
            routes: Mutex::new(routes),
            cpuid,
            saveable_msrs: OnceLock::new(),
        })
    }

    /// The configuration the VM was built with.
    pub fn config(&self) -> KvmConfig {
        self.config
    }

    /// The number of memslots KVM allows.
    pub fn max_memslots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// Creates vCPU `index` (its APIC ID), with the CPUID KVM supports (the APIC ID patched
    /// into leaves 0x1 and 0xB) and, in dirty-ring mode, its ring mapped.
    ///
    /// # Errors
    /// [`KvmError::Ioctl`] for KVM_CREATE_VCPU or KVM_SET_CPUID2; [`KvmError::Os`] if the
    /// dirty ring cannot be mapped.
    pub fn create_vcpu(&self, index: u32) -> Result<Vcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = self.cpuid.clone();
        for entry in cpuid.as_mut_slice() {
            match entry.function {
                0x1 => entry.ebx = (entry.ebx & 0x00FF_FFFF) | (index << 24),
                0xB => entry.edx = index,
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
        self.dirty.attach_vcpu(&fd)?;
        Ok(Vcpu::new(index, fd, Arc::clone(&self.dirty)))
    }

    /// Adds (or replaces) a memslot.
    ///
    /// # Safety
    /// `[slot.host, slot.host + slot.size)` must be a mapping of this process that stays
    /// mapped, readable and writable, until the slot is removed or the VM is dropped: the
    /// guest and KVM access it at any time.
    ///
    /// # Errors
    /// [`KvmError::BadSlot`] for a misaligned, empty or out-of-range slot;
    /// [`KvmError::Ioctl`] for KVM_SET_USER_MEMORY_REGION (EEXIST for an overlap).
    pub unsafe fn add_memslot(&self, slot: Memslot) -> Result<(), KvmError> {
        check_slot(&slot, self.max_memslots())?;
        let mut slots = self.slots();
        let region = region_of(&slot);
        // SAFETY: the caller promises the mapping outlives the slot (this fn's contract).
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        self.dirty.slot_added(&slot)?;
        slots.insert(slot.slot, slot);
        Ok(())
    }

    /// Removes memslot `slot`; the guest then sees no memory there.
    ///
    /// # Errors
    /// [`KvmError::BadSlot`] if there is no such slot; [`KvmError::Ioctl`].
    pub fn remove_memslot(&self, slot: u32) -> Result<(), KvmError> {
        let mut slots = self.slots();
        let Some(existing) = slots.get(&slot).copied() else {
            return Err(KvmError::BadSlot {
                slot,
                reason: "no such slot",
            });
        };
        let region = kvm_userspace_memory_region {
            memory_size: 0,
            ..region_of(&existing)
        };
        // SAFETY: a zero-sized region deletes the slot; KVM keeps no pointer into it.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        self.dirty.slot_removed(slot);
        slots.remove(&slot);
        Ok(())
    }

    /// Turns dirty logging of memslot `slot` on or off. Turning it on write-protects the
    /// slot (or, in ring mode, starts pushing its writes to the rings); turning it off drops
    /// whatever KVM had logged.
    ///
    /// # Errors
    /// [`KvmError::BadSlot`] if there is no such slot; [`KvmError::Ioctl`].
    pub fn set_dirty_logging(&self, slot: u32, on: bool) -> Result<(), KvmError> {
        let mut slots = self.slots();
        let Some(existing) = slots.get_mut(&slot) else {
            return Err(KvmError::BadSlot {
                slot,
                reason: "no such slot",
            });
        };
        let updated = Memslot {
            log_dirty: on,
            ..*existing
        };
        // SAFETY: the same mapping as when the slot was added, under that call's contract.
        unsafe { self.fd.set_user_memory_region(region_of(&updated)) }
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        *existing = updated;
        Ok(())
    }

    /// The memslot `slot`, if it exists.
    pub fn memslot(&self, slot: u32) -> Option<Memslot> {
        self.slots().get(&slot).copied()
    }

    /// The dirty log, shared with the vCPUs.
    pub fn dirty_log(&self) -> &DirtyLog {
        &self.dirty
    }

    /// The VM fd, for the modules of this crate.
    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The `/dev/kvm` fd, for the modules of this crate.
    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The MSI routing table, for `irq.rs`.
    pub(crate) fn routes(&self) -> MutexGuard<'_, MsiRoutes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The list of saveable MSRs, computed once by `state.rs`.
    pub(crate) fn saveable_msrs_cell(&self) -> &OnceLock<Vec<u32>> {
        &self.saveable_msrs
    }

    /// The slot table. Poisoning is ignored: every update is a single insert or remove
    /// after its ioctl succeeded, so a panic cannot leave it half-changed.
    fn slots(&self) -> MutexGuard<'_, BTreeMap<u32, Memslot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
