//! [`Mirror`]: a memfd mapped twice, back to back, so a ring buffer's bytes are contiguous
//! however they wrap.
//!
//! The byte at offset `capacity + i` of the mapping is the byte at `i` (both views map the
//! same page of the memfd). Any run of up to `capacity` bytes that starts inside the ring can
//! be read or written through one slice: a section that wraps around the ring's end is still
//! one slice, and nothing is ever moved to the front. Pages are allocated as they are first
//! written, and freed with the mapping.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use vfmig_device::memory::{host_page_size, memfd};

use crate::stream::wire::{u64_from, usize_from_u64};

/// A memfd of `capacity` bytes mapped twice, back to back.
#[derive(Debug)]
pub(crate) struct Mirror {
    base: NonNull<u8>,
    capacity: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is touched only through
// `&self`/`&mut self` methods that the borrow checker orders.
unsafe impl Send for Mirror {}
// SAFETY: `&Mirror` gives out shared slices only.
unsafe impl Sync for Mirror {}

impl Mirror {
    /// Maps a new memfd of `capacity` bytes, which must be a multiple of the page size,
    /// twice. EINVAL if it is not, or if it is 0.
    pub(crate) fn new(capacity: usize) -> io::Result<Mirror> {
        if capacity == 0 || !capacity.is_multiple_of(host_page_size()) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let twice = capacity
            .checked_mul(2)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let file = memfd(c"vfmig-stream", capacity)?;
        // SAFETY: reserves address space at an address the kernel chooses; no Rust object
        // lives there.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                twice,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mirror = Mirror {
            base: NonNull::new(reserved.cast())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?,
            capacity,
        };
        for half in [0, capacity] {
            // SAFETY: replaces half of the reservation above, which `mirror` owns (and
            // unmaps whole if this fails), with a shared mapping of the whole memfd.
            let p = unsafe {
                libc::mmap(
                    mirror.base.as_ptr().add(half).cast(),
                    capacity,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        // The memfd lives on in its two mappings.
        Ok(mirror)
    }

    /// Bytes in the ring.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The `len` bytes from stream position `pos` (at ring offset `pos % capacity`);
    /// `len` is clamped to the capacity.
    pub(crate) fn slice(&self, pos: u64, len: usize) -> &[u8] {
        // SAFETY: `offset < capacity` and `len <= capacity`: inside the `2 * capacity`
        // mapped bytes, which live as long as `self`. Writes need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.at(pos), len.min(self.capacity)) }
    }

    /// As [`slice`](Self::slice), writable.
    pub(crate) fn slice_mut(&mut self, pos: u64, len: usize) -> &mut [u8] {
        // SAFETY: as in `slice`; `&mut self` makes it the only slice of the ring.
        unsafe { std::slice::from_raw_parts_mut(self.at(pos), len.min(self.capacity)) }
    }

    fn at(&self, pos: u64) -> *mut u8 {
        let offset = usize_from_u64(pos % u64_from(self.capacity));
        // SAFETY: `offset < capacity`, inside the mapping.
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // SAFETY: unmaps the whole reservation, which this value owns; no slice of it
        // outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), 2 * self.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_view_is_the_first() {
        let cap = host_page_size();
        let mut ring = Mirror::new(cap).unwrap();
        ring.slice_mut(u64_from(cap - 2), 4)
            .copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(ring.slice(0, 2), &[3, 4]);
        assert_eq!(ring.slice(u64_from(cap - 2), 4), &[1, 2, 3, 4]);
        assert_eq!(ring.slice(u64_from(3 * cap - 2), 4), &[1, 2, 3, 4]);
    }

    #[test]
    fn a_capacity_off_the_page_size_is_refused() {
        for cap in [0, 1, host_page_size() + 1] {
            let err = Mirror::new(cap).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "capacity {cap}");
        }
    }
}
