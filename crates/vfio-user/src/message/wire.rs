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

/// Reads a body that is exactly one `T`.
pub(crate) fn exact<T: FromBytes>(body: &[u8], what: &'static str) -> Result<T, MessageError> {
    let (value, rest) = split::<T>(body, what)?;
    expect_empty(rest, body.len(), size_of::<T>() as u64, what)?;
    Ok(value)
}

/// Fails unless `rest` is empty: `total` bytes were present, `expected` called for.
pub(crate) fn expect_empty(
    rest: &[u8],
    total: usize,
    expected: u64,
    what: &'static str,
) -> Result<(), MessageError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(MessageError::BodyLength {
            what,
            expected,
            got: total,
        })
    }
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
    fn exact_rejects_trailing_bytes() {
        let err = exact::<u32>(&[0; 5], "x").unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyLength {
                expected: 4,
                got: 5,
                ..
            }
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
