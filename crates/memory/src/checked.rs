//! Copies that a vanished page cannot turn into a signal: [`Mmap::read_checked`] and
//! [`Mmap::write_checked`].
//!
//! A shared mapping of a file another process owns can lose pages under this one: the owner
//! shrinks the file, and a load or store past the new end raises SIGBUS, which ends the process.
//! A copy made by the kernel does not: `process_vm_readv` / `process_vm_writev` on this very
//! process fault each page in as the copy reaches it (as `get_user_pages` does for a DMA pin)
//! and report a page that cannot be faulted in as EFAULT. The copy costs a system call and a
//! page-table walk per page; it is for mappings whose file may shrink, while a mapping of a
//! file sealed against shrinking keeps the plain copies of [`Mmap::read`] / [`Mmap::write`].
//!
//! Why not the other ways:
//!
//! * Checking the file's size before each copy (`fstat`) leaves a window between the check and
//!   the copy in which the owner can still shrink it: it makes the signal rarer, not impossible.
//! * `pread` / `pwrite` on the file descriptor are kernel-checked too, but a `pwrite` past the
//!   end grows the owner's file back, they need the descriptor kept and a file that supports
//!   them, and they see nothing of a mapping that is not a plain file's.
//! * A SIGBUS handler that jumps out of the faulting copy needs process-wide signal state and
//!   unwinding through a copy, which Rust cannot express soundly.

use std::io;

use crate::mmap::Mmap;

/// One `process_vm_readv` or `process_vm_writev` of `len` bytes between `local` (a buffer of
/// ours) and `remote` (an address in a mapping of ours); the count moved.
type Transfer = unsafe extern "C" fn(
    libc::pid_t,
    *const libc::iovec,
    libc::c_ulong,
    *const libc::iovec,
    libc::c_ulong,
    libc::c_ulong,
) -> isize;

/// Moves `len` bytes between `local` and `remote` with `transfer`, going on after a short
/// count; EFAULT (or the call's errno) at the first byte that cannot be moved, the bytes before
/// it moved.
///
/// # Safety
/// `local` and `remote` must each be valid for `len` bytes, of the direction `transfer` uses
/// them in, and must not overlap.
unsafe fn transfer_all(
    transfer: Transfer,
    local: *mut u8,
    remote: *mut u8,
    len: usize,
) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut done = 0;
    while done < len {
        let iov = |base: *mut u8| libc::iovec {
            iov_base: base.wrapping_add(done).cast(),
            iov_len: len - done,
        };
        let (l, r) = (iov(local), iov(remote));
        // SAFETY: both iovecs describe the rest of the caller's ranges, valid as the caller
        // guarantees; the kernel moves bytes between them only, and reports a page it cannot
        // fault in as EFAULT rather than with a signal.
        let n = unsafe { transfer(pid, &l, 1, &r, 1, 0) };
        match usize::try_from(n) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EFAULT)),
            Ok(n) => done += n,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

impl Mmap {
    /// Copies `buf.len()` bytes from `offset` into `buf` as [`Mmap::read`] does, but through the
    /// kernel: a page that cannot be faulted in (past the end of a file that shrank) fails the
    /// copy with EFAULT instead of raising SIGBUS; the bytes before it are copied. EINVAL if
    /// the range is outside.
    pub fn read_checked(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let src = self.ptr_at(offset, buf.len())?;
        // SAFETY: `[offset, offset + buf.len())` lies inside the live mapping (checked) and is
        // read only; `buf` is a distinct Rust buffer of that length, written only.
        unsafe { transfer_all(libc::process_vm_readv, buf.as_mut_ptr(), src, buf.len()) }
    }

    /// Copies `data` to `offset` as [`Mmap::write`] does, but through the kernel: a page that
    /// cannot be faulted in fails the copy with EFAULT instead of raising SIGBUS; the bytes
    /// before it are written. EINVAL if the range is outside, EACCES if the mapping is
    /// read-only.
    pub fn write_checked(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let dst = self.writable_at(offset, data.len())?;
        // SAFETY: `[offset, offset + data.len())` lies inside the live, writable mapping
        // (checked), where no Rust object lives; `data` is a distinct buffer, only read
        // (process_vm_writev reads the local side).
        unsafe {
            transfer_all(
                libc::process_vm_writev,
                data.as_ptr().cast_mut(),
                dst,
                data.len(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use crate::{Access, Mmap, host_page_size, memfd};

    #[test]
    fn checked_copies_move_every_byte() {
        let page = host_page_size();
        let file = memfd(c"t", 3 * page).unwrap();
        let m = Mmap::shared(file.as_fd(), 0, 3 * page, Access::ReadWrite).unwrap();
        let data: Vec<u8> = (0..2 * page + 17)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        m.write_checked(5, &data).unwrap();
        let mut plain = vec![0; data.len()];
        m.read(5, &mut plain).unwrap();
        assert_eq!(plain, data);
        let mut checked = vec![0; data.len()];
        m.read_checked(5, &mut checked).unwrap();
        assert_eq!(checked, data);
    }

    #[test]
    fn a_checked_read_past_a_shrunk_file_is_efault_and_keeps_the_bytes_before() {
        let page = host_page_size();
        let file = memfd(c"t", 2 * page).unwrap();
        let m = Mmap::shared(file.as_fd(), 0, 2 * page, Access::ReadWrite).unwrap();
        m.write(page - 4, b"kept").unwrap();
        file.set_len(page as u64).unwrap();
        let mut buf = [0u8; 8];
        let err = m.read_checked(page - 4, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        assert_eq!(&buf[..4], b"kept");
    }

    #[test]
    fn a_checked_write_past_a_shrunk_file_is_efault() {
        let page = host_page_size();
        let file = memfd(c"t", 2 * page).unwrap();
        let m = Mmap::shared(file.as_fd(), 0, 2 * page, Access::ReadWrite).unwrap();
        file.set_len(0).unwrap();
        let err = m.write_checked(page, &[1; 16]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        assert_eq!(file.metadata().unwrap().len(), 0, "the file did not grow");
    }

    #[test]
    fn a_checked_write_to_a_read_only_mapping_is_eacces() {
        let file = memfd(c"t", 4096).unwrap();
        let m = Mmap::shared(file.as_fd(), 0, 4096, Access::Read).unwrap();
        let err = m.write_checked(0, &[1]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn a_checked_access_outside_is_einval() {
        let m = Mmap::anonymous(4096, Access::ReadWrite).unwrap();
        let err = m.read_checked(4000, &mut [0; 200]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn an_empty_checked_copy_does_nothing() {
        let m = Mmap::anonymous(4096, Access::ReadWrite).unwrap();
        m.read_checked(4096, &mut []).unwrap();
        m.write_checked(0, &[]).unwrap();
    }
}
