//! The migration engine end to end, against a plain TCP copy, in one process and one run.
//!
//! A source [`Vm`] of 2 GiB with no devices, every page filled with non-zero data, migrates
//! over 127.0.0.1 to a destination built by [`receive_into`] on another thread, with the
//! default policy (300 ms downtime limit). As `vfmig vm run --incoming` does, the destination
//! prepares its guest RAM (from its own `--mem`) and faults it in before the source connects;
//! that preparation is not part of the migration's time. The guest is idle: no workload is
//! started, but the gate is opened (`Vm::resume`), so the sender pauses a running guest at the
//! switch-over as it would a busy one; nothing dirties RAM, so pre-copy is one pass over all
//! of it and the stop-and-copy phase finds nothing left. The destination's RAM is checked
//! against the source's (digests) afterwards.
//!
//! After each migration, 2 GiB go over a plain TCP loopback connection (the migration's own
//! transport, so the same socket options): a writer thread writing one 1 MiB buffer over and
//! over, a reader thread reading into a 1 MiB buffer and discarding it. That is the target's
//! baseline, and a ceiling: no memory is touched besides the two cache-hot buffers. There are
//! seven such rounds (the source VM resumed and migrated again each time), interleaved so a
//! slow spell of the machine weighs on both sides of a ratio; each round's ratio is printed,
//! and the median round is reported in full. A last plain copy, for information, writes what
//! it reads into fresh guest RAM (a new memfd, as a destination VM has): the floor of any
//! receiver that copies into fresh RAM.
//!
//! Printed: the migration's statistics, total time, downtime, throughput (stream bytes over
//! total time, as [`MigrationStats`] reports it), the CPU time of the sending and receiving
//! threads and of the whole process, the plain copies' throughput, and the ratio, each beside
//! its target (ratio ≥ 0.7, downtime ≤ 50 ms). Last, a cost breakdown measured in the same
//! run: reading the source RAM (plainly, and as the sender does), CRC32C, writing fresh and
//! faulted-in destination RAM (with plain stores, and with the streaming stores the receiver
//! uses).
//!
//! The threads are named (`send`, `receive`, `plain-write`, `plain-read`) for profilers:
//! `perf record -g` on the binary, then `perf report --comm receive`.
//!
//! Run it with `cargo bench -p vfmig-migration --bench migrate`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_migration::crc::crc32c;
use vfmig_migration::engine::{
    DowntimeLimit, MigrationStats, Progress, ReceiveOptions, migrate, receive_into,
};
use vfmig_migration::transport::{Address, connect, listen};
use vfmig_vmm::{DeviceHost, GuestRam, Vm, VmConfig};

/// Guest RAM.
const RAM: u64 = 2 << 30;
/// The plain copy's buffers, and the piece size of the fill and the cost measurements.
const CHUNK: usize = 1 << 20;
/// Rounds of migration and plain copy; the median is reported.
const ROUNDS: usize = 7;
/// Targets of the issue.
const TARGET_RATIO: f64 = 0.7;
const TARGET_DOWNTIME_MS: f64 = 50.0;

/// CPU time (user + system) the calling thread has used.
fn thread_cpu() -> Duration {
    cpu(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) of `who`: `RUSAGE_THREAD` or `RUSAGE_SELF`.
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value we pass, which lives
    // for the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `f` on a thread named `name`; returns its result and the thread's CPU time.
fn on_thread<'s, T: Send + 's>(
    scope: &'s thread::Scope<'s, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 's,
) -> thread::ScopedJoinHandle<'s, (T, Duration)> {
    thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, move || {
            let cpu = thread_cpu();
            let result = f();
            (result, thread_cpu() - cpu)
        })
        .expect("spawn a thread")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Fills every page of `ram` with non-zero data that differs from page to page.
fn fill(ram: &GuestRam) {
    let mut chunk = vec![0x5au8; CHUNK];
    for r in ram.regions() {
        let mut gpa = r.gpa();
        while gpa < r.gpa() + r.size() {
            for (i, page) in chunk.chunks_mut(4096).enumerate() {
                page[..8]
                    .copy_from_slice(&(gpa + i as u64 * CONTAINER_PAGE_SIZE.bytes()).to_le_bytes());
            }
            ram.write(gpa, &chunk).expect("fill guest RAM");
            gpa += CHUNK as u64;
        }
    }
}

/// A migration's numbers, the CPU time of its sending and receiving threads, and that of
/// the whole process (the stream's writer thread included).
struct Migration {
    stats: MigrationStats,
    sender_cpu: Duration,
    receiver_cpu: Duration,
    process_cpu: Duration,
}

/// Migrates `vm` to a destination received on another thread, and checks that the
/// destination's RAM equals the source's.
fn migrate_once(vm: &Vm, host: &DeviceHost) -> Migration {
    let listener = listen(&"tcp:127.0.0.1:0".parse().expect("address")).expect("listen");
    let to: Address = listener.address().clone();
    let ram = Arc::new(GuestRam::new(&vm.ram().layout()).expect("destination RAM"));
    ram.populate().expect("fault in destination RAM");
    let process = cpu(libc::RUSAGE_SELF);
    let ((stats, sender_cpu), (dest, receiver_cpu)) = thread::scope(|s| {
        let receiving = on_thread(s, "receive", || {
            let options = ReceiveOptions {
                ram: Some(ram),
                ..ReceiveOptions::default()
            };
            receive_into(&listener, host, &options).expect("receive").0
        });
        let sending = on_thread(s, "send", || {
            migrate(vm, &to, &mut DowntimeLimit::default(), &Progress::new()).expect("migrate")
        });
        (
            sending.join().expect("sender thread"),
            receiving.join().expect("receiver thread"),
        )
    });
    let process_cpu = cpu(libc::RUSAGE_SELF) - process;
    let want = vm.digest().expect("source digest");
    assert_eq!(
        dest.digest().expect("destination digest"),
        want,
        "the destination's RAM differs from the source's"
    );
    Migration {
        stats,
        sender_cpu,
        receiver_cpu,
        process_cpu,
    }
}

/// A plain copy's wall time and the CPU time of its two threads.
struct Copy {
    wall: Duration,
    writer_cpu: Duration,
    reader_cpu: Duration,
}

/// Copies `RAM` bytes over TCP loopback (the migration's transport), written from a 1 MiB
/// buffer, read into a 1 MiB buffer and handed to `sink` with their offset.
fn plain_copy(mut sink: impl FnMut(u64, &[u8]) + Send) -> Copy {
    let listener = listen(&"tcp:127.0.0.1:0".parse().expect("address")).expect("listen");
    let address = listener.address().clone();
    let accepting = thread::spawn(move || listener.accept().expect("accept"));
    let sender = connect(&address).expect("connect");
    let receiver = accepting.join().expect("accept thread");
    let start = Instant::now();
    let (((), writer_cpu), ((), reader_cpu)) = thread::scope(|s| {
        let writing = on_thread(s, "plain-write", || {
            let chunk = vec![0x5au8; CHUNK];
            for _ in 0..RAM / CHUNK as u64 {
                (&sender).write_all(&chunk).expect("plain copy: write");
            }
        });
        let reading = on_thread(s, "plain-read", || {
            let mut buf = vec![0u8; CHUNK];
            let mut at = 0;
            while at < RAM {
                let n = (&receiver).read(&mut buf).expect("plain copy: read");
                assert!(n > 0, "plain copy: early end of stream");
                sink(at, &buf[..n]);
                at += n as u64;
            }
        });
        (
            writing.join().expect("writer thread"),
            reading.join().expect("reader thread"),
        )
    });
    Copy {
        wall: start.elapsed(),
        writer_cpu,
        reader_cpu,
    }
}

/// Times `f` over all of RAM in `CHUNK` pieces.
fn over_ram(mut f: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    let mut gpa = 0;
    while gpa < RAM {
        f(gpa);
        gpa += CHUNK as u64;
    }
    start.elapsed()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vfmig-bench-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    // No device is started: the program is never run.
    let host = DeviceHost {
        program: PathBuf::from("vfmig"),
        dir: dir.clone(),
        viommu: false,
    };
    let config = VmConfig::with_memory(RAM, vec![]).expect("VM config");
    let vm = Vm::build(config, &host, true).expect("source VM");
    let start = Instant::now();
    fill(vm.ram());
    println!(
        "source: {} MiB of non-zero RAM filled in {:.0} ms; guest idle (gate open, no workload)",
        RAM >> 20,
        ms(start.elapsed())
    );
    // Rounds of (migration, plain copy), interleaved so that a slow spell of the machine
    // weighs on both sides of a ratio; the median round is the one reported.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        vm.resume();
        let m = migrate_once(&vm, &host);
        let plain = plain_copy(|_, data| {
            std::hint::black_box(data);
        });
        let ratio = m.stats.throughput_mbps / mb_per_s(RAM, plain.wall);
        println!(
            "round {round}: migration {:.1} ms ({:.0} MB/s, downtime {:.1} ms), plain copy {:.1} ms ({:.0} MB/s): ratio {ratio:.2}",
            m.stats.total_ms,
            m.stats.throughput_mbps,
            m.stats.downtime_ms,
            ms(plain.wall),
            mb_per_s(RAM, plain.wall),
        );
        rounds.push((ratio, m, plain));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, m, plain) = rounds.swap_remove(ROUNDS / 2);
    let stats = &m.stats;
    println!("median round:\n{stats}");
    let fresh = GuestRam::new(&[(0, RAM)]).expect("fresh guest RAM");
    let into_ram = plain_copy(|at, data| fresh.write_untracked(at, data).expect("write"));
    drop(fresh);

    println!(
        "summary ({} MiB, idle guest, 127.0.0.1; median of {ROUNDS} rounds)",
        RAM >> 20
    );
    println!("  migration total time   {:>9.1} ms", stats.total_ms);
    println!(
        "  migration downtime     {:>9.1} ms    target <= {TARGET_DOWNTIME_MS} ms: {}",
        stats.downtime_ms,
        verdict(stats.downtime_ms <= TARGET_DOWNTIME_MS)
    );
    println!(
        "  migration throughput   {:>9.1} MB/s  cpu: send {:.0} ms, receive {:.0} ms, all {:.0} ms",
        stats.throughput_mbps,
        ms(m.sender_cpu),
        ms(m.receiver_cpu),
        ms(m.process_cpu)
    );
    for (what, copy) in [
        ("plain TCP copy", &plain),
        ("  same, into fresh RAM", &into_ram),
    ] {
        println!(
            "  {what:<22} {:>9.1} MB/s  cpu: write {:.0} ms, read {:.0} ms  (wall {:.1} ms)",
            mb_per_s(RAM, copy.wall),
            ms(copy.writer_cpu),
            ms(copy.reader_cpu),
            ms(copy.wall)
        );
    }
    println!(
        "  ratio migration/plain  {:>9.2}       target >= {TARGET_RATIO}: {}  (vs into fresh RAM: {:.2})",
        ratio,
        verdict(ratio >= TARGET_RATIO),
        stats.throughput_mbps / mb_per_s(RAM, into_ram.wall)
    );

    // Where the time goes: each step of the data path alone, over all of RAM.
    let mut buf = vec![0u8; CHUNK];
    let read = over_ram(|gpa| vm.ram().read(gpa, &mut buf).expect("read"));
    let read_sparse = over_ram(|gpa| vm.ram().read_for_migration(gpa, &mut buf).expect("read"));
    let crc = over_ram(|gpa| {
        std::hint::black_box(crc32c(&buf));
        std::hint::black_box(gpa);
    });
    drop(vm);
    let fresh = GuestRam::new(&[(0, RAM)]).expect("fresh guest RAM");
    let first_touch = over_ram(|gpa| fresh.write_untracked(gpa, &buf).expect("write"));
    let again = over_ram(|gpa| fresh.write(gpa, &buf).expect("write"));
    let streaming = over_ram(|gpa| fresh.write_untracked(gpa, &buf).expect("write"));
    println!(
        "cost breakdown over {} MiB, 1 MiB at a time, one thread",
        RAM >> 20
    );
    for (what, time) in [
        ("copy out of source RAM", read),
        ("  the same, as the sender reads it", read_sparse),
        ("CRC32C (cache-hot 1 MiB)", crc),
        ("copy into fresh destination RAM", first_touch),
        ("copy into faulted-in destination RAM", again),
        ("  the same, streaming stores", streaming),
    ] {
        println!(
            "  {what:<38} {:>8.1} ms  {:>8.0} MB/s",
            ms(time),
            mb_per_s(RAM, time)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
