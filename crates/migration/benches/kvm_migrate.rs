//! A KVM guest migrated end to end, beside a plain TCP copy of the same bytes, in one run.
//!
//! Two guests of 2 GiB, each a KVM VM running the guest program on its vCPUs, no devices:
//!
//! * **idle**: every page above the guest's own 4 MiB filled with non-zero data by the VMM
//!   before the guest starts (the guest emulated here runs some 2 µs an instruction: it could
//!   not fill 2 GiB in any useful time), then the guest runs with nothing to do but its timer;
//! * **dirtier**: the same RAM, and one vCPU stamping a 512 MiB working set as fast as it can
//!   (each page its sequence number and check words, verified on the next pass).
//!
//! Each migrates five times (resumed in between; the host is shared and noisy, so the median
//! of five) over 127.0.0.1 to a destination built by [`receive_into`] on another thread,
//! with the default policy (300 ms downtime limit, auto-converge on); as `vfmig vm run --incoming` does, the destination prepares and faults
//! in its RAM before the source connects. Right after, the same number of stream bytes goes
//! over a plain TCP loopback connection (the migration's transport): a writer thread writing
//! one 1 MiB buffer over and over, a reader thread reading and discarding. The destination's
//! RAM and the source's are compared (digests) after each migration.
//!
//! Printed for each guest: every round in a line, and the median round (by ratio) in full:
//! the migration's statistics (total time, downtime and where it went — pause, devices, last
//! sync, last RAM, device state, vCPU state, stream end, destination, go — bytes sent, and
//! the vCPU run percentage of each iteration, i.e. the throttle), the plain copy, and what
//! the destination's KVM work costs alone. Last, the ratios and downtimes beside their
//! targets (idle ratio ≥ 0.8, downtime ≤ 20 ms). Where `/dev/kvm` does not work the
//! benchmark says so and does nothing.
//!
//! Run it with `cargo bench -p vfmig-migration --bench kvm_migrate`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vfmig_migration::engine::{
    DowntimeLimit, MigrationStats, Progress, ReceiveOptions, migrate, receive_into,
};
use vfmig_migration::transport::{Address, connect, listen};
use vfmig_vmm::machine::WORKING_SET_GPA;
use vfmig_vmm::{DeviceHost, GuestProgram, GuestRam, Machine, Vm, VmConfig};

/// Guest RAM.
const RAM: u64 = 2 << 30;
/// The dirtier's working set.
const WORKING_SET: u64 = 512 << 20;
/// The plain copy's buffers and the fill's pieces.
const CHUNK: usize = 1 << 20;
/// Migrations of each guest; the median is reported.
const ROUNDS: usize = 5;
/// Targets of the issue.
const TARGET_RATIO: f64 = 0.8;
const TARGET_DOWNTIME_MS: f64 = 20.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Fills every page of `ram` from `from` up with non-zero data that differs from page to
/// page.
fn fill(ram: &GuestRam, from: u64) {
    let mut chunk = vec![0x5au8; CHUNK];
    for r in ram.regions() {
        let mut gpa = r.gpa().max(from);
        while gpa < r.gpa() + r.size() {
            let len = usize::try_from((r.gpa() + r.size() - gpa).min(CHUNK as u64))
                .expect("a chunk fits in memory");
            for (i, page) in chunk[..len].chunks_mut(4096).enumerate() {
                page[..8].copy_from_slice(&(gpa + i as u64 * 4096).to_le_bytes());
            }
            ram.write(gpa, &chunk[..len]).expect("fill guest RAM");
            gpa += len as u64;
        }
    }
}

/// Copies `bytes` over TCP loopback, written from a 1 MiB buffer, read into one and dropped;
/// returns the wall time.
fn plain_copy(bytes: u64) -> Duration {
    let listener = listen(&"tcp:127.0.0.1:0".parse().expect("address")).expect("listen");
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().expect("accept"));
    let sender = connect(&address).expect("connect");
    let receiver = accepting.join().expect("accept thread");
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(|| {
            let chunk = vec![0x5au8; CHUNK];
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left.min(CHUNK as u64)).expect("a chunk");
                (&sender).write_all(&chunk[..n]).expect("plain copy: write");
                left -= n as u64;
            }
        });
        s.spawn(|| {
            let mut buf = vec![0u8; CHUNK];
            let mut at = 0;
            while at < bytes {
                let n = (&receiver).read(&mut buf).expect("plain copy: read");
                assert!(n > 0, "plain copy: early end of stream");
                at += n as u64;
            }
        });
    });
    start.elapsed()
}

/// Migrates `vm` to a destination received on another thread; checks that the destination's
/// RAM equals the source's.
fn migrate_once(vm: &Vm, host: &DeviceHost) -> MigrationStats {
    let listener = listen(&"tcp:127.0.0.1:0".parse().expect("address")).expect("listen");
    let to: Address = listener.address().clone();
    let ram = Arc::new(GuestRam::new(&vm.ram().layout()).expect("destination RAM"));
    ram.populate().expect("fault in destination RAM");
    let (stats, dest) = thread::scope(|s| {
        let receiving = s.spawn(|| {
            let options = ReceiveOptions {
                ram: Some(ram),
                ..ReceiveOptions::default()
            };
            receive_into(&listener, host, &options).expect("receive").0
        });
        let sending = s.spawn(|| {
            migrate(vm, &to, &mut DowntimeLimit::default(), &Progress::new()).expect("migrate")
        });
        (
            sending.join().expect("sender thread"),
            receiving.join().expect("receiver thread"),
        )
    });
    assert_eq!(
        dest.digest().expect("destination digest"),
        vm.digest().expect("source digest"),
        "the destination's RAM differs from the source's"
    );
    dest.shutdown();
    stats
}

/// What the destination's KVM work costs, measured alone.
struct DestinationCosts {
    /// Creating the KVM VM and registering RAM as memslots, which the receiver does when the
    /// stream starts ([`Vm::prepare_machine`]), out of the downtime.
    prepare: Duration,
    /// The rest of [`Vm::restore_machine`], in the downtime: vCPUs, their threads, the state.
    restore: Duration,
}

/// Times, on a fresh VM, what the receiver does for the KVM guest of `vm` (paused).
fn destination_costs(vm: &Vm, program: &GuestProgram, host: &DeviceHost) -> DestinationCosts {
    let state = vm
        .save_machine()
        .expect("save the KVM state")
        .expect("a KVM guest");
    let config = VmConfig::with_memory(RAM, vec![]).expect("VM config");
    let fresh = Vm::build(config, host, false).expect("a fresh VM");
    let start = Instant::now();
    fresh.prepare_machine().expect("a KVM VM with memslots");
    let prepare = start.elapsed();
    let start = Instant::now();
    fresh
        .restore_machine(program, &state)
        .expect("restore the KVM state");
    let restore = start.elapsed();
    fresh.shutdown();
    DestinationCosts { prepare, restore }
}

/// What one scenario measured: the median round's ratio and downtime.
struct Outcome {
    ratio: f64,
    downtime_ms: f64,
}

/// Builds a 2 GiB VM with non-zero RAM, boots `program` on it, and [`ROUNDS`] times lets it
/// run `warmup`, migrates it and copies the same bytes plainly. Prints each round and the
/// median one (by ratio) in full.
fn scenario(name: &str, program: &GuestProgram, warmup: Duration, host: &DeviceHost) -> Outcome {
    let config = VmConfig::with_memory(RAM, vec![]).expect("VM config");
    let vm = Vm::build(config, host, true).expect("source VM");
    let start = Instant::now();
    fill(vm.ram(), WORKING_SET_GPA);
    let filled = start.elapsed();
    vm.boot(program).expect("boot the guest");
    println!("== {name}: {} MiB of RAM, {program:?}", RAM >> 20);
    println!(
        "   RAM above {WORKING_SET_GPA:#x} filled non-zero by the VMM in {:.0} ms; the guest \
         runs {:.0} ms before each migration",
        ms(filled),
        ms(warmup),
    );
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        vm.resume();
        let before = vm.kvm_report().expect("a KVM guest").pages_written;
        thread::sleep(warmup);
        let stamped = vm.kvm_report().expect("a KVM guest").pages_written - before;
        let stats = migrate_once(&vm, host);
        let plain = plain_copy(stats.total_bytes);
        let ratio = ms(plain) / stats.total_ms;
        let throttle = stats.iterations.iter().map(|i| i.run_percent).min();
        println!(
            "   round {round}: guest stamped {stamped} pages in its run; migration {:.1} ms, \
             downtime {:.1} ms, {} iteration(s), least vCPU run {}%; plain copy {:.1} ms: \
             ratio {ratio:.2}",
            stats.total_ms,
            stats.downtime_ms,
            stats.iterations.len(),
            throttle.unwrap_or(100),
            ms(plain),
        );
        rounds.push((ratio, stats, plain));
    }
    let errors = vm.kvm_report().expect("a KVM guest").errors;
    let destination = destination_costs(&vm, program, host);
    vm.shutdown();
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, stats, plain) = rounds.swap_remove(ROUNDS / 2);

    println!("   median round (by ratio); the guest found {errors} errors in all:");
    print!("{stats}");
    println!(
        "   plain TCP copy of the same {:.1} MiB: {:.1} ms ({:.0} MB/s)",
        stats.total_bytes as f64 / f64::from(1u32 << 20),
        ms(plain),
        stats.total_bytes as f64 / 1e6 / plain.as_secs_f64()
    );
    println!(
        "   the destination's KVM work alone: KVM VM and memslots (before the downtime) {:.1} ms; \
         {} vCPU(s), their threads and the saved state (in it) {:.1} ms",
        ms(destination.prepare),
        program.vcpus,
        ms(destination.restore)
    );
    Outcome {
        ratio,
        downtime_ms: stats.downtime_ms,
    }
}

fn main() {
    if !Machine::available() {
        println!("kvm_migrate: skipped: /dev/kvm does not work here (a KVM VM cannot be created)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vfmig-bench-kvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    // No device is started: the program is never run.
    let host = DeviceHost {
        program: std::path::PathBuf::from("vfmig"),
        dir: dir.clone(),
        viommu: false,
    };
    let idle = GuestProgram {
        vcpus: 1,
        working_set: 4 << 20,
        dirty_rate: 0,
        device_rate: 0,
        dirtier: false,
        devices: false,
    };
    let dirtier = GuestProgram {
        working_set: WORKING_SET,
        dirtier: true,
        ..idle.clone()
    };
    let idle = scenario("idle", &idle, Duration::from_millis(500), &host);
    let busy = scenario("dirtier", &dirtier, Duration::from_secs(2), &host);
    println!("summary (median rounds of {ROUNDS}, 127.0.0.1, default policy: 300 ms limit)");
    println!(
        "  idle:    ratio migration/plain copy {:.2}, target >= {TARGET_RATIO}: {}; downtime {:.1} ms, \
         target <= {TARGET_DOWNTIME_MS} ms: {}",
        idle.ratio,
        verdict(idle.ratio >= TARGET_RATIO),
        idle.downtime_ms,
        verdict(idle.downtime_ms <= TARGET_DOWNTIME_MS)
    );
    println!(
        "  dirtier: ratio migration/plain copy {:.2}; downtime {:.1} ms, target <= \
         {TARGET_DOWNTIME_MS} ms: {}",
        busy.ratio,
        busy.downtime_ms,
        verdict(busy.downtime_ms <= TARGET_DOWNTIME_MS)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
