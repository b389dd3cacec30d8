//! The one error type of this crate.
//!
//! Every fallible operation checks its arguments before it touches a bit, so an error
//! always means "nothing was changed": no bit was set or cleared, and no word of an
//! output buffer was written.

use thiserror::Error;

use crate::PageSize;

/// Why an operation on a [`DirtyBitmap`](crate::DirtyBitmap) or a [`PageSize`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DirtyError {
    /// A page size that is not a power of two of at least 4 KiB.
    #[error("page size {bytes:#x} is not a power of two of at least 4 KiB")]
    InvalidPageSize {
        /// The size asked for, in bytes.
        bytes: u64,
    },

    /// A bitmap larger than [`MAX_PAGES`](crate::MAX_PAGES), or one whose covered bytes
    /// (`pages * page_size`) would not fit in a `u64`.
    #[error("{pages} pages is more than the {max_pages} a bitmap of this page size can have")]
    TooManyPages {
        /// The page count asked for.
        pages: u64,
        /// The largest page count allowed for that page size.
        max_pages: u64,
    },

    /// A page range that does not lie inside the bitmap (or overflows `u64`).
    #[error("pages {first}+{pages} are outside a bitmap of {len} pages")]
    RangeOutOfBounds {
        /// The first page of the range.
        first: u64,
        /// The number of pages in the range.
        pages: u64,
        /// The number of pages the bitmap has.
        len: u64,
    },

    /// A byte range that does not lie inside the bytes the bitmap covers (or overflows `u64`).
    #[error("bytes {offset:#x}+{len:#x} are outside the {covered:#x} bytes the bitmap covers")]
    ByteRangeOutOfBounds {
        /// The first byte of the range.
        offset: u64,
        /// The length of the range in bytes.
        len: u64,
        /// The number of bytes the bitmap covers.
        covered: u64,
    },

    /// An output buffer too short for the bits that would be written into it.
    #[error("output buffer has {got_words} words, {needed_words} are needed")]
    OutputTooSmall {
        /// The words needed: `ceil((out_bit_offset + pages) / 64)`.
        needed_words: u64,
        /// The words the buffer has.
        got_words: u64,
    },

    /// `out_bit_offset + pages` does not fit in a `u64`.
    #[error("output bit offset {out_bit_offset} plus {pages} pages overflows")]
    OutputOffsetOverflow {
        /// The bit offset asked for.
        out_bit_offset: u64,
        /// The number of pages to write.
        pages: u64,
    },

    /// Two bitmaps that must count in the same page size do not.
    #[error("page size {ours} does not match {theirs}")]
    PageSizeMismatch {
        /// The page size of the bitmap the method was called on.
        ours: PageSize,
        /// The page size of the other bitmap.
        theirs: PageSize,
    },

    /// Two bitmaps that must have the same number of pages do not.
    #[error("a bitmap of {ours} pages cannot be combined with one of {theirs} pages")]
    PageCountMismatch {
        /// The page count of the bitmap the method was called on.
        ours: u64,
        /// The page count of the other bitmap.
        theirs: u64,
    },
}
