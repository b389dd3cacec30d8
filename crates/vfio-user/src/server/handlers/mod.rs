//! One small handler per command. Each checks what the protocol defines, calls the backend or
//! the container, and sends its reply; an `Err` is answered by the session with its errno.
//!
//! | command | handler | delegated to |
//! |---|---|---|
//! | VERSION (again) | [`device::version_again`] | — (EINVAL) |
//! | DMA_MAP | [`dma::map`] | container (`Backing::Fd` or remote DMA) |
//! | DMA_UNMAP | [`dma::unmap`] | container |
//! | DEVICE_GET_INFO | [`device::info`] | backend |
//! | DEVICE_GET_REGION_INFO | [`region::info`] | backend |
//! | DEVICE_GET_REGION_IO_FDS | [`region::io_fds`] | — (no sub-regions) |
//! | DEVICE_GET_IRQ_INFO | [`irq::info`] | backend |
//! | DEVICE_SET_IRQS | [`irq::set`] | backend |
//! | REGION_READ / REGION_WRITE | [`region::read`], [`region::write`] | backend |
//! | DMA_READ / DMA_WRITE | [`device::wrong_direction`] | — (EINVAL: server to client only) |
//! | DEVICE_RESET | [`device::reset`] | backend |
//! | DIRTY_PAGES | [`dirty::dirty_pages`] | container |

mod device;
mod dirty;
mod dma;
mod irq;
mod region;

use std::os::fd::OwnedFd;

use super::backend::Backend;
use super::session::Session;
use crate::errno::Errno;
use crate::message::{Header, Request};

/// Runs the handler of `request`.
pub(super) fn dispatch<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: Request<'_>,
    fds: Vec<OwnedFd>,
) -> Result<(), Errno> {
    match request {
        Request::Version(_) => device::version_again(),
        Request::DmaMap(map) => dma::map(s, header, &map, fds),
        Request::DmaUnmap(unmap) => dma::unmap(s, header, &unmap),
        Request::DeviceGetInfo(_) => device::info(s, header),
        Request::DeviceGetRegionInfo(info) => region::info(s, header, &info),
        Request::DeviceGetRegionIoFds(io) => region::io_fds(s, header, &io),
        Request::DeviceGetIrqInfo(info) => irq::info(s, header, &info),
        Request::DeviceSetIrqs(set) => irq::set(s, header, &set, fds),
        Request::RegionRead(access) => region::read(s, header, &access),
        Request::RegionWrite(data) => region::write(s, header, &data),
        Request::DmaRead(_) | Request::DmaWrite(_) => device::wrong_direction(),
        Request::DeviceReset => device::reset(s, header),
        Request::DirtyPages(request) => dirty::dirty_pages(s, header, &request),
    }
}
