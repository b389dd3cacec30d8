//! [`Vcpu`] and its run loop: one thread per vCPU calls [`Vcpu::run`], which enters the
//! guest until [`VcpuControl::stop`], handing PIO and MMIO exits to the caller's
//! [`ExitHandler`].
//!
//! HLT: with the in-kernel irqchip (always created here) KVM handles HLT itself: the vCPU
//! sleeps inside KVM_RUN until an interrupt is pending, with no exit to user space (the
//! MSI test relies on it: its guest waits in `sti; hlt`). A pause still gets it out: the
//! kick signal interrupts the sleep.

use std::io;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::KVM_EXIT_DIRTY_RING_FULL;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::control::{GateOutcome, VcpuControl};
use crate::dirty_log::DirtyLog;
use crate::{KvmError, RunError};

/// What the guest's port and MMIO accesses mean: the VMM's device model. Called on the
/// vCPU's own thread, for one access at a time per vCPU; shared by all vCPUs of a VM.
///
/// A read fills `data` (its length is the access size); a handler that has nothing at an
/// address says so with its own value (PCI's all-ones, say), not an error. An error stops
/// this vCPU's run loop with [`RunError::Handler`].
pub trait ExitHandler: Send + Sync {
    /// `in` from `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]) -> io::Result<()>;
    /// `out` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]) -> io::Result<()>;
    /// A load from `gpa`, outside every memslot.
    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> io::Result<()>;
    /// A store to `gpa`, outside every memslot.
    fn mmio_write(&self, gpa: u64, data: &[u8]) -> io::Result<()>;
}

/// Why a run loop returned without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// [`VcpuControl::stop`] was called.
    Stopped,
}

/// One vCPU of a [`crate::KvmVm`].
#[derive(Debug)]
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    dirty: Arc<DirtyLog>,
}

/// What the loop does after an exit.
enum Next {
    Continue,
    HarvestRing,
    Shutdown,
    InternalError,
    FailEntry(u64),
    Unhandled(String),
}

impl Vcpu {
    pub(crate) fn new(index: u32, fd: VcpuFd, dirty: Arc<DirtyLog>) -> Vcpu {
        Vcpu { index, fd, dirty }
    }

    /// The vCPU's index (its APIC ID).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The guest's TSC frequency in Hz, as KVM reports it (KVM_GET_TSC_KHZ): the host's,
    /// with no TSC scaling.
    ///
    /// # Errors
    /// [`KvmError::Ioctl`], e.g. on a host whose TSC KVM does not trust;
    /// [`KvmError::InvalidArgument`] if KVM says 0 (it does not know the rate).
    pub fn tsc_hz(&self) -> Result<u64, KvmError> {
        let khz = self
            .fd
            .get_tsc_khz()
            .map_err(KvmError::ioctl("KVM_GET_TSC_KHZ"))?;
        if khz == 0 {
            return Err(KvmError::InvalidArgument(
                "KVM_GET_TSC_KHZ says 0: KVM does not know the TSC rate",
            ));
        }
        Ok(u64::from(khz) * 1000)
    }

    /// The vCPU fd, for the modules of this crate.
    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the guest on the calling thread until `control` stops it or an error occurs.
    /// While `control` is paused or throttled the thread parks without entering the guest.
    ///
    /// # Errors
    /// [`RunError`]: a failed KVM_RUN (with its errno), a guest shutdown, an internal or
    /// entry failure, an exit this loop does not handle, or the handler's error.
    pub fn run(
        &mut self,
        handler: &dyn ExitHandler,
        control: &VcpuControl,
    ) -> Result<RunEnd, RunError> {
        let index = self.index;
        let immediate_exit: *const AtomicU8 =
            ptr::addr_of_mut!(self.fd.get_kvm_run().immediate_exit).cast();
        // SAFETY: the kvm_run mapping belongs to `self.fd`, which `&mut self` keeps alive
        // (and unmoved in memory: it is an mmap) until this function returns, after the
        // registration is dropped.
        let _registration =
            unsafe { control.register(index, immediate_exit) }.map_err(RunError::Signal)?;
        let clear = || {
            // SAFETY: valid as argued above; the byte is shared with KVM and the kicking
            // threads, so it is only touched atomically.
            unsafe { (*immediate_exit).store(0, Ordering::SeqCst) }
        };
        loop {
            clear();
            let fd = &mut self.fd;
            let outcome = control.pass_gate(&mut || {
                // SAFETY: valid and touched atomically, as for `clear`.
                unsafe { (*immediate_exit).store(1, Ordering::SeqCst) };
                complete_pending_access(fd, index);
                clear();
            });
            if outcome == GateOutcome::Stop {
                return Ok(RunEnd::Stopped);
            }
            let next = match self.fd.run() {
                Ok(exit) => dispatch(exit, handler).map_err(|source| RunError::Handler {
                    vcpu: index,
                    source,
                })?,
                Err(errno) if matches!(errno.errno(), libc::EINTR | libc::EAGAIN) => Next::Continue,
                Err(errno) => return Err(RunError::Run(errno)),
            };
            match next {
                Next::Continue => {}
                Next::HarvestRing => {
                    self.dirty.harvest().map_err(|source| RunError::DirtyRing {
                        vcpu: index,
                        source: Box::new(source),
                    })?;
                }
                Next::Shutdown => {
                    let rip = self.fd.get_regs().map_or(0, |regs| regs.rip);
                    return Err(RunError::Shutdown { vcpu: index, rip });
                }
                Next::InternalError => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, whose union
                    // member is `internal`.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    return Err(RunError::InternalError {
                        vcpu: index,
                        suberror,
                    });
                }
                Next::FailEntry(reason) => {
                    return Err(RunError::FailEntry {
                        vcpu: index,
                        reason,
                    });
                }
                Next::Unhandled(exit) => {
                    return Err(RunError::UnhandledExit { vcpu: index, exit });
                }
            }
        }
    }
}

/// Hands one exit to the handler, or says what the loop must do with it.
fn dispatch(exit: VcpuExit<'_>, handler: &dyn ExitHandler) -> io::Result<Next> {
    match exit {
        VcpuExit::IoIn(port, data) => handler.pio_read(port, data)?,
        VcpuExit::IoOut(port, data) => handler.pio_write(port, data)?,
        VcpuExit::MmioRead(gpa, data) => handler.mmio_read(gpa, data)?,
        VcpuExit::MmioWrite(gpa, data) => handler.mmio_write(gpa, data)?,
        // Not expected with the in-kernel irqchip (see the module docs); if KVM ever
        // returns it, going back in lets KVM deliver the interrupt it waits for.
        VcpuExit::Hlt | VcpuExit::Intr => {}
        VcpuExit::Shutdown => return Ok(Next::Shutdown),
        VcpuExit::InternalError => return Ok(Next::InternalError),
        VcpuExit::FailEntry(reason, _) => return Ok(Next::FailEntry(reason)),
        VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL) => return Ok(Next::HarvestRing),
        other => return Ok(Next::Unhandled(format!("{other:?}"))),
    }
    Ok(Next::Continue)
}

/// With `immediate_exit` set, KVM_RUN completes the access the handler just answered
/// (the data of an `in` or MMIO load goes into the guest's register) and returns EINTR
/// without entering the guest. Any other result is logged: the vCPU then parks as it is.
fn complete_pending_access(fd: &mut VcpuFd, index: u32) {
    match fd.run() {
        Err(errno) if errno.errno() == libc::EINTR => {}
        Err(errno) => tracing::warn!(vcpu = index, %errno, "KVM_RUN to complete an access"),
        Ok(exit) => tracing::warn!(vcpu = index, ?exit, "KVM_RUN with immediate_exit exited"),
    }
}
