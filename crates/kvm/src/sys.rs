//! The two KVM ioctls that kvm-ioctls 0.25 does not wrap: KVM_CLEAR_DIRTY_LOG and
//! KVM_RESET_DIRTY_RINGS. Their numbers are built by vmm-sys-util's macros from
//! kvm-bindings' `KVMIO` and argument struct, as kvm-ioctls builds its own; nothing is
//! retyped from the kernel header but the command numbers 0xc0 and 0xc7.

#![allow(missing_docs, unreachable_pub)]

use std::io;

use kvm_bindings::{KVMIO, kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};

vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
vmm_sys_util::ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

/// KVM_CLEAR_DIRTY_LOG: clears the dirty bits set in `bitmap` for pages
/// `[first_page, first_page + bitmap bits)` of `slot` and write-protects those pages again.
/// `num_pages` must be a multiple of 64 or reach the end of the slot (the kernel's rule);
/// `bitmap` must hold at least `num_pages` bits.
pub(crate) fn clear_dirty_log(
    vm: &VmFd,
    slot: u32,
    first_page: u64,
    num_pages: u32,
    bitmap: &[u64],
) -> io::Result<()> {
    let bits = u64::try_from(bitmap.len())
        .ok()
        .and_then(|words| words.checked_mul(64));
    if bits.is_none_or(|bits| bits < u64::from(num_pages)) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let args = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_ptr().cast_mut().cast(),
        },
    };
    // SAFETY: `args` names a bitmap of at least `num_pages` bits (checked above) that lives
    // across the call; the kernel only reads it.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &args) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// KVM_RESET_DIRTY_RINGS: re-protects every page whose ring entry user space marked
/// reset, and frees those entries. Returns the number of entries reset.
pub(crate) fn reset_dirty_rings(vm: &VmFd) -> io::Result<u32> {
    // SAFETY: the ioctl takes no argument and only acts on the VM's own rings.
    let ret = unsafe { ioctl(vm, KVM_RESET_DIRTY_RINGS()) };
    u32::try_from(ret).map_err(|_| io::Error::last_os_error())
}
