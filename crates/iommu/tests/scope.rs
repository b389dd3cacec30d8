//! Dirty scope (semantics §1.7): `AllMapped` devices make every mapped page dirty on every GET;
//! the first pin makes a device `Pinned`; detaching an `AllMapped` device while tracking marks
//! everything dirty.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use common::*;
use vfmig_iommu::{Container, DirtyScope, IommuError, Iova, Prot};

#[test]
fn an_all_mapped_device_makes_every_mapped_page_dirty_on_every_get() {
    let c = container_with(&[
        (0, 2 * CONTAINER_PAGE_SIZE.bytes()),
        (4 * CONTAINER_PAGE_SIZE.bytes(), CONTAINER_PAGE_SIZE.bytes()),
    ]);
    c.attach_device(DirtyScope::AllMapped, None);
    c.start_dirty_tracking().unwrap();
    for _ in 0..2 {
        assert_eq!(
            pages_of(&get(&c, 0, 8 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
            vec![0, 1, 4]
        );
    }
}

#[test]
fn a_container_without_devices_is_precise() {
    assert_eq!(Container::default().scope(), DirtyScope::Pinned);
}

#[test]
fn the_first_pin_makes_a_device_pinned_scope() {
    let c = container_with(&[(0, 2 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::AllMapped, None);
    assert_eq!(c.device_scope(dev).unwrap(), DirtyScope::AllMapped);
    drop(
        c.pin(dev, Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ)
            .unwrap(),
    );
    assert_eq!(c.device_scope(dev).unwrap(), DirtyScope::Pinned);
}

#[test]
fn a_failed_pin_does_not_promote() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::AllMapped, None);
    assert!(
        c.pin(
            dev,
            Iova(8 * CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ
        )
        .is_err()
    );
    assert_eq!(c.device_scope(dev).unwrap(), DirtyScope::AllMapped);
}

#[test]
fn the_container_is_precise_only_when_every_device_is() {
    let c = container_with(&[(0, CONTAINER_PAGE_SIZE.bytes())]);
    let a = c.attach_device(DirtyScope::Pinned, None);
    let b = c.attach_device(DirtyScope::AllMapped, None);
    assert_eq!(c.scope(), DirtyScope::AllMapped);
    drop(
        c.pin(b, Iova(0), CONTAINER_PAGE_SIZE.bytes(), Prot::READ)
            .unwrap(),
    );
    assert_eq!(c.scope(), DirtyScope::Pinned);
    assert_ne!(a, b);
}

#[test]
fn a_promoted_container_reports_only_what_was_dirtied() {
    let c = container_with(&[(0, 4 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::AllMapped, None);
    c.start_dirty_tracking().unwrap();
    drop(
        c.pin(
            dev,
            Iova(2 * CONTAINER_PAGE_SIZE.bytes()),
            CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ,
        )
        .unwrap(),
    );
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![2]
    );
}

#[test]
fn detaching_an_all_mapped_device_while_tracking_marks_every_page() {
    let c = container_with(&[(0, 3 * CONTAINER_PAGE_SIZE.bytes())]);
    let precise = c.attach_device(DirtyScope::Pinned, None);
    let dev = c.attach_device(DirtyScope::AllMapped, None);
    c.start_dirty_tracking().unwrap();
    c.detach_device(dev).unwrap();
    assert_eq!(c.scope(), DirtyScope::Pinned);
    assert_eq!(
        pages_of(&get(&c, 0, 3 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![0, 1, 2]
    );
    // Reported once: the container is precise again.
    assert!(pages_of(&get(&c, 0, 3 * CONTAINER_PAGE_SIZE.bytes()).unwrap()).is_empty());
    c.detach_device(precise).unwrap();
}

#[test]
fn detaching_a_pinned_device_marks_nothing() {
    let c = container_with(&[(0, 3 * CONTAINER_PAGE_SIZE.bytes())]);
    let dev = c.attach_device(DirtyScope::Pinned, None);
    c.start_dirty_tracking().unwrap();
    c.detach_device(dev).unwrap();
    assert!(pages_of(&get(&c, 0, 3 * CONTAINER_PAGE_SIZE.bytes()).unwrap()).is_empty());
}

#[test]
fn detaching_an_unknown_device_is_einval() {
    let c = Container::default();
    let dev = c.attach_device(DirtyScope::Pinned, None);
    c.detach_device(dev).unwrap();
    assert_err!(c.detach_device(dev), IommuError::NoSuchDevice(_));
}
