//! Helpers shared by the container tests: memfd-backed mappings and one-call GETs.
#![allow(dead_code, unreachable_pub, clippy::cast_possible_truncation)]

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use vfmig_abi::uapi::{VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE};
use vfmig_dirty::bitmap_bytes;
pub use vfmig_iommu::CONTAINER_PAGE_SIZE;
use vfmig_iommu::{Backing, BitmapRequest, Container, GetBitmapRange, Iova, Result};

/// READ | WRITE map flags.
pub const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;

/// A sparse memfd of `size` bytes.
pub fn memfd(size: u64) -> OwnedFd {
    let name = CString::new("vfmig-test").unwrap();
    // SAFETY: a valid NUL-terminated name; the returned fd is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(size).expect("size the memfd");
    file.into()
}

/// A memfd backing for `size` bytes.
pub fn backing(size: u64) -> Backing {
    Backing::Fd {
        fd: memfd(size),
        offset: 0,
    }
}

/// A container with read-write memfd mappings at each `(iova, size)`.
pub fn container_with(mappings: &[(u64, u64)]) -> Container {
    let c = Container::default();
    for &(iova, size) in mappings {
        c.map_dma(RW, iova, size, backing(size)).expect("map");
    }
    c
}

/// GET_BITMAP of `[iova, iova + size)` into a fresh zeroed buffer of the exact size.
pub fn get(c: &Container, iova: u64, size: u64) -> Result<Vec<u64>> {
    let bytes = bitmap_bytes(size / CONTAINER_PAGE_SIZE.bytes());
    let mut out = vec![0u64; (bytes / 8) as usize];
    let range = GetBitmapRange {
        iova,
        size,
        bitmap: BitmapRequest {
            pgsize: CONTAINER_PAGE_SIZE,
            size: bytes,
        },
    };
    c.get_dirty_bitmap(&range, &mut out)?;
    Ok(out)
}

/// The set page indices of a bitmap.
pub fn pages_of(bits: &[u64]) -> Vec<u64> {
    let mut v = Vec::new();
    for (w, word) in bits.iter().enumerate() {
        for b in 0..64 {
            if word & (1 << b) != 0 {
                v.push(w as u64 * 64 + b);
            }
        }
    }
    v
}

/// Writes one byte at `iova`.
pub fn poke(c: &Container, iova: u64) {
    c.write(Iova(iova), &[0xa5]).expect("write");
}

/// The errno of an error.
pub fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    r.expect_err("must fail").errno()
}

/// Asserts that `r` failed with the given variant pattern.
#[macro_export]
macro_rules! assert_err {
    ($r:expr, $pat:pat) => {
        match $r {
            Err(e) => assert!(matches!(e, $pat), "unexpected error {e:?}"),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    };
}

/// A peer that accepts every access and keeps nothing: a mapping without an fd that costs
/// nothing to make, whatever its size.
pub struct Nowhere;

impl vfmig_iommu::RemoteMemory for Nowhere {
    fn read(&self, _: Iova, _: &mut [u8]) -> io::Result<()> {
        Ok(())
    }
    fn write(&self, _: Iova, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// A backing with no memory here, reached through [`Nowhere`].
pub fn nowhere() -> Backing {
    Backing::Remote(std::sync::Arc::new(Nowhere))
}

/// A memfd of `size` bytes sealed to its length, as a VMM of this workspace sends guest RAM.
pub fn sealed_memfd(size: u64) -> OwnedFd {
    vfmig_memory::memfd_sealed(c"vfmig-test", size as usize)
        .expect("sealed memfd")
        .into()
}
