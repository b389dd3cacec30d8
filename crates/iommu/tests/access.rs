//! The device side: pin, read, write, mark. A device never touches memory it was not given.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::*;
use vfmig_abi::uapi::VFIO_DMA_MAP_FLAG_READ;
use vfmig_iommu::{Backing, Container, DirtyScope, IommuError, Iova, Prot, RemoteMemory};

#[test]
fn read_outside_every_mapping_is_efault() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let mut b = [0u8; 4];
    assert_err!(
        c.read(Iova(2 * CONTAINER_PAGE_SIZE.bytes()), &mut b),
        IommuError::NotMapped { .. }
    );
}

#[test]
fn read_running_off_the_end_of_a_mapping_is_efault() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let mut b = [0u8; 8];
    assert_eq!(
        errno(c.read(Iova(CONTAINER_PAGE_SIZE.bytes() - 4), &mut b)),
        libc::EFAULT
    );
}

#[test]
fn write_to_a_read_only_mapping_is_eperm() {
    let c = Container::default();
    c.map_dma(
        VFIO_DMA_MAP_FLAG_READ,
        0,
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert_eq!(errno(c.write(Iova(0), &[1])), libc::EPERM);
}

#[test]
fn refused_write_changes_no_byte() {
    // The first mapping is writable, the second read-only: nothing is written at all.
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    c.map_dma(
        VFIO_DMA_MAP_FLAG_READ,
        CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert!(
        c.write(Iova(CONTAINER_PAGE_SIZE.bytes() - 2), &[9, 9, 9, 9])
            .is_err()
    );
    let mut b = [0u8; 2];
    c.read(Iova(CONTAINER_PAGE_SIZE.bytes() - 2), &mut b)
        .unwrap();
    assert_eq!(b, [0, 0]);
}

#[test]
fn read_from_a_write_only_mapping_is_eperm() {
    let c = Container::default();
    c.map(
        Iova(0),
        CONTAINER_PAGE_SIZE.bytes(),
        Prot::WRITE,
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    let mut b = [0u8];
    assert_eq!(errno(c.read(Iova(0), &mut b)), libc::EPERM);
}

#[test]
fn access_spans_adjacent_mappings() {
    let c = container_with(&[
        (0, CONTAINER_PAGE_SIZE.bytes()),
        (CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
    ]);
    c.write(Iova(CONTAINER_PAGE_SIZE.bytes() - 2), b"abcd")
        .unwrap();
    let mut b = [0u8; 4];
    c.read(Iova(CONTAINER_PAGE_SIZE.bytes() - 2), &mut b)
        .unwrap();
    assert_eq!(&b, b"abcd");
}

#[test]
fn write_marks_written_pages_dirty_while_tracking() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    c.start_dirty_tracking().unwrap();
    c.write(Iova(CONTAINER_PAGE_SIZE.bytes() - 1), &[1, 2])
        .unwrap();
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![0, 1]
    );
}

#[test]
fn mark_dirty_outside_every_mapping_is_efault() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    c.start_dirty_tracking().unwrap();
    assert_eq!(
        errno(c.mark_dirty(Iova(4 * CONTAINER_PAGE_SIZE.bytes()), 1)),
        libc::EFAULT
    );
}

#[test]
fn pin_lends_the_mapped_memory() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let pin = c
        .pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes() + 16),
            32,
            Prot::READ_WRITE,
        )
        .unwrap();
    pin.write_at(0, b"pinned").unwrap();
    let mut b = [0u8; 6];
    c.read(Iova(CONTAINER_PAGE_SIZE.bytes() + 16), &mut b)
        .unwrap();
    assert_eq!(&b, b"pinned");
}

#[test]
fn pin_guard_refuses_access_past_its_end() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let pin = c.pin(dev, Iova(0), 8, Prot::READ).unwrap();
    let mut b = [0u8; 9];
    assert!(pin.read_at(0, &mut b).is_err());
}

#[test]
fn read_only_pin_cannot_write() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let pin = c.pin(dev, Iova(0), 8, Prot::READ).unwrap();
    assert_err!(pin.write_at(0, &[1]), IommuError::Permission { .. });
}

#[test]
fn pins_are_counted_per_page_and_released_on_drop() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let a = c
        .pin(dev, Iova(0), 2 * CONTAINER_PAGE_SIZE.bytes(), Prot::READ)
        .unwrap();
    let b = c
        .pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            2 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
        )
        .unwrap();
    assert_eq!(c.pinned_pages(), 3);
    drop(a);
    assert_eq!(c.pinned_pages(), 2);
    drop(b);
    assert_eq!(c.pinned_pages(), 0);
}

#[test]
fn pin_outside_every_mapping_is_efault() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    assert_eq!(
        errno(c.pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ
        )),
        libc::EFAULT
    );
}

#[test]
fn pin_against_the_protection_is_eperm() {
    let c = Container::default();
    c.map_dma(
        VFIO_DMA_MAP_FLAG_READ,
        0,
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    let dev = c.attach_device(DirtyScope::Pinned, None);
    assert_eq!(
        errno(c.pin(dev, Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ_WRITE)),
        libc::EPERM
    );
}

#[test]
fn pin_across_two_mappings_is_einval() {
    let c = container_with(&[
        (0, CONTAINER_PAGE_SIZE.bytes()),
        (CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
    ]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    assert_err!(
        c.pin(dev, Iova(0), 2 * CONTAINER_PAGE_SIZE.bytes(), Prot::READ),
        IommuError::PinCrossesMappings { .. }
    );
}

#[test]
fn pin_by_an_unknown_device_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    c.detach_device(dev).unwrap();
    assert_err!(
        c.pin(dev, Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ),
        IommuError::NoSuchDevice(_)
    );
}

/// Guest memory held by the peer: a vector, and a log of what was asked.
#[derive(Default)]
struct Peer {
    mem: Mutex<Vec<u8>>,
    log: Mutex<Vec<(&'static str, u64, usize)>>,
}
impl RemoteMemory for Peer {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> io::Result<()> {
        self.log.lock().unwrap().push(("read", iova.0, buf.len()));
        let m = self.mem.lock().unwrap();
        buf.copy_from_slice(&m[iova.0 as usize..iova.0 as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, iova: Iova, data: &[u8]) -> io::Result<()> {
        self.log.lock().unwrap().push(("write", iova.0, data.len()));
        self.mem.lock().unwrap()[iova.0 as usize..iova.0 as usize + data.len()]
            .copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn a_mapping_without_fd_is_reached_through_the_peer() {
    let peer = Arc::new(Peer {
        mem: Mutex::new(vec![0; 2 * CONTAINER_PAGE_SIZE.bytes() as usize]),
        ..Default::default()
    });
    let c = Container::default();
    c.map(
        Iova(0),
        2 * CONTAINER_PAGE_SIZE.bytes(),
        Prot::READ_WRITE,
        Backing::Remote(peer.clone()),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    c.write(Iova(CONTAINER_PAGE_SIZE.bytes() + 1), b"hi")
        .unwrap();
    let mut b = [0u8; 2];
    c.read(Iova(CONTAINER_PAGE_SIZE.bytes() + 1), &mut b)
        .unwrap();
    assert_eq!(&b, b"hi");
    assert_eq!(
        *peer.log.lock().unwrap(),
        vec![
            ("write", CONTAINER_PAGE_SIZE.bytes() + 1, 2),
            ("read", CONTAINER_PAGE_SIZE.bytes() + 1, 2)
        ]
    );
    assert_eq!(
        c.count_dirty(Iova(0), 2 * CONTAINER_PAGE_SIZE.bytes())
            .unwrap(),
        0
    );
}

#[test]
fn a_write_to_a_mapping_without_fd_marks_nothing_and_get_over_it_is_einval() {
    let c = Container::default();
    c.map(
        Iova(0),
        CONTAINER_PAGE_SIZE.bytes(),
        Prot::READ_WRITE,
        Backing::Remote(Arc::new(Peer {
            mem: Mutex::new(vec![0; CONTAINER_PAGE_SIZE.bytes() as usize]),
            ..Default::default()
        })),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    c.write(Iova(0), b"hi").unwrap();
    assert_err!(
        get(&c, 0, CONTAINER_PAGE_SIZE.bytes()),
        IommuError::Untracked { mapping: Iova(0) }
    );
    assert_eq!(errno(get(&c, 0, CONTAINER_PAGE_SIZE.bytes())), libc::EINVAL);
}

#[test]
fn a_mapping_without_fd_cannot_be_pinned() {
    let c = Container::default();
    c.map(
        Iova(0),
        CONTAINER_PAGE_SIZE.bytes(),
        Prot::READ_WRITE,
        Backing::Remote(Arc::new(Peer::default())),
    )
    .unwrap();
    let dev = c.attach_device(DirtyScope::Pinned, None);
    assert_err!(
        c.pin(dev, Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ),
        IommuError::NotHostMapped { .. }
    );
}

#[test]
fn a_failed_peer_access_keeps_its_errno() {
    struct Gone;
    impl RemoteMemory for Gone {
        fn read(&self, _: Iova, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ECONNRESET))
        }
        fn write(&self, _: Iova, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ECONNRESET))
        }
    }
    let c = Container::default();
    c.map(
        Iova(0),
        CONTAINER_PAGE_SIZE.bytes(),
        Prot::READ_WRITE,
        Backing::Remote(Arc::new(Gone)),
    )
    .unwrap();
    assert_eq!(errno(c.read(Iova(0), &mut [0])), libc::ECONNRESET);
}
