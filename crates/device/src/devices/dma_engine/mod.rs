//! `dma-engine`: a device with its own memory and a DMA engine, like a small vGPU.
//!
//! | BAR | size | what | access |
//! |---|---|---|---|
//! | 0 | 4 KiB | registers ([`regs`]) | trapped |
//! | 2 | device RAM (64 MiB by default) | the memory descriptors copy to and from | trapped |
//! | 4 | [`SHARED_SIZE`] (64 KiB) | memory shared with the client | one sparse-mmap area over all of it |
//!
//! All three are 32-bit non-prefetchable memory BARs.
//!
//! Completions interrupt (descriptor flag [`regs::FLAG_IRQ`], with `CONTROL_IRQ` set) by MSI,
//! INTx, or MSI-X: the device offers [`regs::MSIX_VECTORS`] (2) MSI-X vectors, its table at
//! [`regs::MSIX_TABLE_OFFSET`] and PBA at [`regs::MSIX_PBA_OFFSET`] of BAR0. With MSI-X
//! enabled, a completion raises vector 0, or vector 1 for a descriptor that also has
//! [`regs::FLAG_VECTOR1`].
//!
//! A descriptor ring in guest memory, programmed through BAR0 ([`regs`]), moves data between
//! guest memory and device RAM, or fills either. The device reaches guest memory only through the [`Container`]: it pins the ring
//! while enabled (so the ring is reported dirty while pinned, and its completion words are
//! written through the pin) and copies data with [`Container::read`] / [`Container::write`]
//! (writes are reported dirty). It is therefore precise: it attaches in `Pinned` scope.
//! A ring in memory mapped without an fd (the VMM's client answers every access by message)
//! cannot be pinned: the device then reaches it by copies too, which its peer records.
//!
//! Device RAM changes while the device runs, so its pre-copy is iterative: every change marks
//! a page of a [`DirtyBitmap`] over device RAM; entering pre-copy marks every page, each chunk
//! claims and sends dirty pages (all-zero pages as a flag, without data), and stop-and-copy
//! sends what changed since, then the registers.
//!
//! BAR4 is a sealed memfd ([`SharedMemory`]) the client may map (a VMM may map it into the
//! guest, so that the guest's accesses to it never leave the CPU) and reach by trapped REGION_READ /
//! REGION_WRITE as well. The device never changes it (only a reset zeroes it), and it cannot
//! tell which of its pages were written through a mapping: stop-and-copy sends all of it, after
//! device RAM and before the registers, and the state snapshot (the digest) covers it.

mod migration;
pub mod regs;

use std::sync::{Arc, Mutex, MutexGuard};

use vfmig_dirty::{DirtyBitmap, PageSize};
use vfmig_iommu::{Container, DeviceId, DirtyScope, IommuError, PinGuard, Prot, UnmapNotifier};
use vfmig_memory::{Iova, SharedMemory};

use crate::migratable::Migratable;
use crate::model::{Bar, BarMemory, DeviceContext, DeviceError, DeviceModel};
use crate::pci::{BarKind, MsixSpec, PciIdentity};
use migration::SaveState;
use regs::{
    CONTROL_ENABLE, CONTROL_IRQ, DESCRIPTOR, DONE, Descriptor, ID, MAX_LEN, MAX_RING,
    MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, MSIX_VECTORS, Op, Regs, STATUS_RING_LOST, off,
};

/// Default device RAM: 64 MiB.
pub const DEFAULT_RAM: u64 = 64 << 20;
/// The page of device RAM: the granule of its dirty tracking and of its migration chunks,
/// and the unit of the `RAM_PAGES` register.
pub const RAM_PAGE_SIZE: PageSize = PageSize::SIZE_4K;
/// BAR of the registers.
pub const REGS_BAR: usize = 0;
/// BAR of device RAM.
pub const RAM_BAR: usize = 2;
/// BAR of the memory shared with the client: one sparse-mmap area over all of it.
pub const SHARED_BAR: usize = 4;
/// Bytes of [`SHARED_BAR`]: 64 KiB.
pub const SHARED_SIZE: u64 = 64 << 10;
/// [`SHARED_SIZE`] as a length in memory.
const SHARED_LEN: usize = 64 << 10;
/// [`SHARED_SIZE`] as a BAR size.
const SHARED_BAR_SIZE: u32 = 64 << 10;
const _: () = assert!(SHARED_LEN as u64 == SHARED_SIZE && SHARED_BAR_SIZE as usize == SHARED_LEN);

type RingSlot = Arc<Mutex<Option<PinGuard>>>;

fn lock(slot: &RingSlot) -> MutexGuard<'_, Option<PinGuard>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the ring's pin when its memory is unmapped (the container's unmap notifier).
struct RingNotifier(RingSlot);

impl UnmapNotifier for RingNotifier {
    fn dma_unmap(&self, iova: Iova, size: u64) {
        let mut slot = lock(&self.0);
        let hit = slot.as_ref().is_some_and(|pin| {
            let start = pin.iova().0;
            start < iova.0.saturating_add(size) && iova.0 < start.saturating_add(pin.len() as u64)
        });
        if hit {
            tracing::info!(%iova, size, "descriptor ring unmapped: unpinning it");
            *slot = None;
        }
    }
}

/// The dma-engine device.
pub struct DmaEngine {
    container: Container,
    device: DeviceId,
    regs: Regs,
    ram: Vec<u8>,
    /// Pages of device RAM changed since they were last saved.
    ram_dirty: DirtyBitmap,
    ring: RingSlot,
    /// `Pinned`: the ring is pinned while enabled (precise dirty tracking). `AllMapped`: the
    /// device pins nothing and reaches its ring by copies, like a device that can DMA
    /// anywhere and cannot say where it wrote.
    scope: DirtyScope,
    /// The enabled ring lies in memory mapped without an fd, which cannot be pinned: it is
    /// reached by copies, each a message to the peer that owns the memory (and records what
    /// is written there).
    ring_by_copy: bool,
    /// BAR4: a memfd the client maps; written by the client (or the guest through the
    /// client's mapping) and by a resume, never by the device.
    shared: Arc<SharedMemory>,
    save: SaveState,
}

impl std::fmt::Debug for DmaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEngine")
            .field("regs", &self.regs)
            .field("ram", &self.ram.len())
            .finish()
    }
}

impl DmaEngine {
    /// A device with `ram` bytes of device RAM (a power of two, at least 4 KiB, at most 1 GiB),
    /// attached to `container` in `Pinned` scope.
    pub fn new(container: Container, ram: u64) -> Result<Self, DeviceError> {
        DmaEngine::with_scope(container, ram, DirtyScope::Pinned)
    }

    /// A device whose dirty scope is `scope`. With `AllMapped` it never pins, so it stays in
    /// that scope: every GET reports all mapped pages dirty.
    pub fn with_scope(
        container: Container,
        ram: u64,
        scope: DirtyScope,
    ) -> Result<Self, DeviceError> {
        if !ram.is_power_of_two() || !(RAM_PAGE_SIZE.bytes()..=1 << 30).contains(&ram) {
            return Err(DeviceError::invalid(format!(
                "device RAM of {ram} bytes: need a power of two in 4 KiB..=1 GiB"
            )));
        }
        let ring = RingSlot::default();
        let device = container.attach_device(scope, Some(Arc::new(RingNotifier(ring.clone()))));
        let ram_dirty = DirtyBitmap::new(ram / RAM_PAGE_SIZE.bytes(), RAM_PAGE_SIZE)
            .map_err(|e| DeviceError::invalid(e.to_string()))?;
        let len = usize::try_from(ram).map_err(|_| DeviceError::invalid("device RAM too large"))?;
        let shared = SharedMemory::new(c"vfmig-dma-shared", SHARED_LEN)
            .map_err(|e| io_error(&e, "creating BAR4's memory"))?;
        Ok(DmaEngine {
            container,
            device,
            regs: Regs::default(),
            ram: vec![0; len],
            ram_dirty,
            ring,
            scope,
            ring_by_copy: false,
            shared: Arc::new(shared),
            save: SaveState::default(),
        })
    }

    /// The device's dirty scope.
    pub fn scope(&self) -> DirtyScope {
        self.scope
    }

    /// Device RAM size in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram.len() as u64
    }

    fn ram_pages(&self) -> u64 {
        self.ram_size() / RAM_PAGE_SIZE.bytes()
    }

    /// Device RAM `[offset, offset + len)` as a range, if inside.
    fn ram_range(&self, offset: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let end = offset.checked_add(len).filter(|&e| e <= self.ram_size())?;
        Some(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
    }

    fn mark_ram(&self, offset: u64, len: u64) {
        if let Err(e) = self.ram_dirty.mark_bytes(offset, len) {
            tracing::error!(error = %e, "device RAM dirty mark out of range");
        }
    }

    fn read_reg(&self, offset: u64, len: usize) -> Result<u64, DeviceError> {
        let r = &self.regs;
        let v = match (offset, len) {
            (off::ID, 4) => u64::from(ID),
            (off::VERSION, 4) => 1,
            (off::RING_BASE, 8) => r.ring_base,
            (off::RING_SIZE, 4) => u64::from(r.ring_size),
            (off::CONTROL, 4) => u64::from(r.control),
            (off::TAIL, 4) => u64::from(r.tail),
            (off::HEAD, 4) => u64::from(r.head),
            (off::STATUS, 4) => u64::from(r.status),
            (off::RAM_PAGES, 4) => self.ram_pages(),
            (off::COMPLETED, 8) => r.completed,
            _ => {
                return Err(DeviceError::invalid(format!(
                    "no {len}-byte register at {offset:#x}"
                )));
            }
        };
        Ok(v)
    }

    fn write_reg(
        &mut self,
        offset: u64,
        v: u64,
        len: usize,
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        let v32 = u32::try_from(v).unwrap_or(u32::MAX);
        match (offset, len) {
            (off::RING_BASE, 8) if self.regs.control & CONTROL_ENABLE == 0 => {
                self.regs.ring_base = v
            }
            (off::RING_SIZE, 4) if self.regs.control & CONTROL_ENABLE == 0 => {
                if v32 != 0 && (!v32.is_power_of_two() || v32 > MAX_RING) {
                    return Err(DeviceError::invalid(format!("ring size {v32}")));
                }
                self.regs.ring_size = v32;
                self.regs.head = 0;
                self.regs.tail = 0;
            }
            (off::CONTROL, 4) => self.set_control(v32)?,
            (off::TAIL, 4) => {
                if self.regs.ring_size == 0 || v32 >= self.regs.ring_size {
                    return Err(DeviceError::invalid(format!("tail {v32} outside the ring")));
                }
                self.regs.tail = v32;
                self.run(ctx);
            }
            _ => {
                return Err(DeviceError::invalid(format!(
                    "no writable {len}-byte register at {offset:#x}"
                )));
            }
        }
        Ok(())
    }

    fn set_control(&mut self, v: u32) -> Result<(), DeviceError> {
        let enable = v & CONTROL_ENABLE != 0;
        let was = self.regs.control & CONTROL_ENABLE != 0;
        if enable && !was {
            self.pin_ring()?;
        } else if !enable && was {
            *lock(&self.ring) = None;
        }
        self.regs.control = v & (CONTROL_ENABLE | CONTROL_IRQ);
        Ok(())
    }

    /// Pins the ring as the guest enables it: STATUS is cleared, or on failure says why (and
    /// the device stays disabled).
    fn pin_ring(&mut self) -> Result<(), DeviceError> {
        match self.take_ring_pin() {
            Ok(()) => {
                self.regs.status = 0;
                Ok(())
            }
            Err(e) => {
                self.regs.status = e.errno.unsigned_abs();
                Err(e)
            }
        }
    }

    /// Pins the ring the registers describe, leaving the registers alone: what a resumed
    /// device does with the ring it inherited. An `AllMapped` device pins nothing; a ring in
    /// memory without an fd is not pinned but reached by copies.
    pub(crate) fn take_ring_pin(&mut self) -> Result<(), DeviceError> {
        let len = u64::from(self.regs.ring_size) * DESCRIPTOR;
        if len == 0 {
            return Err(DeviceError::invalid("enable with a ring of size 0"));
        }
        self.ring_by_copy = false;
        if self.scope == DirtyScope::AllMapped {
            return Ok(());
        }
        let pin = self.container.pin(
            self.device,
            Iova(self.regs.ring_base),
            len,
            Prot::READ_WRITE,
        );
        match pin {
            Ok(pin) => *lock(&self.ring) = Some(pin),
            Err(IommuError::NotHostMapped { .. }) => self.ring_by_copy = true,
            Err(e) => {
                return Err(DeviceError::with_errno(
                    e.errno(),
                    format!("pinning the ring: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// The ring is reached by copies, not through a pin.
    fn ring_copied(&self) -> bool {
        self.scope == DirtyScope::AllMapped || self.ring_by_copy
    }

    /// Reads the descriptor at byte `at` of the ring: through the pin, or (unpinned) by a copy.
    fn read_descriptor(&self, at: u64) -> Result<[u8; 32], u32> {
        let mut raw = [0u8; 32];
        if self.ring_copied() {
            let iova = Iova(self.regs.ring_base.saturating_add(at));
            self.container
                .read(iova, &mut raw)
                .map_err(|e| e.errno().unsigned_abs())?;
            return Ok(raw);
        }
        let ring = lock(&self.ring);
        let pin = ring.as_ref().ok_or(STATUS_RING_LOST)?;
        let at = usize::try_from(at).map_err(|_| STATUS_RING_LOST)?;
        pin.read_at(at, &mut raw).map_err(|_| STATUS_RING_LOST)?;
        Ok(raw)
    }

    /// Writes a descriptor's completion word.
    fn complete(&self, at: u64, word: u32) {
        let done = (DONE | word).to_le_bytes();
        let r = if self.ring_copied() {
            let iova = Iova(self.regs.ring_base.saturating_add(at + 28));
            self.container.write(iova, &done).map_err(|e| e.to_string())
        } else {
            match (lock(&self.ring).as_ref(), usize::try_from(at + 28)) {
                (Some(pin), Ok(at)) => pin.write_at(at, &done).map_err(|e| e.to_string()),
                _ => Err("the ring is not pinned".into()),
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "writing a completion into the ring");
        }
    }

    /// Runs descriptors from HEAD to TAIL, then raises the vectors their completions asked
    /// for (each once).
    fn run(&mut self, ctx: &mut DeviceContext<'_>) {
        let mut interrupt = [false; MSIX_VECTORS as usize];
        while self.regs.head != self.regs.tail && self.regs.control & CONTROL_ENABLE != 0 {
            let at = u64::from(self.regs.head) * DESCRIPTOR;
            let raw = match self.read_descriptor(at) {
                Ok(raw) => raw,
                Err(status) => {
                    // The ring is gone (unmapped under the device): stop until re-enabled.
                    self.regs.status = status | STATUS_RING_LOST;
                    self.regs.control &= !CONTROL_ENABLE;
                    break;
                }
            };
            let (word, irq) = match Descriptor::decode(&raw) {
                Some(d) => (self.execute(&d), d.irq.then(|| Descriptor::vector_of(&raw))),
                None => (libc::EINVAL.unsigned_abs(), None),
            };
            self.complete(at, word);
            if word != 0 {
                self.regs.status = word;
            }
            self.regs.head = (self.regs.head + 1) % self.regs.ring_size.max(1);
            // A 64-bit counter wraps, as a hardware one does; it may start anywhere, resumed
            // from the source.
            self.regs.completed = self.regs.completed.wrapping_add(1);
            if let Some(raised) = irq.and_then(|v| interrupt.get_mut(usize::from(v))) {
                *raised = true;
            }
        }
        if self.regs.control & CONTROL_IRQ != 0 {
            for (vector, _) in (0u16..).zip(interrupt).filter(|&(_, raised)| raised) {
                ctx.interrupt_vector(vector);
            }
        }
    }

    /// Executes one descriptor; returns 0 or the errno.
    fn execute(&mut self, d: &Descriptor) -> u32 {
        let len = u64::from(d.len);
        let Some(range) = self.ram_range(d.device, len).filter(|_| d.len <= MAX_LEN) else {
            return libc::EINVAL.unsigned_abs();
        };
        let result = match d.op {
            Op::CopyToDevice => {
                let r = self.container.read(Iova(d.guest), &mut self.ram[range]);
                if r.is_ok() {
                    self.mark_ram(d.device, len);
                }
                r
            }
            Op::CopyToGuest => self.container.write(Iova(d.guest), &self.ram[range]),
            Op::FillDevice => {
                self.ram[range].fill(d.fill);
                self.mark_ram(d.device, len);
                Ok(())
            }
            Op::FillGuest => self
                .container
                .write(Iova(d.guest), &vec![d.fill; range.len()]),
        };
        match result {
            Ok(()) => 0,
            Err(e) => e.errno().unsigned_abs(),
        }
    }
}

/// A failed memory operation as a device error that keeps its errno.
fn io_error(e: &std::io::Error, what: &str) -> DeviceError {
    DeviceError::with_errno(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    u64::from_le_bytes(b)
}

/// Its PCI identity: what a guest driver (and the VMM's synthetic guest) finds it by.
pub const IDENTITY: PciIdentity = PciIdentity {
    vendor: 0x1af4,
    device: 0x10f0,
    class: 0x08_80_00,
    revision: 1,
};

impl DeviceModel for DmaEngine {
    fn identity(&self) -> PciIdentity {
        IDENTITY
    }

    fn bars(&self) -> Vec<Bar> {
        let ram = u32::try_from(self.ram_size()).unwrap_or(1 << 30);
        vec![
            Bar {
                index: REGS_BAR,
                kind: BarKind::Memory,
                size: 4096,
                mmap: None,
            },
            Bar {
                index: RAM_BAR,
                kind: BarKind::Memory,
                size: ram,
                mmap: None,
            },
            Bar {
                index: SHARED_BAR,
                kind: BarKind::Memory,
                size: SHARED_BAR_SIZE,
                mmap: Some(BarMemory {
                    memory: self.shared.clone(),
                    areas: vec![(0, SHARED_SIZE)],
                }),
            },
        ]
    }

    fn msix(&self) -> Option<MsixSpec> {
        Some(MsixSpec {
            vectors: MSIX_VECTORS,
            table_bar: REGS_BAR,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: REGS_BAR,
            pba_offset: MSIX_PBA_OFFSET,
        })
    }

    fn bar_read(
        &mut self,
        bar: usize,
        offset: u64,
        buf: &mut [u8],
        _ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        match bar {
            REGS_BAR => {
                let v = self.read_reg(offset, buf.len())?.to_le_bytes();
                buf.copy_from_slice(&v[..buf.len()]);
                Ok(())
            }
            RAM_BAR => {
                let r = self
                    .ram_range(offset, buf.len() as u64)
                    .ok_or_else(|| DeviceError::invalid("outside device RAM"))?;
                buf.copy_from_slice(&self.ram[r]);
                Ok(())
            }
            // Reached only by an access the mapped area does not hold (one past its end).
            SHARED_BAR => self
                .shared
                .read(offset, buf)
                .map_err(|e| io_error(&e, "outside BAR4")),
            _ => Err(DeviceError::invalid(format!("no BAR{bar}"))),
        }
    }

    fn bar_write(
        &mut self,
        bar: usize,
        offset: u64,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        match bar {
            REGS_BAR if data.len() == 4 || data.len() == 8 => {
                self.write_reg(offset, le(data), data.len(), ctx)
            }
            REGS_BAR => Err(DeviceError::invalid("registers take 4- or 8-byte accesses")),
            RAM_BAR => {
                let r = self
                    .ram_range(offset, data.len() as u64)
                    .ok_or_else(|| DeviceError::invalid("outside device RAM"))?;
                self.ram[r].copy_from_slice(data);
                self.mark_ram(offset, data.len() as u64);
                Ok(())
            }
            SHARED_BAR => self
                .shared
                .write(offset, data)
                .map_err(|e| io_error(&e, "outside BAR4")),
            _ => Err(DeviceError::invalid(format!("no BAR{bar}"))),
        }
    }

    fn reset(&mut self) {
        *lock(&self.ring) = None;
        self.regs = Regs::default();
        self.ram.fill(0);
        self.ram_dirty.set_all();
        if let Err(e) = self.shared.zero(0, SHARED_SIZE) {
            tracing::error!(error = %e, "zeroing BAR4 on reset");
        }
        self.save = SaveState::default();
    }

    fn migratable(&mut self) -> Option<&mut dyn Migratable> {
        Some(self)
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut s = Vec::with_capacity(self.ram.len() + SHARED_LEN + 64);
        self.regs.encode(&mut s);
        s.extend_from_slice(&self.ram);
        let at = s.len();
        s.resize(at + SHARED_LEN, 0);
        if let Err(e) = self.shared.read(0, &mut s[at..]) {
            tracing::error!(error = %e, "reading BAR4 for a snapshot");
        }
        s
    }
}

impl Drop for DmaEngine {
    fn drop(&mut self) {
        *lock(&self.ring) = None;
        if let Err(e) = self.container.detach_device(self.device) {
            tracing::warn!(error = %e, "detaching the dma-engine");
        }
    }
}
