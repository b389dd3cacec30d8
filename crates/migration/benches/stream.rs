//! The stream layer against a plain TCP copy, in the same run: 1 GiB of non-zero guest RAM
//! encoded, sent, received, verified and applied over 127.0.0.1, against 1 GiB written from
//! the same source memory and read into the same destination memory over another loopback
//! connection in 1 MiB writes. Prints both throughputs and their ratio (the stream layer aims
//! at ≥ 0.85× the plain copy, leaving room for the migration engine's ≥ 0.7×), the same over
//! a UNIX socket pair, the stream over mutual TLS against the stream over plain TCP (the
//! same bytes: the ratio is what TLS costs), and the CRC32C and zero-page scan throughputs.
//!
//! A plain `main`, not criterion: each transfer runs `REPS` times, alternating stream and
//! plain copy so both see the same machine. Printed: the median wall time and throughput of
//! each, the median CPU time of the sending and the receiving thread (a steadier measure of
//! cost than wall time on a shared 2-core machine), and the median of the pairs' ratios with
//! its range. Both memories are touched before the first run, so page faults are not
//! measured.
//!
//! Run it with `cargo bench -p vfmig-migration --bench stream`.
#![allow(clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use vfmig_migration::crc::crc32c;
use vfmig_migration::stream::{
    RamLayout, RegionDesc, Section, StreamConfig, StreamReader, StreamWriter, is_zero_page,
};
use vfmig_migration::transport::{StreamConnection, TransportSecurity, connect_with, listen_with};
use vfmig_migration::{Gpa, PageRun, STREAM_PAGE_SIZE};

/// Guest RAM size.
const RAM: usize = 1 << 30;
/// Timed runs of each transfer.
const REPS: usize = 9;
/// The chunk the plain copy writes at a time: 1 MiB, its fastest of 64 KiB to 1 GiB on the
/// development machine (and the stream's default section size).
const PLAIN_CHUNK: usize = 1 << 20;

/// Flat guest memory at GPA 0.
struct Memory(Vec<u8>);

impl Memory {
    fn slice(&self, gpa: Gpa, len: usize) -> io::Result<&[u8]> {
        let start = gpa.raw() as usize;
        self.0
            .get(start..start + len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))
    }
}

impl vfmig_migration::stream::ReadGuestMemory for Memory {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(self.slice(gpa, buf.len())?);
        Ok(())
    }
}

impl vfmig_migration::stream::WriteGuestMemory for Memory {
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> io::Result<()> {
        let start = gpa.raw() as usize;
        self.0
            .get_mut(start..start + data.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?
            .copy_from_slice(data);
        Ok(())
    }
}

/// One timed transfer: wall time from the first byte sent to the last received, and the CPU
/// time of the sending and the receiving thread.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    sender_cpu: Duration,
    receiver_cpu: Duration,
}

/// CPU time (user + system) the calling thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn gib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / time.as_secs_f64()
}

#[path = "../tests/tls_creds/mod.rs"]
mod tls_creds;

/// How the two ends are connected.
enum Link {
    /// TCP over 127.0.0.1, plain or TLS.
    Tcp(TransportSecurity),
    /// A UNIX socket pair.
    Unix,
}

/// A connected pair over `link`.
fn pair(link: &Link) -> (StreamConnection, StreamConnection) {
    match link {
        Link::Tcp(security) => {
            let listener = listen_with(&"tcp:127.0.0.1:0".parse().unwrap(), security).unwrap();
            let address = listener.address().clone();
            let accepting = thread::spawn(move || listener.accept().unwrap());
            let sender = connect_with(&address, security).unwrap();
            (sender, accepting.join().unwrap())
        }
        Link::Unix => StreamConnection::unix_pair().unwrap(),
    }
}

/// Sends all of `source` as a migration stream and applies it to `dest`. Timed from the
/// first byte written to `End` read and applied.
fn migrate(link: &Link, config: &StreamConfig, source: &Memory, dest: &mut Memory) -> Sample {
    let (sender, receiver) = pair(link);
    thread::scope(|scope| {
        let start = Instant::now();
        let sending = thread::Builder::new()
            .name("stream-send".into())
            .spawn_scoped(scope, move || {
                let cpu = thread_cpu();
                let mut writer = StreamWriter::new(&sender).unwrap();
                writer.write_config(config).unwrap();
                let pages = RAM as u64 / STREAM_PAGE_SIZE.bytes();
                let stats = writer
                    .write_ram([PageRun::new(Gpa(0), pages)], source)
                    .unwrap();
                assert_eq!(stats.zero_pages, 0);
                writer.finish().unwrap();
                thread_cpu() - cpu
            })
            .unwrap();
        let cpu = thread_cpu();
        let mut reader = StreamReader::new(&receiver).unwrap();
        loop {
            match reader.next_section().unwrap() {
                Section::RamPages(pages) => pages.apply(dest).unwrap(),
                Section::End(_) => break,
                _ => {}
            }
        }
        let receiver_cpu = thread_cpu() - cpu;
        let wall = start.elapsed();
        Sample {
            wall,
            sender_cpu: sending.join().unwrap(),
            receiver_cpu,
        }
    })
}

/// Writes all of `source` in `PLAIN_CHUNK` pieces and reads it into `dest`.
fn plain_copy(link: &Link, source: &Memory, dest: &mut Memory) -> Sample {
    let (sender, receiver) = pair(link);
    thread::scope(|scope| {
        let start = Instant::now();
        let sending = thread::Builder::new()
            .name("plain-send".into())
            .spawn_scoped(scope, move || {
                let cpu = thread_cpu();
                for chunk in source.0.chunks(PLAIN_CHUNK) {
                    (&sender).write_all(chunk).unwrap();
                }
                thread_cpu() - cpu
            })
            .unwrap();
        let cpu = thread_cpu();
        (&receiver).read_exact(&mut dest.0).unwrap();
        let receiver_cpu = thread_cpu() - cpu;
        let wall = start.elapsed();
        Sample {
            wall,
            sender_cpu: sending.join().unwrap(),
            receiver_cpu,
        }
    })
}

/// Runs migration and plain copy `REPS` times each, alternating; prints the medians and the
/// median of the pairs' throughput ratios, and returns that ratio.
fn compare(
    name: &str,
    link: &Link,
    config: &StreamConfig,
    source: &Memory,
    dest: &mut Memory,
) -> f64 {
    let mut check = |dest: &mut Memory| {
        dest.0[..STREAM_PAGE_SIZE.bytes_usize()].fill(0);
        let s = migrate(link, config, source, dest);
        assert!(dest.0 == source.0, "{name}: destination differs");
        s
    };
    let plain = |dest: &mut Memory| plain_copy(link, source, dest);
    compare_runs(name, ["stream", "plain"], &mut check, plain, dest)
}

/// The stream over mutual TLS against the stream over plain TCP, alternating; returns the
/// median ratio of TLS's throughput to plain's.
fn compare_tls(
    security: TransportSecurity,
    config: &StreamConfig,
    source: &Memory,
    dest: &mut Memory,
) -> f64 {
    let (tls, plain) = (Link::Tcp(security), Link::Tcp(TransportSecurity::Plain));
    let run = |link: &Link, dest: &mut Memory| {
        dest.0[..STREAM_PAGE_SIZE.bytes_usize()].fill(0);
        let s = migrate(link, config, source, dest);
        assert!(dest.0 == source.0, "stream over TLS: destination differs");
        s
    };
    compare_runs(
        "tcp stream",
        ["tls", "plain"],
        |dest: &mut Memory| run(&tls, dest),
        |dest: &mut Memory| run(&plain, dest),
        dest,
    )
}

/// Runs `a` and `b` `REPS` times each, alternating; prints the medians and the median of the
/// pairs' throughput ratios a/b, and returns that ratio.
fn compare_runs(
    name: &str,
    labels: [&str; 2],
    mut a: impl FnMut(&mut Memory) -> Sample,
    mut b: impl FnMut(&mut Memory) -> Sample,
    dest: &mut Memory,
) -> f64 {
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..REPS {
        let s = a(dest);
        let p = b(dest);
        ratios.push(p.wall.as_secs_f64() / s.wall.as_secs_f64());
        first.push(s);
        second.push(p);
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    for (what, samples) in [(labels[0], &first), (labels[1], &second)] {
        let wall = median(samples.iter().map(|s| s.wall).collect());
        let sender = median(samples.iter().map(|s| s.sender_cpu).collect());
        let receiver = median(samples.iter().map(|s| s.receiver_cpu).collect());
        println!(
            "{name:<14} {what:<6} {:6.2} GiB/s  wall {:6.1} ms  cpu: sender {:6.1} ms, receiver {:6.1} ms",
            gib_per_s(RAM, wall),
            wall.as_secs_f64() * 1e3,
            sender.as_secs_f64() * 1e3,
            receiver.as_secs_f64() * 1e3,
        );
    }
    println!(
        "{name:<14} ratio  {ratio:.3} (median of {REPS} pairs; range {:.3} to {:.3})",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    ratio
}

/// Median time of `op` over `reps` runs.
fn time(reps: usize, mut op: impl FnMut()) -> Duration {
    median(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                op();
                start.elapsed()
            })
            .collect(),
    )
}

fn main() {
    // Non-zero pages, each different: a counter in every word.
    let mut source = Memory(vec![0u8; RAM]);
    for (i, word) in source.0.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&((i as u64) << 1 | 1).to_le_bytes());
    }
    let mut dest = Memory(vec![0xffu8; RAM]);
    let layout = RamLayout::new(vec![RegionDesc {
        gpa: Gpa(0),
        size: RAM as u64,
    }])
    .unwrap();
    let config = StreamConfig::new(layout, vec![]).unwrap();

    println!("1 GiB of non-zero RAM, medians of {REPS} runs");
    let ratio = compare(
        "tcp 127.0.0.1",
        &Link::Tcp(TransportSecurity::Plain),
        &config,
        &source,
        &mut dest,
    );
    compare("unix pair", &Link::Unix, &config, &source, &mut dest);
    let tls = tls_creds::tls(&tls_creds::good_creds("bench-stream"), &[]);
    let tls_ratio = compare_tls(tls, &config, &source, &mut dest);

    let section = &source.0[..1 << 20];
    let hot = time(201, || {
        black_box(crc32c(black_box(section)));
    });
    let cold = time(5, || {
        black_box(crc32c(black_box(&source.0)));
    });
    println!(
        "crc32c         {:6.2} GiB/s on 1 MiB (a section, cached)   {:6.2} GiB/s on 1 GiB (memory)",
        gib_per_s(section.len(), hot),
        gib_per_s(RAM, cold)
    );
    let zero = Memory(vec![0u8; 8 << 20]);
    let scan = time(51, || {
        black_box(
            zero.0
                .chunks_exact(STREAM_PAGE_SIZE.bytes_usize())
                .filter(|page| is_zero_page(black_box(page)))
                .count(),
        );
    });
    println!(
        "zero-page scan {:6.2} GiB/s on 8 MiB of zero pages (cached)",
        gib_per_s(zero.0.len(), scan)
    );
    println!("stream over TLS / over plain TCP: {tls_ratio:.3} (the same bytes)");
    println!(
        "stream / plain TCP: {ratio:.3} (target >= 0.85) {}",
        if ratio >= 0.85 { "ok" } else { "BELOW TARGET" }
    );
}
