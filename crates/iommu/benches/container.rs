//! Container benchmarks, printed as medians and ratios measured in one run:
//!
//! * GET_BITMAP over 1 TiB of mappings (16 sparse memfd mappings of 64 GiB): all dirty, 1 %
//!   dirty, clean, and with an `AllMapped` device; each beside a memcpy of the 32 MiB bitmap
//!   (target: all dirty within 2x of that memcpy);
//! * pin + 4 KiB write + unpin, and a 4 KiB `write`, per second.
//!
//! `cargo bench -p vfmig-iommu --bench container`

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use vfmig_dirty::bitmap_bytes;
use vfmig_iommu::{
    Backing, BitmapRequest, CONTAINER_PAGE_SIZE, Container, DirtyScope, GetBitmapRange, Iova, Prot,
};

const MAPPING: u64 = 64 << 30;
const MAPPINGS: u64 = 16;
const TOTAL: u64 = MAPPING * MAPPINGS;
const REPS: usize = 15;

/// A memfd sealed to its length, as the VMM sends guest RAM: its mappings take the direct path.
fn memfd(size: u64) -> OwnedFd {
    let size = usize::try_from(size).expect("fits");
    vfmig_memory::memfd_sealed(c"vfmig-bench", size)
        .expect("memfd")
        .into()
}

/// Median of `REPS` timings of `f`, each after an untimed `setup`; both get the buffer.
fn median(
    buf: &mut Vec<u64>,
    mut setup: impl FnMut(&mut Vec<u64>),
    mut f: impl FnMut(&mut Vec<u64>),
) -> Duration {
    let mut t: Vec<Duration> = (0..REPS)
        .map(|_| {
            setup(buf);
            let start = Instant::now();
            f(buf);
            start.elapsed()
        })
        .collect();
    t.sort();
    t[REPS / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let words =
        usize::try_from(bitmap_bytes(TOTAL / CONTAINER_PAGE_SIZE.bytes()) / 8).expect("fits");
    let src = vec![0x5555_5555_5555_5555u64; words];
    let mut dst = vec![0u64; words];
    let memcpy = median(&mut dst, |_| {}, |dst| dst.copy_from_slice(black_box(&src)));
    black_box(&dst);

    let c = Container::default();
    for i in 0..MAPPINGS {
        c.map(
            Iova(i * MAPPING),
            MAPPING,
            Prot::READ_WRITE,
            Backing::Fd {
                fd: memfd(MAPPING),
                offset: 0,
            },
        )
        .expect("map");
    }
    c.start_dirty_tracking().expect("start");
    let range = GetBitmapRange {
        iova: 0,
        size: TOTAL,
        bitmap: BitmapRequest {
            pgsize: CONTAINER_PAGE_SIZE,
            size: bitmap_bytes(TOTAL / CONTAINER_PAGE_SIZE.bytes()),
        },
    };
    let mut out = vec![0u64; words];
    let get = |out: &mut Vec<u64>| c.get_dirty_bitmap(&range, out).expect("get");

    let all = median(
        &mut out,
        |_| {
            for i in 0..MAPPINGS {
                c.mark_dirty(Iova(i * MAPPING), MAPPING).expect("mark");
            }
        },
        get,
    );
    let mut seed = 0x1234_5678_9abc_def0u64;
    let one_percent = median(
        &mut out,
        |out| {
            out.fill(0);
            for _ in 0..TOTAL / CONTAINER_PAGE_SIZE.bytes() / 100 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                c.mark_dirty(
                    Iova(
                        (seed % (TOTAL / CONTAINER_PAGE_SIZE.bytes()))
                            * CONTAINER_PAGE_SIZE.bytes(),
                    ),
                    1,
                )
                .expect("mark");
            }
        },
        get,
    );
    let clean = median(&mut out, |out| out.fill(0), get);
    let dev = c.attach_device(DirtyScope::AllMapped, None);
    let all_mapped = median(&mut out, |out| out.fill(0), get);
    c.detach_device(dev).expect("detach");

    println!("GET_BITMAP over 1 TiB (16 x 64 GiB mappings), bitmap 32 MiB; medians of {REPS}");
    println!("  memcpy of 32 MiB                 {:8.2} ms", ms(memcpy));
    for (name, d, target) in [
        ("all dirty", all, Some(2.0)),
        ("1 % dirty", one_percent, None),
        ("clean", clean, None),
        ("AllMapped device", all_mapped, None),
    ] {
        let ratio = d.as_secs_f64() / memcpy.as_secs_f64();
        let target = target.map_or(String::new(), |t| format!(" (target <= {t:.1})"));
        println!(
            "  GET {name:<28} {:8.2} ms   ratio to memcpy {ratio:.2}{target}",
            ms(d)
        );
    }

    // Device-side hot paths, over 4 MiB of a 1 GiB mapping (pages faulted in by a first pass, so
    // first-touch page faults are not measured).
    let c = Container::default();
    c.map(
        Iova(0),
        1 << 30,
        Prot::READ_WRITE,
        Backing::Fd {
            fd: memfd(1 << 30),
            offset: 0,
        },
    )
    .expect("map");
    c.start_dirty_tracking().expect("start");
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let page = [0xa5u8; 4096];
    let n = 200_000u64;
    for i in 0..1024 {
        c.write(Iova(i * CONTAINER_PAGE_SIZE.bytes()), &page)
            .expect("fault in");
    }
    let start = Instant::now();
    for i in 0..n {
        let pin = c
            .pin(
                dev,
                Iova((i % 1024) * CONTAINER_PAGE_SIZE.bytes()),
                CONTAINER_PAGE_SIZE.bytes(),
                Prot::READ_WRITE,
            )
            .expect("pin");
        pin.write_at(0, &page).expect("write");
    }
    let pin_rate = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..n {
        c.write(Iova((i % 1024) * CONTAINER_PAGE_SIZE.bytes()), &page)
            .expect("write");
    }
    let write_rate = n as f64 / start.elapsed().as_secs_f64();
    println!("Device side (1 GiB mapping, tracking on)");
    println!(
        "  pin + 4 KiB write + unpin        {:8.2} M/s",
        pin_rate / 1e6
    );
    println!(
        "  4 KiB write (marks dirty)        {:8.2} M/s",
        write_rate / 1e6
    );
}
