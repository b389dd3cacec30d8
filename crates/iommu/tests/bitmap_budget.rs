//! The dirty bitmap budget: a peer that maps much memory (a sparse file costs it nothing) cannot
//! make START (or a map while tracking) allocate more bitmap than
//! `ContainerConfig::max_bitmap_bytes`; mappings without an fd have no bitmap and cost none.
//! One test per rule.

mod common;

use common::*;
use vfmig_abi::dirty::{DIRTY_BITMAP_PAGES_MAX, DIRTY_BITMAP_SIZE_MAX};
use vfmig_iommu::{Container, ContainerConfig, IommuError, Iova};

/// Pages whose bitmap is exactly 4 KiB.
const PAGES_PER_4K_BITMAP: u64 = 4096 * 8;
/// A mapping whose bitmap is exactly 4 KiB: 128 MiB.
const SIZE_4K_BITMAP: u64 = PAGES_PER_4K_BITMAP * CONTAINER_PAGE_SIZE.bytes();

fn budgeted(max_bitmap_bytes: u64) -> Container {
    Container::new(ContainerConfig {
        max_bitmap_bytes,
        ..ContainerConfig::default()
    })
}

#[test]
fn default_bitmap_budget_is_1_gib() {
    assert_eq!(Container::default().config().max_bitmap_bytes, 1 << 30);
}

#[test]
fn start_over_the_bitmap_budget_is_enomem_and_leaves_tracking_off() {
    let c = budgeted(4096);
    c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    c.map_dma(RW, SIZE_4K_BITMAP, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    let err = c.start_dirty_tracking().expect_err("over the budget");
    assert!(
        matches!(
            err,
            IommuError::BitmapBudget {
                iova: Iova(SIZE_4K_BITMAP),
                bytes: 4096,
                in_use: 4096,
                limit: 4096,
            }
        ),
        "unexpected error {err:?}"
    );
    assert_eq!(err.errno(), libc::ENOMEM);
    assert!(!c.is_tracking());
    assert_eq!(c.bitmap_bytes(), 0);
}

#[test]
fn start_with_the_default_budget_refuses_five_mappings_of_8_tib() {
    // What a peer can ask for at no cost to itself: mappings of a sparse file, each as large as
    // one bitmap may cover. Four fit 1 GiB exactly; the fifth is refused before any bitmap is
    // allocated.
    let c = Container::default();
    let size = DIRTY_BITMAP_PAGES_MAX * CONTAINER_PAGE_SIZE.bytes();
    let stride = size + CONTAINER_PAGE_SIZE.bytes();
    for i in 0..5 {
        c.map_dma(RW, i * stride, size, backing(size)).unwrap();
    }
    let err = c.start_dirty_tracking().expect_err("over the budget");
    assert!(
        matches!(
            err,
            IommuError::BitmapBudget { iova, in_use, .. }
                if iova == Iova(4 * stride) && in_use == 4 * DIRTY_BITMAP_SIZE_MAX
        ),
        "unexpected error {err:?}"
    );
    assert!(!c.is_tracking());
}

#[test]
fn start_checks_the_pages_of_a_mapping_before_charging_it() {
    let c = budgeted(8);
    c.map_dma(
        RW,
        0,
        (DIRTY_BITMAP_PAGES_MAX + 1) * CONTAINER_PAGE_SIZE.bytes(),
        backing((DIRTY_BITMAP_PAGES_MAX + 1) * CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert_err!(c.start_dirty_tracking(), IommuError::TooManyPages { .. });
}

#[test]
fn map_while_tracking_over_the_bitmap_budget_is_enomem_and_maps_nothing() {
    let c = budgeted(4096);
    c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    c.start_dirty_tracking().unwrap();
    // Mapped, then refused its bitmap, then unmapped again.
    assert_eq!(
        errno(c.map_dma(
            RW,
            SIZE_4K_BITMAP,
            CONTAINER_PAGE_SIZE.bytes(),
            backing(CONTAINER_PAGE_SIZE.bytes())
        )),
        libc::ENOMEM
    );
    assert_eq!(c.mappings(), 1);
    assert_eq!(c.bitmap_bytes(), 4096);
}

#[test]
fn map_while_tracking_checks_overlap_before_the_bitmap_budget() {
    let c = budgeted(4096);
    c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    c.start_dirty_tracking().unwrap();
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
fn mappings_within_the_bitmap_budget_are_tracked() {
    // Two mappings fill the budget exactly at START, a third fills it again while tracking.
    let c = budgeted(4096 + 8);
    let half = SIZE_4K_BITMAP / 2;
    c.map_dma(RW, 0, half, backing(half)).unwrap();
    c.map_dma(RW, half, half, backing(half)).unwrap();
    c.start_dirty_tracking().unwrap();
    c.map_dma(
        RW,
        SIZE_4K_BITMAP,
        64 * CONTAINER_PAGE_SIZE.bytes(),
        backing(64 * CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    assert_eq!(c.bitmap_bytes(), 4096 + 8);
    c.write(Iova(half + CONTAINER_PAGE_SIZE.bytes()), &[1])
        .unwrap();
    c.write(Iova(SIZE_4K_BITMAP), &[1]).unwrap();
    let pages = pages_of(&get(&c, 0, SIZE_4K_BITMAP + 64 * CONTAINER_PAGE_SIZE.bytes()).unwrap());
    assert_eq!(
        pages,
        vec![PAGES_PER_4K_BITMAP / 2 + 1, PAGES_PER_4K_BITMAP]
    );
}

#[test]
fn unmap_gives_back_its_bitmap_bytes() {
    let c = budgeted(4096);
    c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    c.start_dirty_tracking().unwrap();
    c.unmap_dma(
        &vfmig_iommu::UnmapRequest {
            flags: 0,
            iova: 0,
            size: SIZE_4K_BITMAP,
            bitmap: None,
        },
        None,
    )
    .unwrap();
    assert_eq!(c.bitmap_bytes(), 0);
    c.map_dma(RW, SIZE_4K_BITMAP, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    assert_eq!(c.bitmap_bytes(), 4096);
}

#[test]
fn stop_gives_back_every_bitmap_byte() {
    let c = budgeted(4096);
    c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    c.start_dirty_tracking().unwrap();
    c.stop_dirty_tracking();
    assert_eq!(c.bitmap_bytes(), 0);
    // Off, mappings cost nothing; START charges them all again.
    c.map_dma(RW, SIZE_4K_BITMAP, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    assert_eq!(errno(c.start_dirty_tracking()), libc::ENOMEM);
}

#[test]
fn the_bitmap_budget_is_per_container() {
    let a = budgeted(4096);
    let b = budgeted(4096);
    for c in [&a, &b] {
        c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
            .unwrap();
        c.start_dirty_tracking().unwrap();
    }
    assert_eq!((a.bitmap_bytes(), b.bitmap_bytes()), (4096, 4096));
}

#[test]
fn mappings_without_an_fd_cost_no_bitmap_bytes() {
    let c = budgeted(4096);
    c.map_dma(RW, 0, SIZE_4K_BITMAP, backing(SIZE_4K_BITMAP))
        .unwrap();
    c.map_dma(RW, SIZE_4K_BITMAP, 4 * SIZE_4K_BITMAP, nowhere())
        .unwrap();
    c.start_dirty_tracking().unwrap();
    c.map_dma(RW, 5 * SIZE_4K_BITMAP, SIZE_4K_BITMAP, nowhere())
        .unwrap();
    assert_eq!(c.bitmap_bytes(), 4096);
}
