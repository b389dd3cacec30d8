//! Dirty-page bitmaps for live migration: marked from many threads, read and cleared by
//! the migration thread in the layout the kernel's VFIO dirty tracking uses.
//!
//! A [`DirtyBitmap`] has one bit per page of guest memory. Device emulation and DMA paths
//! mark the pages they write ([`DirtyBitmap::mark_page`], [`DirtyBitmap::mark_pages`],
//! [`DirtyBitmap::mark_bytes`]); the migration thread takes what was marked since its last
//! pass ([`DirtyBitmap::read_and_clear`]), either into a `u64` buffer laid out as the
//! kernel's, or as runs of pages to copy ([`DirtyBitmap::runs`]).
//!
//! Buffers a single thread owns (a GET_BITMAP reply, a bitmap read off the wire, the dirty
//! set of a migration pass) are plain `u64` slices in the same layout; [`words`] holds the
//! operations on them (set a range, mask the tail, OR in words or wire bytes at any page,
//! runs), so that no crate above re-derives masks and shifts.
//!
//! # Layout
//!
//! Bits are LSB-first inside `u64` words: bit `j` of word `i` is page `64 * i + j`.
//!
//! ```text
//!  word:     words[0]                      words[1]
//!  bit:      63 62 ...  2  1  0            63 62 ...  2  1  0
//!  page:     63 62 ...  2  1  0           127 126 ... 66 65 64
//! ```
//!
//! On a little-endian machine this is also a plain bit string in memory, byte `b` bit `k`
//! standing for page `8 * b + k`. A bitmap is always a whole number of words
//! ([`bitmap_bytes`]), and the bits past the last page in the last word are always zero.
//!
//! # Kernel correspondence
//!
//! This is the user bitmap of `VFIO_IOMMU_DIRTY_PAGES` / `VFIO_IOMMU_UNMAP_DMA` with
//! `GET_DIRTY_BITMAP` (Linux 5.8+):
//! - `DIRTY_BITMAP_BYTES(n) = ALIGN(n, 64) / 8` is [`bitmap_bytes`];
//! - bit `k` of the buffer stands for `iova + k * pgsize`, as bit `k` of the `out` of
//!   [`DirtyBitmap::read_and_clear`] stands for page `first_page + k`;
//! - when one request spans several mappings, the kernel writes each mapping's bits at
//!   `bit_offset = (dma->iova - base_iova) >> pgshift` and ORs the word it shares with
//!   the previous mapping, so the bits already there survive. `read_and_clear`'s
//!   `out_bit_offset` is that offset, and it merges the same way: it only ever ORs bits
//!   in, and leaves every bit of `out` outside its target range as it was;
//! - the kernel clears each mapping's bitmap after copying it out: read-and-clear.
//!
//! # Concurrency: why no bit is lost
//!
//! Marking sets bits with atomic `fetch_or`, so markers never overwrite each other. The
//! hard part is clearing: a read-and-clear that loads a word and then stores zero would
//! wipe a bit a marker set between the two. Doing it with one atomic `swap(0)` per word is
//! correct but costs a locked instruction per word, over ten times a `memcpy` of the
//! bitmap. Instead, the words are split into chunks of 4096 words (32 KiB of bitmap,
//! 1 GiB of memory in 4 KiB pages), each with a reader-writer lock:
//!
//! - **Setting bits** (marking, [`DirtyBitmap::or_from`], [`DirtyBitmap::set_all`]) holds
//!   the chunk's *shared* side. Markers never block one another.
//! - **Clearing bits** ([`DirtyBitmap::read_and_clear`], [`DirtyBitmap::clear_all`]) holds
//!   the chunk's *exclusive* side, one chunk at a time. With no marker in the chunk, a word
//!   cannot change between a plain load and a plain store, so the bits stored back are
//!   exactly the bits that were not taken.
//! - **Reading** ([`DirtyBitmap::peek`], [`DirtyBitmap::runs`], counts, conversions) takes
//!   no lock: the words stay atomics, and a racing mark is simply seen or not.
//!
//! So a mark lands in a chunk either before read-and-clear locks that chunk, and is
//! returned by this pass, or after it unlocks it, and stays set for the next pass. The
//! lock also orders memory: whatever a marker wrote to a page before marking it is visible
//! to the thread that read-and-cleared the bit, through the lock's release/acquire. Since
//! the exclusive side is held for one chunk at a time, a marker waits at most for one
//! chunk (a few microseconds), never for a pass over a terabyte-sized bitmap. Each chunk's
//! lock has its own cache lines, so markers in different chunks do not contend.
//!
//! The lock is std's `RwLock<()>`: on Linux it takes the shared side with one
//! compare-exchange, parks a waiter on a futex instead of spinning (which matters on a
//! host where the reader may be descheduled), and lets no new reader in while a writer
//! waits, so a stream of markers cannot starve the reader. A hand-rolled lock would cost
//! the same atomic operations.
//!
//! The cost moves to the markers: a mark takes and releases a shared lock around its
//! `fetch_or` (about 25 ns uncontended), and markers in the same chunk share that lock's
//! cache line.
//!
//! # Performance
//!
//! Under the exclusive side, read-and-clear works a block of 8 words (one cache line) at a
//! time with plain loads and stores: a clean block is loaded and skipped without being
//! written, neither in the bitmap nor in `out`; a dirty block is cleared and ORed into
//! `out` without a branch per word. When the range and the output offset start at the
//! same bit of their words (both word-aligned, say) each source word lands on one output
//! word; otherwise each is shifted, and its high bits carried into the next output word.
//!
//! On the development machine, a 32 MiB bitmap (2^28 pages, 1 TiB of 4 KiB pages) is read
//! and cleared in 1.0 to 1.4 times a 32 MiB `memcpy` when every page is dirty (1.3 times
//! when both start from memory rather than the cache), and in 0.6 times (0.8 from memory)
//! when none is; a per-word atomic `swap(0)` took 14 times. The numbers
//! come from `cargo bench -p vfmig-dirty --bench ratio`.
//!
//! # Example
//!
//! ```
//! use vfmig_dirty::{DirtyBitmap, DirtyRun, PageSize, words_for};
//!
//! # fn main() -> Result<(), vfmig_dirty::DirtyError> {
//! // Two mappings, of 100 and 50 pages, reported into one kernel-style buffer.
//! let low = DirtyBitmap::new(100, PageSize::SIZE_4K)?;
//! let high = DirtyBitmap::new(50, PageSize::SIZE_4K)?;
//! low.mark_bytes(98 * 4096 + 10, 4096)?; // straddles pages 98 and 99
//! high.mark_page(0)?;
//!
//! assert_eq!(words_for(150), 3);
//! let mut out = vec![0u64; 3];
//! low.read_and_clear(0, 100, &mut out, 0)?;
//! high.read_and_clear(0, 50, &mut out, 100)?; // lands right after the first mapping
//! assert_eq!(out, [0, 0b111 << 34, 0]); // bits 98, 99 and 100
//! assert!(low.is_clean() && high.is_clean());
//!
//! // Or take the dirty pages as runs to copy.
//! high.mark_pages(10, 5)?;
//! assert_eq!(high.runs().collect::<Vec<_>>(), [DirtyRun { first: 10, pages: 5 }]);
//! # Ok(())
//! # }
//! ```

mod bitmap;
mod bits;
mod convert;
mod error;
mod page_size;
mod runs;
mod transfer;
pub mod words;

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod model_tests;

pub use bitmap::{DirtyBitmap, MAX_PAGES};
pub use bits::{bitmap_bytes, words_for};
pub use error::DirtyError;
pub use page_size::PageSize;
pub use runs::{DirtyRun, Runs, Word};
