//! Times the hot operations on a 32 MiB bitmap (2^28 pages: 1 TiB of 4 KiB pages) against a
//! 32 MiB `memcpy`, and prints each ratio next to the target the crate promises:
//! read-and-clear within 2x of the copy when every page is dirty, within 1x when none is.
//!
//! A plain `main`, not criterion. Each operation runs `REPS` times with its setup outside
//! the timed part, and so does the copy; the medians are printed with their ratio.
//!
//! - **warm**: the copies run back to back, and so do the operations, each right after a
//!   setup that touches its buffers (bitmap and `out`), as when one sync follows another;
//! - **cold**: before each copy and each operation, a buffer larger than the last-level
//!   cache is written, so both start from memory, as with a terabyte guest whose bitmap
//!   was last read a whole pass ago. Each operation runs right after a copy, so that both
//!   see the same load on the machine, and the ratio is the median of the pairs' ratios.
//!
//! Run it with `cargo bench -p vfmig-dirty --bench ratio`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use vfmig_dirty::{DirtyBitmap, PageSize, words_for};

/// 2^28 pages: a 32 MiB bitmap.
const PAGES: u64 = 1 << 28;
/// Timed runs of each operation, and of the copy it is compared with.
const REPS: usize = 31;
/// Bytes written to push everything else out of the caches, more than the 260 MiB of
/// last-level cache the development machine reports.
const EVICT_BYTES: usize = 512 << 20;

/// The median of some samples.
fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    samples[samples.len() / 2]
}

/// Times `op` alone.
fn timed(op: impl FnOnce()) -> Duration {
    let start = Instant::now();
    op();
    start.elapsed()
}

/// Whether a measurement starts with its buffers in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    Warm,
    Cold,
}

/// The 32 MiB copy every operation is compared with, and a buffer to flush caches with.
struct Baseline {
    source: Vec<u64>,
    copy: Vec<u64>,
    evict: Vec<u8>,
    pass: u8,
}

impl Baseline {
    fn new(words: usize) -> Baseline {
        Baseline {
            source: vec![0x5555_5555_5555_5555_u64; words],
            copy: vec![0u64; words],
            evict: vec![0u8; EVICT_BYTES],
            pass: 0,
        }
    }

    /// Writes the eviction buffer, pushing everything else out of the caches.
    fn evict(&mut self) {
        self.pass = self.pass.wrapping_add(1);
        self.evict.fill(self.pass);
        black_box(&self.evict);
    }

    /// Times one copy, from a warm or a cold cache.
    fn memcpy(&mut self, cache: Cache) -> Duration {
        match cache {
            Cache::Warm => self.copy.copy_from_slice(black_box(&self.source)),
            Cache::Cold => self.evict(),
        }
        let (source, copy) = (&self.source, &mut self.copy);
        let time = timed(|| copy.copy_from_slice(black_box(source)));
        black_box(&self.copy);
        time
    }
}

/// One line of the report.
struct Measurement {
    op: Duration,
    memcpy: Duration,
    ratio: f64,
}

/// Times `run` `REPS` times against `REPS` copies. `run` does its own setup, which brings
/// the operation's buffers into the cache, then calls its argument (which evicts them
/// again when `cache` is cold), and returns the time of the part to measure.
///
/// Warm: the copies run back to back, then the operations, each in its own steady state;
/// the ratio is of the medians. Cold: each operation runs right after a copy, both from an
/// evicted cache, so both see the same load on the machine; the ratio is the median of the
/// per-pair ratios.
fn measure(
    baseline: &mut Baseline,
    cache: Cache,
    mut run: impl FnMut(&mut dyn FnMut()) -> Duration,
) -> Measurement {
    let (mut ops, mut copies, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    match cache {
        Cache::Warm => {
            copies.extend((0..REPS).map(|_| baseline.memcpy(cache)));
            ops.extend((0..REPS).map(|_| run(&mut || {})));
        }
        Cache::Cold => {
            for _ in 0..REPS {
                let copy = baseline.memcpy(cache);
                let op = run(&mut || baseline.evict());
                ratios.push(op.as_secs_f64() / copy.as_secs_f64());
                ops.push(op);
                copies.push(copy);
            }
        }
    }
    let (op, memcpy) = (median(ops), median(copies));
    let ratio = if ratios.is_empty() {
        op.as_secs_f64() / memcpy.as_secs_f64()
    } else {
        median(ratios)
    };
    Measurement { op, memcpy, ratio }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Prints one operation's line; returns whether it met its target, if it has one.
fn report(name: &str, measured: &Measurement, target: Option<f64>) -> bool {
    let Measurement { op, memcpy, ratio } = *measured;
    let verdict = match target {
        Some(target) if ratio <= target => format!(" (target <= {target:.1}: met)"),
        Some(target) => format!(" (target <= {target:.1}: MISSED)"),
        None => String::new(),
    };
    println!(
        "{name}: {:.2} ms, memcpy: {:.2} ms, ratio {ratio:.2}{verdict}",
        millis(op),
        millis(memcpy)
    );
    target.is_none_or(|target| ratio <= target)
}

/// A bitmap of `PAGES` pages with about one page in a hundred dirty, spread at random.
fn one_percent_dirty() -> DirtyBitmap {
    let bitmap = DirtyBitmap::new(PAGES, PageSize::SIZE_4K).expect("within MAX_PAGES");
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

fn main() {
    let words = usize::try_from(words_for(PAGES)).expect("32 MiB fits a usize");
    let mut baseline = Baseline::new(words);
    let bitmap = DirtyBitmap::new(PAGES, PageSize::SIZE_4K).expect("within MAX_PAGES");
    let mut out = vec![0u64; words + 1];
    let pattern = one_percent_dirty();

    let mut met = true;
    for cache in [Cache::Warm, Cache::Cold] {
        let tag = if cache == Cache::Warm { "warm" } else { "cold" };
        let all_dirty = measure(&mut baseline, cache, |evict| {
            bitmap.set_all();
            out.fill(0);
            evict();
            timed(|| {
                bitmap
                    .read_and_clear(0, PAGES, &mut out[..words], 0)
                    .expect("valid")
            })
        });
        met &= report(
            &format!("[{tag}] read_and_clear all-dirty"),
            &all_dirty,
            Some(2.0),
        );

        let all_clean = measure(&mut baseline, cache, |evict| {
            // Loads every word; `out` is left alone, as a clean read leaves it.
            black_box(bitmap.is_clean());
            evict();
            timed(|| {
                bitmap
                    .read_and_clear(0, PAGES, &mut out[..words], 0)
                    .expect("valid")
            })
        });
        met &= report(
            &format!("[{tag}] read_and_clear all-clean"),
            &all_clean,
            Some(1.0),
        );
    }

    let cache = Cache::Warm;
    let sparse = measure(&mut baseline, cache, |_| {
        bitmap.or_from(&pattern).expect("same shape");
        out.fill(0);
        timed(|| {
            bitmap
                .read_and_clear(0, PAGES, &mut out[..words], 0)
                .expect("valid")
        })
    });
    report("[warm] read_and_clear 1% dirty", &sparse, None);

    let unaligned = measure(&mut baseline, cache, |_| {
        bitmap.set_all();
        out.fill(0);
        timed(|| {
            bitmap
                .read_and_clear(0, PAGES, &mut out, 13)
                .expect("valid")
        })
    });
    report(
        "[warm] read_and_clear all-dirty, out_bit_offset 13",
        &unaligned,
        None,
    );

    let peek = measure(&mut baseline, cache, |_| {
        bitmap.set_all();
        out.fill(0);
        timed(|| bitmap.peek(0, PAGES, &mut out[..words], 0).expect("valid"))
    });
    report("[warm] peek all-dirty", &peek, None);

    let runs = measure(&mut baseline, cache, |_| {
        black_box(pattern.count()); // loads every word
        timed(|| _ = black_box(pattern.runs().count()))
    });
    report("[warm] runs() 1% dirty", &runs, None);

    bitmap.clear_all();
    let marks: u32 = 1 << 20;
    let mark = measure(&mut baseline, cache, |_| {
        timed(|| {
            for page in (0..u64::from(marks)).map(|i| (i * 2_654_435_761) % PAGES) {
                bitmap.mark_page(page).expect("in range");
            }
        })
    });
    println!(
        "mark_page, one thread: {:.1} ns per mark",
        mark.op.as_secs_f64() * 1e9 / f64::from(marks)
    );
    black_box(&out);
    println!(
        "{}",
        if met {
            "all targets met"
        } else {
            "SOME TARGETS MISSED"
        }
    );
}
