//! VFIO_IOMMU_DIRTY_PAGES rules (semantics §1.4 and §1.6), one test per rule, in the kernel's
//! order of checks.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use std::sync::Arc;

use common::*;
use vfmig_abi::uapi::{
    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP as GET, VFIO_IOMMU_DIRTY_PAGES_FLAG_START as START,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP as STOP,
};
use vfmig_dirty::PageSize;
use vfmig_iommu::{
    Backing, BitmapRequest, Container, DirtyPagesDone, DirtyScope, GetBitmapRange, IommuError,
    Iova, Prot, RemoteMemory,
};

fn range(iova: u64, size: u64, pgsize: PageSize, bytes: u64) -> GetBitmapRange {
    GetBitmapRange {
        iova,
        size,
        bitmap: BitmapRequest {
            pgsize,
            size: bytes,
        },
    }
}

fn tracked(mappings: &[(u64, u64)]) -> Container {
    let c = container_with(mappings);
    c.start_dirty_tracking().unwrap();
    c
}

#[test]
fn dirty_pages_argsz_below_8_is_einval() {
    let c = Container::default();
    assert_err!(
        c.dirty_pages(7, START, None, &mut []),
        IommuError::ArgszTooSmall { min: 8, .. }
    );
}

#[test]
fn dirty_pages_unknown_flag_is_einval() {
    let c = Container::default();
    assert_err!(
        c.dirty_pages(8, 8, None, &mut []),
        IommuError::UnknownFlags { flags: 8, .. }
    );
}

#[test]
fn dirty_pages_checks_argsz_before_flags() {
    let c = Container::default();
    assert_err!(
        c.dirty_pages(4, 8, None, &mut []),
        IommuError::ArgszTooSmall { .. }
    );
}

#[test]
fn dirty_pages_without_an_operation_is_einval() {
    let c = Container::default();
    assert_err!(
        c.dirty_pages(8, 0, None, &mut []),
        IommuError::NotOneDirtyOperation { flags: 0 }
    );
}

#[test]
fn dirty_pages_with_two_operations_is_einval() {
    let c = Container::default();
    let r = c.dirty_pages(8, START | STOP, None, &mut []);
    assert_err!(r, IommuError::NotOneDirtyOperation { .. });
    assert!(!c.is_tracking());
}

#[test]
fn start_through_dirty_pages_turns_tracking_on() {
    let c = Container::default();
    assert_eq!(
        c.dirty_pages(8, START, None, &mut []).unwrap(),
        DirtyPagesDone::Started
    );
    assert!(c.is_tracking());
}

#[test]
fn start_is_idempotent() {
    let c = tracked(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, CONTAINER_PAGE_SIZE.bytes());
    c.start_dirty_tracking().unwrap();
    // A second START does not reset the bitmaps.
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1]
    );
}

#[test]
fn start_sets_the_pages_pinned_before_it() {
    let c = container_with(&[(0, 8 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let _pin = c
        .pin(
            dev,
            Iova(3 * CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
        )
        .unwrap();
    c.start_dirty_tracking().unwrap();
    assert_eq!(
        pages_of(&get(&c, 0, 8 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![3]
    );
}

struct Nowhere;
impl RemoteMemory for Nowhere {
    fn read(&self, _: Iova, _: &mut [u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, _: Iova, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn start_refuses_a_mapping_over_int_max_pages() {
    let c = Container::default();
    let size = ((i32::MAX as u64) + 1) * CONTAINER_PAGE_SIZE.bytes();
    c.map(Iova(0), size, Prot::READ_WRITE, backing(size))
        .unwrap();
    assert_err!(c.start_dirty_tracking(), IommuError::TooManyPages { .. });
    assert!(!c.is_tracking());
}

#[test]
fn stop_is_idempotent() {
    let c = Container::default();
    assert_eq!(
        c.dirty_pages(8, STOP, None, &mut []).unwrap(),
        DirtyPagesDone::Stopped
    );
    c.start_dirty_tracking().unwrap();
    c.stop_dirty_tracking();
    c.stop_dirty_tracking();
    assert!(!c.is_tracking());
}

#[test]
fn stop_discards_the_dirty_bits() {
    let c = tracked(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, 0);
    c.stop_dirty_tracking();
    c.start_dirty_tracking().unwrap();
    assert!(pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()).is_empty());
}

#[test]
fn get_with_argsz_below_48_is_einval() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let r = range(0, CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, 8);
    assert_err!(
        c.dirty_pages(47, GET, Some(&r), &mut [0]),
        IommuError::ArgszTooSmall { argsz: 47, min: 48 }
    );
}

#[test]
fn get_through_dirty_pages_fills_the_buffer() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, 0);
    let mut out = [0u64];
    let done = c
        .dirty_pages(
            48,
            GET,
            Some(&range(
                0,
                CONTAINER_PAGE_SIZE.bytes(),
                CONTAINER_PAGE_SIZE,
                8,
            )),
            &mut out,
        )
        .unwrap();
    assert_eq!((done, out[0]), (DirtyPagesDone::Bitmap, 1));
}

#[test]
fn get_of_a_range_that_wraps_is_einval() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let r = range(
        u64::MAX - CONTAINER_PAGE_SIZE.bytes() + 1,
        2 * CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE,
        8,
    );
    assert_err!(c.get_dirty_bitmap(&r, &mut [0]), IommuError::Wraps { .. });
}

#[test]
fn get_into_a_buffer_smaller_than_declared_is_einval() {
    let c = tracked(&[(0, 128 * CONTAINER_PAGE_SIZE.bytes())]);
    let r = range(
        0,
        128 * CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE,
        16,
    );
    assert_err!(
        c.get_dirty_bitmap(&r, &mut [0]),
        IommuError::BitmapBuffer {
            declared: 16,
            buffer: 8
        }
    );
}

#[test]
fn get_with_a_zero_bitmap_size_is_einval() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.get_dirty_bitmap(
            &range(0, CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, 0),
            &mut [0]
        ),
        IommuError::BitmapSize { .. }
    );
}

#[test]
fn get_with_a_bitmap_over_256_mib_is_einval() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let big = (256u64 << 20) + 8;
    let mut out = vec![0u64; (big / 8) as usize];
    assert_err!(
        c.get_dirty_bitmap(
            &range(0, CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, big),
            &mut out
        ),
        IommuError::BitmapSize { .. }
    );
}

#[test]
fn get_with_a_bitmap_too_small_for_its_pages_is_einval() {
    let c = tracked(&[(0, 65 * CONTAINER_PAGE_SIZE.bytes())]);
    let r = range(0, 65 * CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, 8);
    assert_err!(
        c.get_dirty_bitmap(&r, &mut [0, 0]),
        IommuError::BitmapSize { pages: 65, .. }
    );
}

#[test]
fn get_of_less_than_a_page_is_einval() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.get_dirty_bitmap(&range(0, 100, CONTAINER_PAGE_SIZE, 8), &mut [0]),
        IommuError::BitmapSize { pages: 0, .. }
    );
}

#[test]
fn get_with_a_page_size_other_than_the_container_page_size_is_einval() {
    let c = tracked(&[(0, 1 << 21)]);
    assert_err!(
        c.get_dirty_bitmap(&range(0, 1 << 21, PageSize::SIZE_2M, 8), &mut [0]),
        IommuError::PageSizeMismatch {
            requested: PageSize::SIZE_2M,
            container: CONTAINER_PAGE_SIZE
        }
    );
}

#[test]
fn get_checks_the_bitmap_size_before_the_page_size() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    // 64 KiB pages: the size check sees 0 pages first.
    assert_err!(
        c.get_dirty_bitmap(
            &range(
                0,
                CONTAINER_PAGE_SIZE.bytes(),
                PageSize::new(1 << 16).unwrap(),
                8
            ),
            &mut [0]
        ),
        IommuError::BitmapSize { .. }
    );
}

#[test]
fn get_with_an_unaligned_iova_is_einval() {
    let c = tracked(&[(0, 2 * CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.get_dirty_bitmap(
            &range(0x10, CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, 8),
            &mut [0]
        ),
        IommuError::Unaligned { .. }
    );
}

#[test]
fn get_with_an_unaligned_size_is_einval() {
    let c = tracked(&[(0, 2 * CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.get_dirty_bitmap(
            &range(0, CONTAINER_PAGE_SIZE.bytes() + 8, CONTAINER_PAGE_SIZE, 8),
            &mut [0]
        ),
        IommuError::Unaligned { .. }
    );
}

#[test]
fn get_with_tracking_off_is_einval() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        c.get_dirty_bitmap(
            &range(0, CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, 8),
            &mut [0]
        ),
        IommuError::TrackingOff
    );
}

#[test]
fn get_checks_the_page_size_before_tracking() {
    let c = container_with(&[(0, 1 << 21)]);
    assert_err!(
        c.get_dirty_bitmap(&range(0, 1 << 21, PageSize::SIZE_2M, 8), &mut [0]),
        IommuError::PageSizeMismatch { .. }
    );
}

#[test]
fn get_starting_inside_a_mapping_is_einval() {
    let c = tracked(&[(0x10000, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        get(
            &c,
            0x10000 + CONTAINER_PAGE_SIZE.bytes(),
            3 * CONTAINER_PAGE_SIZE.bytes()
        ),
        IommuError::Bisects {
            mapping: Iova(0x10000),
            ..
        }
    );
}

#[test]
fn get_ending_inside_a_mapping_is_einval() {
    let c = tracked(&[(0x10000, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    assert_err!(
        get(&c, 0, 0x10000 + CONTAINER_PAGE_SIZE.bytes()),
        IommuError::Bisects { .. }
    );
}

#[test]
fn get_clubs_several_whole_mappings_and_holes() {
    let c = tracked(&[
        (0, 2 * CONTAINER_PAGE_SIZE.bytes()),
        (
            4 * CONTAINER_PAGE_SIZE.bytes(),
            2 * CONTAINER_PAGE_SIZE.bytes(),
        ),
        (
            70 * CONTAINER_PAGE_SIZE.bytes(),
            CONTAINER_PAGE_SIZE.bytes(),
        ),
    ]);
    poke(&c, CONTAINER_PAGE_SIZE.bytes());
    poke(&c, 5 * CONTAINER_PAGE_SIZE.bytes());
    poke(&c, 70 * CONTAINER_PAGE_SIZE.bytes());
    assert_eq!(
        pages_of(&get(&c, 0, 128 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1, 5, 70]
    );
}

#[test]
fn get_of_a_hole_reports_nothing() {
    let c = tracked(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    assert!(
        pages_of(
            &get(
                &c,
                16 * CONTAINER_PAGE_SIZE.bytes(),
                4 * CONTAINER_PAGE_SIZE.bytes()
            )
            .unwrap()
        )
        .is_empty()
    );
}

#[test]
fn get_reads_and_clears() {
    let c = tracked(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, 2 * CONTAINER_PAGE_SIZE.bytes());
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![2]
    );
    assert!(pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()).is_empty());
}

#[test]
fn get_ors_into_the_callers_buffer() {
    let c = tracked(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, 0);
    let mut out = [0b1000u64];
    c.get_dirty_bitmap(
        &range(0, 4 * CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE, 8),
        &mut out,
    )
    .unwrap();
    assert_eq!(out[0], 0b1001);
}

#[test]
fn get_keeps_pinned_pages_dirty() {
    let c = tracked(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    let _pin = c
        .pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
        )
        .unwrap();
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1]
    );
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1]
    );
}

#[test]
fn get_reports_an_unpinned_page_once_more() {
    let c = tracked(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    drop(
        c.pin(
            dev,
            Iova(CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
        )
        .unwrap(),
    );
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1]
    );
    assert!(pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()).is_empty());
}

#[test]
fn a_mapping_made_while_tracking_is_tracked_at_once() {
    let c = tracked(&[]);
    c.map_dma(
        RW,
        0,
        2 * CONTAINER_PAGE_SIZE.bytes(),
        backing(2 * CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    poke(&c, CONTAINER_PAGE_SIZE.bytes());
    assert_eq!(
        pages_of(&get(&c, 0, 2 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1]
    );
}

#[test]
fn writes_before_start_are_not_reported() {
    let c = container_with(&[(0, 2 * CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, 0);
    c.start_dirty_tracking().unwrap();
    assert!(pages_of(&get(&c, 0, 2 * CONTAINER_PAGE_SIZE.bytes()).unwrap()).is_empty());
}

#[test]
fn mark_dirty_reports_the_partial_first_and_last_page() {
    let c = tracked(&[(0, 8 * CONTAINER_PAGE_SIZE.bytes())]);
    c.mark_dirty(Iova(CONTAINER_PAGE_SIZE.bytes() + 4000), 200)
        .unwrap();
    assert_eq!(
        pages_of(&get(&c, 0, 8 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![1, 2]
    );
}

#[test]
fn count_dirty_sees_without_clearing() {
    let c = tracked(&[(0, 8 * CONTAINER_PAGE_SIZE.bytes())]);
    poke(&c, 0);
    poke(&c, 7 * CONTAINER_PAGE_SIZE.bytes());
    assert_eq!(
        c.count_dirty(Iova(0), 8 * CONTAINER_PAGE_SIZE.bytes())
            .unwrap(),
        2
    );
    assert_eq!(
        pages_of(&get(&c, 0, 8 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![0, 7]
    );
}

#[test]
fn start_gives_a_mapping_without_fd_no_bitmap_and_refuses_nothing_for_it() {
    let c = Container::default();
    let size = ((i32::MAX as u64) + 1) * CONTAINER_PAGE_SIZE.bytes();
    c.map(
        Iova(0),
        size,
        Prot::READ_WRITE,
        Backing::Remote(Arc::new(Nowhere)),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    assert_eq!(c.bitmap_bytes(), 0);
}

#[test]
fn get_over_a_mapping_without_fd_is_einval_and_clears_nothing() {
    let four = 4 * CONTAINER_PAGE_SIZE.bytes();
    let c = container_with(&[(0, four)]);
    c.map(
        Iova(four),
        four,
        Prot::READ_WRITE,
        Backing::Remote(Arc::new(Nowhere)),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    poke(&c, 0);
    assert_err!(
        get(&c, 0, 2 * four),
        IommuError::Untracked {
            mapping: Iova(0x4000)
        }
    );
    assert_eq!(pages_of(&get(&c, 0, four).unwrap()), vec![0]);
}
