//! The memfd that backs shared memory, and the host page size.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A new memfd of `len` zero bytes, named `name` (for /proc), close-on-exec. Sparse: no page
/// is allocated until it is written.
pub fn memfd(name: &CStr, len: usize) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
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
    fn the_page_size_is_a_power_of_two() {
        assert!(host_page_size().is_power_of_two());
    }
}
