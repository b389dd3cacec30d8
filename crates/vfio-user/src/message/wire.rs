//! Checked reading of peer bytes: the only way payload decoders look at a body.
//!
//! Every helper returns a typed error instead of panicking; fixed structs are copied out with
//! zerocopy (no alignment needed), lengths are compared in `u64` so no sum can overflow.

use zerocopy::FromBytes;

use crate::error::MessageError;

/// Reads the fixed struct `T` from the front of `body`, returning it and the bytes after it.
pub(crate) fn split<'a, T: FromBytes>(
    body: &'a [u8],
    what: &'static str,
) -> Result<(T, &'a [u8]), MessageError> {
    T::read_from_prefix(body).map_err(|_| MessageError::BodyTooShort {
        what,
        need: size_of::<T>(),
        got: body.len(),
    })
}

/// Reads the fixed struct `T` from the front of `body` and ignores whatever follows: the rule
/// for a body whose length says nothing more (see the crate docs, "Liberal in what we
/// accept").
pub(crate) fn prefix<T: FromBytes>(body: &[u8], what: &'static str) -> Result<T, MessageError> {
    split::<T>(body, what).map(|(value, _)| value)
}

/// Takes exactly `count` bytes of trailing data: `rest` must be that long and no longer.
/// `fixed` is the size of the part already read, for the error.
pub(crate) fn data_exact<'a>(
    rest: &'a [u8],
    count: u64,
    fixed: usize,
    what: &'static str,
) -> Result<&'a [u8], MessageError> {
    if u64::try_from(rest.len()).ok() == Some(count) {
        Ok(rest)
    } else {
        Err(MessageError::BodyLength {
            what,
            expected: (fixed as u64).saturating_add(count),
            got: fixed.saturating_add(rest.len()),
        })
    }
}

/// Takes the first `count` bytes of trailing data and ignores any after them: `rest` must be
/// at least that long. `fixed` is the size of the part already read, for the error.
pub(crate) fn data_prefix<'a>(
    rest: &'a [u8],
    count: u64,
    fixed: usize,
    what: &'static str,
) -> Result<&'a [u8], MessageError> {
    usize::try_from(count)
        .ok()
        .and_then(|count| rest.get(..count))
        .ok_or(MessageError::BodyTooShort {
            what,
            need: usize::try_from((fixed as u64).saturating_add(count)).unwrap_or(usize::MAX),
            got: fixed.saturating_add(rest.len()),
        })
}

/// Fails unless `argsz >= min`.
pub(crate) fn check_argsz(argsz: u32, min: u64, what: &'static str) -> Result<(), MessageError> {
    if u64::from(argsz) >= min {
        Ok(())
    } else {
        Err(MessageError::ArgszTooSmall { what, argsz, min })
    }
}

/// Fails unless `value == 0`.
pub(crate) fn check_zero(
    value: u64,
    field: &'static str,
    what: &'static str,
) -> Result<(), MessageError> {
    if value == 0 {
        Ok(())
    } else {
        Err(MessageError::NotZero { what, field, value })
    }
}

/// Appends the bytes of wire structs and data to a body being encoded.
pub(crate) fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let len = parts
        .iter()
        .map(|p| p.len())
        .fold(0usize, usize::saturating_add);
    let mut out = Vec::with_capacity(len);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_of_a_short_body_is_body_too_short() {
        let err = split::<u64>(&[1, 2, 3], "x").unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyTooShort {
                what: "x",
                need: 8,
                got: 3
            }
        ));
    }

    #[test]
    fn prefix_ignores_trailing_bytes() {
        assert_eq!(prefix::<u32>(&[1, 0, 0, 0, 9], "x").unwrap(), 1);
    }

    #[test]
    fn data_prefix_needs_count_bytes_and_takes_no_more() {
        assert_eq!(data_prefix(&[1, 2, 3], 2, 16, "x").unwrap(), &[1, 2]);
        assert!(matches!(
            data_prefix(&[1], 2, 16, "x"),
            Err(MessageError::BodyTooShort {
                need: 18,
                got: 17,
                ..
            })
        ));
    }

    #[test]
    fn data_exact_handles_counts_beyond_usize() {
        let err = data_exact(&[], u64::MAX, 16, "x").unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyLength {
                expected: u64::MAX,
                got: 16,
                ..
            }
        ));
    }
}
