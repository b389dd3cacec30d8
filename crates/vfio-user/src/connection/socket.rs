//! The syscalls of a connection, and the only `unsafe` of the protocol layer: `sendmsg` with
//! one `SCM_RIGHTS` control message, `recvmsg` that collects one, and `recv` of a body into a
//! vector's spare capacity.
//!
//! Received descriptors are wrapped in [`OwnedFd`] the moment they are read out of the control
//! buffer, so every path that drops them (an error, a truncated message) closes them. They are
//! received with `MSG_CMSG_CLOEXEC`, so a child process never inherits one by accident.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A kernel length (`size_t` or `socklen_t` depending on the libc) as `usize`.
fn usize_from<T: TryInto<usize>>(value: T) -> usize {
    value.try_into().unwrap_or(usize::MAX)
}

/// `CMSG_SPACE` for `fds` descriptors (0 for none). `fds` is at most
/// [`crate::limits::MAX_MSG_FDS_LIMIT`], so the byte count fits any integer type here.
fn cmsg_space(fds: usize) -> usize {
    if fds == 0 {
        return 0;
    }
    let data = u32::try_from(fds.saturating_mul(size_of::<RawFd>())).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE only computes a length from its argument; it touches no memory.
    usize_from(unsafe { libc::CMSG_SPACE(data) })
}

/// `CMSG_LEN` for `fds` descriptors.
fn cmsg_len(fds: usize) -> usize {
    let data = u32::try_from(fds.saturating_mul(size_of::<RawFd>())).unwrap_or(u32::MAX);
    // SAFETY: CMSG_LEN only computes a length from its argument; it touches no memory.
    usize_from(unsafe { libc::CMSG_LEN(data) })
}

/// A control buffer aligned for `cmsghdr`, with room for `max_fds` descriptors.
#[derive(Debug)]
pub(super) struct ControlBuffer {
    words: Vec<u64>,
    len: usize,
}

impl ControlBuffer {
    /// Room for `max_fds` descriptors (none: no buffer, and any descriptor sent is refused
    /// by the kernel with `MSG_CTRUNC`).
    pub(super) fn new(max_fds: usize) -> Self {
        let len = cmsg_space(max_fds);
        Self {
            words: vec![0; len.div_ceil(size_of::<u64>())],
            len,
        }
    }
}

/// Sends `bufs` in one `sendmsg`, with `fds` attached as `SCM_RIGHTS` if there are any.
/// Retries on `EINTR`; returns the bytes sent, which may be fewer than given.
pub(super) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let space = cmsg_space(fds.len());
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value (null pointers, zero
    // lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; sendmsg only reads them.
    msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
    msg.msg_iovlen = bufs.len() as _;
    if space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points to `space` = CMSG_SPACE(fds * 4) zeroed, 8-byte aligned
        // bytes we own, so CMSG_FIRSTHDR returns the (non-null) start of the buffer and the
        // header plus CMSG_LEN(fds * 4) bytes of data written below lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = cmsg_len(fds.len()) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points to the iovecs of `bufs` and to `control`, both alive and
        // unchanged for the duration of the call; the kernel only reads them. MSG_NOSIGNAL
        // turns a closed peer into EPIPE instead of SIGPIPE.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match usize::try_from(sent) {
            Ok(sent) => return Ok(sent),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// Receives into `buf` with one `recvmsg` (retrying on `EINTR`), appending the descriptors that
/// came with the bytes to `fds`. Returns the bytes received (0 at end of stream) and whether
/// the kernel truncated the control data (`MSG_CTRUNC`: more descriptors were sent than
/// `control` holds; the kernel closed the ones that did not fit).
pub(super) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut ControlBuffer,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if control.len > 0 {
            msg.msg_control = control.words.as_mut_ptr().cast();
            msg.msg_controllen = control.len as _;
        }
        // SAFETY: `iov` describes `buf` and `msg_control` `control.len` bytes of
        // `control.words`; both are exclusively borrowed and outlive the call, and the kernel
        // writes within the lengths given.
        let received =
            unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        let Ok(received) = usize::try_from(received) else {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        };
        // SAFETY: `msg` is as the successful recvmsg above left it.
        unsafe { take_fds(&msg, fds) };
        return Ok((received, msg.msg_flags & libc::MSG_CTRUNC != 0));
    }
}

/// Wraps every descriptor of every `SCM_RIGHTS` control message of `msg` in an [`OwnedFd`].
///
/// # Safety
///
/// `msg` must be the header of a successful `recvmsg`: its `msg_control` and `msg_controllen`
/// describe control messages the kernel wrote into a buffer aligned for `cmsghdr`, and the
/// descriptors in them were installed into this process by that call and are owned by nothing
/// else.
unsafe fn take_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    let start = msg.msg_control.cast::<u8>().cast_const();
    let end = start.wrapping_add(usize_from(msg.msg_controllen));
    // SAFETY: per the contract, the control buffer holds well-formed control messages and
    // CMSG_FIRSTHDR/CMSG_NXTHDR never return a header that does not fit in msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points to a complete, aligned `cmsghdr` in the buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA of a header inside the buffer points just after that header.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast_const();
            let payload = usize_from(header.cmsg_len).saturating_sub(cmsg_len(0));
            // Never read past the bytes the kernel said it wrote.
            let available = end.addr().saturating_sub(data.addr());
            let count = payload.min(available) / size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: `i * 4 + 4 <= available`, so the read is inside the buffer.
                let raw = unsafe {
                    data.add(i * size_of::<RawFd>())
                        .cast::<RawFd>()
                        .read_unaligned()
                };
                if raw >= 0 {
                    // SAFETY: the kernel just installed `raw` in this process for this message,
                    // and it is wrapped exactly once, here.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR: the result is null or a header inside the buffer.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Receives at most `max` bytes (one `recv`, retrying on `EINTR`) into the spare capacity of
/// `body`, whose length grows by the bytes received; returns them (0 at end of stream). No
/// byte of the spare capacity needs to be initialized first.
pub(super) fn recv_append(
    socket: BorrowedFd<'_>,
    body: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    body.reserve(max);
    let spare = body.spare_capacity_mut();
    let len = max.min(spare.len());
    loop {
        // SAFETY: `spare` is the vector's own, exclusively borrowed, allocated capacity of at
        // least `len` bytes; the kernel writes at most `len` bytes there and reads nothing.
        let received = unsafe { libc::recv(socket.as_raw_fd(), spare.as_mut_ptr().cast(), len, 0) };
        match usize::try_from(received) {
            Ok(n) => {
                let new_len = body.len().saturating_add(n.min(len));
                // SAFETY: the kernel initialized the `n <= len` bytes after the old length, and
                // `new_len` is within the capacity reserved above.
                unsafe { body.set_len(new_len) };
                return Ok(n);
            }
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}
