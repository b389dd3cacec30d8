//! A memslot: the guest-physical range KVM maps onto a caller's host mapping, its checks, and
//! the kernel's view of it. Used by the VM (which adds and removes slots) and by the dirty log
//! (which sizes its bitmaps from them).

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};

use crate::KvmError;

/// A memslot: `size` bytes of guest-physical space at `gpa`, backed by the caller's mapping
/// at `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memslot {
    /// KVM's slot number (below [`KvmVm::max_memslots`](crate::KvmVm::max_memslots)).
    pub slot: u32,
    /// The guest-physical address of the first byte; page-aligned.
    pub gpa: u64,
    /// The host virtual address of the first byte; page-aligned.
    pub host: u64,
    /// The size in bytes; a non-zero multiple of the page size.
    pub size: u64,
    /// Whether KVM logs the pages the guest writes (KVM_MEM_LOG_DIRTY_PAGES).
    pub log_dirty: bool,
}

/// The page size of guest memory slots.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// Checks a slot's numbers before KVM sees them.
pub(crate) fn check_slot(slot: &Memslot, max_slots: usize) -> Result<(), KvmError> {
    let bad = |reason| KvmError::BadSlot {
        slot: slot.slot,
        reason,
    };
    if usize::try_from(slot.slot).map_or(true, |s| s >= max_slots) {
        return Err(bad("slot number above KVM's limit"));
    }
    if slot.size == 0 || !slot.size.is_multiple_of(PAGE_SIZE) {
        return Err(bad("size is not a non-zero multiple of 4 KiB"));
    }
    if !slot.gpa.is_multiple_of(PAGE_SIZE) || !slot.host.is_multiple_of(PAGE_SIZE) {
        return Err(bad("address not 4 KiB aligned"));
    }
    if slot.gpa.checked_add(slot.size).is_none() || slot.host.checked_add(slot.size).is_none() {
        return Err(bad("range wraps around"));
    }
    Ok(())
}

/// The kernel's view of a slot.
pub(crate) fn region_of(slot: &Memslot) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot: slot.slot,
        flags: if slot.log_dirty {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: slot.gpa,
        memory_size: slot.size,
        userspace_addr: slot.host,
    }
}
