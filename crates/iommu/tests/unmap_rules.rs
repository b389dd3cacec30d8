//! VFIO_IOMMU_UNMAP_DMA rules of type1 v2, with and without GET_DIRTY_BITMAP (semantics §1.5),
//! one test per rule.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use vfmig_abi::uapi::{
    VFIO_DMA_UNMAP_FLAG_ALL as ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP as BITMAP,
};
use vfmig_dirty::PageSize;
use vfmig_iommu::{
    BitmapRequest, Container, DirtyScope, IommuError, Iova, PinGuard, Prot, UnmapNotifier,
    UnmapRequest,
};

fn plain(iova: u64, size: u64) -> UnmapRequest {
    UnmapRequest {
        flags: 0,
        iova,
        size,
        bitmap: None,
    }
}

fn with_bitmap(iova: u64, size: u64, bytes: u64) -> UnmapRequest {
    UnmapRequest {
        flags: BITMAP,
        iova,
        size,
        bitmap: Some(BitmapRequest {
            pgsize: CONTAINER_PAGE_SIZE,
            size: bytes,
        }),
    }
}

#[test]
fn unmap_unknown_flag_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let req = UnmapRequest {
        flags: 4,
        ..plain(0, CONTAINER_PAGE_SIZE.bytes())
    };
    assert_err!(
        c.unmap_dma(&req, None),
        IommuError::UnknownFlags { flags: 4, .. }
    );
}

#[test]
fn unmap_with_an_unaligned_iova_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.unmap_dma(&plain(8, CONTAINER_PAGE_SIZE.bytes()), None),
        IommuError::Unaligned { .. }
    );
}

#[test]
fn unmap_of_zero_size_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(c.unmap_dma(&plain(0, 0), None), IommuError::ZeroSize { .. });
}

#[test]
fn unmap_with_an_unaligned_size_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.unmap_dma(&plain(0, 100), None),
        IommuError::Unaligned { .. }
    );
}

#[test]
fn unmap_that_wraps_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.unmap_dma(
            &plain(
                u64::MAX - CONTAINER_PAGE_SIZE.bytes() + 1,
                2 * CONTAINER_PAGE_SIZE.bytes()
            ),
            None
        ),
        IommuError::Wraps { .. }
    );
}

#[test]
fn unmap_starting_inside_a_mapping_is_einval() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.unmap_dma(
            &plain(CONTAINER_PAGE_SIZE.bytes(), 3 * CONTAINER_PAGE_SIZE.bytes()),
            None
        ),
        IommuError::Bisects { .. }
    );
    assert_eq!(c.mappings(), 1);
}

#[test]
fn unmap_ending_inside_a_mapping_is_einval() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.unmap_dma(&plain(0, CONTAINER_PAGE_SIZE.bytes()), None),
        IommuError::Bisects { .. }
    );
}

#[test]
fn unmap_of_a_hole_unmaps_nothing() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_eq!(
        c.unmap_dma(
            &plain(
                16 * CONTAINER_PAGE_SIZE.bytes(),
                CONTAINER_PAGE_SIZE.bytes()
            ),
            None
        )
        .unwrap(),
        0
    );
    assert_eq!(c.mappings(), 1);
}

#[test]
fn unmap_spans_several_whole_mappings_and_returns_their_bytes() {
    let c = container_with(&[
        (0, CONTAINER_PAGE_SIZE.bytes()),
        (
            2 * CONTAINER_PAGE_SIZE.bytes(),
            2 * CONTAINER_PAGE_SIZE.bytes(),
        ),
        (8 * CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
    ]);
    assert_eq!(
        c.unmap_dma(&plain(0, 8 * CONTAINER_PAGE_SIZE.bytes()), None)
            .unwrap(),
        3 * CONTAINER_PAGE_SIZE.bytes()
    );
    assert_eq!(c.mapping_list().len(), 1);
}

#[test]
fn unmap_all_removes_every_mapping() {
    let c = container_with(&[
        (0, CONTAINER_PAGE_SIZE.bytes()),
        (1 << 30, CONTAINER_PAGE_SIZE.bytes()),
    ]);
    let req = UnmapRequest {
        flags: ALL,
        iova: 0,
        size: 0,
        bitmap: None,
    };
    assert_eq!(
        c.unmap_dma(&req, None).unwrap(),
        2 * CONTAINER_PAGE_SIZE.bytes()
    );
    assert_eq!(c.mappings(), 0);
}

#[test]
fn unmap_all_with_a_range_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let req = UnmapRequest {
        flags: ALL,
        iova: 0,
        size: CONTAINER_PAGE_SIZE.bytes(),
        bitmap: None,
    };
    assert_err!(c.unmap_dma(&req, None), IommuError::UnmapAllMisused);
}

#[test]
fn unmap_all_with_a_bitmap_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    c.start_dirty_tracking().unwrap();
    let req = UnmapRequest {
        flags: ALL | BITMAP,
        iova: 0,
        size: 0,
        bitmap: None,
    };
    assert_err!(
        c.unmap_dma(&req, Some(&mut [0])),
        IommuError::UnmapAllMisused
    );
}

#[test]
fn unmap_with_bitmap_checks_the_bitmap_size_like_get() {
    let c = container_with(&[(0, 65 * CONTAINER_PAGE_SIZE.bytes())]);
    c.start_dirty_tracking().unwrap();
    let r = c.unmap_dma(
        &with_bitmap(0, 65 * CONTAINER_PAGE_SIZE.bytes(), 8),
        Some(&mut [0, 0]),
    );
    assert_err!(
        r,
        IommuError::BitmapSize {
            pages: 65,
            bitmap_size: 8
        }
    );
}

#[test]
fn unmap_with_bitmap_needs_tracking() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.unmap_dma(
            &with_bitmap(0, CONTAINER_PAGE_SIZE.bytes(), 8),
            Some(&mut [0])
        ),
        IommuError::TrackingOff
    );
    assert_eq!(c.mappings(), 1);
}

#[test]
fn unmap_with_bitmap_needs_the_container_page_size() {
    let c = container_with(&[(0, 1 << 21)]);
    c.start_dirty_tracking().unwrap();
    let req = UnmapRequest {
        flags: BITMAP,
        iova: 0,
        size: 1 << 21,
        bitmap: Some(BitmapRequest {
            pgsize: PageSize::SIZE_2M,
            size: 8,
        }),
    };
    assert_err!(
        c.unmap_dma(&req, Some(&mut [0])),
        IommuError::PageSizeMismatch { .. }
    );
}

#[test]
fn unmap_with_bitmap_lands_two_mappings_at_shifted_offsets_in_one_buffer() {
    // Mapping A at page 3 (3 pages), mapping B at page 70 (2 pages): B's bits cross a word.
    let c = container_with(&[
        (
            3 * CONTAINER_PAGE_SIZE.bytes(),
            3 * CONTAINER_PAGE_SIZE.bytes(),
        ),
        (
            70 * CONTAINER_PAGE_SIZE.bytes(),
            2 * CONTAINER_PAGE_SIZE.bytes(),
        ),
    ]);
    c.start_dirty_tracking().unwrap();
    poke(&c, 3 * CONTAINER_PAGE_SIZE.bytes());
    poke(&c, 5 * CONTAINER_PAGE_SIZE.bytes());
    poke(&c, 71 * CONTAINER_PAGE_SIZE.bytes());
    // Bit 1 was set by the caller before the call and must survive.
    let mut out = [0b10u64, 0];
    let n = c
        .unmap_dma(
            &with_bitmap(0, 128 * CONTAINER_PAGE_SIZE.bytes(), 16),
            Some(&mut out),
        )
        .unwrap();
    assert_eq!(n, 5 * CONTAINER_PAGE_SIZE.bytes());
    assert_eq!(pages_of(&out), vec![1, 3, 5, 71]);
}

#[test]
fn unmap_bitmap_reports_a_page_pinned_while_tracking() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    c.start_dirty_tracking().unwrap();
    let dev = c.attach_device(DirtyScope::Pinned, None);
    drop(
        c.pin(
            dev,
            Iova(2 * CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
        )
        .unwrap(),
    );
    let mut out = [0u64];
    c.unmap_dma(
        &with_bitmap(0, 4 * CONTAINER_PAGE_SIZE.bytes(), 8),
        Some(&mut out),
    )
    .unwrap();
    assert_eq!(pages_of(&out), vec![2]);
}

/// A device that gives its pins back when asked.
struct Cooperative(Mutex<Vec<PinGuard>>);
impl UnmapNotifier for Cooperative {
    fn dma_unmap(&self, iova: Iova, size: u64) {
        self.0
            .lock()
            .unwrap()
            .retain(|g| g.iova().0 < iova.0 || g.iova().0 >= iova.0 + size);
    }
}

/// A device that keeps its pins.
struct Stubborn(Mutex<u32>);
impl UnmapNotifier for Stubborn {
    fn dma_unmap(&self, _: Iova, _: u64) {
        *self.0.lock().unwrap() += 1;
    }
}

#[test]
fn unmap_asks_the_pinning_device_to_unpin_and_proceeds() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev_pins = Arc::new(Cooperative(Mutex::new(Vec::new())));
    let dev = c.attach_device(DirtyScope::Pinned, Some(dev_pins.clone()));
    dev_pins.0.lock().unwrap().push(
        c.pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
        )
        .unwrap(),
    );
    assert_eq!(
        c.unmap_dma(&plain(0, 4 * CONTAINER_PAGE_SIZE.bytes()), None)
            .unwrap(),
        4 * CONTAINER_PAGE_SIZE.bytes()
    );
    assert!(dev_pins.0.lock().unwrap().is_empty());
}

#[test]
fn unmap_fails_busy_and_removes_nothing_when_pins_are_kept() {
    let c = container_with(&[
        (0, CONTAINER_PAGE_SIZE.bytes()),
        (CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
    ]);
    let asked = Arc::new(Stubborn(Mutex::new(0)));
    let dev = c.attach_device(DirtyScope::Pinned, Some(asked.clone()));
    let _pin = c
        .pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
        )
        .unwrap();
    let e = c
        .unmap_dma(&plain(0, 2 * CONTAINER_PAGE_SIZE.bytes()), None)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY);
    assert_eq!(c.mappings(), 2);
    assert!(*asked.0.lock().unwrap() > 0);
}

#[test]
fn unmap_of_a_range_without_pins_ignores_pins_elsewhere() {
    let c = container_with(&[
        (0, CONTAINER_PAGE_SIZE.bytes()),
        (CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
    ]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let _pin = c
        .pin(dev, Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ)
        .unwrap();
    assert_eq!(
        c.unmap_dma(
            &plain(CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
            None
        )
        .unwrap(),
        CONTAINER_PAGE_SIZE.bytes()
    );
}

#[test]
fn unmapped_memory_is_no_longer_reachable() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    c.unmap_dma(&plain(0, CONTAINER_PAGE_SIZE.bytes()), None)
        .unwrap();
    let mut b = [0u8];
    assert_eq!(errno(c.read(Iova(0), &mut b)), libc::EFAULT);
}

#[test]
fn unmap_with_bitmap_reports_every_page_for_an_all_mapped_device() {
    let c: Container = container_with(&[(0, 3 * CONTAINER_PAGE_SIZE.bytes())]);
    c.attach_device(DirtyScope::AllMapped, None);
    c.start_dirty_tracking().unwrap();
    let mut out = [0u64];
    c.unmap_dma(
        &with_bitmap(0, 3 * CONTAINER_PAGE_SIZE.bytes(), 8),
        Some(&mut out),
    )
    .unwrap();
    assert_eq!(out[0], 0b111);
}

#[test]
fn unmap_with_bitmap_over_a_mapping_without_fd_is_einval_and_unmaps_nothing() {
    let page = CONTAINER_PAGE_SIZE.bytes();
    let c = container_with(&[(0, page)]);
    c.map(Iova(page), page, Prot::READ_WRITE, nowhere())
        .unwrap();
    c.start_dirty_tracking().unwrap();
    poke(&c, 0);
    let mut out = [0u64];
    assert_err!(
        c.unmap_dma(&with_bitmap(0, 2 * page, 8), Some(&mut out)),
        IommuError::Untracked {
            mapping: Iova(0x1000)
        }
    );
    assert_eq!((c.mappings(), out[0]), (2, 0));
    assert_eq!(pages_of(&get(&c, 0, page).unwrap()), vec![0]);
}
