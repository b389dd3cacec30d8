//! [`ClientConfig`]: what a client accepts and states in VERSION, and where it serves the
//! server's DMA from.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use vfmig_abi::dirty::DIRTY_BITMAP_SIZE_MAX;

use crate::limits::{DEFAULT_MAX_MSG_SIZE, DEFAULT_MAX_RECV_FDS};
use crate::message::{
    DEFAULT_MAX_BITMAP_SIZE, DEFAULT_MAX_DATA_XFER_SIZE, GET_BITMAP_PREFIX, HEADER_SIZE,
};

use super::memory::ClientMemory;

/// How a client connects (see each field).
#[derive(Clone)]
pub struct ClientConfig {
    /// Most file descriptors we accept with one message (stated as `max_msg_fds`).
    pub max_msg_fds: u32,
    /// Largest `count` of a DMA_READ / DMA_WRITE we accept (stated as `max_data_xfer_size`).
    pub max_data_xfer_size: u64,
    /// Largest message we accept. It bounds the replies we can take: region reads are split so
    /// that theirs fit, and it caps the dirty bitmap of one request.
    pub max_msg_size: u32,
    /// Largest dirty bitmap we want in one reply (stated as `migration.max_bitmap_size`,
    /// capped by what fits in `max_msg_size`). Each request's bitmap stays within this and
    /// the server's `max_bitmap_size`; a mapping whose bitmap would not is split into several
    /// server mappings when it is made.
    pub max_bitmap_size: u64,
    /// Serves DMA_READ / DMA_WRITE for mappings made without an fd (unless one is given with
    /// the mapping, [`super::Client::dma_map_with_memory`]).
    pub memory: Option<Arc<dyn ClientMemory>>,
    /// Fetch each server mapping's bitmap with a request of its own, as libvfio-user v1
    /// requires (a GET_BITMAP must cover exactly one of its regions). Off: several small
    /// mappings share a request while the bitmap fits, which servers with the kernel's rules
    /// (ours) accept.
    pub one_mapping_per_request: bool,
    /// How long a request waits for its reply, VERSION included: past it the call fails
    /// with `ETIMEDOUT` and the connection is broken, as a hung server must not hang its
    /// client ([`ClientError::TimedOut`](super::ClientError::TimedOut)). A caller that knows
    /// a request makes the server work longer passes its own deadline
    /// ([`super::Client::region_read_within`]).
    pub reply_timeout: Duration,
}

/// The default [`ClientConfig::reply_timeout`]: far beyond any answer a working server
/// gives to a register access or a map (micro- to milliseconds), short enough that a hung
/// device process does not stall its VMM for long.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_msg_fds: u32::try_from(DEFAULT_MAX_RECV_FDS).unwrap_or(1),
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            max_bitmap_size: DEFAULT_MAX_BITMAP_SIZE,
            memory: None,
            one_mapping_per_request: false,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("max_msg_fds", &self.max_msg_fds)
            .field("max_data_xfer_size", &self.max_data_xfer_size)
            .field("max_msg_size", &self.max_msg_size)
            .field("max_bitmap_size", &self.max_bitmap_size)
            .field("memory", &self.memory.is_some())
            .field("one_mapping_per_request", &self.one_mapping_per_request)
            .field("reply_timeout", &self.reply_timeout)
            .finish()
    }
}

impl ClientConfig {
    /// The largest bitmap that fits one of our replies, within `max_bitmap_size` and the
    /// kernel's 256 MiB, in whole `u64` words (at least one).
    pub fn bitmap_capacity(&self) -> u64 {
        let prefix = HEADER_SIZE as u64 + GET_BITMAP_PREFIX;
        let fits = u64::from(self.max_msg_size).saturating_sub(prefix);
        let wanted = self.max_bitmap_size.min(DIRTY_BITMAP_SIZE_MAX);
        (fits.min(wanted) / 8 * 8).max(8)
    }
}
