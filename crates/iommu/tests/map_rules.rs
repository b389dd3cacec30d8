//! VFIO_IOMMU_MAP_DMA rules of type1 (5.10 `vfio_dma_do_map`), one test per rule.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use common::*;
use vfmig_iommu::{Backing, Container, ContainerConfig, IommuError, Iova, Prot, RemoteMemory};

#[test]
fn map_unknown_flag_is_einval() {
    let c = Container::default();
    assert_err!(
        c.map_dma(
            RW | 4,
            0,
            CONTAINER_PAGE_SIZE.bytes(),
            backing(CONTAINER_PAGE_SIZE.bytes())
        ),
        IommuError::UnknownFlags { flags: 7, .. }
    );
}

#[test]
fn map_without_read_or_write_is_einval() {
    let c = Container::default();
    assert_eq!(
        errno(c.map_dma(
            0,
            0,
            CONTAINER_PAGE_SIZE.bytes(),
            backing(CONTAINER_PAGE_SIZE.bytes())
        )),
        libc::EINVAL
    );
}

#[test]
fn map_of_zero_size_is_einval() {
    let c = Container::default();
    assert_err!(
        c.map_dma(RW, 0, 0, backing(CONTAINER_PAGE_SIZE.bytes())),
        IommuError::ZeroSize { .. }
    );
}

#[test]
fn map_with_unaligned_iova_is_einval() {
    let c = Container::default();
    assert_err!(
        c.map_dma(
            RW,
            0x800,
            CONTAINER_PAGE_SIZE.bytes(),
            backing(CONTAINER_PAGE_SIZE.bytes())
        ),
        IommuError::Unaligned { value: 0x800, .. }
    );
}

#[test]
fn map_with_unaligned_size_is_einval() {
    let c = Container::default();
    assert_err!(
        c.map_dma(
            RW,
            0,
            CONTAINER_PAGE_SIZE.bytes() + 1,
            backing(2 * CONTAINER_PAGE_SIZE.bytes())
        ),
        IommuError::Unaligned { .. }
    );
}

#[test]
fn map_with_unaligned_fd_offset_is_einval() {
    let c = Container::default();
    let b = Backing::Fd {
        fd: memfd(2 * CONTAINER_PAGE_SIZE.bytes()),
        offset: 100,
    };
    assert_err!(
        c.map_dma(RW, 0, CONTAINER_PAGE_SIZE.bytes(), b),
        IommuError::Unaligned { value: 100, .. }
    );
}

#[test]
fn map_that_wraps_is_einval() {
    let c = Container::default();
    let iova = u64::MAX - CONTAINER_PAGE_SIZE.bytes() + 1;
    assert_err!(
        c.map_dma(
            RW,
            iova,
            2 * CONTAINER_PAGE_SIZE.bytes(),
            backing(2 * CONTAINER_PAGE_SIZE.bytes())
        ),
        IommuError::Wraps { .. }
    );
}

#[test]
fn map_overlapping_an_existing_mapping_is_eexist() {
    let c = container_with(&[(0x10000, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let r = c.map_dma(
        RW,
        0x10000 + 3 * CONTAINER_PAGE_SIZE.bytes(),
        2 * CONTAINER_PAGE_SIZE.bytes(),
        backing(2 * CONTAINER_PAGE_SIZE.bytes()),
    );
    assert_eq!(errno(r), libc::EEXIST);
}

#[test]
fn map_covering_an_existing_mapping_is_eexist() {
    let c = container_with(&[(0x10000, CONTAINER_PAGE_SIZE.bytes())]);
    assert_eq!(
        errno(c.map_dma(RW, 0, 0x100000, backing(0x100000))),
        libc::EEXIST
    );
}

#[test]
fn map_adjacent_to_an_existing_mapping_succeeds() {
    let c = container_with(&[(0x10000, CONTAINER_PAGE_SIZE.bytes())]);
    c.map_dma(
        RW,
        0x10000 + CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    c.map_dma(
        RW,
        0x10000 - CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert_eq!(c.mappings(), 3);
}

#[test]
fn map_beyond_the_mapping_limit_is_enospc() {
    let c = Container::new(ContainerConfig {
        max_mappings: 2,
        ..ContainerConfig::default()
    });
    c.map_dma(
        RW,
        0,
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    c.map_dma(
        RW,
        CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert_eq!(
        errno(c.map_dma(
            RW,
            2 * CONTAINER_PAGE_SIZE.bytes(),
            CONTAINER_PAGE_SIZE.bytes(),
            backing(CONTAINER_PAGE_SIZE.bytes())
        )),
        libc::ENOSPC
    );
}

#[test]
fn default_mapping_limit_is_65535() {
    assert_eq!(Container::default().config().max_mappings, 65535);
}

#[test]
fn map_checks_overlap_before_the_limit() {
    let c = Container::new(ContainerConfig {
        max_mappings: 1,
        ..ContainerConfig::default()
    });
    c.map_dma(
        RW,
        0,
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert_eq!(
        errno(c.map_dma(
            RW,
            0,
            CONTAINER_PAGE_SIZE.bytes(),
            backing(CONTAINER_PAGE_SIZE.bytes())
        )),
        libc::EEXIST
    );
}

#[test]
fn map_of_a_bad_fd_keeps_the_mmap_errno() {
    let c = Container::default();
    // A pipe cannot be mmapped: ENODEV.
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned here.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(w);
    let read = vfmig_abi::uapi::VFIO_DMA_MAP_FLAG_READ;
    let e = c
        .map_dma(
            read,
            0,
            CONTAINER_PAGE_SIZE.bytes(),
            Backing::Fd { fd: r, offset: 0 },
        )
        .unwrap_err();
    assert!(matches!(e, IommuError::Mmap { .. }));
    assert_eq!(e.errno(), libc::ENODEV);
}

#[test]
fn mapped_fd_memory_is_what_the_device_reads() {
    let fd = memfd(CONTAINER_PAGE_SIZE.bytes());
    let file = std::fs::File::from(fd.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_at(&file, b"guest", 8).unwrap();
    let c = Container::default();
    c.map_dma(
        RW,
        0x4000,
        CONTAINER_PAGE_SIZE.bytes(),
        Backing::Fd { fd, offset: 0 },
    )
    .unwrap();
    let mut buf = [0u8; 5];
    c.read(Iova(0x4008), &mut buf).unwrap();
    assert_eq!(&buf, b"guest");
}

#[test]
fn map_honours_the_fd_offset() {
    let fd = memfd(3 * CONTAINER_PAGE_SIZE.bytes());
    let file = std::fs::File::from(fd.try_clone().unwrap());
    std::os::unix::fs::FileExt::write_at(&file, b"X", 2 * CONTAINER_PAGE_SIZE.bytes()).unwrap();
    let c = Container::default();
    c.map_dma(
        RW,
        0,
        CONTAINER_PAGE_SIZE.bytes(),
        Backing::Fd {
            fd,
            offset: 2 * CONTAINER_PAGE_SIZE.bytes(),
        },
    )
    .unwrap();
    let mut b = [0u8];
    c.read(Iova(0), &mut b).unwrap();
    assert_eq!(&b, b"X");
}

struct NoMemory;
impl RemoteMemory for NoMemory {
    fn read(&self, _: Iova, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn write(&self, _: Iova, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
}

#[test]
fn map_without_fd_needs_no_memory_here() {
    let c = Container::default();
    let big = 1 << 40;
    c.map(
        Iova(0),
        big,
        Prot::READ_WRITE,
        Backing::Remote(std::sync::Arc::new(NoMemory)),
    )
    .unwrap();
    assert_eq!(c.mapping_list(), vec![(Iova(0), big, Prot::READ_WRITE)]);
}

#[test]
fn map_of_more_than_the_file_holds_is_efault() {
    let c = Container::default();
    let b = Backing::Fd {
        fd: memfd(1 << 20),
        offset: 0,
    };
    let e = c.map_dma(RW, 0, 16 << 20, b).unwrap_err();
    assert!(matches!(e, IommuError::BeyondFile { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::EFAULT);
    assert_eq!(c.mappings(), 0);
}

#[test]
fn map_whose_fd_offset_runs_past_the_file_end_is_efault() {
    let c = Container::default();
    let page = CONTAINER_PAGE_SIZE.bytes();
    let b = Backing::Fd {
        fd: memfd(2 * page),
        offset: page,
    };
    assert_eq!(errno(c.map_dma(RW, 0, 2 * page, b)), libc::EFAULT);
}
