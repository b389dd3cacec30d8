//! The vCPU gate: how the VMM pauses its guest. Every guest operation (a burst of RAM writes, a
//! device access) runs inside [`Gate::enter`]; [`Gate::pause`] returns only once no operation
//! is in flight and none can start, so after it the guest changes nothing — the switch-over
//! point of a migration.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    paused: bool,
    active: usize,
    stopping: bool,
}

/// Pauses and resumes the guest.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// One guest operation in flight; the gate waits for it to drop before pausing.
#[derive(Debug)]
pub struct Running<'a> {
    gate: &'a Gate,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.active -= 1;
        if s.active == 0 {
            self.gate.changed.notify_all();
        }
    }
}

impl Gate {
    /// A running gate.
    pub fn new() -> Self {
        Gate::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while the guest is paused, then enters; `None` once the guest is stopping for
    /// good.
    pub fn enter(&self) -> Option<Running<'_>> {
        let mut s = self.lock();
        while s.paused && !s.stopping {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.stopping {
            return None;
        }
        s.active += 1;
        Some(Running { gate: self })
    }

    /// Pauses the guest; returns once nothing is in flight.
    pub fn pause(&self) {
        let mut s = self.lock();
        s.paused = true;
        while s.active > 0 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets the guest run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Ends the guest: every `enter` from now on returns `None`.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    use super::*;

    #[test]
    fn nothing_runs_between_pause_and_resume() {
        let gate = Arc::new(Gate::new());
        let counter = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (gate, counter) = (gate.clone(), counter.clone());
                thread::spawn(move || {
                    while let Some(_running) = gate.enter() {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        thread::sleep(std::time::Duration::from_millis(10));
        gate.pause();
        let frozen = counter.load(Ordering::SeqCst);
        thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(counter.load(Ordering::SeqCst), frozen);
        gate.resume();
        thread::sleep(std::time::Duration::from_millis(10));
        assert!(counter.load(Ordering::SeqCst) > frozen);
        gate.stop();
        for w in workers {
            w.join().unwrap();
        }
    }
}
