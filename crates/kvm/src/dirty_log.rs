//! KVM's record of the pages the guest wrote, through either of its two interfaces:
//!
//! * **Bitmap** (KVM_GET_DIRTY_LOG with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): a read copies
//!   the slot's bitmap out, then KVM_CLEAR_DIRTY_LOG re-protects exactly the pages it
//!   returned. With manual protect the copy no longer write-protects the whole slot, so a
//!   clean read costs only the copy.
//! * **Ring** (KVM_CAP_DIRTY_LOG_RING): each vCPU has a ring of (slot, page) entries, mapped
//!   into this process, that KVM pushes a page onto the first time it is written. A read
//!   harvests every ring into a bitmap per slot, marks the entries reset and calls
//!   KVM_RESET_DIRTY_RINGS, which re-protects them. A full ring stops its vCPU with
//!   KVM_EXIT_DIRTY_RING_FULL; the run loop harvests and goes on.
//!
//! Either way a read returns each page written since the previous read of that slot, and
//! the caller copies the pages *after* the read returns: a write racing with the read then
//! either lands in the copy or faults again and is in the next read. The result is ORed
//! into the caller's words or [`DirtyBitmap`], so the engine unions it with the other
//! sources of dirty RAM.
//!
//! Measured on this machine (`cargo bench -p vfmig-kvm --bench dirty_log`): see the crate
//! docs for the numbers and which interface is faster.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::{io, ptr};

use kvm_bindings::{
    KVM_CAP_DIRTY_LOG_RING, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_GFN_F_MASK,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_DIRTY_LOG_PAGE_OFFSET, kvm_dirty_gfn, kvm_enable_cap,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use vfmig_dirty::{DirtyBitmap, PageSize, words_for};

use crate::memslot::{Memslot, PAGE_SIZE};
use crate::{KvmError, sys};

/// An entry KVM has filled: the page is dirty (`KVM_DIRTY_GFN_F_DIRTY`, bit 0 in the
/// kernel header, which bindgen does not export as a constant).
const GFN_DIRTY: u32 = 1 << 0;
/// An entry user space has harvested (`KVM_DIRTY_GFN_F_RESET`, bit 1).
const GFN_RESET: u32 = 1 << 1;
const _: () = assert!(GFN_DIRTY | GFN_RESET == KVM_DIRTY_GFN_F_MASK);

/// The most pages one KVM_CLEAR_DIRTY_LOG covers: its `num_pages` is a `u32`; a multiple
/// of 64 as the kernel requires.
const CLEAR_CHUNK_PAGES: u64 = 1 << 30;

/// Which KVM dirty tracking interface a VM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyTracking {
    /// KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (manual protect).
    Bitmap,
    /// The dirty ring, `entries` per vCPU (a power of two; 16 bytes each).
    Ring {
        /// Entries per vCPU ring.
        entries: u32,
    },
}

/// KVM's dirty log of one VM; see the module docs.
#[derive(Debug)]
pub struct DirtyLog {
    vm: Arc<VmFd>,
    mode: DirtyTracking,
    /// Pages per slot, and in ring mode the bitmap that harvests land in.
    slots: Mutex<BTreeMap<u32, SlotLog>>,
    /// The rings of the vCPUs (ring mode only).
    rings: Mutex<Vec<Ring>>,
}

#[derive(Debug)]
struct SlotLog {
    pages: u64,
    ring_bits: Option<DirtyBitmap>,
}

impl DirtyLog {
    /// Enables `mode` on a VM that has no vCPU yet.
    pub(crate) fn enable(vm: Arc<VmFd>, mode: DirtyTracking) -> Result<DirtyLog, KvmError> {
        match mode {
            DirtyTracking::Bitmap => {
                let flags = vm.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into());
                let wanted = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
                if u32::try_from(flags).unwrap_or(0) & wanted == 0 {
                    return Err(KvmError::MissingCapability(
                        "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
                    ));
                }
                let mut cap = kvm_enable_cap {
                    cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                    ..Default::default()
                };
                cap.args[0] = wanted.into();
                vm.enable_cap(&cap)
                    .map_err(KvmError::ioctl("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)"))?;
            }
            DirtyTracking::Ring { entries } => {
                let bytes = ring_bytes(entries)?;
                let max = vm.check_extension_int(Cap::DirtyLogRing);
                if max <= 0 {
                    return Err(KvmError::MissingCapability("KVM_CAP_DIRTY_LOG_RING"));
                }
                if u64::try_from(max).unwrap_or(0) < bytes {
                    return Err(KvmError::InvalidArgument(
                        "dirty ring larger than KVM allows",
                    ));
                }
                let mut cap = kvm_enable_cap {
                    cap: KVM_CAP_DIRTY_LOG_RING,
                    ..Default::default()
                };
                cap.args[0] = bytes;
                vm.enable_cap(&cap)
                    .map_err(KvmError::ioctl("KVM_ENABLE_CAP(DIRTY_LOG_RING)"))?;
            }
        }
        Ok(DirtyLog {
            vm,
            mode,
            slots: Mutex::new(BTreeMap::new()),
            rings: Mutex::new(Vec::new()),
        })
    }

    /// The interface in use.
    pub fn mode(&self) -> DirtyTracking {
        self.mode
    }

    /// Maps the ring of a new vCPU (ring mode; nothing in bitmap mode).
    pub(crate) fn attach_vcpu(&self, vcpu: &VcpuFd) -> Result<(), KvmError> {
        if let DirtyTracking::Ring { entries } = self.mode {
            let ring = Ring::map(vcpu, entries)?;
            self.rings().push(ring);
        }
        Ok(())
    }

    /// Records a new slot.
    pub(crate) fn slot_added(&self, slot: &Memslot) -> Result<(), KvmError> {
        let pages = slot.size / PAGE_SIZE;
        let ring_bits = match self.mode {
            DirtyTracking::Bitmap => None,
            DirtyTracking::Ring { .. } => Some(DirtyBitmap::new(pages, PageSize::SIZE_4K)?),
        };
        self.slots().insert(slot.slot, SlotLog { pages, ring_bits });
        Ok(())
    }

    /// Forgets a removed slot.
    pub(crate) fn slot_removed(&self, slot: u32) {
        self.slots().remove(&slot);
    }

    /// ORs the pages of `slot` written since the last read into `out` (bit `k` = page `k`
    /// of the slot, LSB-first `u64` words) and re-arms them. Returns how many pages were
    /// dirty.
    ///
    /// # Errors
    /// [`KvmError::BadSlot`] for an unknown slot or an `out` shorter than the slot's
    /// bitmap; [`KvmError::Ioctl`] / [`KvmError::Os`] with the kernel's errno.
    pub fn read_slot_words(&self, slot: u32, out: &mut [u64]) -> Result<u64, KvmError> {
        let pages = self.slot_pages(slot)?;
        let words = usize::try_from(words_for(pages)).map_err(|_| KvmError::BadSlot {
            slot,
            reason: "bitmap too large",
        })?;
        let Some(out) = out.get_mut(..words) else {
            return Err(KvmError::BadSlot {
                slot,
                reason: "output bitmap shorter than the slot",
            });
        };
        match self.mode {
            DirtyTracking::Bitmap => self.read_bitmap(slot, pages, out),
            DirtyTracking::Ring { .. } => {
                self.harvest()?;
                let slots = self.slots();
                let bits = slots
                    .get(&slot)
                    .and_then(|log| log.ring_bits.as_ref())
                    .ok_or(KvmError::BadSlot {
                        slot,
                        reason: "no such slot",
                    })?;
                let mut taken = vec![0u64; out.len()];
                bits.read_and_clear(0, pages, &mut taken, 0)?;
                let mut dirty = 0;
                for (out, word) in out.iter_mut().zip(&taken) {
                    dirty += u64::from(word.count_ones());
                    *out |= word;
                }
                Ok(dirty)
            }
        }
    }

    /// Marks the pages of `slot` written since the last read in `bitmap`, slot page `k`
    /// as bitmap page `first_page + k`, and re-arms them. Returns how many pages were dirty.
    ///
    /// # Errors
    /// As [`DirtyLog::read_slot_words`], and [`KvmError::Dirty`] if the slot does not fit
    /// in `bitmap` at `first_page`.
    pub fn read_slot_into(
        &self,
        slot: u32,
        bitmap: &DirtyBitmap,
        first_page: u64,
    ) -> Result<u64, KvmError> {
        let pages = self.slot_pages(slot)?;
        if first_page
            .checked_add(pages)
            .is_none_or(|end| end > bitmap.pages())
        {
            return Err(KvmError::InvalidArgument(
                "slot does not fit in the bitmap at first_page",
            ));
        }
        let len = usize::try_from(words_for(pages)).map_err(|_| KvmError::BadSlot {
            slot,
            reason: "bitmap too large",
        })?;
        let mut words = vec![0u64; len];
        let dirty = self.read_slot_words(slot, &mut words)?;
        for (index, &word) in (0u64..).zip(&words) {
            let mut bits = word;
            while bits != 0 {
                let start = u64::from(bits.trailing_zeros());
                let run = u64::from((bits >> start).trailing_ones());
                bitmap.mark_pages(first_page + index * 64 + start, run)?;
                bits &= if start + run >= 64 {
                    0
                } else {
                    !0u64 << (start + run)
                };
            }
        }
        Ok(dirty)
    }

    /// Harvests every vCPU's ring into the slot bitmaps and resets the harvested entries.
    /// Run loops call it on KVM_EXIT_DIRTY_RING_FULL; reads call it first. Returns the
    /// number of entries harvested. A no-op in bitmap mode.
    ///
    /// # Errors
    /// [`KvmError::Os`] if KVM_RESET_DIRTY_RINGS fails; [`KvmError::Dirty`] if KVM named a
    /// page outside its slot.
    pub fn harvest(&self) -> Result<u64, KvmError> {
        if self.mode == DirtyTracking::Bitmap {
            return Ok(0);
        }
        let rings = self.rings();
        let slots = self.slots();
        let mut harvested = 0;
        for ring in rings.iter() {
            harvested += ring.harvest(|slot, page| {
                // The upper 16 bits of `slot` are the address space; this VM has one.
                match slots.get(&slot).and_then(|log| log.ring_bits.as_ref()) {
                    Some(bits) => bits.mark_page(page).map_err(KvmError::from),
                    // A slot removed since KVM logged the page: nothing to copy any more.
                    None => Ok(()),
                }
            })?;
        }
        drop(slots);
        if harvested > 0 {
            sys::reset_dirty_rings(&self.vm).map_err(|source| KvmError::Os {
                op: "KVM_RESET_DIRTY_RINGS",
                source,
            })?;
        }
        Ok(harvested)
    }

    /// Bitmap mode: KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG of what it returned.
    fn read_bitmap(&self, slot: u32, pages: u64, out: &mut [u64]) -> Result<u64, KvmError> {
        let size = usize::try_from(pages * PAGE_SIZE).map_err(|_| KvmError::BadSlot {
            slot,
            reason: "slot too large",
        })?;
        let bitmap = self
            .vm
            .get_dirty_log(slot, size)
            .map_err(KvmError::ioctl("KVM_GET_DIRTY_LOG"))?;
        let dirty: u64 = bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        if dirty == 0 {
            return Ok(0);
        }
        let mut first = 0u64;
        while first < pages {
            let count = (pages - first).min(CLEAR_CHUNK_PAGES);
            let words = bitmap
                .get(
                    word_index(first)
                        ..word_index(first + count.next_multiple_of(64)).min(bitmap.len()),
                )
                .unwrap_or_default();
            if words.iter().any(|&w| w != 0) {
                let num =
                    u32::try_from(count).map_err(|_| KvmError::InvalidArgument("clear chunk"))?;
                sys::clear_dirty_log(&self.vm, slot, first, num, words).map_err(|source| {
                    KvmError::Os {
                        op: "KVM_CLEAR_DIRTY_LOG",
                        source,
                    }
                })?;
            }
            first += count;
        }
        for (out, word) in out.iter_mut().zip(&bitmap) {
            *out |= word;
        }
        Ok(dirty)
    }

    fn slot_pages(&self, slot: u32) -> Result<u64, KvmError> {
        self.slots()
            .get(&slot)
            .map(|log| log.pages)
            .ok_or(KvmError::BadSlot {
                slot,
                reason: "no such slot",
            })
    }

    /// Poisoning is ignored: the table changes by single inserts and removes.
    fn slots(&self) -> MutexGuard<'_, BTreeMap<u32, SlotLog>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Poisoning is ignored: the list only grows, by single pushes.
    fn rings(&self) -> MutexGuard<'_, Vec<Ring>> {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The index of the word that holds page `page`.
fn word_index(page: u64) -> usize {
    usize::try_from(page / 64).unwrap_or(usize::MAX)
}

/// The byte size of a ring of `entries` entries, checked against KVM's rules.
fn ring_bytes(entries: u32) -> Result<u64, KvmError> {
    if !entries.is_power_of_two() {
        return Err(KvmError::InvalidArgument(
            "dirty ring entries not a power of two",
        ));
    }
    let bytes = u64::from(entries) * std::mem::size_of::<kvm_dirty_gfn>() as u64;
    if bytes < PAGE_SIZE {
        return Err(KvmError::InvalidArgument("dirty ring smaller than a page"));
    }
    Ok(bytes)
}

/// One vCPU's dirty ring, mapped from its fd.
#[derive(Debug)]
struct Ring {
    entries: NonNull<kvm_dirty_gfn>,
    count: u32,
    /// The next entry to harvest (free-running; masked by `count - 1`).
    next: AtomicU32,
}

// SAFETY: the mapping is shared memory owned by this struct; entries are accessed with
// atomic flag loads/stores under the `rings` mutex only.
unsafe impl Send for Ring {}

impl Ring {
    fn map(vcpu: &VcpuFd, count: u32) -> Result<Ring, KvmError> {
        let bytes = usize::try_from(ring_bytes(count)?)
            .map_err(|_| KvmError::InvalidArgument("dirty ring size"))?;
        let offset = libc::off_t::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page_size_off();
        // SAFETY: a fresh shared mapping of the vCPU fd at the offset KVM documents for its
        // dirty ring; the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(KvmError::Os {
                op: "mmap dirty ring",
                source: io::Error::last_os_error(),
            });
        }
        let entries = NonNull::new(addr.cast::<kvm_dirty_gfn>()).ok_or(KvmError::Os {
            op: "mmap dirty ring",
            source: io::Error::from_raw_os_error(libc::EFAULT),
        })?;
        Ok(Ring {
            entries,
            count,
            next: AtomicU32::new(0),
        })
    }

    /// Calls `f(slot, page)` for each entry KVM filled since the last harvest and marks it
    /// reset. Returns how many entries it took.
    fn harvest(
        &self,
        mut f: impl FnMut(u32, u64) -> Result<(), KvmError>,
    ) -> Result<u64, KvmError> {
        let mut taken = 0;
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let index = usize::try_from(next & (self.count - 1)).unwrap_or(0);
            // SAFETY: `index < count`, the ring's entry count; the mapping lives as long as
            // `self`.
            let entry = unsafe { self.entries.as_ptr().add(index) };
            // SAFETY: `flags` is a naturally aligned u32 in shared memory that KVM writes;
            // an atomic view of it is how the kernel's protocol is meant to be read.
            let flags = unsafe { &*ptr::addr_of!((*entry).flags).cast::<AtomicU32>() };
            if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                break;
            }
            // SAFETY: the entry is published (DIRTY seen with Acquire) and KVM does not
            // write it again until it is reset.
            let (slot, offset) = unsafe { ((*entry).slot, (*entry).offset) };
            f(slot, offset)?;
            flags.store(GFN_RESET, Ordering::Release);
            next = next.wrapping_add(1);
            taken += 1;
        }
        self.next.store(next, Ordering::Relaxed);
        Ok(taken)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let bytes = ring_bytes(self.count)
            .ok()
            .and_then(|bytes| usize::try_from(bytes).ok())
            .unwrap_or(0);
        // SAFETY: unmaps exactly the mapping `map` made; nothing refers to it any more.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), bytes) };
    }
}

/// The host page size as an mmap offset unit.
fn page_size_off() -> libc::off_t {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size } else { 4096 }
}
