//! The boot page and the status page, mirrored from `guest/layout.h` (`tests/c_layout.rs`
//! compiles that header and compares every size, offset and constant with these).
//!
//! Both are little-endian, `#[repr(C)]`, with explicit padding. The VMM writes the boot page
//! before the first vCPU runs; the guest writes the status page with plain aligned 8-byte
//! stores that the VMM reads racily: an aligned 8-byte load never tears on x86, so each counter
//! read is a value it really had, and counters of one vCPU may be from slightly different
//! instants. [`FirstError::code`] is written after its details: once it is non-zero, the
//! details are there.

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Guest-physical address of the boot page.
pub const BOOT_PAGE_GPA: u64 = 0x8000;
/// Guest-physical address of the status page.
pub const STATUS_PAGE_GPA: u64 = 0x9000;
/// Guest-physical address the image is loaded at and entered at.
pub const IMAGE_GPA: u64 = 0x10_0000;
/// Most bytes of the image.
pub const IMAGE_MAX: u64 = 1 << 20;
/// The guest's own scratch area (descriptor rings, DMA buffers): `SCRATCH_GPA..SCRATCH_END`.
pub const SCRATCH_GPA: u64 = 0x20_0000;
/// End of the scratch area; a working set starts at or above it.
pub const SCRATCH_END: u64 = 0x40_0000;
/// Most vCPUs the guest runs on (their stacks end at 0x5_0000).
pub const MAX_VCPUS: usize = 16;
/// Guest-physical address of vCPU 0's stack area; vCPU `i`'s stack top is
/// `STACKS_GPA + (i + 1) * STACK_SIZE`.
pub const STACKS_GPA: u64 = 0x1_0000;
/// Bytes of one vCPU's stack.
pub const STACK_SIZE: u64 = 0x4000;
/// Bytes of a page of the working set.
pub const PAGE_SIZE: u64 = 4096;

/// `BootPage::magic`: "VFMGBOOT".
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"VFMGBOOT");
/// `StatusPage::magic` once the guest has started: "VFMGSTAT".
pub const STATUS_MAGIC: u64 = u64::from_le_bytes(*b"VFMGSTAT");
/// Version of both layouts.
pub const LAYOUT_VERSION: u32 = 3;

/// What the guest runs (`BootPage::workloads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workloads(pub u32);

impl Workloads {
    /// Stamp and check pages of the working set.
    pub const DIRTIER: Workloads = Workloads(1 << 0);
    /// Drive mtty: bytes out through the UART and back through loopback.
    pub const MTTY: Workloads = Workloads(1 << 1);
    /// Drive the dma-engine: copies through device RAM.
    pub const DMA: Workloads = Workloads(1 << 2);
    /// All of them.
    pub const ALL: Workloads = Workloads(0b111);

    /// True if every workload of `other` is on.
    pub fn contains(self, other: Workloads) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Workloads {
    type Output = Workloads;
    fn bitor(self, rhs: Workloads) -> Workloads {
        Workloads(self.0 | rhs.0)
    }
}

/// `StatusPage::devices`: mtty was found.
pub const DEVICE_MTTY: u32 = 1 << 0;
/// `StatusPage::devices`: the dma-engine was found.
pub const DEVICE_DMA: u32 = 1 << 1;
/// `StatusPage::mtty_bdf` / `dma_bdf` of a device that was not found.
pub const NO_DEVICE: u64 = 0xffff;

/// The VMM's parameters for the guest, at [`BOOT_PAGE_GPA`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BootPage {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// vCPUs started, 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// Bytes of RAM from GPA 0.
    pub ram_size: u64,
    /// TSC ticks per second: the guest's only clock (at least 1 MHz).
    pub tsc_hz: u64,
    /// Working set GPA: 4 KiB aligned, at or above [`SCRATCH_END`].
    pub ws_base: u64,
    /// Working set bytes: a multiple of 4 KiB, at least one page per vCPU.
    pub ws_size: u64,
    /// Pages stamped per second by each vCPU; 0: as fast as it can.
    pub dirty_rate: u64,
    /// Device rounds per second on vCPU 0 (one mtty burst and one DMA round each); 0: as fast
    /// as it can.
    pub device_rate: u64,
    /// [`Workloads`] bits.
    pub workloads: u32,
    /// Zero.
    pub reserved0: u32,
    /// Zero.
    pub reserved: [u64; 7],
}

const _: () = assert!(size_of::<BootPage>() == 128);

impl BootPage {
    /// A boot page for `vcpus` vCPUs with `ram_size` bytes of RAM and a TSC of `tsc_hz`,
    /// running `workloads` over the working set `ws_base..ws_base + ws_size`, unthrottled.
    pub fn new(vcpus: u32, ram_size: u64, tsc_hz: u64, workloads: Workloads) -> BootPage {
        BootPage {
            magic: BOOT_MAGIC,
            version: LAYOUT_VERSION,
            vcpus,
            ram_size,
            tsc_hz,
            workloads: workloads.0,
            ..BootPage::default()
        }
    }
}

/// Counters of one vCPU; each written only by that vCPU.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct VcpuStatus {
    /// `VCPU_*`.
    pub state: u64,
    /// Iterations of the main loop.
    pub loops: u64,
    /// Working-set pages stamped.
    pub pages_written: u64,
    /// Pages found holding their last stamp when visited again.
    pub pages_verified: u64,
    /// Completed passes over its slice.
    pub passes: u64,
    /// Bytes written to mtty's THR.
    pub mtty_tx: u64,
    /// Bytes read from mtty's RBR.
    pub mtty_rx: u64,
    /// Bytes read back equal to what was sent.
    pub mtty_checked: u64,
    /// DMA descriptors handed to the device.
    pub dma_submitted: u64,
    /// DMA descriptors seen DONE.
    pub dma_completed: u64,
    /// DMA descriptors whose data was verified.
    pub dma_checked: u64,
    /// MSIs from mtty.
    pub irq_mtty: u64,
    /// MSIs from the dma-engine (with MSI-X, its vector 0).
    pub irq_dma: u64,
    /// LAPIC timer ticks.
    pub irq_timer: u64,
    /// Any other vector.
    pub irq_other: u64,
    /// Blocks of the dma-engine's BAR4 found holding the stamp last written to them.
    pub shared_checked: u64,
}

const _: () = assert!(size_of::<VcpuStatus>() == 128);

/// `VcpuStatus::state`: not started.
pub const VCPU_OFF: u64 = 0;
/// `VcpuStatus::state`: entered, setting up.
pub const VCPU_SETUP: u64 = 1;
/// `VcpuStatus::state`: in its main loop.
pub const VCPU_RUNNING: u64 = 2;
/// `VcpuStatus::state`: stopped on a fatal error.
pub const VCPU_HALTED: u64 = 3;

/// The first error the guest found, in detail.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FirstError {
    /// [`ErrorCode`] as a number; written last, 0 while there is none.
    pub code: u32,
    /// The vCPU that found it.
    pub vcpu: u32,
    /// Details, per code (see [`ErrorCode`]).
    pub a: u64,
    /// Details.
    pub b: u64,
    /// Details.
    pub c: u64,
}

/// The guest's report, at [`STATUS_PAGE_GPA`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StatusPage {
    /// [`STATUS_MAGIC`] once the guest has started.
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// vCPUs that entered the guest.
    pub vcpus_started: u32,
    /// [`DEVICE_MTTY`] | [`DEVICE_DMA`]: devices found on the PCI bus.
    pub devices: u32,
    /// PCI functions that answered on bus 0.
    pub pci_functions: u32,
    /// 1: a vCPU stopped on a fatal error (interrupts off, `hlt`).
    pub fatal: u32,
    /// Zero.
    pub reserved0: u32,
    /// Errors found, all vCPUs.
    pub errors: u64,
    /// The first of them.
    pub first_error: FirstError,
    /// Bus/device/function of mtty ([`NO_DEVICE`]: none).
    pub mtty_bdf: u64,
    /// I/O port base of mtty's BAR0 and BAR1.
    pub mtty_ports: [u64; 2],
    /// Bus/device/function of the dma-engine ([`NO_DEVICE`]: none).
    pub dma_bdf: u64,
    /// GPA of the dma-engine's registers (BAR0).
    pub dma_regs: u64,
    /// GPA of the dma-engine's device RAM (BAR2).
    pub dma_ram: u64,
    /// Bytes of device RAM.
    pub dma_ram_size: u64,
    /// LAPIC timer counts per millisecond, as vCPU 0 measured (0: no timer; waits spin).
    pub lapic_ticks_per_ms: u64,
    /// GPA of the dma-engine's shared memory (BAR4), 0 if it has none.
    pub dma_shared: u64,
    /// Interrupts of the dma-engine's MSI-X vector 1, taken by vCPU 0 (vector 0's count in
    /// its [`VcpuStatus::irq_dma`]).
    pub irq_dma_vector1: u64,
    /// 1 while the guest drives the dma-engine by MSI-X, 0 by MSI (it has no MSI-X, or no
    /// MSI-X interrupt came, and the guest went back to MSI).
    pub dma_msix: u64,
    /// Zero.
    pub reserved: [u64; 12],
    /// Per-vCPU counters, at offset 256.
    pub vcpu: [VcpuStatus; MAX_VCPUS],
}

const _: () = assert!(size_of::<StatusPage>() == 256 + 128 * MAX_VCPUS);
const _: () = assert!(std::mem::offset_of!(StatusPage, vcpu) == 256);
const _: () = assert!(size_of::<StatusPage>() as u64 <= PAGE_SIZE);

impl StatusPage {
    /// The first error, decoded; `None` while the guest has found none.
    pub fn first_error(&self) -> Option<GuestError> {
        (self.first_error.code != 0).then(|| GuestError::from(self.first_error))
    }

    /// The sum of one counter over every vCPU.
    pub fn total(&self, counter: impl Fn(&VcpuStatus) -> u64) -> u64 {
        self.vcpu.iter().map(counter).sum()
    }
}

/// What went wrong, by `FirstError::code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Fatal: the boot page is wrong. a = magic, b = version, c = vCPUs.
    BootPage = 1,
    /// Fatal: a CPU exception. a = vector, b = RIP, c = error code.
    Exception = 2,
    /// A page holds another sequence than the walk expects (stale or lost). a = page GPA,
    /// b = expected, c = found.
    PageSeq = 3,
    /// A page's header, sampled word or check word is wrong. a = GPA of the word, b = expected,
    /// c = found.
    PageData = 4,
    /// No room in the window for a BAR. a = bus/device/function, b = BAR, c = size.
    BarSpace = 5,
    /// mtty gave back another byte. a = port, b = expected, c = read (0x100: none).
    MttyData = 6,
    /// mtty's receive FIFO overran. a = port, b = LSR.
    MttyOverrun = 7,
    /// The dma-engine is not what the driver knows. a = ID register, b = RAM pages.
    DmaDevice = 8,
    /// A descriptor completed with an errno. a = descriptor, b = completion word, c = STATUS.
    DmaStatus = 9,
    /// DMA data differ. a = GPA of the word, b = expected, c = found.
    DmaData = 10,
    /// A descriptor did not complete. a = descriptor, b = HEAD, c = tail written.
    DmaTimeout = 11,
    /// An expected interrupt did not come. a = vector, b = count before, c = count after.
    IrqTimeout = 12,
    /// The LAPIC timer does not count. a = counts in 1 ms.
    Timer = 13,
    /// A block of the dma-engine's BAR4 lost its last stamp. a = block, b = expected sequence,
    /// c = found (the first stamp word that differs, or the sequence word).
    SharedMemory = 14,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BootPage,
        ErrorCode::Exception,
        ErrorCode::PageSeq,
        ErrorCode::PageData,
        ErrorCode::BarSpace,
        ErrorCode::MttyData,
        ErrorCode::MttyOverrun,
        ErrorCode::DmaDevice,
        ErrorCode::DmaStatus,
        ErrorCode::DmaData,
        ErrorCode::DmaTimeout,
        ErrorCode::IrqTimeout,
        ErrorCode::Timer,
        ErrorCode::SharedMemory,
    ];

    /// The code of a number, if known.
    pub fn from_raw(raw: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u32 == raw)
    }
}

/// A decoded [`FirstError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestError {
    /// The code; `Err(raw)` for a number this crate does not know.
    pub code: Result<ErrorCode, u32>,
    /// The vCPU that found it.
    pub vcpu: u32,
    /// Details.
    pub a: u64,
    /// Details.
    pub b: u64,
    /// Details.
    pub c: u64,
}

impl From<FirstError> for GuestError {
    fn from(e: FirstError) -> GuestError {
        GuestError {
            code: ErrorCode::from_raw(e.code).ok_or(e.code),
            vcpu: e.vcpu,
            a: e.a,
            b: e.b,
            c: e.c,
        }
    }
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = (self.a, self.b, self.c);
        write!(f, "vCPU {}: ", self.vcpu)?;
        match self.code {
            Ok(ErrorCode::BootPage) => {
                write!(f, "bad boot page (magic {a:#x}, version {b}, {c} vCPUs)")
            }
            Ok(ErrorCode::Exception) => write!(f, "exception {a} at {b:#x} (error code {c:#x})"),
            Ok(ErrorCode::PageSeq) => write!(f, "page {a:#x} holds sequence {c}, expected {b}"),
            Ok(ErrorCode::PageData) => write!(f, "word at {a:#x} is {c:#x}, expected {b:#x}"),
            Ok(ErrorCode::BarSpace) => write!(f, "no room for BAR{b} ({c} bytes) of {a:#06x}"),
            Ok(ErrorCode::MttyData) => write!(f, "mtty port {a}: read {c:#x}, expected {b:#x}"),
            Ok(ErrorCode::MttyOverrun) => write!(f, "mtty port {a} overran (LSR {b:#x})"),
            Ok(ErrorCode::DmaDevice) => write!(f, "dma-engine ID {a:#x} with {b} RAM pages"),
            Ok(ErrorCode::DmaStatus) => write!(f, "descriptor {a}: word {b:#x}, STATUS {c:#x}"),
            Ok(ErrorCode::DmaData) => write!(f, "DMA word at {a:#x} is {c:#x}, expected {b:#x}"),
            Ok(ErrorCode::DmaTimeout) => write!(f, "descriptor {a} not done (HEAD {b}, tail {c})"),
            Ok(ErrorCode::IrqTimeout) => write!(f, "no interrupt {a:#x} (count {b} -> {c})"),
            Ok(ErrorCode::Timer) => write!(f, "the LAPIC timer does not count ({a} in 1 ms)"),
            Ok(ErrorCode::SharedMemory) => {
                write!(f, "BAR4 block {a} holds {c:#x}, expected sequence {b}")
            }
            Err(raw) => write!(f, "error {raw} ({a:#x}, {b:#x}, {c:#x})"),
        }
    }
}
