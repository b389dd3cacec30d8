//! The client's side of DMA_READ / DMA_WRITE: guest memory the VMM gives it for mappings made
//! without an fd, served by the reader thread whenever the server asks, including while other
//! threads wait for replies.

use zerocopy::IntoBytes;

use vfmig_iommu::Prot;
use vfmig_memory::Iova;

use super::Shared;
use super::stats::Counters;
use crate::connection::Received;
use crate::errno::Errno;
use crate::message::{DmaAccess, DmaData, Header, Reply, Request};
use crate::peer::Delivery;

/// Guest memory the server reaches through DMA_READ / DMA_WRITE.
///
/// Called on the client's reader thread: an implementation must not wait for anything the
/// client itself does (in particular not for a reply of this client).
pub trait ClientMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `iova` (the server's DMA_READ).
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `iova` (the server's DMA_WRITE).
    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), Errno>;
}

/// Handles one message that is not a reply: DMA_READ / DMA_WRITE are served, anything else is
/// answered EINVAL (a server sends no other command). Always goes on reading.
pub(super) fn serve(shared: &Shared, item: Delivery) -> bool {
    match item {
        Ok(received) => serve_command(shared, &received),
        Err(err) => {
            tracing::debug!(%err, "message from the server not read");
            if let Some(header) = err.header() {
                answer_error(shared, header, Errno::from(&err));
            }
        }
    }
    true
}

fn answer_error(shared: &Shared, header: &Header, errno: Errno) {
    if let Err(err) = shared.peer.reply_error(header, errno) {
        tracing::debug!(%err, "error reply to the server not sent");
    }
}

fn serve_command(shared: &Shared, received: &Received) {
    let header = &received.header;
    let result = match received.request(shared.peer.limits()) {
        Ok(Request::DmaRead(access)) => dma_read(shared, header, &access),
        Ok(Request::DmaWrite(data)) => dma_write(shared, header, &data),
        Ok(other) => {
            tracing::debug!(command = %other.command(), "the server sent a client command");
            Err(Errno::EINVAL)
        }
        Err(err) => Err(Errno::from(err)),
    };
    if let Err(errno) = result {
        answer_error(shared, header, errno);
    }
}

fn dma_read(shared: &Shared, header: &Header, access: &DmaAccess) -> Result<(), Errno> {
    Counters::bump(&shared.counters.dma_reads);
    let target = shared
        .table()
        .dma_target(access.addr, access.count, Prot::READ)?;
    // `count` was checked against our max_data_xfer_size when the request was decoded.
    let len = usize::try_from(access.count).map_err(|_| Errno::EINVAL)?;
    let mut data = vec![0; len];
    target.memory.read(Iova(access.addr), &mut data)?;
    if let Err(err) = shared.peer.reply_parts(header, &[access.as_bytes(), &data]) {
        tracing::debug!(%err, "DMA_READ reply not sent");
    }
    Ok(())
}

fn dma_write(shared: &Shared, header: &Header, data: &DmaData<'_>) -> Result<(), Errno> {
    Counters::bump(&shared.counters.dma_writes);
    let access = data.access;
    let target = shared
        .table()
        .dma_target(access.addr, access.count, Prot::WRITE)?;
    target.memory.write(Iova(access.addr), &data.data)?;
    // Recorded after the write, so whoever reads the bit sees the data.
    if let Some(written) = &target.written
        && let Err(err) = written.mark_bytes(target.offset, access.count)
    {
        tracing::warn!(%err, "recording a DMA_WRITE failed");
    }
    if let Err(err) = shared.peer.reply(header, &Reply::DmaWrite(access), &[]) {
        tracing::debug!(%err, "DMA_WRITE reply not sent");
    }
    Ok(())
}
