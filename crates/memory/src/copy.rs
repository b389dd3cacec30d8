//! Bulk copies with non-temporal stores, behind one function per architecture.

/// Copies `src` to `dst` with non-temporal stores for the 16-byte-aligned middle.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn copy_streaming(dst: *mut u8, src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const LINE: usize = 64;
    let len = src.len();
    let head = dst.align_offset(16).min(len);
    let body = (len - head) / LINE * LINE;
    // SAFETY: every range below lies inside `[0, len)` of both buffers, which the caller
    // guarantees are valid and disjoint; `dst + head` is 16-byte aligned, as the streaming
    // stores need; SSE2 is part of x86_64.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
        let (from, to) = (src.as_ptr().add(head), dst.add(head));
        let mut at = 0;
        while at < body {
            for lane in (0..LINE).step_by(16) {
                let value = _mm_loadu_si128(from.add(at + lane).cast::<__m128i>());
                _mm_stream_si128(to.add(at + lane).cast::<__m128i>(), value);
            }
            at += LINE;
        }
        // Streaming stores are weakly ordered: fence them before anyone may look.
        _mm_sfence();
        let done = head + body;
        std::ptr::copy_nonoverlapping(src.as_ptr().add(done), dst.add(done), len - done);
    }
}

/// Copies `src` to `dst`.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn copy_streaming(dst: *mut u8, src: &[u8]) {
    // SAFETY: as the caller guarantees.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
}
