//! The fuzz harness, shared by the cargo-fuzz targets (nightly) and the corpus replay test
//! `tests/corpus_replay.rs` (stable), so both run the same checks on the same inputs.
//!
//! An input is one byte giving the number of file descriptors the message arrived with
//! (modulo 8), then the message: a 16-byte header and its body.
//!
//! Checked: decoding never panics; and a message that decodes, re-encodes (if it encodes) to
//! bytes that decode to the same message.

use vfmig_vfio_user::Limits;
use vfmig_vfio_user::message::{Reply, Request};

/// Splits an input into the descriptor count and the message.
fn split(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&fds, message) = data.split_first()?;
    Some((usize::from(fds % 8), message))
}

/// Server side: a command as a server receives it. Returns whether it decoded.
pub(crate) fn decode_request(data: &[u8]) -> bool {
    let Some((fds, message)) = split(data) else {
        return false;
    };
    let limits = Limits::default();
    let Ok((_header, request)) = Request::parse(message, fds, &limits) else {
        return false;
    };
    if let Ok(body) = request.encode() {
        let again = Request::decode(request.command(), &body, fds, &limits);
        assert_eq!(
            again.ok().as_ref(),
            Some(&request),
            "re-encoding changed the request"
        );
    }
    true
}

/// Client side: a reply as a client receives it. Returns whether it decoded.
pub(crate) fn decode_reply(data: &[u8]) -> bool {
    let Some((fds, message)) = split(data) else {
        return false;
    };
    let limits = Limits::default();
    let Ok((header, reply)) = Reply::parse(message, fds, &limits) else {
        return false;
    };
    if let Ok(body) = reply.encode() {
        let again = Reply::decode(reply.command(), header.error(), &body, fds);
        assert_eq!(
            again.ok().as_ref(),
            Some(&reply),
            "re-encoding changed the reply"
        );
    }
    true
}
