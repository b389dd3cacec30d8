//! Caps on everything a peer can make us allocate or accept.
//!
//! Every number a peer sends that sizes an allocation is checked against a [`Limits`] before
//! anything is allocated: the message size (before the body buffer exists), the number of file
//! descriptors (the control buffer is sized for it), and the `count` of data transfers.

use vfmig_dirty::bitmap_bytes;

use crate::message::{DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_MSG_FDS, HEADER_SIZE};

/// Default cap on a whole message, header included: 4 MiB + 4 KiB.
///
/// The largest messages are dirty bitmap replies (`DIRTY_PAGES` GET_BITMAP and `DMA_UNMAP` with
/// GET_DIRTY_BITMAP): 16 + 8 + 32 bytes of headers and the bitmap. A 4 MiB bitmap covers one
/// mapping of 128 GiB of 4 KiB pages, twice the 64 GiB the design asks for; the extra 4 KiB
/// leave room for every header. libvfio-user caps requests at 1 MiB + 32 and so cannot read the
/// bitmap of a mapping above ~32 GiB; raise [`Limits::max_msg_size`] for bigger mappings.
pub const DEFAULT_MAX_MSG_SIZE: u32 = (4 << 20) + 4096;

/// Default number of file descriptors accepted with one message (the `max_msg_fds` to
/// advertise): 8, as the libvfio-user server advertises.
pub const DEFAULT_MAX_RECV_FDS: usize = 8;

/// The most file descriptors one message may carry, whatever a [`Limits`] says: libvfio-user's
/// `VFIO_USER_CLIENT_MAX_MSG_FDS_LIMIT` (its receive buffer size, and its cap on a client's
/// `max_msg_fds`). Linux itself passes at most 253 (`SCM_MAX_FD`) per `sendmsg`.
pub const MAX_MSG_FDS_LIMIT: usize = 1024;

const _: () = {
    // The default must hold the reply with the bitmap of a 64 GiB mapping of 4 KiB pages.
    let bitmap = bitmap_bytes((64u64 << 30) / 4096);
    let reply = HEADER_SIZE as u64 + 8 + 32 + bitmap;
    assert!(DEFAULT_MAX_MSG_SIZE as u64 >= reply);
    assert!(bitmap == 2 << 20);
};

/// What one side of a connection accepts and may send.
///
/// Before VERSION negotiation the spec's defaults hold for the peer (it receives 1 fd, moves
/// 1 MiB per transfer); after it, set `max_send_fds` to the peer's `max_msg_fds` and
/// `max_data_xfer_size` to the value we advertised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (header included) accepted from the peer; a larger header is an error
    /// and its body is never allocated.
    pub max_msg_size: u32,
    /// Most file descriptors accepted with one message (what we advertise as `max_msg_fds`).
    /// Clamped to [`MAX_MSG_FDS_LIMIT`].
    pub max_recv_fds: usize,
    /// Most file descriptors sent with one message (the peer's `max_msg_fds`).
    pub max_send_fds: usize,
    /// Largest `count` accepted in a received `REGION_READ`/`REGION_WRITE`/`DMA_READ`/
    /// `DMA_WRITE` request (what we advertise as `max_data_xfer_size`).
    pub max_data_xfer_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            max_recv_fds: DEFAULT_MAX_RECV_FDS,
            max_send_fds: DEFAULT_MAX_MSG_FDS as usize,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
        }
    }
}

impl Limits {
    /// File descriptors accepted per message, after the hard cap.
    pub fn recv_fds(&self) -> usize {
        self.max_recv_fds.min(MAX_MSG_FDS_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_holds_a_64_gib_mapping_bitmap_reply() {
        let bitmap = bitmap_bytes((64 << 30) / 4096);
        assert!(u64::from(Limits::default().max_msg_size) >= 16 + 8 + 32 + bitmap);
    }

    #[test]
    fn recv_fds_is_clamped_to_the_hard_limit() {
        let limits = Limits {
            max_recv_fds: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(limits.recv_fds(), MAX_MSG_FDS_LIMIT);
    }
}
