//! The run loop with real vCPUs: boot into long mode, and PIO/MMIO exits reaching the
//! handler (guest: `tests/guests/io.S`).

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestVm, spawn, stop, wait_for};
use vfmig_kvm::{ExitHandler, VcpuControl};

/// Records every access; answers reads from port 0x512 with 41 and from GPA 0xD000_0008
/// with 99.
#[derive(Default)]
struct Recorder {
    accesses: Mutex<Vec<Access>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    PioWrite(u16, Vec<u8>),
    PioRead(u16),
    MmioWrite(u64, Vec<u8>),
    MmioRead(u64),
}

impl Recorder {
    fn accesses(&self) -> Vec<Access> {
        self.accesses.lock().unwrap().clone()
    }
    fn record(&self, access: Access) {
        self.accesses.lock().unwrap().push(access);
    }
}

impl ExitHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> io::Result<()> {
        self.record(Access::PioRead(port));
        let value: u32 = if port == 0x512 { 41 } else { !0 };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
        Ok(())
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> io::Result<()> {
        self.record(Access::PioWrite(port, data.to_vec()));
        Ok(())
    }
    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> io::Result<()> {
        self.record(Access::MmioRead(gpa));
        let value: u32 = if gpa == 0xD000_0008 { 99 } else { !0 };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
        Ok(())
    }
    fn mmio_write(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        self.record(Access::MmioWrite(gpa, data.to_vec()));
        Ok(())
    }
}

/// Boots io.S on `vcpus` vCPUs and returns what the handler saw once every vCPU has done
/// its last access (the MMIO write to 0xD000_0010).
fn run_io_guest(vcpus: u32) -> Vec<Access> {
    let vm = TestVm::boot(guest!("io"), vcpus);
    let recorder = Arc::new(Recorder::default());
    let control = VcpuControl::new();
    let threads = spawn(vm.vcpus, recorder.clone(), &control);
    let done = wait_for(Duration::from_secs(20), || {
        recorder
            .accesses()
            .iter()
            .filter(|a| matches!(a, Access::MmioWrite(0xD000_0010, _)))
            .count()
            == vcpus as usize
    });
    stop(&control, threads);
    assert!(done, "guest did not finish: {:?}", recorder.accesses());
    recorder.accesses()
}

fn u32_of(data: &[u8]) -> u32 {
    u32::from_le_bytes(data.try_into().unwrap())
}

#[test]
fn the_guest_starts_in_long_mode_and_its_out_reaches_the_handler() {
    let accesses = run_io_guest(1);
    let efer = accesses
        .iter()
        .find_map(|a| match a {
            Access::PioWrite(0x510, data) => Some(u32_of(data)),
            _ => None,
        })
        .expect("an out to port 0x510");
    const LME: u32 = 1 << 8;
    const LMA: u32 = 1 << 10;
    assert_eq!(efer & (LME | LMA), LME | LMA, "EFER {efer:#x}");
}

#[test]
fn a_pio_read_returns_the_handlers_value_to_the_guest() {
    let accesses = run_io_guest(1);
    assert!(accesses.contains(&Access::PioRead(0x512)));
    assert!(
        accesses.contains(&Access::PioWrite(0x513, 42u32.to_le_bytes().to_vec())),
        "{accesses:?}"
    );
}

#[test]
fn an_mmio_write_reaches_the_handler_with_its_address_and_data() {
    let accesses = run_io_guest(1);
    assert!(
        accesses.contains(&Access::MmioWrite(
            0xD000_0000,
            0xC0FFEEu32.to_le_bytes().to_vec()
        )),
        "{accesses:?}"
    );
}

#[test]
fn an_mmio_read_returns_the_handlers_value_to_the_guest() {
    let accesses = run_io_guest(1);
    assert!(accesses.contains(&Access::MmioRead(0xD000_0008)));
    assert!(
        accesses.contains(&Access::MmioWrite(
            0xD000_0010,
            100u32.to_le_bytes().to_vec()
        )),
        "{accesses:?}"
    );
}

#[test]
fn every_vcpu_starts_with_its_index_in_rsi() {
    let accesses = run_io_guest(3);
    let mut indices: Vec<u32> = accesses
        .iter()
        .filter_map(|a| match a {
            Access::PioWrite(0x511, data) => Some(u32_of(data)),
            _ => None,
        })
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, vec![0, 1, 2]);
}

/// TSC ticks per second of the host, counted against the monotonic clock over 200 ms.
fn measured_tsc_hz() -> f64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects.
    let rdtsc = || unsafe { std::arch::x86_64::_rdtsc() };
    let (t0, c0) = (std::time::Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, t1) = (rdtsc(), std::time::Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

#[test]
fn the_tsc_frequency_kvm_reports_is_the_rate_the_tsc_ticks_at() {
    let t = TestVm::boot(guest!("io"), 1);
    let reported = t.vcpus[0].tsc_hz().unwrap() as f64;
    let measured = measured_tsc_hz();
    assert!(
        (reported / measured - 1.0).abs() < 0.02,
        "KVM says {reported} Hz, the TSC ticks at {measured} Hz"
    );
}
