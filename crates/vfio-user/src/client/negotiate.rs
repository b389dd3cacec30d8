//! `VFIO_USER_VERSION` on the client side, sent and answered before the reader thread starts.

use vfmig_iommu::CONTAINER_PAGE_SIZE;

use super::config::ClientConfig;
use super::error::ClientError;
use crate::connection::Connection;
use crate::errno::Errno;
use crate::message::{
    Capabilities, Command, GET_BITMAP_PREFIX, MigrationCapability, Reply, Request, VERSION_MAJOR,
    VERSION_MINOR, Version,
};

/// The largest bitmap a libvfio-user v1 server returns: its GET_BITMAP `argsz` (the bitmap and
/// the 40 bytes before it) may not exceed 1 MiB.
pub(super) const LIBVFIO_USER_MAX_BITMAP: u64 = (1 << 20) - GET_BITMAP_PREFIX;

/// What negotiation found.
pub(super) struct Negotiated {
    /// The server's VERSION.
    pub(super) server: Version,
    /// The server states migration without `max_bitmap_size`: libvfio-user v1.
    pub(super) legacy: bool,
}

/// Our VERSION.
fn our_version(config: &ClientConfig) -> Version {
    Version {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        capabilities: Capabilities {
            max_msg_fds: config.max_msg_fds,
            max_data_xfer_size: config.max_data_xfer_size,
            migration: Some(MigrationCapability {
                pgsize: Some(CONTAINER_PAGE_SIZE),
                max_bitmap_size: config.bitmap_capacity(),
            }),
            twin_socket: None,
        },
    }
}

/// Whether the capabilities JSON of a VERSION body (already decoded once, so well-formed)
/// states `migration.max_bitmap_size`.
fn states_max_bitmap_size(body: &[u8]) -> bool {
    let json = body.get(4..).unwrap_or_default();
    let json = json.split(|&b| b == 0).next().unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v.get("capabilities")?
                .get("migration")?
                .get("max_bitmap_size")
                .cloned()
        })
        .is_some()
}

/// Sends our VERSION and reads the server's.
pub(super) fn negotiate(
    conn: &mut Connection,
    config: &ClientConfig,
) -> Result<Negotiated, ClientError> {
    let command = Command::Version;
    conn.send_request(0, &Request::Version(our_version(config)), &[])?;
    let received = conn.recv()?;
    let reply = received
        .reply(conn.limits())
        .map_err(|source| ClientError::BadReply { command, source })?;
    let server = match reply {
        Reply::Version(version) => version,
        Reply::Error { errno, .. } => {
            return Err(ClientError::Remote {
                command,
                errno: Errno::from_wire(errno),
            });
        }
        _ => return Err(ClientError::unexpected(command, "not a VERSION reply")),
    };
    if server.major != VERSION_MAJOR {
        return Err(ClientError::Version {
            major: server.major,
            minor: server.minor,
        });
    }
    if let Some(pgsize) = server.capabilities.migration.and_then(|m| m.pgsize)
        && pgsize != CONTAINER_PAGE_SIZE
    {
        return Err(ClientError::PageSize { pgsize });
    }
    let legacy = server.capabilities.migration.is_some() && !states_max_bitmap_size(&received.body);
    Ok(Negotiated { server, legacy })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Vec<u8> {
        let mut body = vec![0, 0, 2, 0];
        body.extend_from_slice(json.as_bytes());
        body.push(0);
        body
    }

    #[test]
    fn libvfio_user_states_no_max_bitmap_size() {
        let json = r#"{ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, "migration": { "pgsize": 4096 } } }"#;
        assert!(!states_max_bitmap_size(&body(json)));
    }

    #[test]
    fn our_server_states_it() {
        let json = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":4198440}}}"#;
        assert!(states_max_bitmap_size(&body(json)));
    }

    #[test]
    fn the_libvfio_user_limit_is_whole_words() {
        assert_eq!(LIBVFIO_USER_MAX_BITMAP, 1_048_536);
        assert_eq!(LIBVFIO_USER_MAX_BITMAP % 8, 0);
    }
}
