//! DIRTY_PAGES: START, STOP and GET_BITMAP, delegated to the container.

use vfmig_abi::uapi::VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
use vfmig_iommu::{BitmapRequest, GetBitmapRange};
use zerocopy::IntoBytes;

use super::super::backend::Backend;
use super::super::negotiate::max_bitmap_size;
use super::super::session::Session;
use crate::errno::Errno;
use crate::message::{
    BitmapRange, DirtyPages, DirtyPagesReply, DirtyPagesRequest, GET_BITMAP_PREFIX, Header, Reply,
};

/// `VFIO_USER_DIRTY_PAGES`. A device without migration support answers ENOTSUP to all of it.
pub(super) fn dirty_pages<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: &DirtyPagesRequest,
) -> Result<(), Errno> {
    if !s.backend.migration_capable() {
        return Err(Errno::ENOTSUP);
    }
    match *request {
        DirtyPagesRequest::Start { .. } => {
            s.container.start_dirty_tracking()?;
            s.reply(header, &Reply::DirtyPages(DirtyPagesReply::Done));
        }
        DirtyPagesRequest::Stop { .. } => {
            s.container.stop_dirty_tracking();
            s.reply(header, &Reply::DirtyPages(DirtyPagesReply::Done));
        }
        DirtyPagesRequest::GetBitmap { argsz, range } => get_bitmap(s, header, argsz, &range)?,
    }
    Ok(())
}

/// GET_BITMAP: `argsz` above what a reply of ours may carry is EINVAL; below what this range
/// needs, the 8-byte prefix alone with the `argsz` needed; else the range echoed and its
/// bitmap, read and cleared.
fn get_bitmap<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    argsz: u32,
    range: &BitmapRange,
) -> Result<(), Errno> {
    let max_bitmap = max_bitmap_size(&s.limits);
    if u64::from(argsz) > GET_BITMAP_PREFIX.saturating_add(max_bitmap) {
        tracing::debug!(argsz, max_bitmap, "GET_BITMAP argsz above the limit");
        return Err(Errno::EINVAL);
    }
    let needed = u32::try_from(GET_BITMAP_PREFIX.saturating_add(range.bitmap_size))
        .map_err(|_| Errno::EINVAL)?;
    if argsz < needed {
        s.reply(
            header,
            &Reply::DirtyPages(DirtyPagesReply::TooSmall { argsz: needed }),
        );
        return Ok(());
    }
    // The decoder checked the size is the whole words the range calls for.
    let words = usize::try_from(range.bitmap_size / 8).map_err(|_| Errno::EINVAL)?;
    let get = GetBitmapRange {
        iova: range.iova,
        size: range.size,
        bitmap: BitmapRequest {
            pgsize: range.pgsize,
            size: range.bitmap_size,
        },
    };
    let container = s.container;
    let result = container.get_dirty_bitmap(&get, s.bitmap_buffer(words));
    if result.is_ok() {
        let prefix = DirtyPages {
            argsz: needed,
            flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        };
        let bits = s.bitmap_words(words).as_bytes();
        let range = range.to_wire();
        s.reply_parts(header, &[prefix.as_bytes(), range.as_bytes(), bits]);
    }
    s.rezero_bitmap(words);
    Ok(result?)
}
