//! The source side, one function per phase of the engine's sequence diagram:
//! `Sender::setup`, `Sender::pre_copy_iteration` (repeated until the convergence policy says
//! switch over), `Sender::stop_and_copy` and `Sender::switch_over` (the destination ready,
//! go, its confirmation) — or, on any failure before the go, `Sender::roll_back`, which
//! leaves the guest running here. `Sender::run` strings them together.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vfmig_abi::DeviceState;
use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_vmm::Vm;

use super::device::DeviceLink;
use super::dirty::DirtySet;
use super::error::MigrationError;
use super::policy::{Convergence, Decision, Estimate, Limit};
use super::stats::{DowntimeStats, IterationStats, MigrationStats};
use super::status::{Counting, MigrationState, Progress};
use super::timed::Timed;
use super::{ACK_FAILED, ACK_READY, ACK_RUNNING, DeviceRecord, GO, read_line, stream_config};
use crate::stream::{
    DeviceChunk, DeviceConfig, Iteration, MachineState, Phase, StreamWriter, WriteError,
};
use crate::transport::{self, Address, Paced, StreamConnection, TransportSecurity};
use crate::{DeviceIndex, Gpa};

/// Threads that read, checksum and write RAM sections (see
/// [`StreamWriter::write_ram_parallel`]).
const SEND_THREADS: usize = 2;

/// How long the source waits for each of the destination's replies at the switch-over.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a write may block on a destination that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failed sender listens for the destination's reason.
const REASON_TIMEOUT: Duration = Duration::from_millis(500);

/// Migrates `vm` to the destination listening at `to`. On success the guest stays paused
/// here (it runs on the destination); on failure it runs on here, devices RUNNING, tracking
/// stopped, except after the destination was told to run it
/// ([`MigrationError::Unconfirmed`]): then it stays paused here.
pub fn migrate(
    vm: &Vm,
    to: &Address,
    policy: &mut dyn Convergence,
    progress: &Progress,
) -> Result<MigrationStats, MigrationError> {
    migrate_with(vm, to, &TransportSecurity::Plain, policy, progress)
}

/// [`migrate`] over a connection made with `security`: with TLS, the destination is
/// authenticated (and authenticates us) before a byte of the stream is sent.
pub fn migrate_with(
    vm: &Vm,
    to: &Address,
    security: &TransportSecurity,
    policy: &mut dyn Convergence,
    progress: &Progress,
) -> Result<MigrationStats, MigrationError> {
    let start = Instant::now();
    progress.start();
    let links = vm
        .devices()
        .iter()
        .map(DeviceLink::new)
        .collect::<Result<Vec<_>, _>>()?;
    let conn = transport::connect_with(to, security)?;
    let clone = |c: &StreamConnection| {
        c.try_clone()
            .map_err(|e| MigrationError::NoAck(e.to_string()))
    };
    // A destination that stops reading fails the migration instead of hanging it.
    conn.set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|e| MigrationError::NoAck(e.to_string()))?;
    let ack = clone(&conn)?;
    progress.set_connection(Some(clone(&conn)?));
    let mut sender = Sender {
        vm,
        links,
        writer: counting_writer(Paced::new(conn, policy.max_bandwidth()), progress)?,
        ack,
        progress,
        tracking: false,
        devices_saving: false,
        paused: false,
        committed: false,
    };
    let result = sender.run(policy, start);
    progress.set_connection(None);
    // Whatever the outcome, the guest runs (here, later) at full speed.
    if let Err(e) = sender.throttle(None) {
        tracing::warn!(error = %e, "the vCPU throttle could not be lifted");
    }
    match result {
        Ok(stats) => {
            progress.update(|s| {
                s.state = MigrationState::Completed;
                s.stats = Some(stats.clone());
            });
            Ok(stats)
        }
        Err(e) if sender.committed => {
            // The destination was told to run the guest: resuming it here could run it twice.
            progress.update(|s| {
                s.state = MigrationState::Unconfirmed;
                s.error = Some(e.to_string());
            });
            tracing::error!(error = %e, "switch-over unconfirmed; the guest stays paused here");
            Err(e)
        }
        Err(e) => {
            let e = match e {
                _ if progress.is_cancelled() => MigrationError::Cancelled,
                MigrationError::Send(_) | MigrationError::NoAck(_) => {
                    sender.destination_reason().unwrap_or(e)
                }
                e => e,
            };
            sender.roll_back();
            let state = if matches!(e, MigrationError::Cancelled) {
                MigrationState::Cancelled
            } else {
                MigrationState::Failed
            };
            progress.update(|s| {
                s.state = state;
                s.error = Some(e.to_string());
            });
            tracing::warn!(error = %e, "migration failed; the guest runs on here");
            Err(e)
        }
    }
}

/// The stream over `conn`, its bytes and RAM pages counted into `progress` as they go.
fn counting_writer(
    conn: Paced<StreamConnection>,
    progress: &Progress,
) -> Result<StreamWriter<Counting<Paced<StreamConnection>>>, MigrationError> {
    let mut writer = StreamWriter::new(progress.counting(conn))?;
    writer.count_pages_into(progress.ram_pages());
    Ok(writer)
}

struct Sender<'a> {
    vm: &'a Vm,
    links: Vec<DeviceLink<'a>>,
    writer: StreamWriter<Counting<Paced<StreamConnection>>>,
    ack: StreamConnection,
    progress: &'a Progress,
    tracking: bool,
    devices_saving: bool,
    paused: bool,
    /// The destination was told to run the guest: no roll-back from here.
    committed: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Sender<'_> {
    fn check_cancel(&self) -> Result<(), MigrationError> {
        if self.progress.is_cancelled() {
            Err(MigrationError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sets the vCPUs' share of run time (auto-converge); `None` lifts the throttle. A VM
    /// without vCPUs to slow is left as it is.
    fn throttle(&self, run_percent: Option<u8>) -> Result<(), MigrationError> {
        if self.vm.machine().is_none() {
            return Ok(());
        }
        self.vm
            .set_throttle(run_percent)
            .map_err(|e| MigrationError::Guest(Box::new(e)))
    }

    fn set_devices(&self, state: DeviceState) -> Result<(), MigrationError> {
        self.links.iter().try_for_each(|l| l.set_state(state))
    }

    /// The whole migration, phase by phase as the sequence diagram of the [engine](super)
    /// draws them: [`setup`](Self::setup), [`pre_copy_iteration`](Self::pre_copy_iteration)
    /// until the policy says switch over, [`stop_and_copy`](Self::stop_and_copy), and
    /// [`switch_over`](Self::switch_over).
    fn run(
        &mut self,
        policy: &mut dyn Convergence,
        start: Instant,
    ) -> Result<MigrationStats, MigrationError> {
        let mut stats = MigrationStats::default();
        let mut dirty = self.setup()?;
        stats.setup_ms = ms(start.elapsed());
        stats.untracked_devices = self
            .links
            .iter()
            .filter(|l| !l.tracked())
            .map(|l| l.id().to_string())
            .collect();
        self.progress.update(|s| s.state = MigrationState::Active);
        self.progress
            .synced(dirty.count() * CONTAINER_PAGE_SIZE.bytes());

        let precopy = Instant::now();
        let time_limit = policy
            .max_time()
            .map(|limit| (limit, precopy.checked_add(limit)));
        let mut bandwidth = 0.0f64;
        let (reason, estimate) = loop {
            self.check_cancel()?;
            let estimate =
                self.pre_copy_iteration(&mut dirty, &mut stats, bandwidth, precopy, time_limit)?;
            bandwidth = estimate.bandwidth;
            match policy.decide(&estimate) {
                Decision::SwitchOver(reason) => break (reason, estimate),
                Decision::GiveUp(limit) => {
                    return Err(MigrationError::NotConverged {
                        limit,
                        left: estimate.dirty_bytes.saturating_add(estimate.device_pending),
                        expected_ms: u64::try_from(estimate.expected_downtime().as_millis())
                            .unwrap_or(u64::MAX),
                    });
                }
                Decision::Iterate => {}
            }
            self.throttle(policy.throttle(&estimate, estimate.sent))?;
        };
        stats.switchover = reason.to_string();
        stats.expected_downtime_ms = ms(estimate
            .expected_downtime()
            .min(Duration::from_secs(86_400)));
        self.check_cancel()?;

        let paused_at = Instant::now();
        let mut phases = Phases::new();
        self.stop_and_copy(&mut dirty, &mut stats, &mut phases)?;
        self.switch_over(&mut phases)?;
        stats.downtime_ms = ms(paused_at.elapsed());
        stats.downtime = phases.done;

        stats.device_bytes = self.links.iter().map(|l| l.bytes).sum();
        stats.total_bytes = self.writer.bytes_written();
        stats.total_ms = ms(start.elapsed());
        stats.throughput_mbps =
            stats.total_bytes as f64 / 1e6 / start.elapsed().as_secs_f64().max(1e-9);
        stats.all_mapped_devices.sort();
        stats.all_mapped_devices.dedup();
        Ok(stats)
    }

    /// Setup: the config goes first; every source of dirty pages is on before the first sync;
    /// devices enter pre-copy. Returns the dirty set of the first iteration: all of RAM.
    fn setup(&mut self) -> Result<DirtySet, MigrationError> {
        self.writer.write_config(&stream_config(self.vm)?)?;
        let mut dirty = DirtySet::new(self.vm.ram());
        for link in &mut self.links {
            link.start_dirty()?;
            self.tracking = true;
        }
        // From here a vIOMMU unmap must carry its dirty bits into the RAM log.
        self.vm.set_device_tracking(true);
        dirty
            .take_vm_log(self.vm)
            .map_err(|e| MigrationError::Guest(Box::new(e)))?;
        dirty.mark_all();
        self.devices_saving = true;
        self.set_devices(DeviceState::PRE_COPY)?;
        Ok(dirty)
    }

    /// One pre-copy iteration, the guest running: the dirty pages and what the devices have
    /// pending go out, then a sync finds what was dirtied meanwhile. Returns what the policy
    /// decides on; `bandwidth` is the last iteration's, kept if this one sent nothing. If
    /// pre-copy's time limit (`time_limit`: the limit and when it passes) passes while RAM
    /// is still going out, the iteration stops there and the migration fails with
    /// [`Limit::Time`].
    fn pre_copy_iteration(
        &mut self,
        dirty: &mut DirtySet,
        stats: &mut MigrationStats,
        mut bandwidth: f64,
        precopy: Instant,
        time_limit: Option<(Duration, Option<Instant>)>,
    ) -> Result<Estimate, MigrationError> {
        let number = stats.iterations.len() as u64;
        let t = Instant::now();
        let mut it = IterationStats {
            number,
            dirty_pages: dirty.count(),
            run_percent: self.vm.throttle(),
            ..Default::default()
        };
        self.progress.update(|s| s.run_percent = it.run_percent);
        self.writer.write_iteration(Iteration {
            number,
            pages: it.dirty_pages,
        })?;
        let deadline = time_limit.and_then(|(_, at)| at);
        let before = self.writer.bytes_written();
        let Some(ram_bytes) = self.send_ram(dirty, stats, deadline)? else {
            // Left: what this iteration had to send less the stream bytes it sent, at the rate
            // the link carried so far.
            let sent = self.writer.bytes_written() - before;
            if bandwidth <= 0.0 {
                bandwidth = sent as f64 / t.elapsed().as_secs_f64().max(1e-9);
            }
            let left = it
                .dirty_pages
                .saturating_mul(CONTAINER_PAGE_SIZE.bytes())
                .saturating_sub(sent);
            return Err(MigrationError::NotConverged {
                limit: Limit::Time(time_limit.map_or(Duration::ZERO, |(limit, _)| limit)),
                left,
                expected_ms: Duration::try_from_secs_f64(left as f64 / bandwidth)
                    .map_or(u64::MAX, |d| {
                        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
                    }),
            });
        };
        it.ram_bytes = ram_bytes;
        it.device_bytes = self.send_device_data(Phase::PreCopy, number, true)?;
        self.writer.flush()?;
        let elapsed = t.elapsed();
        // Bytes on the wire per second. The estimate divides the dirty pages, counted as
        // data (pages the guest writes are rarely zero), by it: QEMU's estimate, and on
        // the safe side when zero pages made the last iteration cheap.
        let sent = it.ram_bytes + it.device_bytes;
        if elapsed > Duration::ZERO && sent > 0 {
            bandwidth = sent as f64 / elapsed.as_secs_f64();
        }
        it.duration_ms = ms(elapsed);
        self.progress.update(|s| s.iterations.push(it.clone()));
        stats.iterations.push(it);

        self.sync(dirty, stats)?;
        let device_pending = self
            .links
            .iter()
            .map(DeviceLink::pending)
            .sum::<Result<u64, _>>()?;
        let estimate = Estimate {
            iteration: number,
            dirty_bytes: dirty.count() * CONTAINER_PAGE_SIZE.bytes(),
            device_pending,
            bandwidth,
            elapsed: precopy.elapsed(),
            sent,
            // An untracked device dirties all it has mapped, as an all-mapped one.
            all_mapped: !stats.all_mapped_devices.is_empty() || !stats.untracked_devices.is_empty(),
        };
        self.progress.update(|s| {
            s.iteration = number + 1;
            s.bandwidth = bandwidth;
            s.expected_downtime_ms =
                u64::try_from(estimate.expected_downtime().as_millis()).unwrap_or(u64::MAX);
        });
        self.progress
            .synced(estimate.dirty_bytes + estimate.device_pending);
        Ok(estimate)
    }

    /// Stop-and-copy: the guest pauses; the devices stop; the last of RAM and of the devices'
    /// data, their configs and the end of the stream go out. Each phase's time goes to
    /// `phases`.
    fn stop_and_copy(
        &mut self,
        dirty: &mut DirtySet,
        stats: &mut MigrationStats,
        phases: &mut Phases,
    ) -> Result<(), MigrationError> {
        self.vm.pause();
        self.paused = true;
        phases.pause_ms = phases.lap();
        self.progress.update(|s| s.state = MigrationState::StopCopy);
        self.set_devices(DeviceState::STOP_COPY)?;
        phases.devices_stop_ms = phases.lap();
        self.sync(dirty, stats)?;
        self.progress
            .synced(dirty.count() * CONTAINER_PAGE_SIZE.bytes());
        phases.sync_ms = phases.lap();
        self.send_ram(dirty, stats, None)?;
        phases.ram_ms = phases.lap();
        let number = stats.iterations.len() as u64;
        self.send_device_data(Phase::StopCopy, number, false)?;
        self.set_devices(DeviceState::STOP)?;
        self.devices_saving = false;
        self.vm.set_device_tracking(false);
        for link in &self.links {
            link.stop_dirty()?;
        }
        self.tracking = false;
        phases.device_state_ms = phases.lap();
        if let Some(machine) = self.vm.machine() {
            let program = serde_json::to_vec(machine.program())
                .map_err(|e| MigrationError::Config(e.to_string()))?;
            let state = machine
                .save()
                .map_err(|e| MigrationError::Guest(Box::new(e.into())))?;
            phases.vcpu_state_ms = phases.lap();
            tracing::debug!(bytes = state.len(), "KVM state saved");
            self.writer.write_machine(&MachineState {
                vcpus: machine.program().vcpus,
                program: &program,
                state: &state,
            })?;
        }
        let pci = self.vm.pci_state();
        for (i, dev) in self.vm.devices().iter().enumerate() {
            let record = DeviceRecord {
                id: dev.id().to_string(),
                pci: pci.as_ref().and_then(|p| p.get(i)).cloned(),
            };
            let data =
                serde_json::to_vec(&record).map_err(|e| MigrationError::Config(e.to_string()))?;
            self.writer.write_device_config(&DeviceConfig {
                device: device_id(i),
                data: &data,
            })?;
        }
        self.writer.finish()?;
        self.writer.flush()?;
        phases.stream_end_ms = phases.lap();
        Ok(())
    }

    /// Switch-over: the destination says it is ready, the source says go (and commits), the
    /// destination confirms that the guest runs there.
    fn switch_over(&mut self, phases: &mut Phases) -> Result<(), MigrationError> {
        self.wait_for_ready()?;
        phases.destination_ms = phases.lap();
        self.go()?;
        phases.go_ms = phases.lap();
        Ok(())
    }

    /// Sends the pages of `dirty` (emptying it); returns the stream bytes, or `None` if
    /// `deadline` passed first (checked before each batch of pages is read).
    fn send_ram(
        &mut self,
        dirty: &mut DirtySet,
        stats: &mut MigrationStats,
        deadline: Option<Instant>,
    ) -> Result<Option<u64>, MigrationError> {
        let runs = dirty.take_runs();
        let ram = self.vm.ram();
        let time_up = AtomicBool::new(false);
        let read = |gpa: Gpa, buf: &mut [u8]| -> io::Result<()> {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                time_up.store(true, Ordering::Relaxed);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "pre-copy's time limit passed",
                ));
            }
            ram.read_for_migration(gpa.raw(), buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
        };
        let r = match self.writer.write_ram_parallel(&runs, &read, SEND_THREADS) {
            Ok(r) => r,
            // The deadline, not another worker's failure (a transport error stays one).
            Err(WriteError::Memory(e))
                if time_up.load(Ordering::Relaxed)
                    && e.source.kind() == io::ErrorKind::TimedOut =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        stats.pages += r.pages;
        stats.zero_pages += r.zero_pages;
        stats.ram_bytes += r.bytes;
        Ok(Some(r.bytes))
    }

    /// Sends device chunks. In pre-copy (`bounded`), at most what each device had pending when
    /// asked, so a busy device cannot hold the iteration forever; in stop-and-copy, until
    /// nothing is pending.
    fn send_device_data(
        &mut self,
        phase: Phase,
        iteration: u64,
        bounded: bool,
    ) -> Result<u64, MigrationError> {
        let mut total = 0;
        for (i, link) in self.links.iter_mut().enumerate() {
            let budget = link.pending()?;
            let mut pending = budget;
            let mut sent = 0u64;
            while pending > 0 && (!bounded || sent < budget) {
                let data = link.read_chunk()?;
                sent += data.len() as u64;
                self.writer.write_device_chunk(&DeviceChunk {
                    device: device_id(i),
                    phase,
                    iteration,
                    data: &data,
                })?;
                self.progress.device_data(data.len() as u64);
                pending = link.pending()?;
                if data.is_empty() && pending > 0 {
                    if bounded {
                        break;
                    }
                    return Err(MigrationError::DeviceProtocol {
                        device: link.id().to_string(),
                        what: "an empty chunk in stop-and-copy with bytes still pending".into(),
                    });
                }
            }
            total += sent;
        }
        Ok(total)
    }

    /// One sync: the VMM's log and every device's container. An untracked device has all
    /// of guest RAM mapped, so all of it is dirty.
    fn sync(
        &mut self,
        dirty: &mut DirtySet,
        stats: &mut MigrationStats,
    ) -> Result<(), MigrationError> {
        dirty
            .take_vm_log(self.vm)
            .map_err(|e| MigrationError::Guest(Box::new(e)))?;
        let layout: Vec<_> = dirty.layout().collect();
        for link in &self.links {
            if !link.tracked() {
                dirty.mark_all();
                continue;
            }
            let mut everything = true;
            for &(index, gpa, size) in &layout {
                let bits = link.dirty(gpa, size)?;
                let pages = size / CONTAINER_PAGE_SIZE.bytes();
                everything &= bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() == pages;
                dirty.add(index, &bits);
            }
            if everything {
                stats.all_mapped_devices.push(link.id().to_string());
            }
        }
        Ok(())
    }

    /// The destination's next line of the handshake, all of it within `timeout`.
    fn reply(&self, timeout: Duration) -> io::Result<String> {
        let mut ack = Timed::within(self.ack.try_clone()?, timeout, "the destination's reply");
        read_line(&mut ack, &mut Vec::new())
    }

    /// Waits for the destination to say it applied everything and waits for the go.
    fn wait_for_ready(&self) -> Result<(), MigrationError> {
        let line = self
            .reply(ACK_TIMEOUT)
            .map_err(|e| MigrationError::NoAck(e.to_string()))?;
        match line.as_str() {
            l if l == ACK_READY => Ok(()),
            l if l.starts_with(ACK_FAILED) => Err(MigrationError::Refused {
                reason: l[ACK_FAILED.len()..].trim().to_string(),
            }),
            "" => Err(MigrationError::NoAck(
                "the destination closed the connection".into(),
            )),
            l => Err(MigrationError::NoAck(format!("unexpected reply {l:?}"))),
        }
    }

    /// Tells the destination to run the guest, which commits the migration, and waits for
    /// it to confirm. A cancel before the go still rolls back; a write that fails put
    /// nothing on the connection, so the destination cannot have seen a go either.
    fn go(&mut self) -> Result<(), MigrationError> {
        self.check_cancel()?;
        let mut conn = self.writer.get_ref().get_ref().get_ref();
        conn.write_all(format!("{GO}\n").as_bytes())
            .map_err(|e| MigrationError::NoAck(format!("telling the destination to run: {e}")))?;
        self.committed = true;
        match self.reply(ACK_TIMEOUT) {
            Ok(line) if line == ACK_RUNNING => Ok(()),
            Ok(line) if line.is_empty() => Err(MigrationError::Unconfirmed(
                "it closed the connection".into(),
            )),
            Ok(line) => Err(MigrationError::Unconfirmed(format!(
                "unexpected reply {line:?}"
            ))),
            Err(e) => Err(MigrationError::Unconfirmed(e.to_string())),
        }
    }

    /// After a failure: the destination's own account of it, if it sent one (a refused
    /// stream shows up here first as a broken pipe), or the TLS alert it refused us with.
    fn destination_reason(&self) -> Option<MigrationError> {
        let reason = match self.reply(REASON_TIMEOUT) {
            Ok(line) => line.strip_prefix(ACK_FAILED)?.trim().to_string(),
            Err(e) => format!("it sent the TLS alert {}", transport::tls_alert(&e)?),
        };
        Some(MigrationError::Refused { reason })
    }

    /// Leaves the guest running here: devices RUNNING, tracking off, guest resumed, the
    /// destination told by a closed connection.
    fn roll_back(&mut self) {
        let _ = self.writer.get_ref().get_ref().get_ref().shutdown();
        if self.devices_saving || self.paused {
            for link in &self.links {
                if let Err(e) = link.set_state(DeviceState::RUNNING) {
                    tracing::warn!(device = link.id(), error = %e, "roll-back: device not back to RUNNING");
                }
            }
        }
        self.vm.set_device_tracking(false);
        if self.tracking {
            for link in &self.links {
                if let Err(e) = link.stop_dirty() {
                    tracing::warn!(device = link.id(), error = %e, "roll-back: dirty tracking not stopped");
                }
            }
        }
        if self.paused {
            self.vm.resume();
        }
    }
}

/// Takes the guest back at the source after an unconfirmed switch-over
/// ([`MigrationState::Unconfirmed`]): devices RUNNING, the guest resumed. Only once the
/// destination is known not to run the VM: otherwise the guest runs twice.
///
/// # Errors
/// The first device that does not return to RUNNING (the guest is not resumed then).
pub fn reclaim(vm: &Vm) -> Result<(), MigrationError> {
    for device in vm.devices() {
        DeviceLink::new(device)?.set_state(DeviceState::RUNNING)?;
    }
    vm.resume();
    Ok(())
}

/// The downtime's phases as they pass.
struct Phases {
    done: DowntimeStats,
    last: Instant,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            done: DowntimeStats::default(),
            last: Instant::now(),
        }
    }

    /// Milliseconds since the last lap (or the start).
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let lap = ms(now - self.last);
        self.last = now;
        lap
    }
}

impl std::ops::Deref for Phases {
    type Target = DowntimeStats;
    fn deref(&self) -> &DowntimeStats {
        &self.done
    }
}

impl std::ops::DerefMut for Phases {
    fn deref_mut(&mut self) -> &mut DowntimeStats {
        &mut self.done
    }
}

fn device_id(index: usize) -> DeviceIndex {
    DeviceIndex(u32::try_from(index).unwrap_or(u32::MAX))
}
