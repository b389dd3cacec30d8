//! [`Mirror`]: a memfd mapped twice, back to back, so a ring buffer's bytes are contiguous
//! however they wrap.
//!
//! The byte at offset `capacity + i` of the mapping is the byte at `i` (both views map the
//! same page of the memfd). Any run of up to `capacity` bytes that starts inside the ring can
//! be read or written through one slice: a section that wraps around the ring's end is still
//! one slice, and nothing is ever moved to the front. Pages are allocated as they are first
//! written, and freed with the mapping.

use std::io;
use std::os::fd::AsFd;

use vfmig_memory::{Access, Mmap, host_page_size, memfd};

use crate::stream::wire::{u64_from, usize_from_u64};

/// A memfd of `capacity` bytes mapped twice, back to back: an anonymous [`Mmap`] of twice
/// the capacity, both halves replaced by the memfd.
#[derive(Debug)]
pub(crate) struct Mirror {
    /// `2 * capacity` bytes; this value is the only user of the memory (the memfd lives on
    /// only in the two halves), so it may lend out slices of it.
    map: Mmap,
    capacity: usize,
}

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
        let mut map = Mmap::anonymous(twice, Access::ReadWrite)?;
        for half in [0, capacity] {
            map.overlay_shared(half, file.as_fd(), 0, capacity)?;
        }
        // The memfd lives on in its two mappings.
        Ok(Mirror { map, capacity })
    }

    /// Bytes in the ring.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The `len` bytes from stream position `pos` (at ring offset `pos % capacity`);
    /// `len` is clamped to the capacity.
    pub(crate) fn slice(&self, pos: u64, len: usize) -> &[u8] {
        // SAFETY: `offset < capacity` and `len <= capacity`: inside the `2 * capacity`
        // mapped bytes, which live as long as `self`. No other mapping of the memfd exists,
        // and writes through this one need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.at(pos), len.min(self.capacity)) }
    }

    /// As [`slice`](Self::slice), writable.
    pub(crate) fn slice_mut(&mut self, pos: u64, len: usize) -> &mut [u8] {
        // SAFETY: as in `slice`; `&mut self` makes it the only slice of the ring.
        unsafe { std::slice::from_raw_parts_mut(self.at(pos), len.min(self.capacity)) }
    }

    fn at(&self, pos: u64) -> *mut u8 {
        let offset = usize_from_u64(pos % u64_from(self.capacity));
        // `offset < capacity`: inside the mapping, which is twice that.
        self.map.as_mut_ptr().wrapping_add(offset)
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
