//! The capabilities JSON of `VFIO_USER_VERSION` (what each side supports: fds per message,
//! transfer size, migration, twin socket); not to be confused with the capability chains of
//! region info (`region_caps.rs`).
//!
//! ```json
//! {"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,
//!                  "migration":{"pgsize":4096,"max_bitmap_size":268435456},
//!                  "twin_socket":{"supported":true,"fd_index":0}}}
//! ```
//!
//! Everything is optional; an absent key takes the spec's default ([`Capabilities::default`]).
//! Unknown keys are ignored, as json-c does for libvfio-user. A value of the wrong JSON type
//! (a string, a negative or fractional number) is an error, as libvfio-user's
//! `json_object_get_type() != json_type_int` check makes it. `max_bitmap_size` is not in
//! libvfio-user v1 (it came with the QEMU-era spec text, default 256 MiB, the kernel's
//! `DIRTY_BITMAP_SIZE_MAX`); we parse and advertise it, and peers that do not know it ignore it.

use serde::{Deserialize, Serialize};
use vfmig_abi::dirty::DIRTY_BITMAP_SIZE_MAX;
use vfmig_dirty::PageSize;

use crate::error::MessageError;
use crate::limits::MAX_MSG_FDS_LIMIT;

/// `max_msg_fds` when the sender does not state it: 1.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// `max_data_xfer_size` when the sender does not state it: 1 MiB.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
/// `migration.max_bitmap_size` when the sender does not state it: 256 MiB.
pub const DEFAULT_MAX_BITMAP_SIZE: u64 = DIRTY_BITMAP_SIZE_MAX;

/// The capabilities one side states in its VERSION message, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Most file descriptors the sender can receive with one message (at most 1024).
    pub max_msg_fds: u32,
    /// Largest `count` of one `REGION_READ/WRITE` or `DMA_READ/WRITE` the sender accepts.
    pub max_data_xfer_size: u64,
    /// Present if and only if the sender supports migration.
    pub migration: Option<MigrationCapability>,
    /// Twin-socket mode: server-to-client commands on a socket of their own.
    pub twin_socket: Option<TwinSocket>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            migration: None,
            twin_socket: None,
        }
    }
}

/// The `migration` capability object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationCapability {
    /// Page size of dirty bitmaps, parsed at decode (EINVAL unless a power of two of at least
    /// 4 KiB); `None` if the sender did not state one.
    pub pgsize: Option<PageSize>,
    /// Largest dirty bitmap in one `DIRTY_PAGES` or `DMA_UNMAP` message.
    pub max_bitmap_size: u64,
}

/// The `twin_socket` capability object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinSocket {
    /// Whether the sender supports (client) or enabled (server) twin-socket mode.
    pub supported: bool,
    /// In a reply: the index, among the reply's file descriptors, of the client's end of the
    /// server-to-client socket.
    pub fd_index: Option<u32>,
}

impl TwinSocket {
    /// The fd index when twin-socket mode was enabled with a socket, as a reply states it.
    pub fn enabled_fd_index(&self) -> Option<u32> {
        if self.supported { self.fd_index } else { None }
    }
}

#[derive(Serialize, Deserialize)]
struct JsonTop {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capabilities: Option<JsonCaps>,
}

#[derive(Serialize, Deserialize)]
struct JsonCaps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_msg_fds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_data_xfer_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    migration: Option<JsonMigration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    twin_socket: Option<JsonTwinSocket>,
}

#[derive(Serialize, Deserialize)]
struct JsonMigration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pgsize: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_bitmap_size: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct JsonTwinSocket {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    supported: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd_index: Option<u64>,
}

/// Fails unless the JSON's top level and its nested capability values are objects.
fn check_objects(top: &serde_json::Value) -> Result<(), MessageError> {
    let not_object = |what: &str| {
        MessageError::Json(serde::de::Error::custom(format!(
            "{what} is not a JSON object"
        )))
    };
    let top = top.as_object().ok_or_else(|| not_object("the top level"))?;
    let Some(caps) = top.get("capabilities") else {
        return Ok(());
    };
    let caps = caps.as_object().ok_or_else(|| not_object("capabilities"))?;
    for key in ["migration", "twin_socket"] {
        if caps.get(key).is_some_and(|v| !v.is_object()) {
            return Err(not_object(key));
        }
    }
    Ok(())
}

impl Capabilities {
    /// Parses the JSON text (without its NUL) of a VERSION message.
    ///
    /// The top level and the `capabilities`, `migration` and `twin_socket` values must be
    /// objects (serde would also take an array for a struct; json-c would not).
    pub fn from_json(json: &[u8]) -> Result<Self, MessageError> {
        let value: serde_json::Value = serde_json::from_slice(json)?;
        check_objects(&value)?;
        let top: JsonTop = serde_json::from_value(value)?;
        let Some(caps) = top.capabilities else {
            return Ok(Self::default());
        };
        let max_msg_fds = match caps.max_msg_fds {
            None => DEFAULT_MAX_MSG_FDS,
            Some(value) => u32::try_from(value)
                .ok()
                .filter(|&n| n as usize <= MAX_MSG_FDS_LIMIT)
                .ok_or(MessageError::CapabilityValue {
                    key: "max_msg_fds",
                    value,
                    max: MAX_MSG_FDS_LIMIT as u64,
                })?,
        };
        let migration = match caps.migration {
            None => None,
            Some(m) => Some(MigrationCapability {
                pgsize: m.pgsize.map(super::dirty::page_size).transpose()?,
                max_bitmap_size: m.max_bitmap_size.unwrap_or(DEFAULT_MAX_BITMAP_SIZE),
            }),
        };
        let twin_socket = match caps.twin_socket {
            None => None,
            Some(t) => Some(TwinSocket {
                supported: t.supported.unwrap_or(false),
                fd_index: t
                    .fd_index
                    .map(|value| {
                        u32::try_from(value).map_err(|_| MessageError::CapabilityValue {
                            key: "twin_socket.fd_index",
                            value,
                            max: u32::MAX.into(),
                        })
                    })
                    .transpose()?,
            }),
        };
        Ok(Self {
            max_msg_fds,
            max_data_xfer_size: caps
                .max_data_xfer_size
                .unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE),
            migration,
            twin_socket,
        })
    }

    /// The JSON text (without NUL) stating these capabilities, every value explicit.
    pub fn to_json(&self) -> Result<Vec<u8>, MessageError> {
        if self.max_msg_fds as usize > MAX_MSG_FDS_LIMIT {
            return Err(MessageError::CapabilityValue {
                key: "max_msg_fds",
                value: self.max_msg_fds.into(),
                max: MAX_MSG_FDS_LIMIT as u64,
            });
        }
        let migration = self.migration.map(|m| JsonMigration {
            pgsize: m.pgsize.map(PageSize::bytes),
            max_bitmap_size: Some(m.max_bitmap_size),
        });
        let top = JsonTop {
            capabilities: Some(JsonCaps {
                max_msg_fds: Some(self.max_msg_fds.into()),
                max_data_xfer_size: Some(self.max_data_xfer_size),
                migration,
                twin_socket: self.twin_socket.map(|t| JsonTwinSocket {
                    supported: Some(t.supported),
                    fd_index: t.fd_index.map(u64::from),
                }),
            }),
        };
        Ok(serde_json::to_vec(&top)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvfio_user_server_reply_parses() {
        let json = br#"{ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, "migration": { "pgsize": 4096 } } }"#;
        let caps = Capabilities::from_json(json).unwrap();
        assert_eq!(caps.max_msg_fds, 8);
        assert_eq!(caps.max_data_xfer_size, 1 << 20);
        let migration = caps.migration.unwrap();
        assert_eq!(migration.pgsize, Some(PageSize::SIZE_4K));
        assert_eq!(migration.max_bitmap_size, 256 << 20);
        assert_eq!(caps.twin_socket, None);
    }

    #[test]
    fn absent_capabilities_take_the_spec_defaults() {
        let caps = Capabilities::from_json(b"{}").unwrap();
        assert_eq!(caps, Capabilities::default());
        assert_eq!((caps.max_msg_fds, caps.max_data_xfer_size), (1, 1 << 20));
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let json = br#"{"capabilities":{"max_msg_fds":2,"future":{"x":[1,2]}},"other":true}"#;
        assert_eq!(Capabilities::from_json(json).unwrap().max_msg_fds, 2);
    }

    #[test]
    fn twin_socket_parses() {
        let json = br#"{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}"#;
        let twin = Capabilities::from_json(json).unwrap().twin_socket.unwrap();
        assert_eq!(twin.enabled_fd_index(), Some(0));
    }

    #[test]
    fn max_msg_fds_above_1024_is_einval() {
        let err = Capabilities::from_json(br#"{"capabilities":{"max_msg_fds":1025}}"#).unwrap_err();
        assert!(matches!(
            err,
            MessageError::CapabilityValue {
                key: "max_msg_fds",
                value: 1025,
                ..
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn a_string_where_an_integer_belongs_is_einval() {
        let err = Capabilities::from_json(br#"{"capabilities":{"max_msg_fds":"8"}}"#).unwrap_err();
        assert!(matches!(err, MessageError::Json(_)));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn negative_and_fractional_numbers_are_einval() {
        for json in [
            &br#"{"capabilities":{"max_msg_fds":-1}}"#[..],
            br#"{"capabilities":{"max_data_xfer_size":1.5}}"#,
        ] {
            assert!(matches!(
                Capabilities::from_json(json),
                Err(MessageError::Json(_))
            ));
        }
    }

    #[test]
    fn non_power_of_two_pgsize_is_einval() {
        let err = Capabilities::from_json(br#"{"capabilities":{"migration":{"pgsize":4095}}}"#)
            .unwrap_err();
        assert!(matches!(err, MessageError::BadPageSize { pgsize: 4095 }));
    }

    #[test]
    fn capabilities_object_of_wrong_type_is_einval() {
        assert!(matches!(
            Capabilities::from_json(br#"{"capabilities":[]}"#),
            Err(MessageError::Json(_))
        ));
    }

    #[test]
    fn top_level_that_is_not_an_object_is_einval() {
        for json in [
            &b"[]"[..],
            b"5",
            br#"{"capabilities":{"migration":[4096]}}"#,
        ] {
            assert!(matches!(
                Capabilities::from_json(json),
                Err(MessageError::Json(_))
            ));
        }
    }

    #[test]
    fn to_json_round_trips() {
        let caps = Capabilities {
            max_msg_fds: 16,
            max_data_xfer_size: 4096,
            migration: Some(MigrationCapability {
                pgsize: Some(PageSize::SIZE_4K),
                max_bitmap_size: 1 << 20,
            }),
            twin_socket: Some(TwinSocket {
                supported: true,
                fd_index: Some(0),
            }),
        };
        assert_eq!(
            Capabilities::from_json(&caps.to_json().unwrap()).unwrap(),
            caps
        );
    }
}
