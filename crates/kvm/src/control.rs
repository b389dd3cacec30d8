//! [`VcpuControl`]: the gate every vCPU run loop passes before each KVM_RUN, and the kick
//! that gets a vCPU out of KVM_RUN when the gate closes.
//!
//! # Why a paused VM runs no guest instruction
//!
//! `pause` closes the gate, then kicks every registered vCPU: it stores 1 into that vCPU's
//! `kvm_run.immediate_exit` and sends it [`kick_signal`] (a real-time signal whose handler
//! does nothing, installed once per process). Whatever the vCPU thread is doing, it cannot
//! enter the guest again:
//!
//! * before its gate check: it sees the gate closed and parks;
//! * between the check and KVM_RUN: KVM sees `immediate_exit` and returns EINTR at once;
//! * inside KVM_RUN (in the guest, or halted in the kernel): the signal makes KVM return
//!   EINTR.
//!
//! The loop clears `immediate_exit` *before* it checks the gate, so a kick can never be
//! wiped by the clear of an earlier one. `pause` returns only when every registered loop
//! has parked, so when it returns no vCPU is in the guest and none will be until `resume`.
//! Before parking, a loop re-enters KVM_RUN once with `immediate_exit` set: KVM completes
//! the PIO/MMIO read the handler just answered and returns EINTR, so a snapshot taken
//! while paused never holds an instruction half done.
//!
//! # Throttle
//!
//! [`VcpuControl::set_throttle`] starts a thread that, each period, leaves the gate open
//! for `run_percent` of it and closes it (with kicks) for the rest. Auto-converge raises
//! the share it takes away; 100 % stops the thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{io, thread};

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

/// The offset above SIGRTMIN of the kick signal.
const KICK_SIGNAL_OFFSET: i32 = 2;

/// The signal that kicks a vCPU thread out of KVM_RUN: SIGRTMIN + 2 (glibc keeps the first
/// two real-time signals for itself, so SIGRTMIN here is already past them).
pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Installs the do-nothing handler of [`kick_signal`] once per process.
pub(crate) fn install_kick_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|err| err.errno()));
    result.map_err(io::Error::from_raw_os_error)
}

/// The kick's handler: its only job is to exist, so the signal interrupts KVM_RUN with
/// EINTR instead of killing the process.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Pause, resume, stop and throttle for a VM's vCPU run loops. Cheap to clone; every clone
/// controls the same loops.
#[derive(Debug, Clone, Default)]
pub struct VcpuControl {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    gate: Mutex<Gate>,
    changed: Condvar,
    /// The loops now running, by vCPU index.
    threads: Mutex<BTreeMap<u32, Registered>>,
    throttle: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Gate {
    paused: bool,
    throttled: bool,
    stopping: bool,
    running: usize,
    parked: usize,
    throttle: Option<Throttle>,
}

impl Gate {
    fn closed(&self) -> bool {
        self.paused || self.throttled || self.stopping
    }
}

/// A duty cycle: the guest runs `run_percent` of each `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The share of each period the vCPUs may run, 1..=99.
    pub run_percent: u8,
    /// The length of one period.
    pub period: Duration,
}

/// A registered loop: its thread and the `immediate_exit` byte of its `kvm_run`.
#[derive(Debug)]
struct Registered {
    thread: libc::pthread_t,
    immediate_exit: *const AtomicU8,
}

// SAFETY: `immediate_exit` points into the kvm_run mapping of a vCPU whose run loop is
// running; the loop removes its entry (under the `threads` lock) before it returns, and
// the pointer is only used under that lock.
unsafe impl Send for Registered {}

/// What the gate tells a run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateOutcome {
    /// Enter the guest.
    Run,
    /// Leave the run loop.
    Stop,
}

/// The registration of a run loop; dropping it deregisters.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    control: &'a VcpuControl,
    index: u32,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.control.inner.threads().remove(&self.index);
        let mut gate = self.control.inner.gate();
        gate.running -= 1;
        self.control.inner.changed.notify_all();
    }
}

impl VcpuControl {
    /// A control with the gate open and no throttle.
    pub fn new() -> VcpuControl {
        VcpuControl::default()
    }

    /// Closes the gate, kicks every vCPU out of KVM_RUN and waits until every running loop
    /// has parked. On return no guest instruction runs until [`VcpuControl::resume`].
    pub fn pause(&self) {
        self.inner.gate().paused = true;
        self.kick_all();
        let mut gate = self.inner.gate();
        while gate.parked < gate.running {
            gate = self.inner.wait(gate);
        }
    }

    /// Opens the gate (unless the throttle holds it in its off phase).
    pub fn resume(&self) {
        self.inner.gate().paused = false;
        self.inner.changed.notify_all();
    }

    /// Whether [`VcpuControl::pause`] holds the gate.
    pub fn is_paused(&self) -> bool {
        self.inner.gate().paused
    }

    /// Makes every run loop return (`Ok(RunEnd::Stopped)`), now and for loops started
    /// later, and stops the throttle.
    pub fn stop(&self) {
        self.inner.gate().stopping = true;
        self.inner.changed.notify_all();
        self.kick_all();
        self.join_throttle();
    }

    /// Sets the duty cycle: `None` (or 100 %) lets the vCPUs run all the time.
    ///
    /// # Errors
    /// `InvalidInput` for a run share of 0 % or a zero period.
    pub fn set_throttle(&self, throttle: Option<Throttle>) -> io::Result<()> {
        let throttle = throttle.filter(|t| t.run_percent < 100);
        if throttle.is_some_and(|t| t.run_percent == 0 || t.period.is_zero()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a throttle must let the guest run and have a period",
            ));
        }
        let start = {
            let mut gate = self.inner.gate();
            let was = gate.throttle.is_some();
            gate.throttle = throttle;
            if throttle.is_none() {
                gate.throttled = false;
            }
            throttle.is_some() && !was
        };
        self.inner.changed.notify_all();
        if throttle.is_none() {
            self.join_throttle();
        } else if start {
            self.join_throttle();
            let control = self.clone();
            let handle = thread::Builder::new()
                .name("vcpu-throttle".into())
                .spawn(move || control.throttle_loop())?;
            *self.inner.throttle_handle() = Some(handle);
        }
        Ok(())
    }

    /// The duty cycle in force.
    pub fn throttle(&self) -> Option<Throttle> {
        self.inner.gate().throttle
    }

    /// Registers the calling thread's run loop for vCPU `index`, whose `kvm_run` has its
    /// `immediate_exit` byte at `immediate_exit`.
    ///
    /// # Safety
    /// `immediate_exit` must stay valid until the returned registration is dropped.
    pub(crate) unsafe fn register(
        &self,
        index: u32,
        immediate_exit: *const AtomicU8,
    ) -> io::Result<Registration<'_>> {
        install_kick_handler()?;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        self.inner.gate().running += 1;
        self.inner.threads().insert(
            index,
            Registered {
                thread,
                immediate_exit,
            },
        );
        Ok(Registration {
            control: self,
            index,
        })
    }

    /// Waits while the gate is closed; tells the loop whether to run or leave. `before_park`
    /// runs once, outside the lock, before the loop parks.
    pub(crate) fn pass_gate(&self, before_park: &mut dyn FnMut()) -> GateOutcome {
        let mut gate = self.inner.gate();
        if gate.stopping {
            return GateOutcome::Stop;
        }
        if !gate.closed() {
            return GateOutcome::Run;
        }
        drop(gate);
        before_park();
        gate = self.inner.gate();
        gate.parked += 1;
        self.inner.changed.notify_all();
        while gate.closed() && !gate.stopping {
            gate = self.inner.wait(gate);
        }
        gate.parked -= 1;
        if gate.stopping {
            GateOutcome::Stop
        } else {
            GateOutcome::Run
        }
    }

    /// Sets `immediate_exit` of every registered loop and signals its thread.
    fn kick_all(&self) {
        let threads = self.inner.threads();
        for registered in threads.values() {
            // SAFETY: the pointer is valid while the loop is registered, and it is: we hold
            // the `threads` lock that deregistration takes.
            unsafe { (*registered.immediate_exit).store(1, Ordering::SeqCst) };
            // SAFETY: the thread is alive: it deregisters under this lock before returning.
            let _ = unsafe { libc::pthread_kill(registered.thread, kick_signal()) };
        }
    }

    /// The throttle thread's body: gate open for the run share, closed for the rest.
    fn throttle_loop(&self) {
        let mut gate = self.inner.gate();
        loop {
            let Some(throttle) = gate.throttle.filter(|_| !gate.stopping) else {
                gate.throttled = false;
                self.inner.changed.notify_all();
                return;
            };
            let run = throttle.period * u32::from(throttle.run_percent) / 100;
            let off = throttle.period.saturating_sub(run);
            gate.throttled = false;
            self.inner.changed.notify_all();
            gate = self.inner.wait_until(gate, Instant::now() + run);
            if gate.throttle.is_none() || gate.stopping {
                continue;
            }
            gate.throttled = true;
            drop(gate);
            self.kick_all();
            gate = self.inner.gate();
            gate = self.inner.wait_until(gate, Instant::now() + off);
        }
    }

    fn join_throttle(&self) {
        let handle = self.inner.throttle_handle().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Inner {
    /// Poisoning is ignored: every critical section only flips flags and counters.
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn threads(&self) -> MutexGuard<'_, BTreeMap<u32, Registered>> {
        self.threads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn throttle_handle(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, gate: MutexGuard<'a, Gate>) -> MutexGuard<'a, Gate> {
        self.changed
            .wait(gate)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `deadline`, or until stopped or the throttle is removed.
    fn wait_until<'a>(
        &self,
        mut gate: MutexGuard<'a, Gate>,
        deadline: Instant,
    ) -> MutexGuard<'a, Gate> {
        loop {
            let now = Instant::now();
            if now >= deadline || gate.stopping || gate.throttle.is_none() {
                return gate;
            }
            gate = self
                .changed
                .wait_timeout(gate, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
