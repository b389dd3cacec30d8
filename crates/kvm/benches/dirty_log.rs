//! KVM's two dirty-tracking interfaces on a 2 GiB slot, with a real vCPU writing 1 % of
//! its pages per round (guest: `tests/guests/stride.S`):
//!
//! * clean read: a read with nothing written since the last one;
//! * 1 % dirty read: a read after the guest wrote one byte in every 100th page;
//! * cost to the guest: the time per page of a guest round with dirty logging on (each
//!   page re-protected by the previous read, so each write faults and is logged), beside
//!   the same round with logging off.
//!
//! Run: `cargo bench -p vfmig-kvm --bench dirty_log`. Prints medians.

use std::io;
use std::ptr;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vfmig_kvm::{
    DirtyTracking, ExitHandler, KvmConfig, KvmVm, Memslot, VcpuControl, load_image, write_tables,
};

const SLOT_SIZE: usize = 2 << 30;
const FIRST: u64 = 0x40_0000;
const STRIDE: u64 = 100 * 4096;
const CLEAN_READS: usize = 50;
const ROUNDS: usize = 9;

/// Signals the end of each guest round and blocks the guest until the next may start.
struct Rounds {
    done: Mutex<Sender<Instant>>,
    go: Mutex<Receiver<()>>,
}

impl ExitHandler for Rounds {
    fn pio_read(&self, port: u16, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!("in from {port:#x}")))
    }
    fn pio_write(&self, _: u16, _: &[u8]) -> io::Result<()> {
        let lock = self.done.lock().map_err(|_| io::Error::other("poisoned"))?;
        lock.send(Instant::now()).map_err(io::Error::other)?;
        drop(lock);
        let go = self.go.lock().map_err(|_| io::Error::other("poisoned"))?;
        go.recv().map_err(io::Error::other)
    }
    fn mmio_read(&self, gpa: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!("MMIO read {gpa:#x}")))
    }
    fn mmio_write(&self, gpa: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!("MMIO write {gpa:#x}")))
    }
}

struct Figures {
    clean_read: Duration,
    dirty_read: Duration,
    dirty_pages: u64,
    /// A guest round's time per page written, logging on.
    logged_per_page: Duration,
    /// The same, logging off.
    plain_per_page: Duration,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn measure(mode: DirtyTracking) -> Figures {
    // SAFETY: a fresh anonymous mapping; checked below. Pages are only allocated as the
    // guest touches them (1 % of the slot).
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            SLOT_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    // SAFETY: the mapping is SLOT_SIZE bytes and nothing else uses it yet.
    let ram = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), SLOT_SIZE) };
    write_tables(ram).unwrap();
    load_image(ram, include_bytes!(concat!(env!("OUT_DIR"), "/stride.bin"))).unwrap();
    let count = (SLOT_SIZE as u64 - FIRST) / STRIDE;
    for (i, word) in [FIRST, STRIDE, count].iter().enumerate() {
        ram[0x8000 + i * 8..0x8008 + i * 8].copy_from_slice(&word.to_le_bytes());
    }
    let vm = Arc::new(
        KvmVm::new(KvmConfig {
            dirty_tracking: mode,
            ..KvmConfig::default()
        })
        .unwrap(),
    );
    // SAFETY: the mapping outlives the VM (unmapped at the end of this function, after
    // the VM is dropped).
    unsafe {
        vm.add_memslot(Memslot {
            slot: 0,
            gpa: 0,
            host: base as u64,
            size: SLOT_SIZE as u64,
            log_dirty: true,
        })
    }
    .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_boot_state().unwrap();
    let (done_tx, done_rx) = channel();
    let (go_tx, go_rx) = channel();
    let handler = Arc::new(Rounds {
        done: Mutex::new(done_tx),
        go: Mutex::new(go_rx),
    });
    let control = VcpuControl::new();
    let runner = {
        let control = control.clone();
        thread::spawn(move || vcpu.run(handler.as_ref(), &control).map(|_| ()))
    };
    let mut words = vec![0u64; SLOT_SIZE / 4096 / 64];
    let log = vm.dirty_log();
    let round = |words: &mut [u64]| -> Duration {
        let start = Instant::now();
        go_tx.send(()).unwrap();
        let end = done_rx.recv().unwrap();
        words.fill(0);
        end - start
    };
    // Round 0 touches the pages for the first time (host page faults); not measured.
    done_rx.recv().unwrap();
    log.read_slot_words(0, &mut words).unwrap();
    round(&mut words);
    log.read_slot_words(0, &mut words).unwrap();

    let clean: Vec<Duration> = (0..CLEAN_READS)
        .map(|_| {
            let start = Instant::now();
            log.read_slot_words(0, &mut words).unwrap();
            start.elapsed()
        })
        .collect();
    let mut dirty_reads = Vec::new();
    let mut logged_rounds = Vec::new();
    let mut dirty_pages = 0;
    for _ in 0..ROUNDS {
        logged_rounds.push(round(&mut words));
        let start = Instant::now();
        dirty_pages = log.read_slot_words(0, &mut words).unwrap();
        dirty_reads.push(start.elapsed());
    }
    vm.set_dirty_logging(0, false).unwrap();
    let plain_rounds: Vec<Duration> = (0..ROUNDS).map(|_| round(&mut words)).collect();
    control.stop();
    go_tx.send(()).unwrap();
    runner.join().unwrap().unwrap();
    let pages = u32::try_from(count).unwrap();
    drop(vm);
    // SAFETY: unmaps the mapping made above; the VM that used it is gone.
    unsafe { libc::munmap(base, SLOT_SIZE) };
    Figures {
        clean_read: median(clean),
        dirty_read: median(dirty_reads),
        dirty_pages,
        logged_per_page: median(logged_rounds) / pages,
        plain_per_page: median(plain_rounds) / pages,
    }
}

fn main() {
    println!("dirty tracking of a 2 GiB slot, 1 vCPU writing every 100th page per round");
    println!(
        "{:<24} {:>11} {:>14} {:>7} {:>22} {:>22}",
        "mode", "clean read", "1% dirty read", "pages", "guest/page, log on", "guest/page, log off"
    );
    for (name, mode) in [
        ("bitmap (GET + CLEAR)", DirtyTracking::Bitmap),
        (
            "ring (16384 entries)",
            DirtyTracking::Ring { entries: 16384 },
        ),
    ] {
        let figures = measure(mode);
        println!(
            "{:<24} {:>11.1?} {:>14.1?} {:>7} {:>22.2?} {:>22.2?}",
            name,
            figures.clean_read,
            figures.dirty_read,
            figures.dirty_pages,
            figures.logged_per_page,
            figures.plain_per_page
        );
    }
}
