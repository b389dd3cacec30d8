//! Dirty pages: START, STOP and GET_BITMAP of any range of whole mappings.
//!
//! A GET is split into requests on the server's rules, which the client can follow because it
//! knows its layout: each request covers whole server mappings, consecutive ones sharing a
//! request while the span's bitmap fits [`Client::bitmap_capacity`] (or one per request with
//! [`super::ClientConfig::one_mapping_per_request`]). Each reply lands at its page offset in
//! the result, then the pages the server wrote through DMA_WRITE into fd-less mappings, as
//! recorded by the reader thread, are ORed in.

use vfmig_abi::dirty::dirty_bitmap_bytes;
use vfmig_iommu::{CONTAINER_PAGE_SIZE, Iova};

use super::bits::{or_into, to_words};
use super::dma::check_range;
use super::error::ClientError;
use super::mappings::Covered;
use super::{Client, lock};
use crate::message::{BitmapRange, Command, DirtyPagesReply, DirtyPagesRequest, Reply, Request};

/// `argsz` of START and STOP.
const START_STOP_ARGSZ: u32 = 8;

/// Server mappings fetched with one GET_BITMAP: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
}

/// Groups server mappings (in IOVA order) into spans whose bitmap is at most `cap_pages` bits.
fn spans(pieces: impl IntoIterator<Item = (u64, u64)>, cap_pages: u64, one_each: bool) -> Vec<Span> {
    let shift = CONTAINER_PAGE_SIZE.shift();
    let mut spans: Vec<Span> = Vec::new();
    for (iova, size) in pieces {
        let end = iova.saturating_add(size);
        match spans.last_mut() {
            Some(span) if !one_each && (end - span.start) >> shift <= cap_pages => span.end = end,
            _ => spans.push(Span { start: iova, end }),
        }
    }
    spans
}

impl Client {
    /// `VFIO_USER_DIRTY_PAGES` START. Pages the server writes through DMA_WRITE into fd-less
    /// mappings are recorded from just before the request is sent.
    pub fn dirty_pages_start(&self) -> Result<(), ClientError> {
        let _layout = lock(&self.shared.layout);
        let was_on = self.shared.table().start_recording();
        let result = self.start_stop(DirtyPagesRequest::Start {
            argsz: START_STOP_ARGSZ,
        });
        if result.is_err() && !was_on {
            self.shared.table().stop_recording();
        }
        result
    }

    /// `VFIO_USER_DIRTY_PAGES` STOP; what was recorded is forgotten.
    pub fn dirty_pages_stop(&self) -> Result<(), ClientError> {
        let _layout = lock(&self.shared.layout);
        self.start_stop(DirtyPagesRequest::Stop {
            argsz: START_STOP_ARGSZ,
        })?;
        self.shared.table().stop_recording();
        Ok(())
    }

    fn start_stop(&self, request: DirtyPagesRequest) -> Result<(), ClientError> {
        let command = Command::DirtyPages;
        let received = self.shared.call(&Request::DirtyPages(request), &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DirtyPages(DirtyPagesReply::Done) => Ok(()),
            _ => Err(ClientError::unexpected(command, "START/STOP reply with a payload")),
        }
    }

    /// The dirty bitmap of `[iova, iova + size)`, read and cleared: bit `n` of the result is
    /// page `iova + n * 4096`. Every mapping in the range must lie wholly inside it (holes
    /// are allowed, and read as clean); tracking must be on (EINVAL).
    pub fn dirty_pages_get(&self, iova: Iova, size: u64) -> Result<Vec<u64>, ClientError> {
        let end = check_range(iova, size)?;
        let _layout = lock(&self.shared.layout);
        let covered = {
            let table = self.shared.table();
            if !table.tracking() {
                return Err(ClientError::invalid("dirty tracking is off; GET at", iova.raw()));
            }
            table.covered(iova.raw(), end)?
        };
        let shift = CONTAINER_PAGE_SIZE.shift();
        let pages = size >> shift;
        let words = usize::try_from(dirty_bitmap_bytes(pages) / 8)
            .map_err(|_| ClientError::invalid("bitmap too large for", size))?;
        let spans = spans(
            covered.iter().flat_map(|m| m.pieces.iter().copied()),
            self.shared.bitmap_cap.saturating_mul(8),
            self.shared.config.one_mapping_per_request,
        );
        let mut out: Option<Vec<u64>> = None;
        for span in &spans {
            self.get_span(*span, iova.raw(), pages, words, spans.len(), &mut out)?;
        }
        let mut out = out.unwrap_or_else(|| vec![0; words]);
        or_recorded(&covered, iova.raw(), &mut out);
        Ok(out)
    }

    /// One GET_BITMAP of `span`, placed into `out` at its page offset from `base`.
    fn get_span(
        &self,
        span: Span,
        base: u64,
        pages: u64,
        words: usize,
        spans: usize,
        out: &mut Option<Vec<u64>>,
    ) -> Result<(), ClientError> {
        let command = Command::DirtyPages;
        let shift = CONTAINER_PAGE_SIZE.shift();
        let range = BitmapRange::new(span.start, span.end - span.start, CONTAINER_PAGE_SIZE.bytes());
        let request = Request::DirtyPages(DirtyPagesRequest::get_bitmap(range));
        let received = self.shared.call(&request, &[])?;
        let bits = match self.shared.reply(command, &received)? {
            Reply::DirtyPages(DirtyPagesReply::Bitmap {
                range: echoed,
                bits,
                ..
            }) if echoed == range => bits,
            _ => return Err(ClientError::unexpected(command, "not the bitmap asked for")),
        };
        let span_pages = range.size >> shift;
        match out {
            // One request for the whole range: its bitmap is the result.
            None if spans == 1 && span.start == base && span_pages == pages => {
                let mut words_out = to_words(&bits, pages);
                words_out.resize(words, 0);
                *out = Some(words_out);
            }
            _ => {
                let out = out.get_or_insert_with(|| vec![0; words]);
                or_into(out, (span.start - base) >> shift, &bits, span_pages);
            }
        }
        Ok(())
    }
}

/// ORs the pages recorded as written by DMA_WRITE into `out`, clearing the records.
fn or_recorded(covered: &[Covered], base: u64, out: &mut [u64]) {
    let shift = CONTAINER_PAGE_SIZE.shift();
    for mapping in covered {
        if let Some(written) = &mapping.written
            && let Err(err) =
                written.read_and_clear(0, written.pages(), out, (mapping.iova - base) >> shift)
        {
            tracing::warn!(%err, "reporting pages written by DMA_WRITE failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn small_mappings_share_a_request_while_the_bitmap_fits() {
        let pieces = [(0, GIB), (GIB, GIB), (4 * GIB, GIB), (5 * GIB, GIB)];
        let cap = (3 * GIB) >> 12;
        assert_eq!(
            spans(pieces, cap, false),
            [
                Span { start: 0, end: 2 * GIB },
                Span { start: 4 * GIB, end: 6 * GIB }
            ]
        );
    }

    #[test]
    fn one_mapping_per_request_when_asked() {
        let pieces = [(0, GIB), (GIB, GIB)];
        assert_eq!(spans(pieces, u64::MAX, true).len(), 2);
    }
}
