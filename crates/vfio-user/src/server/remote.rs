//! Client memory the server could not map (DMA_MAP without an fd), reached by sending
//! `VFIO_USER_DMA_READ` / `VFIO_USER_DMA_WRITE` to the client.
//!
//! The container calls [`RemoteDma`] from whichever thread the device accesses guest memory
//! on: the server thread in the middle of a command, or a device thread at any time. Each
//! access is split into messages of at most the client's `max_data_xfer_size`, sent through
//! the shared [`Peer`], and the reply must echo `addr` and `count` (libvfio-user checks the
//! same, and answers EINVAL otherwise). The DMA_WRITE reply's `count` is 8 bytes, as
//! libvfio-user sends it (the spec's table says 4).

use std::io;
use std::sync::Arc;

use vfmig_iommu::RemoteMemory;
use vfmig_memory::Iova;
use zerocopy::IntoBytes;

use crate::errno::Errno;
use crate::message::{Command, DmaAccess, Reply, Request};
use crate::peer::Peer;

/// The accessor of one fd-less mapping (see the module docs).
pub(super) struct RemoteDma {
    peer: Arc<Peer>,
    /// Largest `count` per message: the client's `max_data_xfer_size`, capped by ours.
    chunk: u64,
}

impl RemoteDma {
    pub(super) fn new(peer: Arc<Peer>, chunk: u64) -> Self {
        Self {
            peer,
            chunk: chunk.max(1),
        }
    }

    fn chunk_len(&self, remaining: usize) -> usize {
        usize::try_from(self.chunk).map_or(remaining, |chunk| chunk.min(remaining))
    }

    fn read_one(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let access = DmaAccess {
            addr,
            count: buf.len() as u64,
        };
        let received = self
            .peer
            .call(&Request::DmaRead(access), &[])
            .map_err(|err| err.errno())?;
        match received.reply(self.peer.limits())? {
            Reply::DmaRead(data) if data.access == access => {
                buf.copy_from_slice(&data.data);
                Ok(())
            }
            Reply::Error { errno, .. } => Err(Errno::from_wire(errno)),
            other => {
                tracing::debug!(?access, reply = ?other.command(), "DMA_READ reply does not echo the request");
                Err(Errno::EINVAL)
            }
        }
    }

    fn write_one(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let access = DmaAccess {
            addr,
            count: data.len() as u64,
        };
        let received = self
            .peer
            .call_parts(Command::DmaWrite, &[access.as_bytes(), data], &[])
            .map_err(|err| err.errno())?;
        match received.reply(self.peer.limits())? {
            Reply::DmaWrite(echo) if echo == access => Ok(()),
            Reply::Error { errno, .. } => Err(Errno::from_wire(errno)),
            other => {
                tracing::debug!(?access, reply = ?other.command(), "DMA_WRITE reply does not echo the request");
                Err(Errno::EINVAL)
            }
        }
    }
}

impl RemoteMemory for RemoteDma {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> io::Result<()> {
        let mut addr = iova.raw();
        let mut rest = buf;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at_mut(self.chunk_len(rest.len()));
            self.read_one(addr, piece)?;
            addr = addr.wrapping_add(piece.len() as u64);
            rest = tail;
        }
        Ok(())
    }

    fn write(&self, iova: Iova, data: &[u8]) -> io::Result<()> {
        let mut addr = iova.raw();
        let mut rest = data;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(self.chunk_len(rest.len()));
            self.write_one(addr, piece)?;
            addr = addr.wrapping_add(piece.len() as u64);
            rest = tail;
        }
        Ok(())
    }
}
