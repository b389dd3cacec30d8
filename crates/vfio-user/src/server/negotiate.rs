//! `VFIO_USER_VERSION` on the server side: the first message of every session.
//!
//! As libvfio-user v1: the first message must be VERSION (anything else: EINVAL), without file
//! descriptors; `major` must be 0; we reply `minor = min(client's, 2)` with our capabilities.
//! A client `migration.pgsize` other than 4096 is EINVAL (libvfio-user's `migration_set_pgsize`
//! accepts only that). A `max_data_xfer_size` of 0 is EINVAL (we could not send it a byte of
//! DMA). Twin-socket mode is declined: a client that offers it is told `supported: false`.
//! Any failure is answered with its errno and the client is dropped.

use vfmig_abi::dirty::DIRTY_BITMAP_SIZE_MAX;
use vfmig_iommu::CONTAINER_PAGE_SIZE;

use super::SessionEnd;
use crate::connection::Connection;
use crate::errno::Errno;
use crate::limits::Limits;
use crate::message::{
    Capabilities, GET_BITMAP_PREFIX, HEADER_SIZE, MigrationCapability, Reply, Request, TwinSocket,
    VERSION_MAJOR, VERSION_MINOR, Version,
};

/// What the client stated, as the server uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ClientCaps {
    /// Most fds the client accepts with one message.
    pub(super) max_msg_fds: u32,
    /// Largest DMA_READ / DMA_WRITE `count` the client accepts.
    pub(super) max_data_xfer_size: u64,
}

/// The largest dirty bitmap one reply of ours can carry: what fits in a message of
/// `limits.max_msg_size` after the header and the 40 bytes before a GET_BITMAP bitmap, in whole
/// `u64` words, and no more than the kernel's 256 MiB.
pub(super) fn max_bitmap_size(limits: &Limits) -> u64 {
    let prefix = HEADER_SIZE as u64 + GET_BITMAP_PREFIX;
    let fits = u64::from(limits.max_msg_size).saturating_sub(prefix) / 8 * 8;
    fits.min(DIRTY_BITMAP_SIZE_MAX)
}

/// Our capabilities.
fn ours(limits: &Limits, migration: bool, client: &Capabilities) -> Capabilities {
    Capabilities {
        max_msg_fds: u32::try_from(limits.recv_fds()).unwrap_or(u32::MAX),
        max_data_xfer_size: limits.max_data_xfer_size,
        migration: migration.then(|| MigrationCapability {
            pgsize: Some(CONTAINER_PAGE_SIZE),
            max_bitmap_size: max_bitmap_size(limits),
        }),
        twin_socket: client
            .twin_socket
            .filter(|t| t.supported)
            .map(|_| TwinSocket {
                supported: false,
                fd_index: None,
            }),
    }
}

/// Checks the client's VERSION and builds our reply.
fn accept(version: &Version, limits: &Limits, migration: bool) -> Result<Version, Errno> {
    if version.major != VERSION_MAJOR {
        tracing::debug!(major = version.major, "unsupported vfio-user major version");
        return Err(Errno::EINVAL);
    }
    let caps = &version.capabilities;
    if migration
        && let Some(pgsize) = caps.migration.and_then(|m| m.pgsize)
        && pgsize != CONTAINER_PAGE_SIZE
    {
        tracing::debug!(%pgsize, "unsupported dirty page size");
        return Err(Errno::EINVAL);
    }
    if caps.max_data_xfer_size == 0 {
        return Err(Errno::EINVAL);
    }
    Ok(Version {
        major: VERSION_MAJOR,
        minor: version.minor.min(VERSION_MINOR),
        capabilities: ours(limits, migration, caps),
    })
}

/// Receives and answers the first message. On failure the client has been told (unless it
/// asked for no reply) and must be dropped.
pub(super) fn negotiate(
    conn: &mut Connection,
    limits: &Limits,
    migration: bool,
) -> Result<ClientCaps, SessionEnd> {
    let received = conn.recv().map_err(|err| {
        if let Some(header) = err.header() {
            // Best effort: the client is dropped either way.
            let _ = conn.send_error(header, err.errno());
        }
        SessionEnd::from_connection(err)
    })?;
    let decoded = received
        .request(limits)
        .map_err(Errno::from)
        .and_then(|request| match request {
            Request::Version(version) => Ok(version),
            other => {
                tracing::debug!(command = %other.command(), "first message is not VERSION");
                Err(Errno::EINVAL)
            }
        });
    let result = decoded.and_then(|version| {
        let reply = accept(&version, limits, migration)?;
        Ok((version, reply))
    });
    match result {
        Ok((version, reply)) => {
            conn.send_reply(&received.header, &Reply::Version(reply), &[])
                .map_err(SessionEnd::from_connection)?;
            tracing::debug!(
                minor = version.minor,
                max_msg_fds = version.capabilities.max_msg_fds,
                max_data_xfer_size = version.capabilities.max_data_xfer_size,
                "client negotiated"
            );
            Ok(ClientCaps {
                max_msg_fds: version.capabilities.max_msg_fds,
                max_data_xfer_size: version.capabilities.max_data_xfer_size,
            })
        }
        Err(errno) => {
            let _ = conn.send_error(&received.header, errno.raw());
            Err(SessionEnd::NegotiationFailed { errno })
        }
    }
}

#[cfg(test)]
mod tests {
    use vfmig_dirty::PageSize;

    use super::*;

    fn client(caps: Capabilities) -> Version {
        Version {
            major: 0,
            minor: 2,
            capabilities: caps,
        }
    }

    #[test]
    fn default_limits_advertise_a_4_mib_bitmap() {
        assert_eq!(max_bitmap_size(&Limits::default()), (4 << 20) + 4040);
    }

    #[test]
    fn minor_is_the_smaller_of_both() {
        let mut version = client(Capabilities::default());
        version.minor = 7;
        let reply = accept(&version, &Limits::default(), true).unwrap();
        assert_eq!((reply.major, reply.minor), (0, 2));
        version.minor = 1;
        assert_eq!(accept(&version, &Limits::default(), true).unwrap().minor, 1);
    }

    #[test]
    fn major_other_than_zero_is_einval() {
        let mut version = client(Capabilities::default());
        version.major = 1;
        assert_eq!(
            accept(&version, &Limits::default(), true).unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn pgsize_other_than_4096_is_einval() {
        let caps = Capabilities {
            migration: Some(MigrationCapability {
                pgsize: Some(PageSize::new(8192).unwrap()),
                max_bitmap_size: 1 << 20,
            }),
            ..Capabilities::default()
        };
        assert_eq!(
            accept(&client(caps), &Limits::default(), true).unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn migration_is_advertised_only_when_capable() {
        let version = client(Capabilities::default());
        let limits = Limits::default();
        assert!(
            accept(&version, &limits, false)
                .unwrap()
                .capabilities
                .migration
                .is_none()
        );
        let migration = accept(&version, &limits, true)
            .unwrap()
            .capabilities
            .migration;
        assert_eq!(migration.unwrap().pgsize, Some(CONTAINER_PAGE_SIZE));
    }

    #[test]
    fn twin_socket_is_declined() {
        let caps = Capabilities {
            twin_socket: Some(TwinSocket {
                supported: true,
                fd_index: None,
            }),
            ..Capabilities::default()
        };
        let reply = accept(&client(caps), &Limits::default(), true).unwrap();
        let twin = reply.capabilities.twin_socket.unwrap();
        assert!(!twin.supported);
        assert_eq!(twin.enabled_fd_index(), None);
    }
}
