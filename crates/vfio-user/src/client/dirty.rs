//! Dirty pages: START, STOP and GET_BITMAP of any range of whole mappings.
//!
//! A GET is split into requests on the server's rules, which the client can follow because it
//! knows its layout: each request covers whole server mappings, consecutive ones sharing a
//! request while the span's bitmap fits [`Client::bitmap_capacity`] (or one per request:
//! [`Client::one_mapping_per_request`]). Each reply lands at its page offset in
//! the result. Mappings without an fd are never asked for (a server keeps no bitmap for them,
//! and libvfio-user answers EINVAL), nor does a request span one: the pages the server wrote
//! into them through DMA_WRITE, as recorded by the reader thread, are ORed in instead.

use vfmig_abi::uapi::VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
use vfmig_dirty::bitmap_bytes;
use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_memory::Iova;
use zerocopy::FromBytes;

use vfmig_dirty::words::{mask_tail, or_bytes_at};

use super::bits::copy_words;
use super::dma::check_range;
use super::error::ClientError;
use super::mappings::Covered;
use super::stats::Counters;
use super::{Client, lock};
use std::sync::atomic::Ordering::Relaxed;

use crate::connection::Tail;
use crate::message::{
    BitmapRange, BitmapRangeWire, Command, DirtyPages, DirtyPagesReply, DirtyPagesRequest,
    GET_BITMAP_PREFIX, Payload, Reply, Request,
};
use crate::peer::Sink;

/// Bytes of a GET_BITMAP reply before the bitmap.
const PREFIX: usize = 40;
const _: () = assert!(PREFIX as u64 == GET_BITMAP_PREFIX);

/// `argsz` of START and STOP.
const START_STOP_ARGSZ: u32 = 8;

/// Server mappings fetched with one GET_BITMAP: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
}

/// Groups the server mappings of `covered` (in IOVA order) into spans whose bitmap is at most
/// `cap_pages` bits. Mappings the server does not track are left out, and no span reaches
/// across one.
fn spans(covered: &[Covered], cap_pages: u64, one_each: bool) -> Vec<Span> {
    let shift = CONTAINER_PAGE_SIZE.shift();
    let mut spans: Vec<Span> = Vec::new();
    let mut joinable = false;
    for mapping in covered {
        if !mapping.server_tracked {
            joinable = false;
            continue;
        }
        for &(iova, size) in &mapping.pieces {
            let end = iova.saturating_add(size);
            match spans.last_mut() {
                Some(span) if joinable && !one_each && (end - span.start) >> shift <= cap_pages => {
                    span.end = end;
                }
                _ => spans.push(Span { start: iova, end }),
            }
            joinable = true;
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
            _ => Err(ClientError::unexpected(
                command,
                "START/STOP reply with a payload",
            )),
        }
    }

    /// The dirty bitmap of `[iova, iova + size)`, read and cleared: bit `n` of the result is
    /// page `iova + n * 4096`. Every mapping in the range must lie wholly inside it (holes
    /// are allowed, and read as clean); tracking must be on (EINVAL).
    pub fn dirty_pages_get(&self, iova: Iova, size: u64) -> Result<Vec<u64>, ClientError> {
        let mut out = Vec::new();
        self.dirty_pages_get_into(iova, size, &mut out)?;
        Ok(out)
    }

    /// [`Client::dirty_pages_get`] into `out`, whose contents are replaced and whose
    /// allocation is reused: a migration loop that syncs again and again allocates nothing.
    /// On error the contents of `out` are unspecified.
    pub fn dirty_pages_get_into(
        &self,
        iova: Iova,
        size: u64,
        out: &mut Vec<u64>,
    ) -> Result<(), ClientError> {
        let end = check_range(iova, size)?;
        let _layout = lock(&self.shared.layout);
        let covered = {
            let table = self.shared.table();
            if !table.tracking() {
                return Err(ClientError::invalid(
                    "dirty tracking is off; GET at",
                    iova.raw(),
                ));
            }
            table.covered(iova.raw(), end)?
        };
        let words = usize::try_from(bitmap_bytes(size >> CONTAINER_PAGE_SIZE.shift()) / 8)
            .map_err(|_| ClientError::invalid("bitmap too large for", size))?;
        let spans = spans(
            &covered,
            self.shared.bitmap_cap.saturating_mul(8),
            self.shared.one_mapping_per_request,
        );
        // One request for exactly the range: its bitmap is the result, copied once.
        let whole =
            matches!(spans.as_slice(), [span] if span.start == iova.raw() && span.end == end);
        if !whole {
            out.clear();
            out.resize(words, 0);
        }
        for span in spans {
            self.get_span(span, iova.raw(), whole, out)?;
        }
        let recorded = or_recorded(&covered, iova.raw(), out);
        self.shared
            .counters
            .recorded_pages
            .fetch_add(recorded, Relaxed);
        Ok(())
    }

    /// One GET_BITMAP of `span`: its bitmap replaces `out` (`whole`: the span is the range) or
    /// is ORed into it at the span's page offset from `base`.
    fn get_span(
        &self,
        span: Span,
        base: u64,
        whole: bool,
        out: &mut Vec<u64>,
    ) -> Result<(), ClientError> {
        let range = BitmapRange::new(span.start, span.end - span.start, CONTAINER_PAGE_SIZE);
        if whole {
            return self.get_whole(range, out);
        }
        let command = Command::DirtyPages;
        let request = Request::DirtyPages(DirtyPagesRequest::get_bitmap(range));
        Counters::bump(&self.shared.counters.bitmap_requests);
        let received = self.shared.call(&request, &[])?;
        match self.shared.reply(command, &received)? {
            Reply::DirtyPages(DirtyPagesReply::Bitmap {
                range: echoed,
                bits,
                ..
            }) if echoed == range => {
                let shift = CONTAINER_PAGE_SIZE.shift();
                or_bytes_at(
                    out,
                    (span.start - base) >> shift,
                    &bits,
                    range.size >> shift,
                );
            }
            _ => return Err(ClientError::unexpected(command, "not the bitmap asked for")),
        }
        self.shared.peer.recycle(received.body);
        Ok(())
    }

    /// One GET_BITMAP of the whole range: the reader thread receives the bitmap straight into
    /// `out`'s words (resized to the bitmap, so a reused buffer is not even cleared), and only
    /// the 40 bytes before it are checked here. A reply of another size (an error) is decoded
    /// as usual.
    fn get_whole(&self, range: BitmapRange, out: &mut Vec<u64>) -> Result<(), ClientError> {
        let command = Command::DirtyPages;
        let words = usize::try_from(range.bitmap_size / 8)
            .map_err(|_| ClientError::invalid("bitmap too large for", range.size))?;
        let mut tail = std::mem::take(out);
        if tail.len() != words {
            tail.clear();
            tail.resize(words, 0);
        }
        let sink = Sink { head: PREFIX, tail };
        let request = DirtyPagesRequest::get_bitmap(range)
            .encode()
            .map_err(|source| ClientError::Encode { command, source })?;
        Counters::bump(&self.shared.counters.bitmap_requests);
        let (received, tail) = self
            .shared
            .peer
            .call_into(
                command,
                &[&request],
                &[],
                Some(sink),
                self.shared.peer.reply_timeout(),
            )
            .map_err(|err| ClientError::from_call(command, err))?;
        match tail {
            Tail::Filled(words) => {
                *out = words;
                check_prefix(&received.body, &range)?;
                mask_tail(out, range.size >> CONTAINER_PAGE_SIZE.shift());
                Ok(())
            }
            Tail::Unused(words) => {
                *out = words;
                // Not a bitmap of the size asked for: an error reply, or a malformed one.
                match self.shared.reply(command, &received)? {
                    Reply::DirtyPages(DirtyPagesReply::Bitmap {
                        range: echoed,
                        bits,
                        ..
                    }) if echoed == range => {
                        copy_words(out, &bits, range.size >> CONTAINER_PAGE_SIZE.shift());
                        Ok(())
                    }
                    _ => Err(ClientError::unexpected(command, "not the bitmap asked for")),
                }
            }
            Tail::None => Err(ClientError::unexpected(command, "the bitmap went missing")),
        }
    }
}

/// Checks the 40 bytes before a bitmap received in place: GET_BITMAP, the range asked for.
fn check_prefix(head: &[u8], range: &BitmapRange) -> Result<(), ClientError> {
    let command = Command::DirtyPages;
    let (prefix, rest) = DirtyPages::read_from_prefix(head)
        .map_err(|_| ClientError::unexpected(command, "bitmap reply too short"))?;
    let echoed = BitmapRangeWire::read_from_bytes(rest)
        .map_err(|_| ClientError::unexpected(command, "bitmap reply too short"))?;
    if prefix.flags != VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP || echoed != range.to_wire() {
        return Err(ClientError::unexpected(command, "not the bitmap asked for"));
    }
    Ok(())
}

/// ORs the pages recorded as written by DMA_WRITE into `out`, clearing the records; returns
/// how many there were (see [`super::ClientStats::recorded_pages`]).
fn or_recorded(covered: &[Covered], base: u64, out: &mut [u64]) -> u64 {
    let shift = CONTAINER_PAGE_SIZE.shift();
    let mut pages = 0;
    for mapping in covered {
        if let Some(written) = &mapping.written {
            pages += written.count();
            if let Err(err) =
                written.read_and_clear(0, written.pages(), out, (mapping.iova - base) >> shift)
            {
                tracing::warn!(%err, "reporting pages written by DMA_WRITE failed");
            }
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn covered(pieces: &[(u64, u64, bool)]) -> Vec<Covered> {
        pieces
            .iter()
            .map(|&(iova, size, server_tracked)| Covered {
                iova,
                pieces: vec![(iova, size)],
                server_tracked,
                written: None,
            })
            .collect()
    }

    #[test]
    fn small_mappings_share_a_request_while_the_bitmap_fits() {
        let pieces = covered(&[
            (0, GIB, true),
            (GIB, GIB, true),
            (4 * GIB, GIB, true),
            (5 * GIB, GIB, true),
        ]);
        let cap = (3 * GIB) >> 12;
        assert_eq!(
            spans(&pieces, cap, false),
            [
                Span {
                    start: 0,
                    end: 2 * GIB
                },
                Span {
                    start: 4 * GIB,
                    end: 6 * GIB
                }
            ]
        );
    }

    #[test]
    fn one_mapping_per_request_when_asked() {
        let pieces = covered(&[(0, GIB, true), (GIB, GIB, true)]);
        assert_eq!(spans(&pieces, u64::MAX, true).len(), 2);
    }

    #[test]
    fn a_mapping_without_fd_is_in_no_request_and_splits_its_neighbours() {
        let pieces = covered(&[(0, GIB, true), (GIB, GIB, false), (2 * GIB, GIB, true)]);
        assert_eq!(
            spans(&pieces, u64::MAX, false),
            [
                Span { start: 0, end: GIB },
                Span {
                    start: 2 * GIB,
                    end: 3 * GIB
                }
            ]
        );
    }
}
