//! Races between markers and `read_and_clear`: whatever the interleaving, the union of
//! everything read, plus a final read, is exactly the union of everything marked.

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use proptest::prelude::*;

use crate::{DirtyBitmap, PageSize, words_for};

/// SplitMix64: a small seeded generator, so a failure can be replayed from its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`; `bound` must not be 0.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// One bool per page, packed like the bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageSet(Vec<u64>);

impl PageSet {
    fn new(pages: u64) -> PageSet {
        PageSet(vec![0; index(words_for(pages))])
    }

    fn insert_range(&mut self, first: u64, pages: u64) {
        for page in first..first + pages {
            self.0[index(page / 64)] |= 1 << (page % 64);
        }
    }

    fn union(&mut self, other: &PageSet) {
        for (word, theirs) in self.0.iter_mut().zip(&other.0) {
            *word |= theirs;
        }
    }
}

fn index(value: u64) -> usize {
    usize::try_from(value).expect("test sizes fit a usize")
}

/// The shape of one race.
#[derive(Debug, Clone, Copy)]
struct Race {
    seed: u64,
    pages: u64,
    chunk_shift: u32,
    markers: u64,
    marks_per_marker: u64,
}

/// Read passes the reader makes at least, so that it races the markers even when the
/// scheduler runs them first.
const MIN_READER_PASSES: u32 = 20;

/// What one marker does: random marks of pages, page ranges and byte ranges, and now and
/// then an `or_from`; returns the pages it marked.
fn mark_randomly(bitmap: &DirtyBitmap, race: Race, marker: u64) -> PageSet {
    let mut rng = SplitMix(race.seed ^ marker.wrapping_mul(0x1234_5678_9abc_def1));
    let mut marked = PageSet::new(race.pages);
    for _ in 0..race.marks_per_marker {
        let first = rng.below(race.pages);
        let pages = 1 + rng.below(200.min(race.pages - first));
        match rng.below(100) {
            0..40 => {
                bitmap.mark_page(first).unwrap();
                marked.insert_range(first, 1);
            }
            40..80 => {
                bitmap.mark_pages(first, pages).unwrap();
                marked.insert_range(first, pages);
            }
            80..99 => {
                // From somewhere in page `first` to somewhere in its last page.
                let offset = first * 4096 + rng.below(4096);
                let end = (first + pages - 1) * 4096 + 1 + rng.below(4096);
                let len = end.saturating_sub(offset).max(1);
                bitmap.mark_bytes(offset, len).unwrap();
                marked.insert_range(first, (offset + len - 1) / 4096 + 1 - first);
            }
            _ => {
                let other = DirtyBitmap::new(race.pages, PageSize::SIZE_4K).unwrap();
                other.mark_pages(first, pages).unwrap();
                bitmap.or_from(&other).unwrap();
                marked.insert_range(first, pages);
            }
        }
    }
    marked
}

/// What the reader does until every marker is done: read-and-clear random ranges into
/// fresh buffers at random bit offsets; returns the pages it read.
fn read_randomly(bitmap: &DirtyBitmap, race: Race, markers_done: &AtomicUsize) -> PageSet {
    let mut rng = SplitMix(!race.seed);
    let mut seen = PageSet::new(race.pages);
    let markers = index(race.markers);
    let mut passes = 0;
    while passes < MIN_READER_PASSES || markers_done.load(Ordering::Acquire) < markers {
        passes += 1;
        let first = rng.below(race.pages);
        let pages = 1 + rng.below((race.pages - first).min(3000));
        let offset = rng.below(130);
        let mut out = vec![0u64; index(words_for(offset + pages))];
        bitmap
            .read_and_clear(first, pages, &mut out, offset)
            .unwrap();
        for (word_index, &word) in (0u64..).zip(&out) {
            let mut bits = word;
            while bits != 0 {
                let bit = 64 * word_index + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                assert!(
                    (offset..offset + pages).contains(&bit),
                    "bit {bit} outside the target range {offset}+{pages}"
                );
                seen.insert_range(first + bit - offset, 1);
            }
        }
    }
    seen
}

/// Runs `race.markers` markers against one reader, then checks that what was read, plus a
/// final read of the whole bitmap, is exactly what was marked.
fn run_race(race: Race) {
    let bitmap =
        DirtyBitmap::with_chunk_shift(race.pages, PageSize::SIZE_4K, race.chunk_shift).unwrap();
    let markers_done = AtomicUsize::new(0);
    let start = Barrier::new(index(race.markers) + 1);
    let (marked, mut seen) = thread::scope(|scope| {
        let reader = scope.spawn(|| {
            start.wait();
            read_randomly(&bitmap, race, &markers_done)
        });
        let markers: Vec<_> = (0..race.markers)
            .map(|marker| {
                let (bitmap, markers_done, start) = (&bitmap, &markers_done, &start);
                scope.spawn(move || {
                    start.wait();
                    let marked = mark_randomly(bitmap, race, marker);
                    markers_done.fetch_add(1, Ordering::Release);
                    marked
                })
            })
            .collect();
        let mut marked = PageSet::new(race.pages);
        for marker in markers {
            marked.union(&marker.join().unwrap());
        }
        (marked, reader.join().unwrap())
    });
    let mut last = PageSet::new(race.pages);
    bitmap
        .read_and_clear(0, race.pages, &mut last.0, 0)
        .unwrap();
    seen.union(&last);
    assert!(bitmap.is_clean());
    let lost = marked
        .0
        .iter()
        .zip(&seen.0)
        .filter(|(marked, seen)| *marked & !*seen != 0);
    let invented = marked
        .0
        .iter()
        .zip(&seen.0)
        .filter(|(marked, seen)| *seen & !*marked != 0);
    assert_eq!(lost.count(), 0, "words with lost bits, {race:?}");
    assert_eq!(invented.count(), 0, "words with invented bits, {race:?}");
}

#[test]
fn marks_racing_read_and_clear_with_one_word_chunks_are_never_lost_or_invented() {
    run_race(Race {
        seed: 1,
        pages: 20_000,
        chunk_shift: 0,
        markers: 3,
        marks_per_marker: 20_000,
    });
}

#[test]
fn marks_racing_read_and_clear_across_full_size_chunks_are_never_lost_or_invented() {
    // Three 4096-word chunks and a bit: every read of the default size crosses one.
    run_race(Race {
        seed: 2,
        pages: 3 * 4096 * 64 + 100,
        chunk_shift: 12,
        markers: 2,
        marks_per_marker: 20_000,
    });
}

/// Markers that interleave on the same words each mark every page of their own exactly
/// once, while the reader sweeps: then every page must be read exactly once. Unlike the
/// union check of `run_race`, a lost mark cannot hide behind a later mark of the same page,
/// and a bit read twice shows up.
fn race_marking_each_page_once(pages: u64, markers: u64, chunk_shift: u32, seed: u64) {
    let bitmap = DirtyBitmap::with_chunk_shift(pages, PageSize::SIZE_4K, chunk_shift).unwrap();
    let markers_done = AtomicUsize::new(0);
    let start = Barrier::new(index(markers) + 1);
    let mut reads = thread::scope(|scope| {
        let reader = scope.spawn(|| {
            start.wait();
            let mut rng = SplitMix(seed);
            let mut reads = vec![0u32; index(pages)];
            let mut passes = 0;
            while passes < MIN_READER_PASSES
                || markers_done.load(Ordering::Acquire) < index(markers)
            {
                passes += 1;
                let first = rng.below(pages / 2);
                let count = pages / 2 + rng.below(pages / 2 - first + 1);
                let mut out = vec![0u64; index(words_for(count + 63))];
                let offset = rng.below(64);
                bitmap
                    .read_and_clear(first, count, &mut out, offset)
                    .unwrap();
                count_bits(&out, offset, first, &mut reads);
            }
            reads
        });
        for marker in 0..markers {
            let (bitmap, markers_done, start) = (&bitmap, &markers_done, &start);
            scope.spawn(move || {
                start.wait();
                for page in (marker..pages).step_by(index(markers)) {
                    match page % 3 {
                        0 => bitmap.mark_page(page),
                        1 => bitmap.mark_pages(page, 1),
                        _ => bitmap.mark_bytes(page * 4096 + 4095, 1),
                    }
                    .unwrap();
                }
                markers_done.fetch_add(1, Ordering::Release);
            });
        }
        reader.join().unwrap()
    });
    let mut last = vec![0u64; index(words_for(pages))];
    bitmap.read_and_clear(0, pages, &mut last, 0).unwrap();
    count_bits(&last, 0, 0, &mut reads);
    let wrong: Vec<_> = (0u64..)
        .zip(&reads)
        .filter(|&(_, &reads)| reads != 1)
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "(page, times read) not read exactly once: {wrong:?}"
    );
}

/// Adds one to `reads[first + bit - offset]` for every bit set in `out`.
fn count_bits(out: &[u64], offset: u64, first: u64, reads: &mut [u32]) {
    for (word_index, &word) in (0u64..).zip(out) {
        let mut bits = word;
        while bits != 0 {
            let bit = 64 * word_index + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            reads[index(first + bit - offset)] += 1;
        }
    }
}

#[test]
fn each_page_marked_once_while_reading_is_read_exactly_once() {
    race_marking_each_page_once(1 << 18, 2, 0, 4);
}

#[test]
fn each_page_marked_once_across_full_size_chunks_is_read_exactly_once() {
    race_marking_each_page_once(3 << 18, 2, 12, 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn no_mark_is_lost_or_invented_for_any_seed(
        seed in any::<u64>(),
        pages in 1u64..5000,
        chunk_shift in 0u32..=3,
        markers in 1u64..=3,
    ) {
        run_race(Race { seed, pages, chunk_shift, markers, marks_per_marker: 3000 });
    }
}
