//! A client and a server (the test suite's dummy device) over a real socket pair, measured end
//! to end, with the numbers printed:
//!
//! * REGION_READ / REGION_WRITE round trips per second, 4- and 8-byte accesses, beside a bare
//!   32-byte ping-pong between two threads over a `UnixStream` pair (the floor any design with
//!   a thread per side pays: two wake-ups);
//! * MB/s of 1 MiB REGION_READ / REGION_WRITE;
//! * GET_BITMAP of a 64 GiB mapping with every page dirty (a 2 MiB bitmap), client → server →
//!   client, beside a memcpy of 2 MiB plus one transfer of 2 MiB over a `UnixStream` pair,
//!   measured in the same run; the target is the GET within 2x of that sum. The GET is timed
//!   into a reused buffer (as a migration loop syncs, and as the baseline copies) and, for
//!   comparison, into a new `Vec` each time, which adds the page faults of 2 MiB of fresh
//!   memory.
//!
//! A plain `main`, not criterion: each figure is the median of its repetitions, setup (marking
//! every page dirty) outside the timed part.
//!
//! `cargo bench -p vfmig-vfio-user --bench session`

#[path = "../tests/common/dummy.rs"]
#[allow(dead_code, unreachable_pub, clippy::cast_possible_truncation)]
mod dummy;

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vfmig_iommu::{Container, Iova, Prot};
use vfmig_vfio_user::{Client, ClientConfig, Connection, Limits, Server};

use dummy::{BAR, Dummy, REG_SCRATCH, memfd};

const GIB: u64 = 1 << 30;
const BIG: u64 = 64 * GIB;
const BASE: u64 = 0x100_0000_0000;
const BITMAP_BYTES: usize = 2 << 20;
const SMALL_OPS: u32 = 20_000;
const MIB_OPS: u32 = 200;
const REPS: usize = 51;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn median_f64(mut samples: Vec<f64>) -> f64 {
    samples.sort_unstable_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn per_second(ops: u32, elapsed: Duration) -> f64 {
    f64::from(ops) / elapsed.as_secs_f64()
}

/// Round trips per second of a 32-byte ping-pong between two threads over a socket pair.
fn socket_ping_pong() -> f64 {
    let (mut here, mut there) = UnixStream::pair().expect("socketpair");
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 32];
        while there.read_exact(&mut buf).is_ok() {
            if there.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 32];
    let start = Instant::now();
    for _ in 0..SMALL_OPS {
        here.write_all(&buf).expect("write");
        here.read_exact(&mut buf).expect("read");
    }
    let rate = per_second(SMALL_OPS, start.elapsed());
    drop(here);
    echo.join().expect("echo thread");
    rate
}

fn round_trips(client: &Client, size: usize, write: bool) -> f64 {
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for i in 0..SMALL_OPS {
        if write {
            buf[0] = i.to_le_bytes()[0];
            client
                .region_write(BAR, REG_SCRATCH, &buf)
                .expect("region write");
        } else {
            client
                .region_read(BAR, REG_SCRATCH, &mut buf)
                .expect("region read");
        }
    }
    per_second(SMALL_OPS, start.elapsed())
}

fn megabytes_per_second(client: &Client, write: bool) -> f64 {
    let mut buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    for _ in 0..MIB_OPS {
        if write {
            client
                .region_write(BAR, 1 << 20, &buf)
                .expect("region write");
        } else {
            client
                .region_read(BAR, 1 << 20, &mut buf)
                .expect("region read");
        }
    }
    per_second(MIB_OPS, start.elapsed())
}

/// Times one GET_BITMAP of the 64 GiB mapping with every page marked dirty first (untimed),
/// into `bitmap` (reused) or into a new `Vec`.
fn get_bitmap(
    client: &Client,
    container: &Container,
    bitmap: &mut Vec<u64>,
    reuse: bool,
) -> Duration {
    container.mark_dirty(Iova(BASE), BIG).expect("mark dirty");
    let start = Instant::now();
    if reuse {
        client
            .dirty_pages_get_into(Iova(BASE), BIG, bitmap)
            .expect("GET_BITMAP");
    } else {
        *bitmap = client.dirty_pages_get(Iova(BASE), BIG).expect("GET_BITMAP");
    }
    let elapsed = start.elapsed();
    assert_eq!(bitmap.len() * 8, BITMAP_BYTES);
    assert!(bitmap.iter().all(|&w| w == u64::MAX), "every page dirty");
    if !reuse {
        *bitmap = Vec::new();
    }
    elapsed
}

/// The baseline: a 2 MiB memcpy, and one transfer of 2 MiB over a `UnixStream` pair (a writer
/// thread sends it, this thread reads it all).
struct Baseline {
    source: Vec<u64>,
    copy: Vec<u64>,
    reader: UnixStream,
    go: Option<mpsc::Sender<()>>,
    writer: Option<thread::JoinHandle<()>>,
    buf: Vec<u8>,
}

impl Baseline {
    fn new() -> Self {
        let (reader, mut writer) = UnixStream::pair().expect("socketpair");
        let (go, wait) = mpsc::channel::<()>();
        let writer = thread::spawn(move || {
            let data = vec![0x5au8; BITMAP_BYTES];
            while wait.recv().is_ok() {
                writer.write_all(&data).expect("write");
            }
        });
        Self {
            source: vec![0xa5a5_a5a5_a5a5_a5a5_u64; BITMAP_BYTES / 8],
            copy: vec![0u64; BITMAP_BYTES / 8],
            reader,
            go: Some(go),
            writer: Some(writer),
            buf: vec![0u8; BITMAP_BYTES],
        }
    }

    fn memcpy(&mut self) -> Duration {
        let start = Instant::now();
        self.copy.copy_from_slice(black_box(&self.source));
        black_box(&self.copy);
        start.elapsed()
    }

    fn transfer(&mut self) -> Duration {
        let start = Instant::now();
        if let Some(go) = &self.go {
            go.send(()).expect("go");
        }
        self.reader.read_exact(&mut self.buf).expect("read");
        start.elapsed()
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.go = None;
        if let Some(writer) = self.writer.take() {
            writer.join().expect("writer thread");
        }
    }
}

fn main() {
    let (client_end, server_end) = UnixStream::pair().expect("socketpair");
    let container = Container::default();
    let (device, _state) = Dummy::new(container.clone(), true);
    let server_container = container.clone();
    let server = thread::spawn(move || {
        let mut server = Server::new(device, server_container, Limits::default());
        let conn = Connection::new(server_end).expect("connection");
        server.serve_connection(conn)
    });
    let client = Client::from_stream(client_end, ClientConfig::default()).expect("client");

    println!("vfio-user client <-> server over a UnixStream pair");
    let floor = socket_ping_pong();
    println!(
        "  bare socket ping-pong:  {floor:>9.0} round trips/s ({:.1} us each)",
        1e6 / floor
    );
    for (size, write) in [(4, false), (4, true), (8, false), (8, true)] {
        let what = if write {
            "REGION_WRITE"
        } else {
            "REGION_READ "
        };
        let rate = round_trips(&client, size, write);
        println!(
            "  {what} {size} B: {rate:>9.0} round trips/s ({:.1} us each)",
            1e6 / rate
        );
    }
    for write in [false, true] {
        let what = if write {
            "REGION_WRITE"
        } else {
            "REGION_READ "
        };
        println!(
            "  {what} 1 MiB: {:>7.0} MB/s",
            megabytes_per_second(&client, write) * (1u64 << 20) as f64 / 1e6
        );
    }

    let ram = memfd(BIG);
    client
        .dma_map(Iova(BASE), BIG, Prot::READ_WRITE, Some((ram.as_fd(), 0)))
        .expect("map 64 GiB");
    client.dirty_pages_start().expect("start dirty tracking");
    // Each repetition measures everything once, back to back, so a load change on the
    // machine hits the GET and its baseline alike; the ratio is the median of the
    // repetitions' ratios.
    let mut baseline = Baseline::new();
    let (mut reused, mut fresh) = (Vec::new(), Vec::new());
    let (mut gets, mut gets_new, mut copies, mut transfers) = (vec![], vec![], vec![], vec![]);
    let (mut ratios, mut ratios_new) = (vec![], vec![]);
    for _ in 0..REPS {
        let copy = baseline.memcpy();
        let transfer = baseline.transfer();
        let get = get_bitmap(&client, &container, &mut reused, true);
        let get_new = get_bitmap(&client, &container, &mut fresh, false);
        let sum = (copy + transfer).as_secs_f64();
        ratios.push(get.as_secs_f64() / sum);
        ratios_new.push(get_new.as_secs_f64() / sum);
        gets.push(get);
        gets_new.push(get_new);
        copies.push(copy);
        transfers.push(transfer);
    }
    let ratio = median_f64(ratios);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("GET_BITMAP of a 64 GiB mapping, all dirty (2 MiB bitmap), end to end:");
    println!("  GET_BITMAP, reused buffer  {:>8.3} ms", ms(median(gets)));
    println!(
        "  GET_BITMAP, new Vec        {:>8.3} ms",
        ms(median(gets_new))
    );
    println!(
        "  memcpy 2 MiB               {:>8.3} ms",
        ms(median(copies))
    );
    println!(
        "  socket transfer 2 MiB      {:>8.3} ms",
        ms(median(transfers))
    );
    println!(
        "  ratio GET (reused buffer) / (memcpy + transfer) = {ratio:.2} (target <= 2.00: {})",
        if ratio <= 2.0 { "met" } else { "MISSED" }
    );
    println!(
        "  ratio GET (new Vec) / (memcpy + transfer)       = {:.2}",
        median_f64(ratios_new)
    );

    drop(client);
    let end = server.join().expect("server thread");
    println!("server session: {end:?}");
}
