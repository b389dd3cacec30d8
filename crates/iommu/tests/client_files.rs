//! A client's file under a mapping: sealed against shrinking, it is copied directly; otherwise
//! every access goes through the kernel, and a page the client cut off fails that access with
//! EFAULT instead of ending the process with SIGBUS.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use std::fs::File;
use std::os::fd::OwnedFd;

use common::*;
use vfmig_iommu::{AccessPath, Backing, Container, DirtyScope, IommuError, Iova, Prot};

const PAGE: u64 = CONTAINER_PAGE_SIZE.bytes();

/// A container with `fd` mapped read-write at IOVA 0 for `size` bytes, and a handle on the file.
fn mapped(fd: OwnedFd, size: u64) -> (Container, File) {
    let file = File::from(fd.try_clone().unwrap());
    let c = Container::default();
    c.map_dma(RW, 0, size, Backing::Fd { fd, offset: 0 })
        .unwrap();
    (c, file)
}

#[test]
fn a_sealed_memfd_is_mapped_direct() {
    let (c, _) = mapped(sealed_memfd(4 * PAGE), 4 * PAGE);
    assert_eq!(c.access_path(Iova(PAGE)), Some(AccessPath::Direct));
}

#[test]
fn an_unsealed_memfd_is_mapped_checked() {
    let (c, _) = mapped(memfd(4 * PAGE), 4 * PAGE);
    assert_eq!(c.access_path(Iova(PAGE)), Some(AccessPath::Checked));
}

#[test]
fn a_mapping_without_fd_is_remote() {
    let c = Container::default();
    c.map_dma(RW, 0, PAGE, nowhere()).unwrap();
    assert_eq!(c.access_path(Iova(0)), Some(AccessPath::Remote));
}

#[test]
fn a_checked_mapping_reads_and_writes_what_the_file_holds() {
    let (c, file) = mapped(memfd(2 * PAGE), 2 * PAGE);
    std::os::unix::fs::FileExt::write_at(&file, b"client", PAGE - 3).unwrap();
    let mut b = [0u8; 6];
    c.read(Iova(PAGE - 3), &mut b).unwrap();
    assert_eq!(&b, b"client");
    c.write(Iova(PAGE - 3), b"device").unwrap();
    let mut f = [0u8; 6];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut f, PAGE - 3).unwrap();
    assert_eq!(&f, b"device");
}

#[test]
fn a_read_of_a_page_the_client_cut_off_is_efault() {
    let (c, file) = mapped(memfd(4 * PAGE), 4 * PAGE);
    file.set_len(PAGE).unwrap();
    let mut b = [0u8; 16];
    let e = c.read(Iova(2 * PAGE), &mut b).unwrap_err();
    assert!(matches!(e, IommuError::Fault { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::EFAULT);
}

#[test]
fn a_write_to_a_page_the_client_cut_off_is_efault_and_does_not_regrow_the_file() {
    let (c, file) = mapped(memfd(4 * PAGE), 4 * PAGE);
    file.set_len(PAGE).unwrap();
    assert_eq!(errno(c.write(Iova(3 * PAGE), &[1; 16])), libc::EFAULT);
    assert_eq!(file.metadata().unwrap().len(), PAGE);
}

#[test]
fn the_pages_the_client_kept_still_work_after_a_cut() {
    let (c, file) = mapped(memfd(4 * PAGE), 4 * PAGE);
    file.set_len(PAGE).unwrap();
    let _ = c.read(Iova(2 * PAGE), &mut [0; 8]);
    c.write(Iova(8), b"kept").unwrap();
    let mut b = [0u8; 4];
    c.read(Iova(8), &mut b).unwrap();
    assert_eq!(&b, b"kept");
}

#[test]
fn a_write_that_fails_part_way_marks_its_piece_dirty() {
    let (c, file) = mapped(memfd(4 * PAGE), 4 * PAGE);
    c.start_dirty_tracking().unwrap();
    get(&c, 0, 4 * PAGE).unwrap();
    file.set_len(PAGE).unwrap();
    // The first 8 bytes land in the page kept, the rest in the one cut off.
    assert_eq!(errno(c.write(Iova(PAGE - 8), &[1; 16])), libc::EFAULT);
    assert_eq!(pages_of(&get(&c, 0, 4 * PAGE).unwrap()), vec![0, 1]);
}

#[test]
fn a_pin_of_a_checked_mapping_copies_but_lends_no_pointer() {
    let (c, file) = mapped(memfd(4 * PAGE), 4 * PAGE);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let pin = c.pin(dev, Iova(PAGE), PAGE, Prot::READ_WRITE).unwrap();
    assert_eq!(pin.path(), AccessPath::Checked);
    assert!(pin.as_ptr().is_none());
    pin.write_at(0, b"pin").unwrap();
    file.set_len(PAGE).unwrap();
    let e = pin.read_at(0, &mut [0; 3]).unwrap_err();
    assert_eq!(e.errno(), libc::EFAULT);
}

#[test]
fn a_pin_of_a_direct_mapping_lends_its_pointer() {
    let (c, _) = mapped(sealed_memfd(2 * PAGE), 2 * PAGE);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let pin = c.pin(dev, Iova(PAGE), 8, Prot::READ_WRITE).unwrap();
    assert_eq!(pin.path(), AccessPath::Direct);
    pin.write_at(0, b"direct").unwrap();
    let ptr = pin.as_ptr().unwrap();
    let mut b = [0u8; 6];
    // SAFETY: the pin lends 8 bytes at `ptr` while it lives, on a sealed file.
    unsafe { std::ptr::copy_nonoverlapping(ptr, b.as_mut_ptr(), 6) };
    assert_eq!(&b, b"direct");
}

#[test]
fn a_sealed_hugetlb_memfd_is_mapped_checked_and_an_empty_pool_is_efault() {
    const HUGE: u64 = 2 << 20;
    // SAFETY: a valid name; the fd is checked and owned at once.
    let raw =
        unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_HUGETLB | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        // A kernel without hugetlbfs: no client can send such a file.
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
        return;
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let file = File::from(fd.try_clone().unwrap());
    file.set_len(HUGE).unwrap();
    vfmig_memory::seal(
        std::os::fd::AsFd::as_fd(&file),
        vfmig_memory::Seals::SHRINK | vfmig_memory::Seals::GROW,
    )
    .unwrap();
    let (c, _) = mapped(fd, HUGE);
    assert_eq!(c.access_path(Iova(0)), Some(AccessPath::Checked));
    // With no huge page free, the access fails; with one, it succeeds. Neither is a signal.
    match c.read(Iova(0), &mut [0; 8]) {
        Ok(()) => {}
        Err(e) => assert_eq!(e.errno(), libc::EFAULT, "{e}"),
    }
}
