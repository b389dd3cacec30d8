//! KVM's dirty log with a real vCPU, in both modes (bitmap with manual protect, and the
//! dirty ring): a read reports exactly the pages the guest wrote, and re-arms them
//! (guest: `tests/guests/dirty.S`, which writes the pages the boot page lists, in rounds,
//! and stops in an `out` to port 0x520 after each round).

mod common;

use std::collections::BTreeSet;
use std::io;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RAM_SIZE, TestVm, spawn, stop};
use vfmig_dirty::{DirtyBitmap, PageSize};
use vfmig_kvm::{DirtyTracking, ExitHandler, KvmConfig, VcpuControl};

const ROUND_1: [u64; 3] = [0x50_0000, 0x50_1000, 0x60_0010];
/// Page 0x500 again (written in round 1, so only reported if the read re-armed it) and a
/// new one.
const ROUND_2: [u64; 2] = [0x50_0008, 0x70_0000];

/// Blocks the guest at the end of each round until the test lets it go on.
struct Rounds {
    done: Mutex<Sender<u32>>,
    go: Mutex<Receiver<()>>,
}

impl ExitHandler for Rounds {
    fn pio_read(&self, port: u16, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!("unexpected in from {port:#x}")))
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> io::Result<()> {
        if port != 0x520 {
            return Err(io::Error::other(format!("unexpected out to {port:#x}")));
        }
        let round = u32::from_le_bytes(data.try_into().map_err(io::Error::other)?);
        // A closed channel means the test has had all the rounds it wanted: the guest runs on
        // until the test's stop reaches it (its next round may come first).
        if self.done.lock().unwrap().send(round).is_ok() {
            let _ = self.go.lock().unwrap().recv();
        }
        Ok(())
    }
    fn mmio_read(&self, gpa: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "unexpected MMIO read at {gpa:#x}"
        )))
    }
    fn mmio_write(&self, gpa: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "unexpected MMIO write at {gpa:#x}"
        )))
    }
}

fn boot_page(bytes: &mut [u8]) {
    let mut words = vec![2u64, ROUND_1.len() as u64];
    words.extend(ROUND_1);
    words.push(ROUND_2.len() as u64);
    words.extend(ROUND_2);
    for (i, word) in words.iter().enumerate() {
        let at = 0x8000 + i * 8;
        bytes[at..at + 8].copy_from_slice(&word.to_le_bytes());
    }
}

fn pages(gpas: &[u64]) -> BTreeSet<u64> {
    gpas.iter().map(|gpa| gpa / 4096).collect()
}

fn set_bits(words: &[u64]) -> BTreeSet<u64> {
    let mut pages = BTreeSet::new();
    for (i, word) in words.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                pages.insert(i as u64 * 64 + bit);
            }
        }
    }
    pages
}

/// Runs both rounds in `mode`; returns the pages each read after a round reported.
fn dirty_pages_per_round(mode: DirtyTracking) -> Vec<BTreeSet<u64>> {
    let config = KvmConfig {
        dirty_tracking: mode,
        ..KvmConfig::default()
    };
    let vm = TestVm::boot_with(guest!("dirty"), 1, config, boot_page);
    vm.vm.set_dirty_logging(0, true).unwrap();
    let (done_tx, done_rx) = channel();
    let (go_tx, go_rx) = channel();
    let handler = Arc::new(Rounds {
        done: Mutex::new(done_tx),
        go: Mutex::new(go_rx),
    });
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, handler, &control);
    let mut reported = Vec::new();
    for round in 1..=2 {
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(round));
        let mut words = vec![0u64; RAM_SIZE / 4096 / 64];
        vm.vm.dirty_log().read_slot_words(0, &mut words).unwrap();
        reported.push(set_bits(&words));
        go_tx.send(()).unwrap();
    }
    stop(&control, threads);
    reported
}

#[test]
fn bitmap_mode_reports_exactly_the_pages_the_guest_wrote() {
    let reported = dirty_pages_per_round(DirtyTracking::Bitmap);
    assert_eq!(reported[0], pages(&ROUND_1));
}

#[test]
fn bitmap_mode_read_rearms_the_pages_it_returned() {
    let reported = dirty_pages_per_round(DirtyTracking::Bitmap);
    assert_eq!(reported[1], pages(&ROUND_2));
}

#[test]
fn ring_mode_reports_exactly_the_pages_the_guest_wrote() {
    let reported = dirty_pages_per_round(DirtyTracking::Ring { entries: 1024 });
    assert_eq!(reported[0], pages(&ROUND_1));
}

#[test]
fn ring_mode_read_rearms_the_pages_it_returned() {
    let reported = dirty_pages_per_round(DirtyTracking::Ring { entries: 1024 });
    assert_eq!(reported[1], pages(&ROUND_2));
}

#[test]
fn a_read_into_a_dirty_bitmap_marks_the_slot_pages_at_its_offset() {
    let config = KvmConfig::default();
    let vm = TestVm::boot_with(guest!("dirty"), 1, config, boot_page);
    vm.vm.set_dirty_logging(0, true).unwrap();
    let (done_tx, done_rx) = channel();
    let (go_tx, go_rx) = channel();
    let handler = Arc::new(Rounds {
        done: Mutex::new(done_tx),
        go: Mutex::new(go_rx),
    });
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, handler, &control);
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(1));
    let pages_in_ram = (RAM_SIZE / 4096) as u64;
    let bitmap = DirtyBitmap::new(pages_in_ram + 100, PageSize::SIZE_4K).unwrap();
    let dirty = vm.vm.dirty_log().read_slot_into(0, &bitmap, 100).unwrap();
    go_tx.send(()).unwrap();
    drop(go_tx);
    stop(&control, threads);
    let marked: BTreeSet<u64> = bitmap.runs().flat_map(|run| run.first..run.end()).collect();
    let expected: BTreeSet<u64> = pages(&ROUND_1).iter().map(|p| p + 100).collect();
    assert_eq!((dirty, marked), (3, expected));
}

#[test]
fn reading_an_unknown_slot_is_an_error() {
    let vm = TestVm::boot(guest!("counter"), 1);
    let mut words = vec![0u64; 1];
    assert!(vm.vm.dirty_log().read_slot_words(7, &mut words).is_err());
}
