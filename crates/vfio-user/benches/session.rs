//! A client and a server (the test suite's dummy device) over a real socket pair, measured end
//! to end, with the numbers printed:
//!
//! * REGION_READ / REGION_WRITE round trips per second, 4- and 8-byte accesses;
//! * MB/s of 1 MiB REGION_READ / REGION_WRITE;
//! * GET_BITMAP of a 64 GiB mapping with every page dirty (a 2 MiB bitmap), client → server →
//!   client, beside a memcpy of 2 MiB plus one transfer of 2 MiB over a `UnixStream` pair,
//!   measured in the same run; the target is the GET within 2x of that sum.
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
const REPS: usize = 21;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn per_second(ops: u32, elapsed: Duration) -> f64 {
    f64::from(ops) / elapsed.as_secs_f64()
}

fn round_trips(client: &Client, size: usize, write: bool) -> f64 {
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for i in 0..SMALL_OPS {
        if write {
            buf[0] = i.to_le_bytes()[0];
            client.region_write(BAR, REG_SCRATCH, &buf).expect("region write");
        } else {
            client.region_read(BAR, REG_SCRATCH, &mut buf).expect("region read");
        }
    }
    per_second(SMALL_OPS, start.elapsed())
}

fn megabytes_per_second(client: &Client, write: bool) -> f64 {
    let mut buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    for _ in 0..MIB_OPS {
        if write {
            client.region_write(BAR, 1 << 20, &buf).expect("region write");
        } else {
            client.region_read(BAR, 1 << 20, &mut buf).expect("region read");
        }
    }
    per_second(MIB_OPS, start.elapsed())
}

/// Median time of a GET_BITMAP of the 64 GiB mapping, every page marked dirty before each.
fn get_bitmap(client: &Client, container: &Container) -> Duration {
    let samples = (0..REPS)
        .map(|_| {
            container.mark_dirty(Iova(BASE), BIG).expect("mark dirty");
            let start = Instant::now();
            let bitmap = client.dirty_pages_get(Iova(BASE), BIG).expect("GET_BITMAP");
            let elapsed = start.elapsed();
            assert_eq!(bitmap.len() * 8, BITMAP_BYTES);
            assert!(bitmap.iter().all(|&w| w == u64::MAX), "every page dirty");
            elapsed
        })
        .collect();
    median(samples)
}

/// Median time of a 2 MiB memcpy.
fn memcpy() -> Duration {
    let source = vec![0xa5a5_a5a5_a5a5_a5a5_u64; BITMAP_BYTES / 8];
    let mut copy = vec![0u64; BITMAP_BYTES / 8];
    let samples = (0..REPS)
        .map(|_| {
            let start = Instant::now();
            copy.copy_from_slice(black_box(&source));
            black_box(&copy);
            start.elapsed()
        })
        .collect();
    median(samples)
}

/// Median time of one 2 MiB transfer over a `UnixStream` pair: a writer thread sends it, this
/// thread reads it all.
fn socket_transfer() -> Duration {
    let (mut reader, mut writer) = UnixStream::pair().expect("socketpair");
    let (go, wait) = mpsc::channel::<()>();
    let sender = thread::spawn(move || {
        let data = vec![0x5au8; BITMAP_BYTES];
        while wait.recv().is_ok() {
            writer.write_all(&data).expect("write");
        }
    });
    let mut buf = vec![0u8; BITMAP_BYTES];
    let samples = (0..REPS)
        .map(|_| {
            let start = Instant::now();
            go.send(()).expect("go");
            reader.read_exact(&mut buf).expect("read");
            start.elapsed()
        })
        .collect();
    drop(go);
    sender.join().expect("writer thread");
    median(samples)
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

    println!("vfio-user client <-> server over a UnixStream pair (median of runs)");
    for (size, write) in [(4, false), (4, true), (8, false), (8, true)] {
        let what = if write { "REGION_WRITE" } else { "REGION_READ " };
        let rate = round_trips(&client, size, write);
        println!(
            "  {what} {size} B: {rate:>9.0} round trips/s ({:.1} us each)",
            1e6 / rate
        );
    }
    for write in [false, true] {
        let what = if write { "REGION_WRITE" } else { "REGION_READ " };
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
    let get = get_bitmap(&client, &container);
    let copy = memcpy();
    let transfer = socket_transfer();
    let baseline = copy + transfer;
    let ratio = get.as_secs_f64() / baseline.as_secs_f64();
    println!("GET_BITMAP of a 64 GiB mapping, all dirty (2 MiB bitmap), end to end:");
    println!("  GET_BITMAP            {:>8.3} ms", get.as_secs_f64() * 1e3);
    println!("  memcpy 2 MiB          {:>8.3} ms", copy.as_secs_f64() * 1e3);
    println!("  socket transfer 2 MiB {:>8.3} ms", transfer.as_secs_f64() * 1e3);
    println!(
        "  ratio GET / (memcpy + transfer) = {ratio:.2} (target <= 2.00: {})",
        if ratio <= 2.0 { "met" } else { "MISSED" }
    );

    drop(client);
    let end = server.join().expect("server thread");
    println!("server session: {end:?}");
}
