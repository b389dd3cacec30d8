//! KVM state of a paused VM: [`VcpuState`] per vCPU, [`VmState`] per VM, captured and
//! restored in an order KVM accepts. `snapshot.rs` turns them into bytes.
//!
//! # Order
//!
//! Capture (per vCPU): MP state first (KVM_GET_MP_STATE runs the LAPIC's pending INIT/SIPI
//! processing, which may change the rest), then regs, sregs, FPU, XSAVE, XCRs, debug
//! registers, LAPIC, MSRs, and vCPU events last (the other GETs may change pending-event
//! state). Restore: MP state, regs, sregs (which restore the APIC base MSR), FPU, XSAVE,
//! XCRs, debug registers, LAPIC (after sregs, so the APIC base is in place), MSRs (after
//! the LAPIC: the TSC deadline MSR only sticks with the LAPIC configured), vCPU events
//! last (SET_REGS clears pending exceptions; the events put them back). The VM's clock,
//! PIT and irqchip are restored before any vCPU. These orders are the ones the public
//! VMMs with KVM snapshots settled on.
//!
//! Both sides need every vCPU out of KVM_RUN ([`crate::VcpuControl::pause`]): the vCPU
//! ioctls would otherwise wait for KVM_RUN to return, and the events of one vCPU are not
//! consistent while another runs.
//!
//! MSRs: KVM_GET_MSR_INDEX_LIST names the MSRs KVM saves and restores; the list is filtered
//! once per VM to those a vCPU can read back (some are listed on hosts where they are not
//! usable).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_MSR_ENTRIES, Msrs,
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, VcpuFd};

use crate::{KvmError, KvmVm, StateError, Vcpu};

/// The KVM state of one vCPU.
#[derive(Debug)]
pub struct VcpuState {
    /// KVM_GET_MP_STATE.
    pub mp_state: kvm_mp_state,
    /// KVM_GET_REGS.
    pub regs: kvm_regs,
    /// KVM_GET_SREGS.
    pub sregs: kvm_sregs,
    /// KVM_GET_FPU.
    pub fpu: kvm_fpu,
    /// KVM_GET_XSAVE (the 4 KiB legacy layout; see [`StateError::XsaveTooLarge`]).
    pub xsave: kvm_xsave,
    /// KVM_GET_XCRS.
    pub xcrs: kvm_xcrs,
    /// KVM_GET_DEBUGREGS.
    pub debug_regs: kvm_debugregs,
    /// KVM_GET_LAPIC.
    pub lapic: kvm_lapic_state,
    /// KVM_GET_MSRS of every saveable MSR.
    pub msrs: Vec<kvm_msr_entry>,
    /// KVM_GET_VCPU_EVENTS.
    pub events: kvm_vcpu_events,
}

/// The KVM state of the VM itself.
#[derive(Debug)]
pub struct VmState {
    /// KVM_GET_IRQCHIP of the master PIC.
    pub pic_master: kvm_irqchip,
    /// KVM_GET_IRQCHIP of the slave PIC.
    pub pic_slave: kvm_irqchip,
    /// KVM_GET_IRQCHIP of the IOAPIC.
    pub ioapic: kvm_irqchip,
    /// KVM_GET_PIT2, if the VM has a PIT.
    pub pit: Option<kvm_pit_state2>,
    /// KVM_GET_CLOCK (kvmclock's time base).
    pub clock: kvm_clock_data,
}

/// A whole VM's KVM state.
#[derive(Debug)]
pub struct Snapshot {
    /// The VM's state.
    pub vm: VmState,
    /// Each vCPU's state, by index.
    pub vcpus: Vec<VcpuState>,
}

/// Access to a vCPU's state from any thread (a second fd on the same vCPU), so the
/// migration thread can capture and restore while the run loop owns the [`Vcpu`].
#[derive(Debug, Clone)]
pub struct VcpuStateHandle {
    index: u32,
    fd: Arc<VcpuFd>,
}

impl VcpuStateHandle {
    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl Vcpu {
    /// A handle for this vCPU's state.
    ///
    /// # Errors
    /// [`KvmError::Os`] if the fd cannot be duplicated or its `kvm_run` mapped.
    pub fn state_handle(&self, vm: &KvmVm) -> Result<VcpuStateHandle, KvmError> {
        // SAFETY: F_DUPFD_CLOEXEC on our own open vCPU fd; the result is checked.
        let raw = unsafe { libc::fcntl(self.fd().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if raw < 0 {
            return Err(KvmError::Os {
                op: "dup vCPU fd",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh duplicate of a vCPU fd that nothing else owns; the
        // VcpuFd made from it takes ownership (and closes it on failure and on drop).
        let fd = unsafe { vm.fd().create_vcpu_from_rawfd(raw) }
            .map_err(KvmError::ioctl("mmap kvm_run of a vCPU fd"))?;
        Ok(VcpuStateHandle {
            index: self.index(),
            fd: Arc::new(fd),
        })
    }
}

impl KvmVm {
    /// Captures the VM's and `vcpus`' state. Every vCPU must be paused.
    ///
    /// # Errors
    /// [`StateError`] naming the ioctl that failed, with its errno.
    pub fn save_state(&self, vcpus: &[VcpuStateHandle]) -> Result<Snapshot, StateError> {
        let vm = self.save_vm_state()?;
        let vcpus = vcpus
            .iter()
            .map(|vcpu| self.save_vcpu_state(vcpu))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { vm, vcpus })
    }

    /// Restores `snapshot` into this VM, whose vCPUs (`vcpus`, by index) must exist and
    /// not run. RAM is the caller's business and should be in place first.
    ///
    /// # Errors
    /// [`StateError::VcpuCountMismatch`], [`StateError::PitMismatch`], or the first ioctl
    /// that fails.
    pub fn restore_state(
        &self,
        vcpus: &[VcpuStateHandle],
        snapshot: &Snapshot,
    ) -> Result<(), StateError> {
        if vcpus.len() != snapshot.vcpus.len() {
            return Err(StateError::VcpuCountMismatch {
                snapshot: snapshot.vcpus.len(),
                vm: vcpus.len(),
            });
        }
        check_xsave_size(self)?;
        self.restore_vm_state(&snapshot.vm)?;
        for (vcpu, state) in vcpus.iter().zip(&snapshot.vcpus) {
            restore_vcpu_state(vcpu, state)?;
        }
        Ok(())
    }

    fn save_vm_state(&self) -> Result<VmState, StateError> {
        let fd = self.fd();
        let chip = |id| -> Result<kvm_irqchip, StateError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            fd.get_irqchip(&mut chip)
                .map_err(StateError::ioctl("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        let pit = if self.config().pit {
            Some(fd.get_pit2().map_err(StateError::ioctl("KVM_GET_PIT2"))?)
        } else {
            None
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit,
            clock: fd.get_clock().map_err(StateError::ioctl("KVM_GET_CLOCK"))?,
        })
    }

    fn restore_vm_state(&self, state: &VmState) -> Result<(), StateError> {
        if state.pit.is_some() != self.config().pit {
            return Err(StateError::PitMismatch {
                snapshot: state.pit.is_some(),
                vm: self.config().pit,
            });
        }
        let fd = self.fd();
        // KVM_SET_CLOCK takes only the time (and, with KVM_CLOCK_REALTIME, the host
        // realtime it was read at); the other flags of KVM_GET_CLOCK are outputs.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock)
            .map_err(StateError::ioctl("KVM_SET_CLOCK"))?;
        if let Some(pit) = &state.pit {
            fd.set_pit2(pit)
                .map_err(StateError::ioctl("KVM_SET_PIT2"))?;
        }
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            fd.set_irqchip(chip)
                .map_err(StateError::ioctl("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    fn save_vcpu_state(&self, vcpu: &VcpuStateHandle) -> Result<VcpuState, StateError> {
        check_xsave_size(self)?;
        let fd = &vcpu.fd;
        let msr_list = self.saveable_msrs(fd)?;
        let mp_state = fd
            .get_mp_state()
            .map_err(StateError::ioctl("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(StateError::ioctl("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(StateError::ioctl("KVM_GET_SREGS"))?;
        let fpu = fd.get_fpu().map_err(StateError::ioctl("KVM_GET_FPU"))?;
        let xsave = fd.get_xsave().map_err(StateError::ioctl("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(StateError::ioctl("KVM_GET_XCRS"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(StateError::ioctl("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(StateError::ioctl("KVM_GET_LAPIC"))?;
        let msrs = get_msrs(fd, &msr_list)?;
        let events = fd
            .get_vcpu_events()
            .map_err(StateError::ioctl("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
        })
    }

    /// The saveable MSRs that read back on this host, computed on first use.
    fn saveable_msrs(&self, fd: &VcpuFd) -> Result<Vec<u32>, StateError> {
        if let Some(list) = self.saveable_msrs_cell().get() {
            return Ok(list.clone());
        }
        let listed = self
            .kvm()
            .get_msr_index_list()
            .map_err(StateError::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        let readable: Vec<u32> = listed
            .as_slice()
            .iter()
            .copied()
            .filter(|&index| get_msrs(fd, &[index]).is_ok())
            .collect();
        Ok(self.saveable_msrs_cell().get_or_init(|| readable).clone())
    }
}

/// Refuses a host whose XSAVE area is larger than the 4 KiB `kvm_xsave` (AMX tiles): its
/// state would not fit, and KVM_SET_XSAVE could read past the struct.
fn check_xsave_size(vm: &KvmVm) -> Result<(), StateError> {
    let size = vm.fd().check_extension_int(Cap::Xsave2);
    let size = usize::try_from(size).unwrap_or(0);
    if size > std::mem::size_of::<kvm_xsave>() {
        return Err(StateError::XsaveTooLarge(size));
    }
    Ok(())
}

fn restore_vcpu_state(vcpu: &VcpuStateHandle, state: &VcpuState) -> Result<(), StateError> {
    let fd = &vcpu.fd;
    fd.set_mp_state(state.mp_state)
        .map_err(StateError::ioctl("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs)
        .map_err(StateError::ioctl("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs)
        .map_err(StateError::ioctl("KVM_SET_SREGS"))?;
    fd.set_fpu(&state.fpu)
        .map_err(StateError::ioctl("KVM_SET_FPU"))?;
    // SAFETY: `restore_state` ran `check_xsave_size` on this host first: the kernel's XSAVE
    // size fits the 4 KiB struct it reads.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(StateError::ioctl("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs)
        .map_err(StateError::ioctl("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(StateError::ioctl("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(StateError::ioctl("KVM_SET_LAPIC"))?;
    set_msrs(fd, &state.msrs)?;
    fd.set_vcpu_events(&state.events)
        .map_err(StateError::ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// KVM_GET_MSRS of `indices`, in batches KVM accepts.
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut entries = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(KVM_MAX_MSR_ENTRIES) {
        let asked: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&asked).map_err(|err| StateError::MsrList(format!("{err:?}")))?;
        let done = fd
            .get_msrs(&mut msrs)
            .map_err(StateError::ioctl("KVM_GET_MSRS"))?;
        if done != chunk.len() {
            return Err(StateError::PartialMsrs {
                op: "KVM_GET_MSRS",
                done,
                asked: chunk.len(),
                index: chunk.get(done).copied().unwrap_or(0),
            });
        }
        entries.extend_from_slice(msrs.as_slice());
    }
    Ok(entries)
}

/// KVM_SET_MSRS of `entries`, in batches KVM accepts.
fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs =
            Msrs::from_entries(chunk).map_err(|err| StateError::MsrList(format!("{err:?}")))?;
        let done = fd
            .set_msrs(&msrs)
            .map_err(StateError::ioctl("KVM_SET_MSRS"))?;
        if done != chunk.len() {
            return Err(StateError::PartialMsrs {
                op: "KVM_SET_MSRS",
                done,
                asked: chunk.len(),
                index: chunk.get(done).map_or(0, |entry| entry.index),
            });
        }
    }
    Ok(())
}
