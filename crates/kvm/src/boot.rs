//! Boot: the low-memory layout of the boot contract (`BOOT.md`, agreed with the guest
//! program) written into RAM region 0, and each vCPU's registers set to start in 64-bit
//! long mode at the image's first byte.
//!
//! ```text
//!  GPA 0x0000_1000  GDT: null, code 0x08 (64-bit), data 0x10, TSS 0x18 (16 bytes)
//!      0x0000_2000  PML4 -> 0x3000 PDPT -> 0x4000..0x7FFF four page directories:
//!                   identity map of 0..4 GiB with 2 MiB pages
//!      0x0000_8000  boot page (VMM -> guest; layout owned by the guest program)
//!      0x0000_9000  status page (guest -> VMM; layout owned by the guest program)
//!      0x0001_0000  vCPU stacks: vCPU i's top = 0x1_0000 + (i + 1) * 0x4000
//!      0x0010_0000  the flat guest image, entry = first byte, at most 1 MiB
//! ```
//!
//! The page-table entries and GDT descriptors are written with their Accessed (and, for
//! the 2 MiB pages, Dirty) bits already set, so the CPU never writes them back: the guest
//! then dirties only the pages it stores to, which keeps KVM's dirty log exact.
//! The TSS descriptor is not in the contract's list but does not move anything in it: VM
//! entry wants a usable task register, and the GDT page has room.
//!
//! linux-loader is not used: it loads ELF and bzImage kernels and writes Linux boot
//! parameters; a flat binary is one copy, and the rest of this layout is the contract's,
//! not Linux's.

use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, kvm_fpu, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
};

use crate::StateError;
use crate::vcpu::Vcpu;

/// The GDT.
pub const GDT_GPA: u64 = 0x1000;
/// The PML4; CR3.
pub const PML4_GPA: u64 = 0x2000;
/// The one PDPT.
pub const PDPT_GPA: u64 = 0x3000;
/// The first of the four page directories.
pub const PD_GPA: u64 = 0x4000;
/// The boot page (RDI at entry).
pub const BOOT_PAGE_GPA: u64 = 0x8000;
/// The status page.
pub const STATUS_PAGE_GPA: u64 = 0x9000;
/// The base of the vCPU stacks.
pub const STACKS_GPA: u64 = 0x1_0000;
/// The size of one vCPU stack.
pub const STACK_SIZE: u64 = 0x4000;
/// The most vCPUs the stack area holds.
pub const MAX_VCPUS: u32 = 16;
/// Where the flat image is loaded and entered.
pub const IMAGE_GPA: u64 = 0x10_0000;
/// The largest image.
pub const IMAGE_MAX: usize = 0x10_0000;
/// The smallest RAM region 0 the layout needs: the image area and the guest's scratch
/// area up to 0x40_0000.
pub const MIN_RAM: usize = 0x40_0000;

/// Code segment selector.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// Task state segment selector.
pub const TSS_SELECTOR: u16 = 0x18;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits: present, writable, accessed.
const PTE_TABLE: u64 = 0x1 | 0x2 | 0x20;
/// A 2 MiB page: present, writable, accessed, dirty, page size.
const PTE_LARGE: u64 = 0x1 | 0x2 | 0x20 | 0x40 | 0x80;

/// The GDT's descriptors: null; code: base 0, limit 4 GiB, present, DPL 0, execute/read,
/// accessed, L=1; data: read/write, accessed, D/B=1; TSS (two words): 64-bit busy TSS,
/// base 0, limit 0x67.
const GDT: [u64; 5] = [
    0,
    0x00AF_9B00_0000_FFFF,
    0x00CF_9300_0000_FFFF,
    0x0000_8B00_0000_0067,
    0,
];

/// A boot layout does not fit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    /// RAM region 0 is smaller than the layout.
    #[error("RAM region 0 has {len} bytes, the boot layout needs {needed}")]
    RamTooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The image is larger than its area.
    #[error("guest image of {0} bytes is larger than 1 MiB")]
    ImageTooLarge(usize),
    /// The vCPU index has no stack.
    #[error("vCPU {0} is above the {MAX_VCPUS} the stack area holds")]
    TooManyVcpus(u32),
}

/// Writes the GDT and the identity page tables into RAM region 0 (which starts at GPA 0).
///
/// # Errors
/// [`BootError::RamTooSmall`] if `ram` is below [`MIN_RAM`].
pub fn write_tables(ram: &mut [u8]) -> Result<(), BootError> {
    check_ram(ram)?;
    write_words(ram, GDT_GPA, &GDT);
    write_words(ram, PML4_GPA, &[PDPT_GPA | PTE_TABLE]);
    let pdpt: Vec<u64> = (0..4).map(|i| (PD_GPA + i * 0x1000) | PTE_TABLE).collect();
    write_words(ram, PDPT_GPA, &pdpt);
    let pds: Vec<u64> = (0..4 * 512).map(|i| (i << 21) | PTE_LARGE).collect();
    write_words(ram, PD_GPA, &pds);
    Ok(())
}

/// Copies a flat image to [`IMAGE_GPA`].
///
/// # Errors
/// [`BootError::RamTooSmall`], [`BootError::ImageTooLarge`].
pub fn load_image(ram: &mut [u8], image: &[u8]) -> Result<(), BootError> {
    check_ram(ram)?;
    if image.len() > IMAGE_MAX {
        return Err(BootError::ImageTooLarge(image.len()));
    }
    let start = usize::try_from(IMAGE_GPA).unwrap_or(usize::MAX);
    if let Some(area) = ram.get_mut(start..start + image.len()) {
        area.copy_from_slice(image);
    }
    Ok(())
}

/// The stack top of vCPU `index`.
///
/// # Errors
/// [`BootError::TooManyVcpus`].
pub fn stack_top(index: u32) -> Result<u64, BootError> {
    if index >= MAX_VCPUS {
        return Err(BootError::TooManyVcpus(index));
    }
    Ok(STACKS_GPA + (u64::from(index) + 1) * STACK_SIZE)
}

/// The general registers at entry: RIP at the image, RSP at the vCPU's stack top,
/// RDI = boot page, RSI = vCPU index, RFLAGS = 0x2 (interrupts off).
///
/// # Errors
/// [`BootError::TooManyVcpus`].
pub fn entry_regs(index: u32) -> Result<kvm_regs, BootError> {
    Ok(kvm_regs {
        rip: IMAGE_GPA,
        rsp: stack_top(index)?,
        rdi: BOOT_PAGE_GPA,
        rsi: u64::from(index),
        rflags: 0x2,
        ..Default::default()
    })
}

/// `base` (the vCPU's current special registers) switched to long mode as the contract
/// says: paging on with CR3 = PML4, flat 64-bit code and data segments from the GDT.
pub fn entry_sregs(base: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: CODE_SELECTOR,
        type_: 0xB,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    let tss = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xB,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let mut sregs = base;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = u16::try_from(GDT.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// The FPU at entry: the x87 control word and MXCSR of a reset CPU.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    }
}

impl Vcpu {
    /// Puts this vCPU at the contract's long-mode entry: sregs, regs, FPU, and a runnable
    /// MP state (application processors would otherwise wait for INIT/SIPI).
    ///
    /// # Errors
    /// [`StateError::Ioctl`] with the errno of the failing ioctl.
    pub fn set_boot_state(&self) -> Result<(), BootStateError> {
        let regs = entry_regs(self.index())?;
        let fd = self.fd();
        let sregs = fd.get_sregs().map_err(StateError::ioctl("KVM_GET_SREGS"))?;
        fd.set_sregs(&entry_sregs(sregs))
            .map_err(StateError::ioctl("KVM_SET_SREGS"))?;
        fd.set_regs(&regs)
            .map_err(StateError::ioctl("KVM_SET_REGS"))?;
        fd.set_fpu(&entry_fpu())
            .map_err(StateError::ioctl("KVM_SET_FPU"))?;
        fd.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(StateError::ioctl("KVM_SET_MP_STATE"))?;
        Ok(())
    }
}

/// Setting a vCPU's boot state failed.
#[derive(Debug, thiserror::Error)]
pub enum BootStateError {
    /// The layout refuses the vCPU.
    #[error(transparent)]
    Layout(#[from] BootError),
    /// An ioctl failed.
    #[error(transparent)]
    State(#[from] StateError),
}

fn check_ram(ram: &[u8]) -> Result<(), BootError> {
    if ram.len() < MIN_RAM {
        return Err(BootError::RamTooSmall {
            len: ram.len(),
            needed: MIN_RAM,
        });
    }
    Ok(())
}

/// Writes little-endian words at `gpa`; the caller has checked `ram` holds the layout.
fn write_words(ram: &mut [u8], gpa: u64, words: &[u64]) {
    let start = usize::try_from(gpa).unwrap_or(usize::MAX);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if let Some(area) = ram.get_mut(start..start.saturating_add(bytes.len())) {
        area.copy_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_map_every_2mib_page_of_4gib_to_itself() {
        let mut ram = vec![0u8; MIN_RAM];
        write_tables(&mut ram).unwrap();
        let word = |gpa: u64| {
            let at = usize::try_from(gpa).unwrap();
            u64::from_le_bytes(ram[at..at + 8].try_into().unwrap())
        };
        for gib in 0..4u64 {
            for entry in 0..512u64 {
                let va = (gib << 30) | (entry << 21);
                let pdpte = word(PDPT_GPA + gib * 8);
                let pde = word((pdpte & !0xFFF) + entry * 8);
                assert_eq!(pde & !0x1FFFFF, va, "PDE for {va:#x}");
                assert_eq!(pde & PTE_LARGE, PTE_LARGE);
            }
        }
        assert_eq!(word(PML4_GPA) & !0xFFF, PDPT_GPA);
    }

    #[test]
    fn a_17th_vcpu_has_no_stack() {
        assert_eq!(stack_top(15), Ok(0x5_0000));
        assert_eq!(stack_top(16), Err(BootError::TooManyVcpus(16)));
    }

    #[test]
    fn ram_below_the_layout_is_refused() {
        let mut ram = vec![0u8; MIN_RAM - 1];
        assert!(matches!(
            write_tables(&mut ram),
            Err(BootError::RamTooSmall { .. })
        ));
    }
}
