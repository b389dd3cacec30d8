//! Criterion benchmarks of the hot paths of a dirty sync over a 32 MiB bitmap (2^28 pages:
//! 1 TiB of 4 KiB pages), next to a 32 MiB `memcpy` as the baseline:
//! read-and-clear with every page clean, every page dirty and 1% dirty, and run iteration
//! at 1% dirty. `benches/ratio.rs` prints the same comparisons as ratios.
//!
//! Where a benchmark must dirty the bitmap again before each run, it uses `iter_custom` and
//! times only the read, not the setup.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use vfmig_dirty::{DirtyBitmap, PageSize, words_for};

/// 2^28 pages: a 32 MiB bitmap.
const PAGES: u64 = 1 << 28;

/// The words of a `PAGES`-page bitmap.
fn words() -> usize {
    usize::try_from(words_for(PAGES)).expect("32 MiB fits a usize")
}

fn bitmap() -> DirtyBitmap {
    DirtyBitmap::new(PAGES, PageSize::SIZE_4K).expect("within MAX_PAGES")
}

/// A bitmap with about one page in a hundred dirty, spread at random.
fn one_percent_dirty() -> DirtyBitmap {
    let bitmap = bitmap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..PAGES / 100 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bitmap.mark_page(state % PAGES).expect("in range");
    }
    bitmap
}

/// Times `iters` read-and-clears of the whole bitmap, calling `refill` before each one
/// outside the timed part.
fn timed_reads(
    iters: u64,
    bitmap: &DirtyBitmap,
    out: &mut [u64],
    mut refill: impl FnMut(&DirtyBitmap),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        refill(bitmap);
        out.fill(0);
        let start = Instant::now();
        bitmap
            .read_and_clear(0, PAGES, out, 0)
            .expect("valid range");
        total += start.elapsed();
        black_box(&*out);
    }
    total
}

fn dirty_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("32MiB");
    group.throughput(Throughput::Bytes(32 << 20));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let source = vec![0x5555_5555_5555_5555_u64; words()];
    let mut copy = vec![0u64; words()];
    group.bench_function("memcpy", |b| {
        b.iter(|| copy.copy_from_slice(black_box(&source)))
    });
    drop((source, copy));

    let bitmap = bitmap();
    let mut out = vec![0u64; words()];
    // A new bitmap's memory may still be the kernel's shared zero page, which reads from
    // the cache whatever its size; write it once so that it is real memory.
    bitmap.set_all();
    bitmap.clear_all();
    group.bench_function("read_and_clear/all_clean", |b| {
        b.iter(|| {
            bitmap
                .read_and_clear(0, PAGES, &mut out, 0)
                .expect("valid range")
        });
    });
    group.bench_function("read_and_clear/all_dirty", |b| {
        b.iter_custom(|iters| timed_reads(iters, &bitmap, &mut out, DirtyBitmap::set_all));
    });
    let pattern = one_percent_dirty();
    group.bench_function("read_and_clear/1pct_dirty", |b| {
        b.iter_custom(|iters| {
            timed_reads(iters, &bitmap, &mut out, |bitmap| {
                bitmap.or_from(&pattern).expect("same shape");
            })
        });
    });
    group.bench_function("runs/1pct_dirty", |b| {
        b.iter(|| black_box(pattern.runs().count()))
    });
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, without the undocumented
// public function the first one generates.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    dirty_sync(&mut criterion);
    criterion.final_summary();
}
