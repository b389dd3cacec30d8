//! A cursor over untrusted payload bytes: every read checks the length first and returns an
//! error instead of panicking.

use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::stream::error::PayloadError;

/// The bytes of a payload not read yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { rest: bytes }
    }

    /// The next `len` bytes.
    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], PayloadError> {
        let (head, rest) = self.rest.split_at_checked(len).ok_or(PayloadError::Short {
            needed: len,
            available: self.rest.len(),
        })?;
        self.rest = rest;
        Ok(head)
    }

    /// The next `T`, in place (wire structs are `Unaligned`).
    pub(crate) fn read<T>(&mut self) -> Result<&'a T, PayloadError>
    where
        T: FromBytes + KnownLayout + Immutable + Unaligned,
    {
        let bytes = self.take(size_of::<T>())?;
        T::ref_from_bytes(bytes).map_err(|_| PayloadError::Short {
            needed: size_of::<T>(),
            available: bytes.len(),
        })
    }

    /// The next `count` `T`s, in place.
    pub(crate) fn read_slice<T>(&mut self, count: usize) -> Result<&'a [T], PayloadError>
    where
        T: FromBytes + KnownLayout + Immutable + Unaligned,
    {
        let len = count
            .checked_mul(size_of::<T>())
            .ok_or(PayloadError::Short {
                needed: usize::MAX,
                available: self.rest.len(),
            })?;
        let bytes = self.take(len)?;
        <[T]>::ref_from_bytes(bytes).map_err(|_| PayloadError::Short {
            needed: len,
            available: bytes.len(),
        })
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.rest
    }

    /// Succeeds if every byte was read.
    pub(crate) fn finish(self) -> Result<(), PayloadError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PayloadError::Trailing {
                extra: self.rest.len(),
            })
        }
    }
}

/// `value` as a `u32` length field, or `None` if it does not fit.
pub(crate) fn len_u32(value: usize) -> Option<u32> {
    u32::try_from(value).ok()
}

/// A `u32` wire count or length as a `usize`. Saturates, which only a 16-bit target could
/// reach; a saturated length then fails the bounds check that follows.
pub(crate) fn usize_from(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// A `u64` wire quantity as a `usize`, saturating like [`usize_from`].
pub(crate) fn usize_from_u64(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// A buffer length as a `u64` (lossless on every target Rust supports today).
pub(crate) fn u64_from(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Refuses a reserved field that is not zero.
pub(crate) fn reserved_zero(field: &'static str, value: u64) -> Result<(), PayloadError> {
    if value == 0 {
        Ok(())
    } else {
        Err(PayloadError::Reserved { field, value })
    }
}
