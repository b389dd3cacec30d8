//! A type-0 PCI configuration space: the standard header, BAR sizing, one MSI capability and,
//! for a model that offers it, an MSI-X capability.
//!
//! ```text
//! 0x00 vendor | device        0x04 command | status      0x08 rev | class code
//! 0x0c cache line, latency, header type 0, BIST
//! 0x10..0x24 BAR0..BAR5       0x2c subsystem vendor | subsystem
//! 0x34 capabilities -> 0x40   0x3c interrupt line | pin (INTA)
//! 0x40 MSI: id 5, next 0 (0x50 with MSI-X), control (enable), address, data
//! 0x50 MSI-X (only with an MsixSpec): id 0x11, next 0,
//!      control: table size - 1 (bits 10..0, RO), function mask (14), enable (15)
//! 0x54 table offset | BIR     0x58 PBA offset | BIR  (RO)
//! ```
//!
//! Writes go through a per-byte writable mask, so read-only fields stay read-only. A BAR
//! written with all ones reads back its size mask, as a BIOS sizing it expects.

use std::fmt;

use super::msix::MsixSpec;

const SIZE: usize = 256;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const CAP_PTR: usize = 0x34;
const INT_LINE: usize = 0x3c;
const INT_PIN: usize = 0x3d;
const MSI_CAP: usize = 0x40;
const MSI_CONTROL: usize = MSI_CAP + 2;
const MSI_ADDRESS: usize = MSI_CAP + 4;
const MSI_DATA: usize = MSI_CAP + 8;
const MSIX_CAP: usize = 0x50;
/// [`MSIX_CAP`] as a capability pointer.
const MSIX_CAP_PTR: u8 = 0x50;
const _: () = assert!(MSIX_CAP_PTR as usize == MSIX_CAP);
const MSIX_CONTROL: usize = MSIX_CAP + 2;
const MSIX_TABLE: usize = MSIX_CAP + 4;
const MSIX_PBA: usize = MSIX_CAP + 8;
/// MSI-X capability ID.
const MSIX_ID: u8 = 0x11;
/// MSI-X message control: all vectors masked.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// MSI-X message control: MSI-X enabled.
const MSIX_ENABLE: u16 = 1 << 15;

/// What MSI-X message control says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixControl {
    /// No MSI-X capability, or MSI-X disabled: the device interrupts as without it.
    Disabled,
    /// Enabled, all vectors masked by the function mask: signalled as when enabled, for the
    /// client to hold back (see `DeviceContext::interrupt_vector`).
    FunctionMasked,
    /// Enabled: each vector is signalled through its own eventfd.
    Enabled,
}

/// Command register bits a device may see set: I/O space, memory space, bus master, INTx
/// disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0400;
/// Status bit: a capabilities list is present.
const STATUS_CAP_LIST: u16 = 0x0010;

/// Who the device says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base class, subclass, programming interface) in the low 24 bits.
    pub class: u32,
    /// Revision.
    pub revision: u8,
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory space.
    Memory,
    /// I/O space.
    Io,
}

/// A device's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; SIZE],
    writable: [u8; SIZE],
    /// BAR sizes (0 = BAR not implemented).
    bar_sizes: [u32; 6],
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(0)))
            .field("device", &format_args!("{:#06x}", self.read_u16(2)))
            .field("bar_sizes", &self.bar_sizes)
            .finish()
    }
}

impl ConfigSpace {
    /// A configuration space for `id`, with BARs of the given kinds and sizes (each a power of
    /// two of at least 16 bytes for memory, 4 for I/O; others are left absent), INTA, and an
    /// MSI capability.
    pub fn new(id: PciIdentity, bars: &[(usize, BarKind, u32)]) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; SIZE],
            writable: [0; SIZE],
            bar_sizes: [0; 6],
        };
        c.put_u16(0x00, id.vendor);
        c.put_u16(0x02, id.device);
        c.put_u32(0x08, (id.class << 8) | u32::from(id.revision));
        c.put_u16(0x2c, id.vendor);
        c.put_u16(0x2e, id.device);
        c.put_u16(STATUS, STATUS_CAP_LIST);
        c.mask_u16(COMMAND, COMMAND_WRITABLE);
        c.bytes[INT_PIN] = 1;
        c.writable[INT_LINE] = 0xff;
        c.bytes[CAP_PTR] = 0x40; // MSI_CAP
        c.bytes[MSI_CAP] = 0x05;
        c.mask_u16(MSI_CONTROL, 0x0001);
        c.mask_u32(MSI_ADDRESS, 0xffff_fffc);
        c.mask_u16(MSI_DATA, 0xffff);
        for &(index, kind, size) in bars {
            let min = if kind == BarKind::Io { 4 } else { 16 };
            if index < 6 && size.is_power_of_two() && size >= min {
                let at = BAR0 + 4 * index;
                c.bar_sizes[index] = size;
                let low = if kind == BarKind::Io { 1 } else { 0 };
                c.put_u32(at, low);
                c.mask_u32(at, !(size - 1));
            }
        }
        c
    }

    /// Adds an MSI-X capability for `spec` after the MSI one. An invalid spec (see
    /// [`MsixSpec::is_valid`]) adds nothing.
    pub fn with_msix(mut self, spec: &MsixSpec) -> Self {
        if !spec.is_valid() {
            tracing::error!(?spec, "invalid MSI-X spec: no MSI-X capability");
            return self;
        }
        self.bytes[MSI_CAP + 1] = MSIX_CAP_PTR;
        self.bytes[MSIX_CAP] = MSIX_ID;
        self.put_u16(MSIX_CONTROL, spec.vectors - 1);
        self.mask_u16(MSIX_CONTROL, MSIX_FUNCTION_MASK | MSIX_ENABLE);
        // Valid specs have BARs below 6 and 8-byte aligned offsets: the BIR fits bits 2..0.
        let bir = |bar: usize| u32::try_from(bar).unwrap_or(0);
        self.put_u32(MSIX_TABLE, spec.table_offset | bir(spec.table_bar));
        self.put_u32(MSIX_PBA, spec.pba_offset | bir(spec.pba_bar));
        self
    }

    /// Size of the configuration space.
    pub const fn size() -> u64 {
        SIZE as u64
    }

    /// Reads `buf.len()` bytes at `offset`; false if the access is outside.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        match self.range(offset, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.bytes[r]);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `offset` through the writable mask; false if the access is outside.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(r) = self.range(offset, data.len()) else {
            return false;
        };
        for (i, &v) in r.zip(data) {
            let m = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !m) | (v & m);
        }
        true
    }

    fn range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len).filter(|&e| e <= SIZE)?;
        Some(start..end)
    }

    /// MSI is enabled, with its address and data.
    pub fn msi(&self) -> Option<(u32, u16)> {
        (self.read_u16(MSI_CONTROL) & 1 != 0)
            .then(|| (self.read_u32(MSI_ADDRESS), self.read_u16(MSI_DATA)))
    }

    /// What MSI-X message control says (disabled if there is no MSI-X capability).
    pub fn msix(&self) -> MsixControl {
        if self.bytes[MSIX_CAP] != MSIX_ID {
            return MsixControl::Disabled;
        }
        let control = self.read_u16(MSIX_CONTROL);
        if control & MSIX_ENABLE == 0 {
            MsixControl::Disabled
        } else if control & MSIX_FUNCTION_MASK != 0 {
            MsixControl::FunctionMasked
        } else {
            MsixControl::Enabled
        }
    }

    /// INTx is disabled in the command register.
    pub fn intx_disabled(&self) -> bool {
        self.read_u16(COMMAND) & 0x0400 != 0
    }

    /// Bus mastering (DMA) is enabled.
    pub fn bus_master(&self) -> bool {
        self.read_u16(COMMAND) & 0x0004 != 0
    }

    /// The raw bytes, for migration.
    pub fn bytes(&self) -> &[u8; SIZE] {
        &self.bytes
    }

    /// Restores the raw bytes saved by [`ConfigSpace::bytes`] on another instance of the same
    /// device: only writable bits are taken, so identity and read-only fields stay this
    /// device's own.
    pub fn restore(&mut self, saved: &[u8; SIZE]) {
        for (i, &v) in saved.iter().enumerate() {
            let m = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !m) | (v & m);
        }
    }

    fn read_u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn read_u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    fn put_u16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn mask_u16(&mut self, at: usize, m: u16) {
        self.writable[at..at + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn mask_u32(&mut self, at: usize, m: u32) {
        self.writable[at..at + 4].copy_from_slice(&m.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: PciIdentity = PciIdentity {
        vendor: 0x1b36,
        device: 0x0042,
        class: 0x070002,
        revision: 1,
    };

    fn u32_at(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(c.read(off, &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_in_the_header() {
        let c = ConfigSpace::new(ID, &[]);
        assert_eq!(u32_at(&c, 0), 0x0042_1b36);
        assert_eq!(u32_at(&c, 8), 0x0700_0201);
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = ConfigSpace::new(ID, &[]);
        assert!(c.write(0, &[0xff; 4]));
        assert_eq!(u32_at(&c, 0), 0x0042_1b36);
    }

    #[test]
    fn a_bar_written_with_all_ones_reads_back_its_size_mask() {
        let mut c = ConfigSpace::new(ID, &[(0, BarKind::Memory, 0x1000), (1, BarKind::Io, 16)]);
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(u32_at(&c, 0x10), 0xffff_f000);
        assert_eq!(u32_at(&c, 0x14), 0xffff_fff1);
    }

    #[test]
    fn an_absent_bar_reads_zero() {
        let mut c = ConfigSpace::new(ID, &[]);
        c.write(0x18, &[0xff; 4]);
        assert_eq!(u32_at(&c, 0x18), 0);
    }

    #[test]
    fn msi_is_off_until_enabled() {
        let mut c = ConfigSpace::new(ID, &[]);
        assert_eq!(c.msi(), None);
        c.write(0x44, &0xfee0_0000u32.to_le_bytes());
        c.write(0x48, &0x41u16.to_le_bytes());
        c.write(0x42, &1u16.to_le_bytes());
        assert_eq!(c.msi(), Some((0xfee0_0000, 0x41)));
    }

    const MSIX: MsixSpec = MsixSpec {
        vectors: 2,
        table_bar: 0,
        table_offset: 0x800,
        pba_bar: 0,
        pba_offset: 0xc00,
    };

    #[test]
    fn msi_links_to_msix_when_offered() {
        let c = ConfigSpace::new(ID, &[]).with_msix(&MSIX);
        assert_eq!(c.bytes()[0x41], 0x50);
        assert_eq!(u32_at(&c, 0x50), 0x0001_0011);
        assert_eq!(u32_at(&c, 0x54), 0x800);
        assert_eq!(u32_at(&c, 0x58), 0xc00);
    }

    #[test]
    fn without_msix_the_msi_capability_ends_the_list() {
        let c = ConfigSpace::new(ID, &[]);
        assert_eq!(c.bytes()[0x41], 0);
        assert_eq!(c.bytes()[0x50], 0);
    }

    #[test]
    fn msix_table_size_and_location_are_read_only() {
        let mut c = ConfigSpace::new(ID, &[]).with_msix(&MSIX);
        c.write(0x50, &[0xff; 12]);
        assert_eq!(u32_at(&c, 0x50), 0xc001_0011);
        assert_eq!(u32_at(&c, 0x54), 0x800);
    }

    #[test]
    fn msix_control_enables_and_masks() {
        let mut c = ConfigSpace::new(ID, &[]).with_msix(&MSIX);
        assert_eq!(c.msix(), MsixControl::Disabled);
        c.write(0x52, &0x8000u16.to_le_bytes());
        assert_eq!(c.msix(), MsixControl::Enabled);
        c.write(0x52, &0xc000u16.to_le_bytes());
        assert_eq!(c.msix(), MsixControl::FunctionMasked);
    }

    #[test]
    fn accesses_outside_are_refused() {
        let mut c = ConfigSpace::new(ID, &[]);
        let mut b = [0u8; 4];
        assert!(!c.read(254, &mut b));
        assert!(!c.write(u64::MAX, &b));
    }

    #[test]
    fn restore_takes_only_writable_bits() {
        let mut a = ConfigSpace::new(ID, &[(0, BarKind::Memory, 0x1000)]);
        a.write(0x10, &0xc000_0000u32.to_le_bytes());
        a.write(0x04, &0x0006u16.to_le_bytes());
        let mut saved = *a.bytes();
        saved[0] = 0; // a corrupted vendor id must not be taken
        let mut b = ConfigSpace::new(ID, &[(0, BarKind::Memory, 0x1000)]);
        b.restore(&saved);
        assert_eq!(b.bytes(), a.bytes());
    }
}
