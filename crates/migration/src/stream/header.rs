//! The 16-byte stream header: magic, version, checksum.
//!
//! ```text
//!  0               8       10      12              16
//!  +---------------+-------+-------+---------------+
//!  | "VFMIGSTR"    | major | minor | crc32c(0..12) |
//!  +---------------+-------+-------+---------------+
//! ```
//!
//! The layout of these 16 bytes never changes, whatever the version: a reader of any version
//! can tell a stream of another version from a corrupted one. The checksum covers the version
//! so that a flipped bit in `minor` (which a reader would otherwise accept as a newer minor)
//! is caught.

use std::fmt;

use serde::{Deserialize, Serialize};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::crc::crc32c;

/// The first 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"VFMIGSTR";

/// The version this crate writes, and the newest it understands fully.
pub const CURRENT_VERSION: StreamVersion = StreamVersion { major: 1, minor: 0 };

/// A stream format version. A reader accepts its own major version with any minor: a new
/// minor only adds what an older reader may skip (sections flagged
/// [`OPTIONAL`](crate::stream::frame::FLAG_OPTIONAL)); a new major is a format an older reader
/// cannot read, and it refuses it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct StreamVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The stream header as it is on the wire.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct StreamHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`StreamVersion::major`].
    pub major: U16,
    /// [`StreamVersion::minor`].
    pub minor: U16,
    /// CRC32C of the 12 bytes before it.
    pub crc: U32,
}

const _: () = assert!(size_of::<StreamHeader>() == 16);

/// Why a stream header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The stream does not start with [`MAGIC`]: it is not a vfmig migration stream.
    #[error("not a vfmig migration stream: magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The first 8 bytes received.
        found: [u8; 8],
    },
    /// The header's checksum does not match its first 12 bytes.
    #[error("stream header checksum {found:#010x} does not match {computed:#010x}")]
    Checksum {
        /// The checksum in the header.
        found: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// The stream's major version is not this reader's.
    #[error(
        "stream version {theirs} cannot be read: this reader understands version {ours} \
         (major {} only)",
        ours.major
    )]
    UnsupportedVersion {
        /// The version of the stream.
        theirs: StreamVersion,
        /// The version of this reader.
        ours: StreamVersion,
    },
}

impl StreamHeader {
    /// The header of a stream of `version`, with its checksum.
    pub fn new(version: StreamVersion) -> StreamHeader {
        let mut header = StreamHeader {
            magic: MAGIC,
            major: U16::new(version.major),
            minor: U16::new(version.minor),
            crc: U32::new(0),
        };
        header.crc = U32::new(header.computed_crc());
        header
    }

    /// The 16 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The version the header declares.
    pub fn version(&self) -> StreamVersion {
        StreamVersion {
            major: self.major.get(),
            minor: self.minor.get(),
        }
    }

    /// The CRC32C of the 12 bytes before the checksum field.
    fn computed_crc(&self) -> u32 {
        let bytes = self.as_bytes();
        crc32c(bytes.get(..12).unwrap_or(bytes))
    }

    /// Checks magic, checksum and version, in that order (so that a stream that is not ours,
    /// or a corrupted one, is not reported as a version mismatch). Returns the version.
    ///
    /// # Errors
    /// [`HeaderError`], naming what is wrong.
    pub fn validate(&self) -> Result<StreamVersion, HeaderError> {
        if self.magic != MAGIC {
            return Err(HeaderError::BadMagic { found: self.magic });
        }
        let computed = self.computed_crc();
        if computed != self.crc.get() {
            return Err(HeaderError::Checksum {
                found: self.crc.get(),
                computed,
            });
        }
        let theirs = self.version();
        if theirs.major != CURRENT_VERSION.major {
            return Err(HeaderError::UnsupportedVersion {
                theirs,
                ours: CURRENT_VERSION,
            });
        }
        Ok(theirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_header_validates() {
        let header = StreamHeader::new(CURRENT_VERSION);
        assert_eq!(header.validate(), Ok(CURRENT_VERSION));
        assert_eq!(&header.as_bytes()[..8], b"VFMIGSTR");
    }

    #[test]
    fn unknown_major_names_both_versions() {
        let theirs = StreamVersion { major: 2, minor: 1 };
        let err = StreamHeader::new(theirs).validate().unwrap_err();
        assert_eq!(
            err,
            HeaderError::UnsupportedVersion {
                theirs,
                ours: CURRENT_VERSION
            }
        );
        let text = err.to_string();
        assert!(text.contains("2.1") && text.contains("1.0"), "{text}");
    }

    #[test]
    fn higher_minor_is_accepted() {
        let theirs = StreamVersion { major: 1, minor: 9 };
        assert_eq!(StreamHeader::new(theirs).validate(), Ok(theirs));
    }

    #[test]
    fn flipped_minor_bit_fails_the_checksum() {
        let mut header = StreamHeader::new(CURRENT_VERSION);
        header.minor = U16::new(1);
        assert!(matches!(
            header.validate(),
            Err(HeaderError::Checksum { .. })
        ));
    }
}
