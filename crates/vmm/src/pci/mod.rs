//! The guest's PCI bus as the VMM emulates it: configuration mechanism #1 (ports 0xCF8 and
//! 0xCFC), the BARs, command register and MSI capability the guest programs, and the routing
//! of the guest's BAR accesses to the devices' regions.
//!
//! The VMM owns the parts of configuration space that bind a device into the VM, as QEMU
//! does: the BAR addresses (their sizes come from REGION_INFO, never from the device's own
//! emulation), the command register and the MSI capability. The guest's writes to them
//! update the VMM's copy, a [`PciConfigState`]; command and MSI writes also go to the device,
//! BAR writes do not. Every other byte of configuration space is the device's: reads and
//! writes go to its config region. A migration carries each device's [`PciConfigState`] and
//! writes it back on the destination after the device's own data ([`PciBus::restore`]).
//!
//! Device *i* of the VM is bus 0, device *i*, function 0; every other address reads all ones.
//!
//! An MSI the guest enables becomes an eventfd the device signals (SET_IRQS) and an
//! [`InterruptRouter`] turns into the guest interrupt (with KVM: an irqfd on a GSI routed to
//! the MSI's address and data), so no interrupt passes through the VMM's threads. MSI-X is
//! the VMM's too: its control bits and vector table are emulated and each unmasked vector is
//! routed the same way (the private `msix` module). Each interrupt source is a *line* of the router: function
//! `slot`'s MSI is line `slot * LINES_PER_FUNCTION`, its MSI-X vector `v` the line `v + 1`
//! after it.
//!
//! A BAR access is trapped (an exit, then REGION_READ/WRITE) except inside a sparse-mmap
//! area the device offers: those are mapped into the VMM when the device is attached and, by
//! a [`GuestMapper`], into the guest wherever the guest puts the BAR while it decodes (with
//! KVM: a memslot over the VMM's mapping), so the guest's accesses there never exit. An area
//! is mapped only if it is whole 4 KiB pages of a readable and writable region in a file the
//! device cannot shrink (`MmapArea`'s rule); any other stays trapped. Trapped accesses are
//! counted per BAR ([`PciBus::bars`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use vfmig_abi::uapi::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSI_IRQ_INDEX};
use vfmig_vfio_user::client::{IrqValues, MmapArea, Region};
use vfmig_vfio_user::message::IrqAction;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::{AttachError, AttachedDevice};

mod msix;

pub use msix::MAX_VECTORS as MAX_MSIX_VECTORS;
use msix::{MsixCap, Vectors};

/// Router lines per function: its MSI and its [`MAX_MSIX_VECTORS`] MSI-X vectors.
pub const LINES_PER_FUNCTION: u32 = 65;
const _: () = assert!(LINES_PER_FUNCTION as usize == 1 + MAX_MSIX_VECTORS);

/// The configuration address port.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// The first configuration data port (0xCFC..=0xCFF).
pub const CONFIG_DATA: u16 = 0xcfc;

const COMMAND: u64 = 0x04;
const BAR0: u64 = 0x10;
const BARS: usize = 6;
const CAP_PTR: u64 = 0x34;
const CAP_ID_MSI: u8 = 0x05;
const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
/// Bytes of configuration space the bus decodes (conventional PCI).
const CONFIG_SIZE: u64 = 256;
/// MSI control: enable.
const MSI_ENABLE: u16 = 1 << 0;
/// MSI control: the function can send 64-bit addresses.
const MSI_64BIT: u16 = 1 << 7;
/// Bytes of the MSI capability the VMM keeps (a 64-bit one without per-vector masking).
const MSI_IMAGE: usize = 14;

/// The page granule of a mapping into the guest (a KVM memslot's).
const GUEST_PAGE: u64 = vfmig_dirty::PageSize::SIZE_4K.bytes();

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BarDecode {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory32,
    /// 64-bit memory space: this BAR and the next hold the address.
    Memory64,
}

/// One BAR as the device has it: kind and size fixed when the device is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bar {
    kind: BarDecode,
    size: u64,
    /// The low bits of the register (space, type, prefetchable), as the device reports them.
    flags: u32,
}

impl Bar {
    /// The address bits of the low register.
    fn mask(self) -> u32 {
        // Sizes are powers of two of at least 4 (I/O) or 16 (memory) bytes.
        let low = u32::try_from(self.size.min(1 << 31)).unwrap_or(1 << 31);
        let flag_bits = if self.kind == BarDecode::Io { 0x3 } else { 0xf };
        !(low - 1) & !flag_bits
    }
}

/// What the guest programmed into a function's configuration space that the VMM owns: saved
/// and restored by the VMM, whatever the device does with its own configuration space.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciConfigState {
    /// The command register.
    pub command: u16,
    /// The six BAR registers' address bits as the guest wrote them.
    pub bars: [u32; BARS],
    /// The MSI capability from its control word on (control, address, [upper address], data),
    /// as the guest wrote it; empty if the function has none.
    pub msi: Vec<u8>,
    /// The MSI-X message control bits the VMM keeps (enable, function mask); 0 without
    /// MSI-X.
    #[serde(default)]
    pub msix_control: u16,
    /// The MSI-X table, an entry per vector (address low, address high, data, vector
    /// control); empty without MSI-X.
    #[serde(default)]
    pub msix_table: Vec<[u32; 4]>,
    /// MSI-X vectors whose signal waited (masked) when this was saved; the restore signals
    /// them again, so the guest gets them when it unmasks.
    #[serde(default)]
    pub msix_pending: Vec<u16>,
}

/// Where the MSI capability is.
#[derive(Clone, Copy, Debug)]
struct MsiCap {
    offset: u64,
    wide: bool,
}

impl MsiCap {
    /// Bytes from the control word to the end of the data word.
    fn len(self) -> usize {
        if self.wide { MSI_IMAGE - 2 } else { 8 }
    }

    /// `(enabled, address, data)` of an image from the control word on.
    fn decode(self, image: &[u8]) -> Option<(u64, u32)> {
        let bytes = |at: usize, out: &mut [u8]| {
            if let Some(b) = image.get(at..at + out.len()) {
                out.copy_from_slice(b);
            }
        };
        let (mut control, mut low, mut high, mut data) = ([0; 2], [0; 4], [0; 4], [0; 2]);
        bytes(0, &mut control);
        if u16::from_le_bytes(control) & MSI_ENABLE == 0 {
            return None;
        }
        bytes(2, &mut low);
        if self.wide {
            bytes(6, &mut high);
            bytes(10, &mut data);
        } else {
            bytes(6, &mut data);
        }
        let address =
            u64::from(u32::from_le_bytes(low) & !0x3) | u64::from(u32::from_le_bytes(high)) << 32;
        Some((address, u32::from(u16::from_le_bytes(data))))
    }
}

/// Turns a device's MSI or MSI-X eventfds into guest interrupts.
pub trait InterruptRouter: Send + Sync {
    /// From now on, a signal on `eventfd` raises the MSI `(address, data)`, as interrupt
    /// `line` (below `32 * LINES_PER_FUNCTION`; see the module docs), replacing what that
    /// line raised before.
    fn route_msi(&self, line: u32, eventfd: &EventFd, address: u64, data: u32) -> io::Result<()>;
    /// A signal on `line`'s eventfd raises nothing (it stays pending in the eventfd).
    fn unroute_msi(&self, line: u32, eventfd: &EventFd) -> io::Result<()>;
}

/// Puts device memory into the guest's physical address space (with KVM: a memslot over the
/// VMM's mapping of it), so that the guest's accesses there never exit.
pub trait GuestMapper: Send + Sync {
    /// Makes the `len` bytes at host address `host` appear at guest-physical `gpa`, as mapping
    /// `id` (which is not mapped now).
    ///
    /// # Safety
    /// The host mapping must stay valid until [`unmap`](Self::unmap) of `id` has returned.
    unsafe fn map(&self, id: u32, gpa: u64, host: *mut u8, len: usize) -> io::Result<()>;
    /// Removes mapping `id` from the guest.
    fn unmap(&self, id: u32) -> io::Result<()>;
}

/// A sparse-mmap area of a memory BAR, mapped into the VMM when its device was attached, and
/// into the guest while its BAR decodes.
struct DirectArea {
    slot: usize,
    bar: usize,
    /// Where the area starts in the BAR.
    offset: u64,
    area: MmapArea,
}

/// One BAR as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BarStatus {
    /// The BAR's number, 0–5.
    pub index: u32,
    /// What it decodes.
    pub kind: BarDecode,
    /// Bytes.
    pub size: u64,
    /// Where the guest put it, while it decodes.
    pub address: Option<u64>,
    /// Guest accesses that exited: to the device as REGION_READ/WRITE, or to the VMM's
    /// MSI-X table.
    pub trapped: u64,
    /// Its sparse-mmap areas mapped into the guest: `(offset in the BAR, bytes, guest address
    /// while mapped)`.
    pub direct: Vec<(u64, u64, Option<u64>)>,
}

/// A function's interrupts as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterruptStatus {
    /// The MSI routed now: `(address, data)`.
    pub msi: Option<(u64, u32)>,
    /// MSI-X vectors the function has (0: no MSI-X capability).
    pub msix_vectors: usize,
    /// The guest enabled MSI-X.
    pub msix_enabled: bool,
    /// MSI-X vectors routed now (enabled, unmasked, the function not masked).
    pub msix_routed: usize,
}

/// One function on the bus.
struct Function {
    bars: [Option<Bar>; BARS],
    msi_cap: Option<MsiCap>,
    /// MSI-X, if the function has it.
    msix: Option<Vectors>,
    state: PciConfigState,
    /// The MSI routed now, if any.
    routed: Option<(u64, u32)>,
    eventfd: EventFd,
}

/// A decoded BAR: where the guest put it.
#[derive(Clone, Copy, Debug)]
struct Window {
    io: bool,
    base: u64,
    size: u64,
    slot: usize,
    bar: u32,
}

/// The bus.
pub struct PciBus {
    devices: Arc<Vec<AttachedDevice>>,
    functions: Vec<Mutex<Function>>,
    /// The BARs that decode now (command enable bit set, address assigned).
    windows: RwLock<Vec<Window>>,
    address: AtomicU32,
    router: Arc<dyn InterruptRouter>,
    /// Device memory the guest may reach without exits, and who maps it (none: all trapped).
    direct: Vec<DirectArea>,
    mapper: Option<Arc<dyn GuestMapper>>,
    /// Where each of `direct` is mapped in the guest now. Held across a change of the
    /// windows, so the guest's mappings follow the windows in the order they changed.
    mapped: Mutex<Vec<Option<u64>>>,
    /// Trapped accesses per function and BAR.
    trapped: Vec<[AtomicU64; BARS]>,
    /// Where each function's MSI-X table is (read without taking the function's lock).
    msix_caps: Vec<Option<MsixCap>>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("functions", &self.functions.len())
            .finish()
    }
}

fn read_config(dev: &AttachedDevice, offset: u64, buf: &mut [u8]) -> Result<(), AttachError> {
    dev.client()
        .region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset, buf)
        .map_err(|e| dev.request("read configuration space", e))
}

fn write_config(dev: &AttachedDevice, offset: u64, data: &[u8]) -> Result<(), AttachError> {
    dev.client()
        .region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
        .map_err(|e| dev.request("write configuration space", e))
}

fn config_u32(dev: &AttachedDevice, offset: u64) -> Result<u32, AttachError> {
    let mut b = [0; 4];
    read_config(dev, offset, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn invalid(dev: &AttachedDevice, what: String) -> AttachError {
    AttachError::Invalid {
        id: dev.id().to_string(),
        what,
    }
}

/// The device's BARs: kinds from its BAR registers, sizes from REGION_INFO; and the areas of
/// its memory BARs that can be mapped into the guest ([`direct_areas`]).
fn probe_bars(
    dev: &AttachedDevice,
    slot: usize,
) -> Result<([Option<Bar>; BARS], Vec<DirectArea>), AttachError> {
    let mut bars = [None; BARS];
    let mut direct = Vec::new();
    let mut i = 0;
    while i < BARS {
        let index = u32::try_from(i).unwrap_or(0);
        let register = config_u32(dev, BAR0 + 4 * u64::from(index))?;
        let region = dev
            .client()
            .region_info(index)
            .map_err(|e| dev.request("REGION_INFO of a BAR", e))?;
        let kind = if register & 1 == 1 {
            BarDecode::Io
        } else if register & 0x6 == 0x4 {
            BarDecode::Memory64
        } else {
            BarDecode::Memory32
        };
        let (min, max) = match kind {
            BarDecode::Io => (4, 1 << 16),
            BarDecode::Memory32 => (16, 1 << 31),
            BarDecode::Memory64 => (16, 1 << 40),
        };
        if region.size != 0 {
            if !region.size.is_power_of_two() || region.size < min || region.size > max {
                return Err(invalid(
                    dev,
                    format!("BAR{i} of {} bytes is not a PCI BAR size", region.size),
                ));
            }
            let flag_bits = if kind == BarDecode::Io { 0x3 } else { 0xf };
            bars[i] = Some(Bar {
                kind,
                size: region.size,
                flags: register & flag_bits,
            });
            if kind != BarDecode::Io {
                direct.extend(direct_areas(dev, slot, i, &region));
            }
        }
        i += if kind == BarDecode::Memory64 { 2 } else { 1 };
    }
    Ok((bars, direct))
}

/// The sparse-mmap areas of BAR `bar` (`region`) that can be mapped into the guest: whole
/// 4 KiB pages of a readable and writable region, mapped here (which `MmapArea` refuses for
/// a file the device could shrink). Any other area stays trapped, said in the log.
fn direct_areas(dev: &AttachedDevice, slot: usize, bar: usize, region: &Region) -> Vec<DirectArea> {
    (0..region.sparse_areas.len())
        .filter_map(|k| {
            let sparse = region.sparse_areas.get(k)?;
            let whole_pages =
                sparse.offset.is_multiple_of(GUEST_PAGE) && sparse.size.is_multiple_of(GUEST_PAGE);
            let mapped = if !whole_pages {
                Err("not whole 4 KiB pages".to_string())
            } else if !(region.readable() && region.writable()) {
                Err("the region is not readable and writable".to_string())
            } else {
                region.mmap_area(k).map_err(|e| e.to_string())
            };
            match mapped {
                Ok(area) => Some(DirectArea {
                    slot,
                    bar,
                    offset: sparse.offset,
                    area,
                }),
                Err(why) => {
                    tracing::info!(device = dev.id(), bar, offset = sparse.offset, %why,
                        "BAR area left to trapped accesses");
                    None
                }
            }
        })
        .collect()
}

/// The capabilities of the device's list: `(id, offset)`, in list order.
fn capabilities(dev: &AttachedDevice) -> Result<Vec<(u8, u64)>, AttachError> {
    let mut found = Vec::new();
    let mut status = [0; 2];
    read_config(dev, 0x06, &mut status)?;
    if u16::from_le_bytes(status) & 0x10 == 0 {
        return Ok(found);
    }
    let mut ptr = [0; 1];
    read_config(dev, CAP_PTR, &mut ptr)?;
    let mut at = u64::from(ptr[0] & !0x3);
    // A list longer than the space can hold is a loop.
    for _ in 0..48 {
        if at < 0x40 || at + 4 > CONFIG_SIZE {
            break;
        }
        let [id, next, ..] = config_u32(dev, at)?.to_le_bytes();
        found.push((id, at));
        at = u64::from(next & !0x3);
    }
    Ok(found)
}

/// The MSI capability, if the list has one.
fn probe_msi(dev: &AttachedDevice, caps: &[(u8, u64)]) -> Result<Option<MsiCap>, AttachError> {
    let Some(&(_, at)) = caps.iter().find(|(id, _)| *id == CAP_ID_MSI) else {
        return Ok(None);
    };
    let control = config_u32(dev, at)? >> 16;
    let wide = control & u32::from(MSI_64BIT) != 0;
    let cap = MsiCap { offset: at, wide };
    if at + 2 + cap.len() as u64 > CONFIG_SIZE {
        return Err(invalid(
            dev,
            "MSI capability past configuration space".into(),
        ));
    }
    Ok(Some(cap))
}

/// The MSI-X capability, if the list has one (checked against the BARs).
fn probe_msix(
    dev: &AttachedDevice,
    caps: &[(u8, u64)],
    bars: &[Option<Bar>],
) -> Result<Option<MsixCap>, AttachError> {
    match caps.iter().find(|(id, _)| *id == msix::CAP_ID) {
        Some(&(_, at)) if at + 12 <= CONFIG_SIZE => MsixCap::probe(dev, at, bars).map(Some),
        Some(_) => Err(invalid(
            dev,
            "MSI-X capability past configuration space".into(),
        )),
        None => Ok(None),
    }
}

/// The router line of function `slot`'s MSI; its MSI-X vectors follow it.
fn msi_line(slot: usize) -> u32 {
    u32::try_from(slot)
        .unwrap_or(u32::MAX)
        .saturating_mul(LINES_PER_FUNCTION)
}

/// Overlap of `[a, a + alen)` and `[b, b + blen)`, as `(start, end)`.
fn overlap(a: u64, alen: u64, b: u64, blen: u64) -> Option<(u64, u64)> {
    let (start, end) = (a.max(b), (a + alen).min(b + blen));
    (start < end).then_some((start, end))
}

impl Function {
    fn bar_address(&self, i: usize) -> Option<u64> {
        let bar = self.bars.get(i).copied().flatten()?;
        let low = u64::from(self.state.bars[i] & bar.mask());
        let high = match bar.kind {
            BarDecode::Memory64 => u64::from(self.state.bars.get(i + 1).copied().unwrap_or(0)),
            _ => 0,
        };
        Some(low | high << 32)
    }

    /// The value the guest reads from BAR register `i`.
    fn bar_register(&self, i: usize) -> u32 {
        match self.bars.get(i).copied().flatten() {
            Some(bar) => self.state.bars[i] & bar.mask() | bar.flags,
            None => match i.checked_sub(1).and_then(|p| self.bars[p]) {
                // The upper half of a 64-bit BAR: address bits above the size are writable.
                Some(low) if low.kind == BarDecode::Memory64 => {
                    let high_mask = !u32::try_from((low.size - 1) >> 32).unwrap_or(u32::MAX);
                    self.state.bars[i] & high_mask
                }
                _ => 0,
            },
        }
    }

    /// Applies a guest write of `data` at `offset` to the BAR registers.
    fn write_bars(&mut self, offset: u64, data: &[u8]) {
        for (k, byte) in data.iter().enumerate() {
            let at = offset + k as u64;
            if !(BAR0..BAR0 + 4 * BARS as u64).contains(&at) {
                continue;
            }
            let (i, shift) = (usize::try_from((at - BAR0) / 4).unwrap_or(0), (at % 4) * 8);
            let r = &mut self.state.bars[i];
            *r = *r & !(0xff << shift) | u32::from(*byte) << shift;
        }
    }

    fn msi_image(&mut self) -> Option<(MsiCap, &mut Vec<u8>)> {
        let cap = self.msi_cap?;
        self.state.msi.resize(cap.len(), 0);
        Some((cap, &mut self.state.msi))
    }

    /// The windows this function decodes now.
    fn windows(&self, slot: usize) -> impl Iterator<Item = Window> + '_ {
        (0..BARS).filter_map(move |i| {
            let bar = self.bars[i]?;
            let io = bar.kind == BarDecode::Io;
            let enable = if io { COMMAND_IO } else { COMMAND_MEMORY };
            let base = self.bar_address(i)?;
            (self.state.command & enable != 0 && base != 0).then_some(Window {
                io,
                base,
                size: bar.size,
                slot,
                bar: u32::try_from(i).unwrap_or(0),
            })
        })
    }
}

impl PciBus {
    /// A bus with `devices` at device numbers 0, 1, …, their BARs and MSI capability probed;
    /// their MSIs reach the guest through `router`, and their BARs' mappable areas through
    /// `mapper` (without one, every BAR access is trapped).
    pub fn new(
        devices: Arc<Vec<AttachedDevice>>,
        router: Arc<dyn InterruptRouter>,
        mapper: Option<Arc<dyn GuestMapper>>,
    ) -> Result<PciBus, AttachError> {
        if devices.len() > 32 {
            return Err(AttachError::Invalid {
                id: "pci".into(),
                what: format!("{} devices: one bus holds 32", devices.len()),
            });
        }
        let mut functions = Vec::with_capacity(devices.len());
        let mut direct = Vec::new();
        let mut msix_caps = Vec::with_capacity(devices.len());
        for (slot, dev) in devices.iter().enumerate() {
            let (bars, areas) = probe_bars(dev, slot)?;
            let caps = capabilities(dev)?;
            let msi_cap = probe_msi(dev, &caps)?;
            let msix_cap = probe_msix(dev, &caps, &bars)?;
            if mapper.is_some() {
                // The MSI-X table's and PBA's pages stay trapped: the VMM emulates the table.
                direct.extend(areas.into_iter().filter(|d| {
                    !msix_cap.is_some_and(|c| c.in_pages(d.bar, d.offset, d.area.len() as u64))
                }));
            }
            msix_caps.push(msix_cap);
            let eventfd =
                EventFd::new(EFD_NONBLOCK).map_err(|e| invalid(dev, format!("eventfd: {e}")))?;
            functions.push(Mutex::new(Function {
                bars,
                msi_cap,
                msix: msix_cap.map(|c| Vectors::new(dev, c)).transpose()?,
                state: PciConfigState {
                    msi: vec![0; msi_cap.map_or(0, MsiCap::len)],
                    msix_table: msix_cap.map_or_else(Vec::new, |c| c.reset_table()),
                    ..PciConfigState::default()
                },
                routed: None,
                eventfd,
            }));
        }
        Ok(PciBus {
            trapped: (0..devices.len()).map(|_| Default::default()).collect(),
            devices,
            functions,
            windows: RwLock::new(Vec::new()),
            address: AtomicU32::new(0),
            router,
            mapped: Mutex::new(vec![None; direct.len()]),
            direct,
            mapper,
            msix_caps,
        })
    }

    fn function(&self, slot: usize) -> Option<MutexGuard<'_, Function>> {
        self.functions
            .get(slot)
            .map(|f| f.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The function and register a configuration data access at `port` selects, if any.
    fn selected(&self, port: u16) -> Option<(usize, u64)> {
        let address = self.address.load(Ordering::Relaxed);
        let (enabled, bus) = (address >> 31 == 1, (address >> 16) & 0xff);
        let (device, function) = ((address >> 11) & 0x1f, (address >> 8) & 0x7);
        if !enabled || bus != 0 || function != 0 {
            return None;
        }
        let register = u64::from(address & 0xfc) + u64::from(port - CONFIG_DATA);
        let slot = usize::try_from(device).ok()?;
        (slot < self.functions.len()).then_some((slot, register))
    }

    /// A port read by the guest, if it is the bus's (configuration mechanism #1); `Ok(false)`
    /// for a port that is not.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> Result<bool, AttachError> {
        match port {
            CONFIG_ADDRESS if data.len() == 4 => {
                data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes());
            }
            CONFIG_DATA..=0xcff => match self.selected(port) {
                Some((slot, register)) => self.config_read(slot, register, data)?,
                None => data.fill(0xff),
            },
            _ => return self.bar_access(true, u64::from(port), Access::Read(data)),
        }
        Ok(true)
    }

    /// A port write by the guest; `Ok(false)` for a port that is not the bus's.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Result<bool, AttachError> {
        match port {
            CONFIG_ADDRESS if data.len() == 4 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address.store(v, Ordering::Relaxed);
            }
            CONFIG_DATA..=0xcff => {
                if let Some((slot, register)) = self.selected(port) {
                    self.config_write(slot, register, data)?;
                }
            }
            _ => return self.bar_access(true, u64::from(port), Access::Write(data)),
        }
        Ok(true)
    }

    /// A guest read of MMIO at `gpa`; `Ok(false)` if no BAR decodes it.
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<bool, AttachError> {
        self.bar_access(false, gpa, Access::Read(data))
    }

    /// A guest write of MMIO at `gpa`; `Ok(false)` if no BAR decodes it.
    pub fn mmio_write(&self, gpa: u64, data: &[u8]) -> Result<bool, AttachError> {
        self.bar_access(false, gpa, Access::Write(data))
    }

    fn bar_access(&self, io: bool, addr: u64, access: Access<'_>) -> Result<bool, AttachError> {
        let len = access.len();
        let hit = self
            .windows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|w| {
                w.io == io
                    && addr >= w.base
                    && addr
                        .checked_add(len)
                        .zip(w.base.checked_add(w.size))
                        .is_some_and(|(end, window_end)| end <= window_end)
            })
            .copied();
        let Some(w) = hit else {
            return Ok(false);
        };
        let Some(dev) = self.devices.get(w.slot) else {
            return Ok(false);
        };
        if let Some(n) = self
            .trapped
            .get(w.slot)
            .and_then(|t| t.get(usize::try_from(w.bar).ok()?))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let offset = addr - w.base;
        let bar = usize::try_from(w.bar).unwrap_or(usize::MAX);
        if let Some(Some(cap)) = self.msix_caps.get(w.slot)
            && cap.in_table(bar, offset, len)
        {
            self.msix_table_access(w.slot, dev, *cap, offset, access)?;
            return Ok(true);
        }
        match access {
            Access::Read(buf) => dev
                .client()
                .region_read(w.bar, offset, buf)
                .map_err(|e| dev.request("read a BAR", e))?,
            Access::Write(data) => dev
                .client()
                .region_write(w.bar, offset, data)
                .map_err(|e| dev.request("write a BAR", e))?,
        }
        Ok(true)
    }

    /// A guest access to function `slot`'s MSI-X table: the VMM's copy; a write re-routes.
    fn msix_table_access(
        &self,
        slot: usize,
        dev: &AttachedDevice,
        cap: MsixCap,
        offset: u64,
        access: Access<'_>,
    ) -> Result<(), AttachError> {
        let Some(mut f) = self.function(slot) else {
            return Ok(());
        };
        match access {
            Access::Read(buf) => cap.table_read(&f.state, offset, buf),
            Access::Write(data) => {
                cap.table_write(&mut f.state, offset, data);
                Self::apply_msix(&self.router, dev, slot, &mut f)?;
            }
        }
        Ok(())
    }

    fn config_read(&self, slot: usize, register: u64, data: &mut [u8]) -> Result<(), AttachError> {
        let (Some(f), Some(dev)) = (self.function(slot), self.devices.get(slot)) else {
            data.fill(0xff);
            return Ok(());
        };
        if register + data.len() as u64 > CONFIG_SIZE {
            data.fill(0xff);
            return Ok(());
        }
        read_config(dev, register, data)?;
        // The VMM's registers over the device's bytes.
        for (k, byte) in data.iter_mut().enumerate() {
            let at = register + k as u64;
            if (COMMAND..COMMAND + 2).contains(&at) {
                *byte = f.state.command.to_le_bytes()[usize::try_from(at - COMMAND).unwrap_or(0)];
            } else if (BAR0..BAR0 + 4 * BARS as u64).contains(&at) {
                let i = usize::try_from((at - BAR0) / 4).unwrap_or(0);
                *byte = f.bar_register(i).to_le_bytes()[usize::try_from(at % 4).unwrap_or(0)];
            } else if let Some(cap) = f.msi_cap
                && let Some((start, _)) = overlap(at, 1, cap.offset + 2, cap.len() as u64)
            {
                let i = usize::try_from(start - cap.offset - 2).unwrap_or(0);
                // The capability bits of control come from the device; the rest as written.
                let written = f.state.msi.get(i).copied().unwrap_or(0);
                *byte = match i {
                    0 => *byte & !0x71 | written & 0x71,
                    1 => *byte,
                    _ => written,
                };
            } else if let Some(m) = &f.msix
                && let Some((start, _)) = overlap(at, 1, m.cap.control_offset(), 2)
            {
                // The table size is the device's; enable and function mask the VMM's.
                let i = usize::try_from(start - m.cap.control_offset()).unwrap_or(0);
                let ours = msix::CONTROL_BITS.to_le_bytes()[i];
                *byte = *byte & !ours | f.state.msix_control.to_le_bytes()[i] & ours;
            }
        }
        Ok(())
    }

    fn config_write(&self, slot: usize, register: u64, data: &[u8]) -> Result<(), AttachError> {
        let (Some(mut f), Some(dev)) = (self.function(slot), self.devices.get(slot)) else {
            return Ok(());
        };
        let len = data.len() as u64;
        if register + len > CONFIG_SIZE {
            return Ok(());
        }
        let mut windows_changed = false;
        if overlap(register, len, BAR0, 4 * BARS as u64).is_some() {
            f.write_bars(register, data);
            windows_changed = true;
        }
        if let Some((start, end)) = overlap(register, len, COMMAND, 2) {
            let mut command = f.state.command.to_le_bytes();
            for at in start..end {
                command[usize::try_from(at - COMMAND).unwrap_or(0)] =
                    data[usize::try_from(at - register).unwrap_or(0)];
            }
            f.state.command = u16::from_le_bytes(command);
            windows_changed = true;
        }
        let mut msi_changed = false;
        if let Some((cap, image)) = f.msi_image()
            && let Some((start, end)) = overlap(register, len, cap.offset + 2, cap.len() as u64)
        {
            for at in start..end {
                let i = usize::try_from(at - cap.offset - 2).unwrap_or(0);
                image[i] = data[usize::try_from(at - register).unwrap_or(0)];
            }
            msi_changed = true;
        }
        let mut msix_before = None;
        let mut forwarded = std::borrow::Cow::Borrowed(data);
        if let Some(offset) = f.msix.as_ref().map(|m| m.cap.control_offset())
            && let Some((start, end)) = overlap(register, len, offset, 2)
        {
            let mut control = f.state.msix_control.to_le_bytes();
            for at in start..end {
                let k = usize::try_from(at - register).unwrap_or(0);
                let i = usize::try_from(at - offset).unwrap_or(0);
                control[i] = data[k];
                // The function mask is the VMM's alone: it masks by not routing, and the
                // device signals on, so that a masked interrupt stays pending.
                forwarded.to_mut()[k] &= !msix::FUNCTION_MASK.to_le_bytes()[i];
            }
            msix_before = Some(f.state.msix_control);
            f.state.msix_control = u16::from_le_bytes(control) & msix::CONTROL_BITS;
        }
        // Everything but the BARs goes to the device too (its copy of command, MSI and MSI-X
        // enable tells it how to decode and which interrupt to raise).
        if overlap(register, len, BAR0, 4 * BARS as u64).is_none() {
            write_config(dev, register, &forwarded)?;
        }
        if msi_changed {
            Self::apply_msi(&self.router, dev, slot, &mut f)?;
        }
        if let Some(before) = msix_before
            && let Err(e) = Self::apply_msix(&self.router, dev, slot, &mut f)
        {
            // Not enabled after all: the device's copy goes back to what the VMM keeps.
            f.state.msix_control = before;
            if let Some(offset) = f.msix.as_ref().map(|m| m.cap.control_offset()) {
                let device = before & !msix::FUNCTION_MASK;
                let _ = write_config(dev, offset, &device.to_le_bytes());
            }
            return Err(e);
        }
        drop(f);
        if windows_changed {
            self.rebuild_windows();
        }
        Ok(())
    }

    /// Routes the function's MSI-X vectors as its state says (see [`msix`]).
    fn apply_msix(
        router: &Arc<dyn InterruptRouter>,
        dev: &AttachedDevice,
        slot: usize,
        f: &mut Function,
    ) -> Result<(), AttachError> {
        let first_line = msi_line(slot) + 1;
        let Function { msix, state, .. } = f;
        match msix {
            Some(m) => m.apply(router, dev, first_line, state),
            None => Ok(()),
        }
    }

    /// Routes (or unroutes) the function's MSI as its image says, and tells the device.
    fn apply_msi(
        router: &Arc<dyn InterruptRouter>,
        dev: &AttachedDevice,
        slot: usize,
        f: &mut Function,
    ) -> Result<(), AttachError> {
        let Some(cap) = f.msi_cap else {
            return Ok(());
        };
        let wanted = cap.decode(&f.state.msi);
        if wanted == f.routed {
            return Ok(());
        }
        let line = msi_line(slot);
        let route_error = |e: io::Error| invalid(dev, format!("routing its MSI: {e}"));
        match wanted {
            Some((address, data)) => {
                router
                    .route_msi(line, &f.eventfd, address, data)
                    .map_err(route_error)?;
                if f.routed.is_none() {
                    // SAFETY: the eventfd is the function's and outlives this call.
                    let fd = unsafe { BorrowedFd::borrow_raw(f.eventfd.as_raw_fd()) };
                    dev.client()
                        .set_irqs(
                            VFIO_PCI_MSI_IRQ_INDEX,
                            0,
                            IrqAction::Trigger,
                            IrqValues::Eventfds(&[fd]),
                        )
                        .map_err(|e| dev.request("give the device its MSI eventfd", e))?;
                }
            }
            None => {
                dev.client()
                    .set_irqs(
                        VFIO_PCI_MSI_IRQ_INDEX,
                        0,
                        IrqAction::Trigger,
                        IrqValues::None { count: 0 },
                    )
                    .map_err(|e| dev.request("disable the device's MSI", e))?;
                router.unroute_msi(line, &f.eventfd).map_err(route_error)?;
            }
        }
        f.routed = wanted;
        Ok(())
    }

    /// Recomputes the windows that decode, and moves the guest's mappings of device memory
    /// to follow them.
    fn rebuild_windows(&self) {
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        let windows: Vec<Window> = self
            .functions
            .iter()
            .enumerate()
            .flat_map(|(slot, f)| {
                let f = f.lock().unwrap_or_else(|e| e.into_inner());
                f.windows(slot).collect::<Vec<_>>()
            })
            .collect();
        self.follow_windows(&windows, &mut mapped);
        *self.windows.write().unwrap_or_else(|e| e.into_inner()) = windows;
    }

    /// Maps each direct area where its BAR's window is now, unmapping it from where it was.
    /// An area that cannot be mapped is left to trapped accesses (its window still traps).
    fn follow_windows(&self, windows: &[Window], mapped: &mut [Option<u64>]) {
        let Some(mapper) = &self.mapper else {
            return;
        };
        let wanted: Vec<Option<u64>> = self
            .direct
            .iter()
            .map(|d| {
                windows
                    .iter()
                    .find(|w| !w.io && w.slot == d.slot && w.bar as usize == d.bar)
                    .and_then(|w| w.base.checked_add(d.offset))
            })
            .collect();
        // Every mapping that moves goes first, so that one moving to where another was finds
        // the place free.
        for (id, (d, at)) in self.direct.iter().zip(mapped.iter_mut()).enumerate() {
            if at.is_none() || *at == wanted[id] {
                continue;
            }
            match mapper.unmap(u32::try_from(id).unwrap_or(u32::MAX)) {
                Ok(()) => *at = None,
                Err(e) => tracing::warn!(slot = d.slot, bar = d.bar, error = %e,
                    "device memory not unmapped from the guest"),
            }
        }
        for (id, (d, at)) in self.direct.iter().zip(mapped.iter_mut()).enumerate() {
            if at.is_some() || *at == wanted[id] {
                continue;
            }
            let id_u32 = u32::try_from(id).unwrap_or(u32::MAX);
            if let Some(gpa) = wanted[id] {
                // SAFETY: the area is the bus's and is unmapped from the guest before it is
                // dropped (`Drop for PciBus`).
                match unsafe { mapper.map(id_u32, gpa, d.area.as_ptr(), d.area.len()) } {
                    Ok(()) => *at = Some(gpa),
                    Err(e) => tracing::warn!(slot = d.slot, bar = d.bar, gpa, error = %e,
                        "device memory not mapped into the guest: its accesses are trapped"),
                }
            }
        }
    }

    /// The interrupts of function `slot` (all off for a slot with no device).
    pub fn interrupts(&self, slot: usize) -> InterruptStatus {
        let Some(f) = self.function(slot) else {
            return InterruptStatus::default();
        };
        InterruptStatus {
            msi: f.routed,
            msix_vectors: f.msix.as_ref().map_or(0, |m| m.cap.vectors),
            msix_enabled: f.state.msix_control & msix::ENABLE != 0,
            msix_routed: f.msix.as_ref().map_or(0, Vectors::routed),
        }
    }

    /// The BARs of function `slot`: where they decode, their trapped accesses and their
    /// areas mapped into the guest. Empty for a slot with no device.
    pub fn bars(&self, slot: usize) -> Vec<BarStatus> {
        // The mappings' lock before a function's, as `rebuild_windows` takes them.
        let mapped = self
            .mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(f) = self.function(slot) else {
            return Vec::new();
        };
        let windows: Vec<Window> = f.windows(slot).collect();
        (0..BARS)
            .filter_map(|i| {
                let bar = f.bars[i]?;
                Some(BarStatus {
                    index: u32::try_from(i).unwrap_or(0),
                    kind: bar.kind,
                    size: bar.size,
                    address: windows.iter().find(|w| w.bar as usize == i).map(|w| w.base),
                    trapped: self
                        .trapped
                        .get(slot)
                        .map_or(0, |t| t[i].load(Ordering::Relaxed)),
                    direct: self
                        .direct
                        .iter()
                        .zip(&mapped)
                        .filter(|(d, _)| d.slot == slot && d.bar == i)
                        .map(|(d, at)| (d.offset, d.area.len() as u64, *at))
                        .collect(),
                })
            })
            .collect()
    }

    /// What the guest programmed into each function, in device order.
    pub fn save(&self) -> Vec<PciConfigState> {
        self.functions
            .iter()
            .map(|f| {
                let f = f.lock().unwrap_or_else(|e| e.into_inner());
                PciConfigState {
                    msix_pending: f.msix.as_ref().map_or_else(Vec::new, Vectors::pending),
                    ..f.state.clone()
                }
            })
            .collect()
    }

    /// Writes back what the guest programmed (after the devices' own data was restored):
    /// the VMM's copy, the command register, MSI capability and MSI-X enable into each
    /// device, the MSI and MSI-X routes (and the MSI-X eventfds to the device), and the MSI-X
    /// signals that were pending on the source.
    pub fn restore(&self, states: &[PciConfigState]) -> Result<(), AttachError> {
        if states.len() != self.functions.len() {
            return Err(AttachError::Invalid {
                id: "pci".into(),
                what: format!(
                    "configuration of {} functions for a bus of {}",
                    states.len(),
                    self.functions.len()
                ),
            });
        }
        for (slot, state) in states.iter().enumerate() {
            let (Some(mut f), Some(dev)) = (self.function(slot), self.devices.get(slot)) else {
                continue;
            };
            let expected = f.msi_cap.map_or(0, MsiCap::len);
            if state.msi.len() != expected {
                return Err(invalid(
                    dev,
                    format!(
                        "an MSI capability of {} bytes, the device's has {expected}",
                        state.msi.len()
                    ),
                ));
            }
            let vectors = f.msix.as_ref().map_or(0, |m| m.cap.vectors);
            if state.msix_table.len() != vectors {
                return Err(invalid(
                    dev,
                    format!(
                        "an MSI-X table of {} vectors, the device's has {vectors}",
                        state.msix_table.len()
                    ),
                ));
            }
            f.state = PciConfigState {
                msix_control: state.msix_control & msix::CONTROL_BITS,
                msix_pending: Vec::new(),
                ..state.clone()
            };
            write_config(dev, COMMAND, &state.command.to_le_bytes())?;
            if let Some(cap) = f.msi_cap {
                write_config(dev, cap.offset + 2, &state.msi)?;
            }
            // The device's copy of the MSI-X control word: enable only (its table size bits
            // are read-only, and the function mask is the VMM's).
            let device = f.state.msix_control & !msix::FUNCTION_MASK;
            if let Some(m) = f.msix.as_mut() {
                write_config(dev, m.cap.control_offset(), &device.to_le_bytes())?;
                m.forget();
            }
            f.routed = None;
            Self::apply_msi(&self.router, dev, slot, &mut f)?;
            Self::apply_msix(&self.router, dev, slot, &mut f)?;
            match f.msix.as_ref() {
                Some(m) => m.signal(dev, &state.msix_pending)?,
                None if !state.msix_pending.is_empty() => {
                    return Err(invalid(dev, "pending MSI-X signals, and no MSI-X".into()));
                }
                None => {}
            }
        }
        self.rebuild_windows();
        Ok(())
    }
}

impl Drop for PciBus {
    fn drop(&mut self) {
        // The guest must not keep a mapping of memory this drop unmaps from the VMM: an area
        // whose guest mapping cannot be removed stays mapped here too (leaked).
        let Some(mapper) = &self.mapper else {
            return;
        };
        let mapped = std::mem::take(self.mapped.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (id, (d, at)) in std::mem::take(&mut self.direct)
            .into_iter()
            .zip(mapped)
            .enumerate()
        {
            if at.is_some()
                && let Err(e) = mapper.unmap(u32::try_from(id).unwrap_or(u32::MAX))
            {
                tracing::error!(slot = d.slot, bar = d.bar, error = %e,
                    "device memory still mapped into the guest: its mapping here is kept");
                std::mem::forget(d);
            }
        }
    }
}

/// A BAR access's direction and bytes.
enum Access<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Access<'_> {
    fn len(&self) -> u64 {
        match self {
            Access::Read(b) => b.len() as u64,
            Access::Write(b) => b.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::test_support::served;

    /// A route asked for: the line, and the MSI's address and data (`None`: unrouted).
    type Route = (u32, Option<(u64, u32)>);

    #[derive(Default)]
    struct Routes(Mutex<Vec<Route>>);

    impl InterruptRouter for Routes {
        fn route_msi(&self, line: u32, _: &EventFd, address: u64, data: u32) -> io::Result<()> {
            self.0.lock().unwrap().push((line, Some((address, data))));
            Ok(())
        }
        fn unroute_msi(&self, line: u32, _: &EventFd) -> io::Result<()> {
            self.0.lock().unwrap().push((line, None));
            Ok(())
        }
    }

    /// A mapping asked for: its id, and the guest address (`None`: unmapped).
    type Map = (u32, Option<u64>);

    /// Records what the bus maps into the guest; refuses every mapping if `refuse`.
    #[derive(Default)]
    struct Maps {
        done: Mutex<Vec<Map>>,
        refuse: bool,
    }

    impl GuestMapper for Maps {
        unsafe fn map(&self, id: u32, gpa: u64, _: *mut u8, _: usize) -> io::Result<()> {
            if self.refuse {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            self.done.lock().unwrap().push((id, Some(gpa)));
            Ok(())
        }
        fn unmap(&self, id: u32) -> io::Result<()> {
            self.done.lock().unwrap().push((id, None));
            Ok(())
        }
    }

    struct Bus {
        bus: PciBus,
        routes: Arc<Routes>,
        maps: Arc<Maps>,
        sockets: Vec<PathBuf>,
    }

    impl Drop for Bus {
        fn drop(&mut self) {
            for s in &self.sockets {
                let _ = std::fs::remove_file(s);
            }
        }
    }

    fn bus(kinds: &[&str]) -> Bus {
        bus_with(kinds, Maps::default())
    }

    fn bus_with(kinds: &[&str], maps: Maps) -> Bus {
        let (devices, sockets): (Vec<_>, Vec<_>) = kinds.iter().map(|k| served(k)).unzip();
        let routes = Arc::new(Routes::default());
        let maps = Arc::new(maps);
        let bus = PciBus::new(Arc::new(devices), routes.clone(), Some(maps.clone())).unwrap();
        Bus {
            bus,
            routes,
            maps,
            sockets,
        }
    }

    /// Puts BAR4 of the dma-engine (64 KiB of memory it lets its client map) at `base`, and
    /// turns memory decoding on.
    fn place_shared(bus: &PciBus, base: u32) {
        write32(bus, 0, 0x20, base);
        write32(bus, 0, 0x04, u32::from(COMMAND_MEMORY));
    }

    fn maps(b: &Bus) -> Vec<Map> {
        b.maps.done.lock().unwrap().clone()
    }

    fn select(bus: &PciBus, slot: u32, register: u32) {
        let address = 0x8000_0000 | slot << 11 | register & 0xfc;
        assert!(
            bus.pio_write(CONFIG_ADDRESS, &address.to_le_bytes())
                .unwrap()
        );
    }

    fn read32(bus: &PciBus, slot: u32, register: u32) -> u32 {
        select(bus, slot, register);
        let mut b = [0; 4];
        assert!(bus.pio_read(CONFIG_DATA, &mut b).unwrap());
        u32::from_le_bytes(b)
    }

    fn write32(bus: &PciBus, slot: u32, register: u32, v: u32) {
        select(bus, slot, register);
        assert!(bus.pio_write(CONFIG_DATA, &v.to_le_bytes()).unwrap());
    }

    /// Puts BAR0 of the dma-engine at `base` and turns memory decoding on.
    fn place_regs(bus: &PciBus, base: u32) {
        write32(bus, 0, 0x10, base);
        write32(bus, 0, 0x04, u32::from(COMMAND_MEMORY));
    }

    #[test]
    fn configuration_reads_reach_the_device_at_its_number() {
        let b = bus(&["mtty", "dma-engine"]);
        assert_eq!(read32(&b.bus, 1, 0), 0x10f0_1af4);
    }

    #[test]
    fn an_empty_slot_reads_all_ones() {
        let b = bus(&["dma-engine"]);
        assert_eq!(read32(&b.bus, 5, 0), u32::MAX);
    }

    #[test]
    fn a_bar_written_with_all_ones_reads_back_its_size() {
        let b = bus(&["dma-engine"]);
        write32(&b.bus, 0, 0x10, u32::MAX);
        assert_eq!(read32(&b.bus, 0, 0x10), !(4096 - 1));
    }

    #[test]
    fn an_io_bar_sizes_with_its_space_bit() {
        let b = bus(&["mtty"]);
        write32(&b.bus, 0, 0x10, u32::MAX);
        assert_eq!(read32(&b.bus, 0, 0x10), !(8 - 1) & !0x3 | 1);
    }

    #[test]
    fn mmio_in_a_placed_bar_reaches_the_device_register() {
        let b = bus(&["dma-engine"]);
        place_regs(&b.bus, 0xc000_0000);
        let mut id = [0; 4];
        assert!(b.bus.mmio_read(0xc000_0000, &mut id).unwrap());
        assert_eq!(id, *b"DMAE");
        assert!(b.bus.mmio_write(0xc000_0010, &16u32.to_le_bytes()).unwrap());
        let mut size = [0; 4];
        assert!(b.bus.mmio_read(0xc000_0010, &mut size).unwrap());
        assert_eq!(u32::from_le_bytes(size), 16);
    }

    #[test]
    fn a_bar_does_not_decode_while_memory_space_is_off() {
        let b = bus(&["dma-engine"]);
        write32(&b.bus, 0, 0x10, 0xc000_0000);
        assert!(!b.bus.mmio_read(0xc000_0000, &mut [0; 4]).unwrap());
    }

    #[test]
    fn enabling_msi_routes_the_programmed_address_and_data() {
        let b = bus(&["dma-engine"]);
        // The sample devices' MSI capability is at 0x40: address at +4, data at +8.
        write32(&b.bus, 0, 0x44, 0xfee0_0000);
        write32(&b.bus, 0, 0x48, 0x31);
        assert!(b.routes.0.lock().unwrap().is_empty());
        write32(&b.bus, 0, 0x40, 1 << 16 | 0x05);
        assert_eq!(
            *b.routes.0.lock().unwrap(),
            vec![(0, Some((0xfee0_0000, 0x31)))]
        );
    }

    #[test]
    fn disabling_msi_unroutes_it() {
        let b = bus(&["dma-engine"]);
        write32(&b.bus, 0, 0x44, 0xfee0_0000);
        write32(&b.bus, 0, 0x40, 1 << 16);
        write32(&b.bus, 0, 0x40, 0);
        assert_eq!(b.routes.0.lock().unwrap().last(), Some(&(0, None)));
    }

    #[test]
    fn restored_configuration_decodes_and_routes_as_saved() {
        let source = bus(&["dma-engine"]);
        place_regs(&source.bus, 0xc010_0000);
        write32(&source.bus, 0, 0x44, 0xfee0_0000);
        write32(&source.bus, 0, 0x48, 0x42);
        write32(&source.bus, 0, 0x40, 1 << 16);
        let saved = source.bus.save();

        let dest = bus(&["dma-engine"]);
        dest.bus.restore(&saved).unwrap();
        assert_eq!(dest.bus.save(), saved);
        let mut id = [0; 4];
        assert!(dest.bus.mmio_read(0xc010_0000, &mut id).unwrap());
        assert_eq!(id, *b"DMAE");
        assert_eq!(
            *dest.routes.0.lock().unwrap(),
            vec![(0, Some((0xfee0_0000, 0x42)))]
        );
    }

    #[test]
    fn a_restore_for_another_bus_shape_is_refused() {
        let b = bus(&["dma-engine"]);
        assert!(b.bus.restore(&[]).is_err());
    }

    #[test]
    fn a_placed_bar_maps_its_mappable_area_into_the_guest() {
        let b = bus(&["dma-engine"]);
        place_shared(&b.bus, 0xd000_0000);
        assert_eq!(maps(&b), [(0, Some(0xd000_0000))]);
    }

    #[test]
    fn a_moved_bar_unmaps_its_area_before_mapping_it_at_the_new_place() {
        let b = bus(&["dma-engine"]);
        place_shared(&b.bus, 0xd000_0000);
        write32(&b.bus, 0, 0x20, 0xd010_0000);
        assert_eq!(
            maps(&b),
            [(0, Some(0xd000_0000)), (0, None), (0, Some(0xd010_0000))]
        );
    }

    #[test]
    fn turning_memory_decoding_off_unmaps_the_area() {
        let b = bus(&["dma-engine"]);
        place_shared(&b.bus, 0xd000_0000);
        write32(&b.bus, 0, 0x04, 0);
        assert_eq!(maps(&b).last(), Some(&(0, None)));
    }

    #[test]
    fn a_restored_configuration_maps_the_area_where_it_was_saved() {
        let source = bus(&["dma-engine"]);
        place_shared(&source.bus, 0xd020_0000);
        let dest = bus(&["dma-engine"]);
        dest.bus.restore(&source.bus.save()).unwrap();
        assert_eq!(maps(&dest), [(0, Some(0xd020_0000))]);
    }

    #[test]
    fn dropping_the_bus_unmaps_what_it_mapped() {
        let mut b = bus(&["dma-engine"]);
        place_shared(&b.bus, 0xd000_0000);
        let empty = PciBus::new(Arc::new(Vec::new()), b.routes.clone(), None).unwrap();
        drop(std::mem::replace(&mut b.bus, empty));
        assert_eq!(maps(&b).last(), Some(&(0, None)));
    }

    #[test]
    fn an_area_the_mapper_refuses_is_reached_by_trapped_accesses() {
        let b = bus_with(
            &["dma-engine"],
            Maps {
                refuse: true,
                ..Maps::default()
            },
        );
        place_shared(&b.bus, 0xd000_0000);
        assert!(b.bus.mmio_write(0xd000_0010, b"trapped!").unwrap());
        let mut back = [0; 8];
        assert!(b.bus.mmio_read(0xd000_0010, &mut back).unwrap());
        assert_eq!(&back, b"trapped!");
        let bar = b.bus.bars(0).into_iter().find(|b| b.index == 4).unwrap();
        assert_eq!(bar.direct, [(0, 64 << 10, None)]);
        assert_eq!(bar.trapped, 2);
    }

    /// The offset of capability `id` of function 0, walking its list as a guest does.
    fn find_cap(bus: &PciBus, id: u8) -> u32 {
        let mut at = read32(bus, 0, 0x34) & 0xfc;
        while at != 0 {
            let header = read32(bus, 0, at);
            if header & 0xff == u32::from(id) {
                return at;
            }
            at = header >> 8 & 0xfc;
        }
        panic!("no capability {id:#x}");
    }

    /// Where the dma-engine's MSI-X table is when its BAR0 is at 0xc000_0000.
    const TABLE: u64 = 0xc000_0800;

    /// Writes MSI-X table entry `v` of the dma-engine (BAR0 placed at 0xc000_0000).
    fn write_entry(bus: &PciBus, v: u64, address: u32, data: u32, masked: bool) {
        for (word, value) in [address, 0, data, u32::from(masked)]
            .into_iter()
            .enumerate()
        {
            let at = TABLE + 16 * v + 4 * word as u64;
            assert!(bus.mmio_write(at, &value.to_le_bytes()).unwrap());
        }
    }

    /// Sets the dma-engine's MSI-X message control bits (enable 15, function mask 14).
    fn msix_control(bus: &PciBus, bits: u16) {
        let cap = find_cap(bus, msix::CAP_ID);
        let header = read32(bus, 0, cap);
        write32(bus, 0, cap, header & 0xffff | u32::from(bits) << 16);
    }

    /// The dma-engine's BAR0 placed, entry 0 unmasked to 0x41, entry 1 masked to 0x42.
    fn programmed_msix() -> Bus {
        let b = bus(&["dma-engine"]);
        place_regs(&b.bus, 0xc000_0000);
        write_entry(&b.bus, 0, 0xfee0_0000, 0x41, false);
        write_entry(&b.bus, 1, 0xfee0_0000, 0x42, true);
        b
    }

    fn routes(b: &Bus) -> Vec<Route> {
        b.routes.0.lock().unwrap().clone()
    }

    #[test]
    fn enabling_msix_routes_each_unmasked_vector_to_its_table_entry() {
        let b = programmed_msix();
        assert!(routes(&b).is_empty());
        msix_control(&b.bus, 1 << 15);
        assert_eq!(routes(&b), [(1, Some((0xfee0_0000, 0x41)))]);
    }

    #[test]
    fn unmasking_a_vector_routes_it_on_its_own_line() {
        let b = programmed_msix();
        msix_control(&b.bus, 1 << 15);
        write_entry(&b.bus, 1, 0xfee0_0000, 0x42, false);
        assert_eq!(routes(&b).last(), Some(&(2, Some((0xfee0_0000, 0x42)))));
    }

    #[test]
    fn the_function_mask_unroutes_every_vector() {
        let b = programmed_msix();
        write_entry(&b.bus, 1, 0xfee0_0000, 0x42, false);
        msix_control(&b.bus, 1 << 15);
        msix_control(&b.bus, 1 << 15 | 1 << 14);
        let routes = routes(&b);
        assert_eq!(routes[routes.len() - 2..], [(1, None), (2, None)]);
    }

    #[test]
    fn the_msix_table_reads_back_what_the_guest_wrote() {
        let b = programmed_msix();
        let mut entry = [0; 16];
        assert!(b.bus.mmio_read(TABLE + 16, &mut entry).unwrap());
        assert_eq!(
            entry,
            [0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 0x42, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn msix_table_entries_start_masked() {
        let b = bus(&["dma-engine"]);
        place_regs(&b.bus, 0xc000_0000);
        let mut control = [0; 4];
        assert!(b.bus.mmio_read(TABLE + 12, &mut control).unwrap());
        assert_eq!(u32::from_le_bytes(control), 1);
    }

    #[test]
    fn message_control_shows_the_vmms_enable_bit_over_the_devices_table_size() {
        let b = programmed_msix();
        msix_control(&b.bus, 1 << 15);
        let cap = find_cap(&b.bus, msix::CAP_ID);
        assert_eq!(read32(&b.bus, 0, cap) >> 16, 1 << 15 | 1);
    }

    #[test]
    fn a_restored_configuration_routes_msix_as_saved() {
        let source = programmed_msix();
        msix_control(&source.bus, 1 << 15);
        let dest = bus(&["dma-engine"]);
        dest.bus.restore(&source.bus.save()).unwrap();
        assert_eq!(routes(&dest), [(1, Some((0xfee0_0000, 0x41)))]);
    }

    #[test]
    fn a_restore_with_another_msix_table_size_is_refused() {
        let b = bus(&["dma-engine"]);
        let mut saved = b.bus.save();
        saved[0].msix_table.pop();
        assert!(b.bus.restore(&saved).is_err());
    }

    #[test]
    fn the_device_never_sees_the_function_mask() {
        let b = programmed_msix();
        msix_control(&b.bus, 1 << 15 | 1 << 14);
        let cap = find_cap(&b.bus, msix::CAP_ID);
        let mut device = [0; 2];
        read_config(&b.bus.devices[0], u64::from(cap) + 2, &mut device).unwrap();
        assert_eq!(u16::from_le_bytes(device) & 0xc000, 1 << 15);
        assert_eq!(read32(&b.bus, 0, cap) >> 16 & 0xc000, 0xc000);
    }

    /// Signals vector `v` of the dma-engine's MSI-X, as the device does.
    fn signal(b: &Bus, v: usize) {
        let f = b.bus.function(0).unwrap();
        f.msix.as_ref().unwrap().eventfd(v).write(1).unwrap();
    }

    /// The signals waiting on vector `v` (taken).
    fn waiting(b: &Bus, v: usize) -> u64 {
        let f = b.bus.function(0).unwrap();
        f.msix.as_ref().unwrap().eventfd(v).read().unwrap_or(0)
    }

    #[test]
    fn a_signal_waiting_on_a_masked_vector_is_carried_by_a_migration() {
        let source = programmed_msix();
        msix_control(&source.bus, 1 << 15);
        signal(&source, 1);
        let saved = source.bus.save();
        assert_eq!(saved[0].msix_pending, [1]);
        let dest = bus(&["dma-engine"]);
        dest.bus.restore(&saved).unwrap();
        assert_eq!(waiting(&dest, 1), 1);
    }

    #[test]
    fn saving_leaves_a_waiting_signal_waiting_at_the_source() {
        let source = programmed_msix();
        msix_control(&source.bus, 1 << 15);
        signal(&source, 1);
        source.bus.save();
        assert_eq!(waiting(&source, 1), 1);
    }

    #[test]
    fn an_access_whose_end_overflows_the_address_space_decodes_nothing() {
        let b = bus(&["dma-engine"]);
        place_regs(&b.bus, 0xc000_0000);
        assert!(!b.bus.mmio_read(u64::MAX - 1, &mut [0; 4]).unwrap());
    }

    #[test]
    fn mappings_that_trade_places_are_all_unmapped_before_any_is_mapped() {
        let b = bus(&["dma-engine", "dma-engine"]);
        for (slot, base) in [(0, 0xd000_0000u32), (1, 0xd010_0000)] {
            write32(&b.bus, slot, 0x20, base);
            write32(&b.bus, slot, 0x04, u32::from(COMMAND_MEMORY));
        }
        let mut swapped = b.bus.save();
        swapped.swap(0, 1);
        b.maps.done.lock().unwrap().clear();
        b.bus.restore(&swapped).unwrap();
        assert_eq!(
            maps(&b),
            [
                (0, None),
                (1, None),
                (0, Some(0xd010_0000)),
                (1, Some(0xd000_0000))
            ]
        );
    }
}
