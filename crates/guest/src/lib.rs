//! The guest program of a vfmig KVM VM, and the pages it shares with the VMM.
//!
//! The program is freestanding x86-64 C with a little assembly, in `guest/` beside this crate;
//! `build.rs` compiles it with gcc and flattens it with objcopy into [`IMAGE`], a binary linked
//! to run at [`IMAGE_GPA`] whose first byte is its entry point. [`layout`] mirrors its boot page
//! (VMM → guest) and status page (guest → VMM) from `guest/layout.h`.
//!
//! # Boot contract (shared with vfmig-kvm)
//!
//! ```text
//! GPA          what                                         written by
//! 0x0000_1000  GDT: null, code 0x08 (L=1), data 0x10        VMM
//! 0x0000_2000  PML4; 0x3000 PDPT; 0x4000..0x7FFF four PDs:  VMM
//!              identity map of 4 GiB with 2 MiB pages
//! 0x0000_8000  boot page (BootPage)                         VMM, before any vCPU runs
//! 0x0000_9000  status page (StatusPage)                     guest
//! 0x0001_0000  stacks: vCPU i's top = 0x1_0000 + (i+1) * 0x4000 (16 KiB each, up to 16)
//! 0x0010_0000  the image (IMAGE), at most 1 MiB
//! 0x0020_0000  .. 0x0040_0000 the guest's scratch: DMA ring 0x20_0000, buffers 0x21_0000..
//! ws_base      the working set (BootPage::ws_base, ws_size), at or above 0x40_0000
//! 0xC000_0000  .. 0xFEC0_0000 32-bit PCI MMIO window: the guest places memory BARs here
//! 0xFEC0_0000  IOAPIC; 0xFEE0_0000 LAPIC (in-kernel irqchip)
//! I/O ports    0xCF8/0xCFC PCI configuration mechanism #1 (VMM-emulated, bus 0);
//!              0xC000..0xFFFF: the guest places I/O BARs here
//! ```
//!
//! Every vCPU starts in 64-bit mode at RIP = 0x10_0000 with CR3 = 0x2000, CS = 0x08, the data
//! segments 0x10, RFLAGS = 0x2 (interrupts off), RSP = its stack top, RDI = the boot page GPA,
//! RSI = its index. The guest loads its own IDT and turns interrupts on. A guest that hits a
//! fatal error writes it to the status page and halts with interrupts off.
//!
//! # What the guest does
//!
//! * **Start.** vCPU 0 clears the status page, checks the boot page (a wrong one is a fatal
//!   [`ErrorCode::BootPage`]), builds the IDT, enables its LAPIC and measures the LAPIC timer
//!   against the TSC (`BootPage::tsc_hz` is the only clock the guest trusts). The other vCPUs
//!   wait for those stages, then load the same IDT. Every vCPU runs a 10 ms periodic timer so
//!   `hlt` always wakes; interrupts stay on from then.
//! * **Devices** (vCPU 0, when a device workload is on): every slot of bus 0 is read through
//!   0xCF8/0xCFC; mtty (0x4348:0x3253) and the dma-engine (0x1af4:0x10f0) are recognised,
//!   their BARs sized and placed (largest first, naturally aligned), decode, bus mastering and
//!   INTx-disable set, and MSI pointed at vCPU 0's LAPIC (vector 0x40 mtty, 0x41 dma-engine).
//!   A dma-engine with an MSI-X capability (found by walking the capability list for ID 0x11)
//!   is driven by MSI-X instead: table entries 0 and 1 (in the BAR the capability names) point
//!   at vCPU 0's LAPIC with vectors 0x41 and 0x42 and are unmasked, then MSI-X is enabled, MSI
//!   left off; `StatusPage::dma_msix` says so.
//!   A bus where every read gives 0xFFFF has no devices: `StatusPage::devices` stays 0.
//! * **mtty**: each round sends 8 bytes out of one port (the ports take turns), waits for the
//!   receive interrupt the 8th byte raises (FIFO trigger level 8), drains the FIFO and checks
//!   every byte.
//! * **dma-engine**: a 64-descriptor ring at 0x20_0000 (IOVA = GPA); each round copies a
//!   512-byte pattern into device RAM and back, and reads back the previous round's device page,
//!   so device RAM that comes back stale from a migration is found; one doorbell per round,
//!   completion by interrupt and the DONE bit, every copy checked. Every second interrupting
//!   descriptor also has `FLAG_VECTOR1`: with MSI-X its completion comes on vector 1 (0x42,
//!   counted in `StatusPage::irq_dma_vector1`), the others on vector 0 (0x41,
//!   `VcpuStatus::irq_dma`). The guest looks at DONE whether or not the interrupt comes; if the
//!   first MSI-X interrupt it waits for never comes (a VMM that does not route MSI-X), it turns
//!   MSI-X off, uses MSI from then on and sets `dma_msix` back to 0, counting no error; a
//!   missing interrupt after that, or after MSI-X has worked, is
//!   [`ErrorCode::IrqTimeout`]. Each round first checks the 4 KiB
//!   block of the device's BAR4 (64 KiB of memory it shares with its client, at
//!   `StatusPage::dma_shared`) that it stamped last, counting `VcpuStatus::shared_checked` or
//!   reporting [`ErrorCode::SharedMemory`], then stamps the next block (16, round-robin) with
//!   the next sequence number: 9 words, the sequence and check words derived from it, from the
//!   block's first word to its last. The sequence lives in guest RAM, so BAR4 content a
//!   migration loses is found on the destination.
//! * **Dirtier**: each vCPU walks its slice of the working set (vCPU `i` of `n` takes the
//!   `i`-th of `n` equal slices, the last one the remainder), at `BootPage::dirty_rate` pages per
//!   second (TSC-paced) or as fast as it can. A visit checks the page's stamp from the previous
//!   pass and writes this pass's: the page's GPA (word 0) and the pass number, 1 first
//!   (word 1), a check word (word 2), and words 128, 256, 384 and 511 derived from both. The expected pass is not stored in RAM but follows
//!   from the walk's position, so a page that is lost, or older than the guest last wrote it,
//!   is reported ([`ErrorCode::PageSeq`], with the page's GPA) the next time the walk reaches
//!   it.
//! * **Status**: counters per vCPU, an error count and the first error (see [`layout`] for how
//!   the VMM may read them while the guest runs).
//!
//! Guest loops are short because the machine's KVM emulates guest instructions (1.5–3 µs each,
//! 20–90 µs per exit to user space): a page visit touches 7 words, not 4 KiB. Measured with one
//! vCPU and no rate limit: about 1,600–2,100 page visits a second (a sum over the whole page in
//! each check: about 450). A device round is about 25 exits for mtty and 6 for the dma-engine,
//! plus 18 for BAR4 while the VMM traps it (none where it maps BAR4 into the guest).
//!
//! # What the VMM provides
//!
//! * `BootPage::tsc_hz` from KVM_GET_TSC_KHZ (the guest paces and times out by the TSC).
//! * Application processors runnable at the entry state (no INIT/SIPI).
//! * Configuration mechanism #1 on bus 0: a slot with no device reads all ones.
//! * BAR accesses routed by the addresses the guest writes into the BARs (I/O for mtty, 32-bit
//!   memory for the dma-engine, 8-byte accesses to its RING_BASE and to BAR4, which the VMM may
//!   trap or map), with decode enabled in the command register; MSI routed from the address/data the guest writes into the capability.
//! * MSI-X, where the VMM offers it (the dma-engine's capability reaches the guest), routed per
//!   vector from the table entries the guest writes into BAR0; without such routing the guest
//!   falls back to MSI as above.
//! * Guest RAM mapped for device DMA at IOVA = GPA.

pub mod layout;

pub use layout::{
    BOOT_PAGE_GPA, BootPage, ErrorCode, FirstError, GuestError, IMAGE_GPA, IMAGE_MAX, MAX_VCPUS,
    STATUS_PAGE_GPA, StatusPage, VcpuStatus, Workloads,
};

/// The guest program, a flat binary to load at [`IMAGE_GPA`] and enter at its first byte.
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.bin"));

/// The top of vCPU `index`'s stack, the RSP it starts with.
pub const fn stack_top(index: u64) -> u64 {
    layout::STACKS_GPA + (index + 1) * layout::STACK_SIZE
}
