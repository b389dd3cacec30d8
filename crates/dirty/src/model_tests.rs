//! Property tests of [`DirtyBitmap`] against a plain `Vec<bool>`, one bool per page.
//!
//! Random sequences of operations, with unaligned and out-of-range arguments, run on both;
//! every result, every error and every count must agree, and at the end so must the runs
//! and the whole bitmap. Small chunks (1 to 4 words) make ranges cross chunk boundaries all
//! the time; larger ones let the 8-word block loops run.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::{DirtyBitmap, DirtyError, DirtyRun, PageSize};

/// `value` as an index; the test sizes always fit.
fn idx(value: u64) -> usize {
    usize::try_from(value).expect("test sizes fit a usize")
}

/// One operation of a test sequence.
#[derive(Debug, Clone)]
enum Op {
    MarkPage(u64),
    MarkPages {
        first: u64,
        pages: u64,
    },
    MarkBytes {
        offset: u64,
        len: u64,
    },
    Read(Read),
    SetAll,
    ClearAll,
    OrFrom {
        ranges: Vec<(u64, u64)>,
        same_shape: bool,
    },
    CountRange {
        first: u64,
        pages: u64,
    },
    RunsIn {
        first: u64,
        pages: u64,
    },
}

/// A `read_and_clear` (`clear`) or `peek` into a buffer of `out_words` words that all start
/// as `fill`.
#[derive(Debug, Clone)]
struct Read {
    clear: bool,
    first: u64,
    pages: u64,
    out_words: usize,
    out_bit_offset: u64,
    fill: u64,
}

/// The model: one bool per page.
#[derive(Debug, Clone)]
struct Model(Vec<bool>);

impl Model {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn check_range(&self, first: u64, pages: u64) -> Result<(), DirtyError> {
        match first.checked_add(pages) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(DirtyError::RangeOutOfBounds {
                first,
                pages,
                len: self.len(),
            }),
        }
    }

    fn pages(first: u64, pages: u64) -> std::ops::Range<usize> {
        idx(first)..idx(first + pages)
    }

    fn mark_pages(&mut self, first: u64, pages: u64) -> Result<(), DirtyError> {
        self.check_range(first, pages)?;
        self.0[Model::pages(first, pages)].fill(true);
        Ok(())
    }

    fn mark_bytes(&mut self, offset: u64, len: u64) -> Result<(), DirtyError> {
        let covered = self.len() * PageSize::SIZE_4K.bytes();
        match offset.checked_add(len) {
            Some(end) if end <= covered => {
                if len > 0 {
                    let first = offset / PageSize::SIZE_4K.bytes();
                    self.mark_pages(first, (end - 1) / PageSize::SIZE_4K.bytes() + 1 - first)?;
                }
                Ok(())
            }
            _ => Err(DirtyError::ByteRangeOutOfBounds {
                offset,
                len,
                covered,
            }),
        }
    }

    /// The buffer a read should leave, or its error.
    fn read(&mut self, read: &Read) -> Result<Vec<u64>, DirtyError> {
        self.check_range(read.first, read.pages)?;
        let mut out = vec![read.fill; read.out_words];
        if read.pages == 0 {
            return Ok(out);
        }
        let needed_words = (read.out_bit_offset + read.pages).div_ceil(64);
        if needed_words > read.out_words as u64 {
            return Err(DirtyError::OutputTooSmall {
                needed_words,
                got_words: read.out_words as u64,
            });
        }
        for k in 0..read.pages {
            let page = idx(read.first + k);
            if self.0[page] {
                let bit = read.out_bit_offset + k;
                out[idx(bit / 64)] |= 1 << (bit % 64);
                if read.clear {
                    self.0[page] = false;
                }
            }
        }
        Ok(out)
    }

    fn count_range(&self, first: u64, pages: u64) -> Result<u64, DirtyError> {
        self.check_range(first, pages)?;
        Ok(self.0[Model::pages(first, pages)]
            .iter()
            .filter(|&&dirty| dirty)
            .count() as u64)
    }

    fn runs_in(&self, first: u64, pages: u64) -> Result<Vec<DirtyRun>, DirtyError> {
        self.check_range(first, pages)?;
        let mut runs: Vec<DirtyRun> = Vec::new();
        for page in first..first + pages {
            if !self.0[idx(page)] {
                continue;
            }
            match runs.last_mut() {
                Some(run) if run.end() == page => run.pages += 1,
                _ => runs.push(DirtyRun {
                    first: page,
                    pages: 1,
                }),
            }
        }
        Ok(runs)
    }
}

/// A page number or count around a bitmap of `pages` pages, sometimes past its end.
fn around(pages: u64) -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..=pages, 1 => 0..=pages + 70]
}

fn read(pages: u64, clear: bool) -> impl Strategy<Value = Op> {
    (
        around(pages),
        around(pages),
        0usize..=14,
        0u64..=200,
        prop_oneof![Just(0), any::<u64>()],
    )
        .prop_map(move |(first, count, out_words, out_bit_offset, fill)| {
            Op::Read(Read {
                clear,
                first,
                pages: count,
                out_words,
                out_bit_offset,
                fill,
            })
        })
}

fn op(pages: u64) -> impl Strategy<Value = Op> {
    let bytes = (pages + 2) * PageSize::SIZE_4K.bytes();
    prop_oneof![
        3 => around(pages).prop_map(Op::MarkPage),
        4 => (around(pages), around(pages))
            .prop_map(|(first, pages)| Op::MarkPages { first, pages }),
        3 => (0..=bytes, prop_oneof![0..=2 * PageSize::SIZE_4K.bytes(), 0..=bytes])
            .prop_map(|(offset, len)| Op::MarkBytes { offset, len }),
        4 => read(pages, true),
        2 => read(pages, false),
        1 => Just(Op::SetAll),
        1 => Just(Op::ClearAll),
        1 => (vec((0..pages.max(1), 0u64..100), 0..4), prop::bool::weighted(0.9))
            .prop_map(|(ranges, same_shape)| Op::OrFrom { ranges, same_shape }),
        1 => (around(pages), around(pages))
            .prop_map(|(first, pages)| Op::CountRange { first, pages }),
        1 => (around(pages), around(pages))
            .prop_map(|(first, pages)| Op::RunsIn { first, pages }),
    ]
}

/// Runs `op` on both and checks that they agree.
fn apply(bitmap: &DirtyBitmap, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::MarkPage(page) => prop_assert_eq!(bitmap.mark_page(*page), model.mark_pages(*page, 1)),
        Op::MarkPages { first, pages } => {
            prop_assert_eq!(
                bitmap.mark_pages(*first, *pages),
                model.mark_pages(*first, *pages)
            );
        }
        Op::MarkBytes { offset, len } => {
            prop_assert_eq!(
                bitmap.mark_bytes(*offset, *len),
                model.mark_bytes(*offset, *len)
            );
        }
        Op::Read(read) => {
            let mut out = vec![read.fill; read.out_words];
            let got = if read.clear {
                bitmap.read_and_clear(read.first, read.pages, &mut out, read.out_bit_offset)
            } else {
                bitmap.peek(read.first, read.pages, &mut out, read.out_bit_offset)
            };
            match model.read(read) {
                Ok(expected) => {
                    prop_assert_eq!(got, Ok(()));
                    prop_assert_eq!(out, expected);
                }
                Err(error) => {
                    prop_assert_eq!(got, Err(error));
                    prop_assert_eq!(out, vec![read.fill; read.out_words]);
                }
            }
        }
        Op::SetAll => {
            bitmap.set_all();
            model.0.fill(true);
        }
        Op::ClearAll => {
            bitmap.clear_all();
            model.0.fill(false);
        }
        Op::OrFrom { ranges, same_shape } => {
            let other_pages = if *same_shape {
                model.len()
            } else {
                model.len() + 1
            };
            let other = DirtyBitmap::with_chunk_shift(other_pages, PageSize::SIZE_4K, 0)?;
            let mut other_model = Model(vec![false; idx(other_pages)]);
            for &(first, pages) in ranges {
                let pages = pages.min(other_pages.saturating_sub(first));
                prop_assert_eq!(
                    other.mark_pages(first, pages),
                    other_model.mark_pages(first, pages)
                );
            }
            if *same_shape {
                prop_assert_eq!(bitmap.or_from(&other), Ok(()));
                for (dirty, theirs) in model.0.iter_mut().zip(other_model.0) {
                    *dirty |= theirs;
                }
            } else {
                prop_assert_eq!(
                    bitmap.or_from(&other),
                    Err(DirtyError::PageCountMismatch {
                        ours: model.len(),
                        theirs: other_pages
                    })
                );
            }
        }
        Op::CountRange { first, pages } => {
            prop_assert_eq!(
                bitmap.count_range(*first, *pages),
                model.count_range(*first, *pages)
            );
        }
        Op::RunsIn { first, pages } => {
            let got = bitmap
                .runs_in(*first, *pages)
                .map(Iterator::collect::<Vec<_>>);
            prop_assert_eq!(got, model.runs_in(*first, *pages));
        }
    }
    Ok(())
}

/// A bitmap size, a chunk size and a sequence of operations.
fn scenario() -> impl Strategy<Value = (u64, u32, Vec<Op>)> {
    // Chunks of 1 to 4 words make ranges cross chunk boundaries; chunks of 16 words and
    // more let whole 8-word blocks reach the block loops of read_and_clear.
    (
        prop_oneof![0u64..=700, 0u64..=2000],
        prop_oneof![0u32..=2, 4u32..=12],
    )
        .prop_flat_map(|(pages, chunk_shift)| {
            (Just(pages), Just(chunk_shift), vec(op(pages), 1..40))
        })
}

proptest! {
    #[test]
    fn bitmap_agrees_with_a_vec_of_bools((pages, chunk_shift, ops) in scenario()) {
        let bitmap = DirtyBitmap::with_chunk_shift(pages, PageSize::SIZE_4K, chunk_shift)?;
        let mut model = Model(vec![false; idx(pages)]);
        for op in &ops {
            apply(&bitmap, &mut model, op)?;
            prop_assert_eq!(bitmap.count(), model.count_range(0, pages)?, "after {:?}", op);
        }
        prop_assert_eq!(bitmap.runs().collect::<Vec<_>>(), model.runs_in(0, pages)?);
        prop_assert_eq!(bitmap.is_clean(), !model.0.contains(&true));
        let mut all = vec![0; idx(pages.div_ceil(64))];
        bitmap.peek(0, pages, &mut all, 0)?;
        let expected = model.read(&Read {
            clear: false, first: 0, pages, out_words: all.len(), out_bit_offset: 0, fill: 0,
        })?;
        prop_assert_eq!(all, expected);
    }

    #[test]
    fn conversion_dirties_exactly_the_overlapping_pages(
        dirty in vec(any::<bool>(), 0..600),
        from_shift in 12u32..=16,
        to_shift in 12u32..=16,
        extra_pages in 0u64..=3,
    ) {
        let from = PageSize::new(1 << from_shift)?;
        let to = PageSize::new(1 << to_shift)?;
        let source = DirtyBitmap::new(dirty.len() as u64, from)?;
        for (page, _) in (0u64..).zip(&dirty).filter(|(_, dirty)| **dirty) {
            source.mark_page(page)?;
        }
        let covered = source.bytes_covered();
        let target_pages = covered.div_ceil(to.bytes()) + extra_pages;
        let target = source.to_page_size_with_pages(to, target_pages)?;
        prop_assert_eq!(target.page_size(), to);
        for page in 0..target_pages {
            let start = page << to_shift;
            let end = (page + 1) << to_shift;
            let overlaps_dirty = (0u64..).zip(&dirty).any(|(source_page, dirty)| {
                *dirty && source_page << from_shift < end && (source_page + 1) << from_shift > start
            });
            prop_assert_eq!(target.count_range(page, 1)?, u64::from(overlaps_dirty), "page {}", page);
        }
        prop_assert_eq!(source.to_page_size(to)?.pages(), covered.div_ceil(to.bytes()));
    }
}
