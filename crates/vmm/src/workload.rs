//! The synthetic guest: threads that write guest RAM at a set rate over a working set, and a
//! driver thread that keeps the devices busy — serial bytes through mtty, descriptors through
//! the dma-engine. Every operation runs inside the [`Gate`], so pausing the gate freezes the
//! guest. The drivers keep no state outside guest RAM and device registers, so the same
//! workload continues on a migration destination.
//!
//! Guest-physical layout used by the drivers (the first 2 MiB of RAM are theirs):
//!
//! ```text
//! 0x0000_1000 + i * 0x1000   descriptor ring of dma-engine i (16 descriptors)
//! 0x0010_0000 + i * 0x1_0000 DMA buffers of dma-engine i (16 pages)
//! 0x0020_0000 ..             the RAM writers' working set
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vfmig_device::devices::dma_engine::regs::{CONTROL_ENABLE, Descriptor, Op};
use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_vfio_user::Client;

use crate::devices::{AttachError, AttachedDevice};
use crate::gate::Gate;
use crate::ram::GuestRam;
use crate::viommu::Viommu;

/// Where the RAM writers' working set starts.
pub const WORKING_SET_BASE: u64 = 2 << 20;
const RING_BASE: u64 = 0x1000;
const RING_ENTRIES: u32 = 16;
/// One page, as a descriptor length.
const PAGE_LEN: u32 = 1 << CONTAINER_PAGE_SIZE.shift();
const DMA_BUFFERS: u64 = 0x10_0000;

/// How hard the guest works.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadConfig {
    /// Threads writing RAM.
    pub writers: usize,
    /// Pages written per second, over all writers (0: the RAM is left alone).
    pub pages_per_sec: u64,
    /// Bytes of RAM the writers touch, from [`WORKING_SET_BASE`].
    pub working_set: u64,
    /// Device operations per second, per device (0: devices idle).
    pub device_ops_per_sec: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            writers: 1,
            pages_per_sec: 20_000,
            working_set: 64 << 20,
            device_ops_per_sec: 500,
        }
    }
}

/// Counters of what the guest did.
#[derive(Debug, Default)]
pub struct WorkloadStats {
    /// RAM pages written.
    pub pages_written: AtomicU64,
    /// Device operations completed.
    pub device_ops: AtomicU64,
    /// Device operations that failed.
    pub device_errors: AtomicU64,
}

/// The running workload; stops (and joins its threads) when dropped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<WorkloadStats>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// Programs each dma-engine's ring (enabled, empty). Only for a fresh VM: a migrated one
/// inherits its devices' registers.
pub fn init_drivers(devices: &[AttachedDevice]) -> Result<(), AttachError> {
    for (i, dev) in dma_engines(devices) {
        let c = dev.client();
        let ring = RING_BASE + i * CONTAINER_PAGE_SIZE.bytes();
        write_reg(c, 0x08, &ring.to_le_bytes())
            .map_err(|e| dev.request("program the ring base", e))?;
        write_reg(c, 0x10, &RING_ENTRIES.to_le_bytes())
            .map_err(|e| dev.request("program the ring size", e))?;
        write_reg(c, 0x14, &CONTROL_ENABLE.to_le_bytes())
            .map_err(|e| dev.request("enable the ring", e))?;
    }
    Ok(())
}

fn dma_engines(devices: &[AttachedDevice]) -> impl Iterator<Item = (u64, &AttachedDevice)> {
    devices
        .iter()
        .filter(|d| is_dma_engine(d))
        .zip(0u64..)
        .map(|(d, i)| (i, d))
}

/// The guest's drivers find their devices by PCI identity, as a guest does.
fn is_dma_engine(d: &AttachedDevice) -> bool {
    let id = vfmig_device::devices::dma_engine::IDENTITY;
    d.profile().is(id.vendor, id.device)
}

fn is_mtty(d: &AttachedDevice) -> bool {
    let id = vfmig_device::devices::mtty::IDENTITY;
    d.profile().is(id.vendor, id.device)
}

fn write_reg(c: &Client, offset: u64, v: &[u8]) -> Result<(), vfmig_vfio_user::ClientError> {
    c.region_write(0, offset, v)
}

impl Workload {
    /// Starts the guest's threads.
    pub fn start(
        config: &WorkloadConfig,
        ram: Arc<GuestRam>,
        devices: Arc<Vec<AttachedDevice>>,
        gate: Arc<Gate>,
        viommu: Option<Arc<Viommu>>,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkloadStats::default());
        let mut threads = Vec::new();
        let writers = config.writers.max(1);
        let pages = config
            .working_set
            .min(ram.size().saturating_sub(WORKING_SET_BASE))
            / CONTAINER_PAGE_SIZE.bytes();
        if config.pages_per_sec > 0 && pages > 0 {
            for w in 0..writers {
                let rate = config.pages_per_sec / writers as u64;
                let (ram, gate, stop, stats) =
                    (ram.clone(), gate.clone(), stop.clone(), stats.clone());
                threads.push(thread::spawn(move || {
                    ram_writer(w as u64, rate, pages, &ram, &gate, &stop, &stats)
                }));
            }
        }
        if config.device_ops_per_sec > 0 && !devices.is_empty() {
            let rate = config.device_ops_per_sec;
            let (gate, stop, stats) = (gate.clone(), stop.clone(), stats.clone());
            threads.push(thread::spawn(move || {
                device_driver(
                    rate,
                    &ram,
                    &devices,
                    viommu.as_deref(),
                    &gate,
                    &stop,
                    &stats,
                )
            }));
        }
        Workload {
            stop,
            threads,
            stats,
        }
    }

    /// What the guest did so far.
    pub fn stats(&self) -> &WorkloadStats {
        &self.stats
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Paces a loop at `rate` operations per second in 1 ms ticks; returns the operations due now.
struct Pacer {
    start: Instant,
    done: u64,
    rate: u64,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer {
            start: Instant::now(),
            done: 0,
            rate,
        }
    }

    fn due(&mut self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let target = elapsed.saturating_mul(self.rate) / 1_000_000;
        let n = target.saturating_sub(self.done).min(self.rate / 100 + 1);
        if n == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        self.done += n;
        n
    }
}

fn ram_writer(
    id: u64,
    rate: u64,
    pages: u64,
    ram: &GuestRam,
    gate: &Gate,
    stop: &AtomicBool,
    stats: &WorkloadStats,
) {
    let mut pacer = Pacer::new(rate);
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (id + 1);
    while !stop.load(Ordering::Acquire) {
        let due = pacer.due();
        let Some(_running) = gate.enter() else { return };
        for _ in 0..due {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = x % pages;
            let gpa = WORKING_SET_BASE
                + page * CONTAINER_PAGE_SIZE.bytes()
                + (x >> 52) % (CONTAINER_PAGE_SIZE.bytes() / 8) * 8;
            if ram.write(gpa, &x.to_le_bytes()).is_ok() {
                stats.pages_written.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Device operations between two remaps of the vIOMMU window.
const REMAP_EVERY: u64 = 64;

fn device_driver(
    rate: u64,
    ram: &Arc<GuestRam>,
    devices: &[AttachedDevice],
    viommu: Option<&Viommu>,
    gate: &Gate,
    stop: &AtomicBool,
    stats: &WorkloadStats,
) {
    let mut pacer = Pacer::new(rate);
    let mut op = 0u64;
    let mut logged = 0u32;
    while !stop.load(Ordering::Acquire) {
        let due = pacer.due();
        let Some(_running) = gate.enter() else { return };
        for _ in 0..due {
            op += 1;
            let mut dma_index = 0u64;
            for dev in devices {
                let r = if is_mtty(dev) {
                    drive_mtty(dev.client(), op)
                } else if is_dma_engine(dev) {
                    // The same numbering as `init_drivers`: the n-th dma-engine's ring.
                    dma_index += 1;
                    drive_dma(dev.client(), ram, dma_index - 1, op)
                } else {
                    Ok(())
                };
                let r = match viommu {
                    Some(v) if r.is_ok() && op.is_multiple_of(REMAP_EVERY) => v
                        .remap(dev, ram)
                        .map_err(|e| DriveError::Remap(Box::new(e))),
                    _ => r,
                };
                match r {
                    Ok(()) => stats.device_ops.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        // Rate-limited: a dead device would otherwise flood the log.
                        if logged < 5 {
                            logged += 1;
                            tracing::warn!(device = dev.id(), error = %e, "guest driver: device operation failed");
                        }
                        stats.device_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    }
}

/// A byte out of port 0 (it loops back into the FIFO) and, most of the time, one read back: the
/// FIFO holds a few bytes at any moment.
fn drive_mtty(c: &Client, op: u64) -> Result<(), DriveError> {
    c.region_write(0, 0, &[op.to_le_bytes()[0]])?;
    c.region_write(1, 7, &[op.to_le_bytes()[1]])?;
    if !op.is_multiple_of(5) {
        let mut b = [0u8];
        c.region_read(0, 0, &mut b)?;
    }
    Ok(())
}

/// One descriptor: guest page to device RAM, device RAM to a DMA buffer, or a fill.
fn drive_dma(c: &Client, ram: &GuestRam, index: u64, op: u64) -> Result<(), DriveError> {
    let mut tail = [0u8; 4];
    c.region_read(0, 0x18, &mut tail)?;
    let tail = u64::from(u32::from_le_bytes(tail));
    let buffer = DMA_BUFFERS + index * 0x1_0000 + (op % 16) * CONTAINER_PAGE_SIZE.bytes();
    let device = (op * CONTAINER_PAGE_SIZE.bytes()) % (1 << 20);
    let desc = match op % 3 {
        0 => Descriptor {
            op: Op::CopyToDevice,
            irq: false,
            guest: WORKING_SET_BASE + (op % 256) * CONTAINER_PAGE_SIZE.bytes(),
            device,
            len: PAGE_LEN,
            fill: 0,
        },
        1 => Descriptor {
            op: Op::CopyToGuest,
            irq: false,
            guest: buffer,
            device,
            len: PAGE_LEN,
            fill: 0,
        },
        _ => Descriptor {
            op: Op::FillDevice,
            irq: false,
            guest: 0,
            device: device + 64,
            len: 64,
            fill: op.to_le_bytes()[0],
        },
    };
    let ring = RING_BASE + index * CONTAINER_PAGE_SIZE.bytes();
    ram.write(ring + tail * 32, &desc.encode())?;
    c.region_write(
        0,
        0x18,
        &((tail + 1) % u64::from(RING_ENTRIES)).to_le_bytes()[..4],
    )?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error(transparent)]
    Remap(Box<AttachError>),
    #[error(transparent)]
    Client(#[from] vfmig_vfio_user::ClientError),
    #[error(transparent)]
    Ram(#[from] crate::ram::RamError),
}
