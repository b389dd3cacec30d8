//! `VFIO_USER_VERSION` (1): the first message, request and reply alike.
//!
//! ```text
//! off size
//!   0    2 major
//!   2    2 minor
//!   4    n capabilities JSON, UTF-8, NUL-terminated (optional)
//! ```
//!
//! libvfio-user (v1, `1569a37`) speaks version 0.2: its server requires `major == 0` and
//! replies `minor = min(client, 2)`; it rejects JSON whose last byte is not NUL, and a VERSION
//! that carries file descriptors (that rule is in [`crate::message::Request::decode`]). We send
//! the NUL but do not require it: `msg_size` already bounds the JSON, and the NUL is only
//! there for a C reader. As json-c reads a C string, the JSON ends at the first NUL.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::version_caps::Capabilities;
use super::{Payload, wire};
use crate::error::MessageError;

/// Major version spoken by libvfio-user v1.
pub const VERSION_MAJOR: u16 = 0;
/// Minor version spoken by libvfio-user v1.
pub const VERSION_MINOR: u16 = 2;

/// `struct vfio_user_version` without its trailing JSON.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct VersionHeader {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

const _: () = assert!(size_of::<VersionHeader>() == 4);

/// The VERSION payload, request or reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The capabilities stated (defaults if there was no JSON).
    pub capabilities: Capabilities,
}

impl Payload<'_> for Version {
    const NAME: &'static str = "VERSION";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let (header, json) = wire::split::<VersionHeader>(body, Self::NAME)?;
        let capabilities = if json.is_empty() {
            Capabilities::default()
        } else {
            let end = json.iter().position(|&b| b == 0).unwrap_or(json.len());
            Capabilities::from_json(json.get(..end).unwrap_or_default())?
        };
        Ok(Self {
            major: header.major,
            minor: header.minor,
            capabilities,
        })
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let header = VersionHeader {
            major: self.major,
            minor: self.minor,
        };
        let json = self.capabilities.to_json()?;
        Ok(wire::concat(&[header.as_bytes(), &json, &[0]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_client_version_decodes() {
        let mut body = vec![0, 0, 2, 0];
        body.extend_from_slice(
            br#"{"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024,"migration":{"pgsize":4096}}}"#,
        );
        body.push(0);
        let version = Version::decode(&body).unwrap();
        assert_eq!((version.major, version.minor), (0, 2));
        assert_eq!(version.capabilities.max_msg_fds, 32);
        assert_eq!(version.capabilities.max_data_xfer_size, 1024);
    }

    #[test]
    fn version_without_json_has_default_capabilities() {
        let version = Version::decode(&[0, 0, 1, 0]).unwrap();
        assert_eq!(version.capabilities, Capabilities::default());
    }

    #[test]
    fn json_without_nul_ends_with_the_body() {
        let version = Version::decode(b"\0\0\x02\0{\"capabilities\":{\"max_msg_fds\":4}}").unwrap();
        assert_eq!(version.capabilities.max_msg_fds, 4);
    }

    #[test]
    fn json_ends_at_the_first_nul() {
        let version = Version::decode(b"\0\0\x02\0{}\0junk\0").unwrap();
        assert_eq!(version.capabilities, Capabilities::default());
    }

    #[test]
    fn empty_json_string_is_einval() {
        assert!(matches!(
            Version::decode(b"\0\0\x02\0\0"),
            Err(MessageError::Json(_))
        ));
    }

    #[test]
    fn body_shorter_than_the_version_numbers_is_einval() {
        let err = Version::decode(&[0, 0, 2]).unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyTooShort {
                need: 4,
                got: 3,
                ..
            }
        ));
    }

    #[test]
    fn encode_ends_in_nul_and_round_trips() {
        let version = Version {
            major: 0,
            minor: 2,
            capabilities: Capabilities::default(),
        };
        let body = version.encode().unwrap();
        assert_eq!(body.last(), Some(&0));
        assert_eq!(Version::decode(&body).unwrap(), version);
    }
}
