//! The memfd that backs shared memory, and the host page size.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use crate::file::{Seals, seal};

/// A new memfd of `len` zero bytes, named `name` (for /proc), close-on-exec. Sparse: no page
/// is allocated until it is written. It cannot be sealed: its length is its owner's to change.
pub fn memfd(name: &CStr, len: usize) -> io::Result<File> {
    create(name, len, 0)
}

/// A new memfd as [`memfd`] makes, whose length is fixed for its life: sealed against
/// shrinking and growing, and against any further seal ([`Seals::SEAL`]). A process it is sent
/// to can map it and trust that every page of the mapping stays backed (see
/// [`crate::FileInfo::cannot_shrink`]), and cannot seal it against the owner's writes.
pub fn memfd_sealed(name: &CStr, len: usize) -> io::Result<File> {
    let file = create(name, len, libc::MFD_ALLOW_SEALING)?;
    seal(file.as_fd(), Seals::SHRINK | Seals::GROW | Seals::SEAL)?;
    Ok(file)
}

fn create(name: &CStr, len: usize, flags: libc::c_uint) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(len as u64)?;
    Ok(file)
}

/// The host's page size in bytes: the granule of `mmap`, `mincore` and `madvise`.
pub fn host_page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memfd_has_the_asked_length() {
        let file = memfd(c"len", 3 * 4096).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 3 * 4096);
    }

    #[test]
    fn a_sealed_memfd_keeps_its_length() {
        let file = memfd_sealed(c"len", 2 * 4096).unwrap();
        for len in [4096, 3 * 4096] {
            let err = file.set_len(len).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "to {len}");
        }
        assert_eq!(file.metadata().unwrap().len(), 2 * 4096);
    }

    #[test]
    fn a_sealed_memfd_takes_no_further_seal() {
        let file = memfd_sealed(c"len", 4096).unwrap();
        let err = seal(file.as_fd(), Seals::WRITE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn the_page_size_is_a_power_of_two() {
        assert!(host_page_size().is_power_of_two());
    }
}
