//! DMA_MAP and DMA_UNMAP, delegated to the container.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use vfmig_iommu::{Backing, BitmapRequest, UnmapRequest};
use zerocopy::IntoBytes;

use super::super::backend::Backend;
use super::super::negotiate::max_bitmap_size;
use super::super::remote::RemoteDma;
use super::super::session::Session;
use crate::errno::Errno;
use crate::message::{Bitmap, BitmapWire, DmaMap, DmaUnmapReply, DmaUnmapRequest, Header, Reply};

/// `VFIO_USER_DMA_MAP`: with an fd the container maps it into this process; without one the
/// device reaches the memory through DMA_READ / DMA_WRITE to the client, in pieces of the
/// client's `max_data_xfer_size` (capped by ours).
pub(super) fn map<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    map: &DmaMap,
    mut fds: Vec<OwnedFd>,
) -> Result<(), Errno> {
    // The request was decoded with at most one fd.
    let backing = match fds.pop() {
        Some(fd) => Backing::Fd {
            fd,
            offset: map.offset,
        },
        None => {
            let chunk = s.client.max_data_xfer_size.min(s.limits.max_data_xfer_size);
            Backing::Remote(Arc::new(RemoteDma::new(Arc::clone(s.peer), chunk)))
        }
    };
    s.container
        .map_dma(map.flags, map.addr, map.size, backing)?;
    s.reply(header, &Reply::DmaMap);
    Ok(())
}

/// `VFIO_USER_DMA_UNMAP`: the request's 24 bytes echoed, and with GET_DIRTY_BITMAP the bitmap
/// header and the bitmap of the range (read from the mappings before they go).
pub(super) fn unmap<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: &DmaUnmapRequest,
) -> Result<(), Errno> {
    let unmap = request.unmap;
    let container_request = UnmapRequest {
        flags: unmap.flags,
        iova: unmap.addr,
        size: unmap.size,
        bitmap: request.bitmap.map(|b| BitmapRequest {
            pgsize: b.pgsize,
            size: b.size,
        }),
    };
    let Some(bitmap) = request.bitmap else {
        s.container.unmap_dma(&container_request, None)?;
        let reply = DmaUnmapReply {
            unmap,
            bitmap: None,
        };
        s.reply(header, &Reply::DmaUnmap(reply));
        return Ok(());
    };
    let words = bitmap_words(&bitmap, unmap.argsz, max_bitmap_size(&s.limits))?;
    let container = s.container;
    let result = container.unmap_dma(&container_request, Some(s.bitmap_buffer(words)));
    if result.is_ok() {
        let bits = s.bitmap_words(words).as_bytes();
        let wire = bitmap.to_wire();
        s.reply_parts(header, &[unmap.as_bytes(), wire.as_bytes(), bits]);
    }
    s.rezero_bitmap(words);
    result?;
    Ok(())
}

/// Words of the bitmap of an unmap, refusing (EINVAL) one above what a reply of ours may carry,
/// and an `argsz` above that too (libvfio-user's 1 MiB rule, at our limit).
fn bitmap_words(bitmap: &Bitmap, argsz: u32, max_bitmap: u64) -> Result<usize, Errno> {
    let max_argsz = max_bitmap.saturating_add((size_of::<BitmapWire>() + 24) as u64);
    if bitmap.size > max_bitmap || u64::from(argsz) > max_argsz {
        tracing::debug!(
            bitmap = bitmap.size,
            argsz,
            max_bitmap,
            "unmap bitmap too large"
        );
        return Err(Errno::EINVAL);
    }
    // The decoder checked the size is the whole words the range calls for.
    usize::try_from(bitmap.size / 8).map_err(|_| Errno::EINVAL)
}
