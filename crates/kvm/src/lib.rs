//! KVM for the vfmig VMM: the mechanism a VM needs, and no policy.
//!
//! * [`KvmVm`] (`vm.rs`): the VM with its in-kernel irqchip (PIC, IOAPIC, LAPICs) and
//!   optional PIT; memslots over the caller's RAM mappings (guest RAM is the memfds the
//!   device processes also map), each with dirty logging switchable.
//! * [`DirtyLog`] (`dirty_log.rs`): KVM's dirty pages, from KVM_GET_DIRTY_LOG with manual
//!   protect + KVM_CLEAR_DIRTY_LOG, or from the dirty ring, ORed into the caller's words
//!   or [`vfmig_dirty::DirtyBitmap`] so the engine unions them with the devices' bitmaps.
//! * Interrupts and doorbells (`irq.rs`): MSI routes + irqfd, KVM_SIGNAL_MSI, ioeventfd.
//! * Boot (`boot.rs`): the boot contract's GDT and identity page tables, the flat image at
//!   0x10_0000, every vCPU entering 64-bit mode directly.
//! * [`Vcpu::run`] (`vcpu.rs`) and [`VcpuControl`] (`control.rs`): a run loop per vCPU
//!   thread handing PIO/MMIO exits to an [`ExitHandler`]; pause that really stops the
//!   guest (`immediate_exit` + a kick signal), resume, stop, and a duty-cycle throttle.
//! * State (`state.rs`, `snapshot.rs`): every vCPU's and the VM's KVM state, captured
//!   while paused and restored in an order KVM accepts, as versioned, checksummed bytes.
//!
//! Every KVM ioctl goes through kvm-ioctls, except KVM_CLEAR_DIRTY_LOG and
//! KVM_RESET_DIRTY_RINGS, which kvm-ioctls 0.25 lacks (`sys.rs`).
//!
//! # Using it
//!
//! ```text
//!  KvmVm::new(config) -> add_memslot (unsafe: the mapping outlives the slot) -> write_tables
//!  + load_image into RAM region 0 -> create_vcpu(i) + set_boot_state -> a thread per vCPU
//!  calling Vcpu::run(handler, control); control.pause() / resume() / set_throttle() / stop()
//!  from any thread; vcpu.state_handle(vm) before the vCPU moves to its thread, then
//!  vm.save_state(handles) while paused -> Snapshot::to_bytes; on the destination
//!  Snapshot::from_bytes -> vm.restore_state(handles, snapshot) before the first run.
//! ```
//!
//! MSI routes and irqfds are VM configuration, not state: the VMM sets them again on the
//! destination (the restore test does).
//!
//! # Measured on this machine
//!
//! `/dev/kvm` here is a software implementation: about 2 µs per guest instruction, 20–90 µs
//! per exit to user space. In this crate's tests and benchmark:
//!
//! | what | cost |
//! |---|---|
//! | dirty bitmap, clean read of a 2 GiB slot (GET, nothing to CLEAR) | 11 µs |
//! | dirty ring, clean read (harvest of empty rings) | 18–22 µs |
//! | dirty bitmap, read with 1 % (5232 pages) dirty (GET + CLEAR + OR) | 0.36–0.47 ms |
//! | dirty ring, read with 1 % dirty (harvest, reset, read-and-clear) | 0.60–0.63 ms |
//! | guest round writing one byte per page, per page, logging on / off | 9.7–10.2 µs / 9.1–9.6 µs |
//!
//! (`cargo bench -p vfmig-kvm --bench dirty_log`.) The bitmap reads faster, clean and
//! dirty; the cost to the guest of a logged write is within the noise of the emulation for
//! both (under 1 µs a page against 9 µs of emulated instructions). The bitmap is also
//! simpler to live with: no ring to size per vCPU, no ring-full exits stopping a vCPU at
//! high dirty rates, and KVM_GET_DIRTY_LOG keeps working. **Use
//! [`DirtyTracking::Bitmap`]**; the ring stays implemented and tested for hosts where
//! hardware logging changes the balance.
//!
//! Pause returns in well under a millisecond for a spinning guest (the pause tests wait on
//! it); an MSI through an irqfd wakes a guest halted with `sti; hlt` without any exit to
//! user space.
//!
//! # The boot contract
//!
//! The guest program (crate `vfmig-guest`) and this crate implement `BOOT.md`:
//!
//! ```text
//!  0x0000_1000  GDT (VMM-written): null, 64-bit code (0x08), data (0x10)
//!  0x0000_2000  PML4, 0x3000 PDPT, 0x4000..0x7FFF four page directories: identity map of
//!               the first 4 GiB with 2 MiB pages (RAM, PCI MMIO window, LAPIC/IOAPIC)
//!  0x0000_8000  boot page (VMM -> guest parameters; layout owned by vfmig-guest)
//!  0x0000_9000  status page (guest -> VMM counters; layout owned by vfmig-guest)
//!  0x0001_0000  vCPU stacks: vCPU i's top = 0x1_0000 + (i+1) * 0x4000 (16 KiB, <= 16 vCPUs)
//!  0x0010_0000  guest image (flat binary linked here, entry = first byte), max 1 MiB
//!  0x0020_0000 .. 0x0040_0000  the guest's scratch area
//!  PCI MMIO window for 32-bit BARs: 0xC000_0000 .. 0xFEC0_0000
//!  IOAPIC 0xFEC0_0000, LAPIC 0xFEE0_0000 (in-kernel irqchip)
//! ```
//!
//! Every vCPU starts in long mode: CR0 = PE|MP|ET|NE|PG, CR4 = PAE|OSFXSR|OSXMMEXCPT,
//! EFER = LME|LMA, CR3 = 0x2000, CS = 0x08 (L=1), DS/ES/SS/FS/GS = 0x10, RFLAGS = 0x2,
//! RIP = 0x10_0000, RSP = its stack top, RDI = 0x8000, RSI = its index; runnable without
//! INIT/SIPI. The guest sets up its IDT and enables interrupts itself. Ports 0xCF8/0xCFC
//! are PCI configuration mechanism #1, emulated by the VMM.

mod boot;
mod control;
mod dirty_log;
mod error;
mod irq;
mod memslot;
mod snapshot;
mod state;
mod sys;
mod vcpu;
mod vm;

pub use boot::{
    BOOT_PAGE_GPA, BootError, BootStateError, CODE_SELECTOR, DATA_SELECTOR, GDT_GPA, IMAGE_GPA,
    IMAGE_MAX, MAX_VCPUS, MIN_RAM, PD_GPA, PDPT_GPA, PML4_GPA, STACK_SIZE, STACKS_GPA,
    STATUS_PAGE_GPA, TSS_SELECTOR, entry_fpu, entry_regs, entry_sregs, load_image, stack_top,
    write_tables,
};
pub use control::{Throttle, VcpuControl, kick_signal};
pub use dirty_log::{DirtyLog, DirtyTracking};
pub use error::{KvmError, RunError, SnapshotError, StateError};
pub use irq::{Datamatch, DoorbellAddress, FIRST_MSI_GSI, MAX_GSI, MsiMessage};
pub use memslot::Memslot;
pub use snapshot::{MAX_MSRS, MAX_SNAPSHOT_VCPUS, SNAPSHOT_VERSION};
pub use state::{Snapshot, VcpuState, VcpuStateHandle, VmState};
pub use vcpu::{ExitHandler, RunEnd, Vcpu};
pub use vm::{IDENTITY_MAP_ADDRESS, KvmConfig, KvmVm, TSS_ADDRESS};
pub use vmm_sys_util::eventfd::EventFd;
