//! The dma-engine's registers (BAR0) and descriptors.
//!
//! ```text
//! BAR0 (4 KiB, 4- or 8-byte accesses)
//! 0x00 ID          u32 RO  "DMAE" (0x45414d44)
//! 0x04 VERSION     u32 RO  1
//! 0x08 RING_BASE   u64 RW  IOVA of the descriptor ring
//! 0x10 RING_SIZE   u32 RW  descriptors in the ring, a power of two <= 4096
//! 0x14 CONTROL     u32 RW  bit 0 ENABLE (the ring is pinned), bit 1 IRQ_ENABLE
//! 0x18 TAIL        u32 RW  doorbell: the device runs descriptors HEAD..TAIL
//! 0x1c HEAD        u32 RO  next descriptor the device will run
//! 0x20 STATUS      u32 RO  0, or the errno of the last failure (bit 31: the ring is lost)
//! 0x24 RAM_PAGES   u32 RO  device RAM size in 4 KiB pages
//! 0x28 COMPLETED   u64 RO  descriptors completed since reset
//! 0x800 MSI-X table (MSIX_VECTORS entries of 16 bytes, 4- or 8-byte accesses), kept by the
//!       PciDevice around the model
//! 0xc00 MSI-X PBA   (8 bytes, reads zero)
//!
//! descriptor (32 bytes, in guest memory)
//!  0 op     u32  1 COPY_TO_DEVICE, 2 COPY_TO_GUEST, 3 FILL_DEVICE, 4 FILL_GUEST
//!  4 flags  u32  bit 0: interrupt on completion; bit 1: on MSI-X vector 1 (else vector 0)
//!  8 guest  u64  guest address (IOVA)
//! 16 device u64  offset in device RAM
//! 24 len    u32  bytes, at most 1 MiB
//! 28 word   u32  in: the fill byte; out: DONE (bit 31) | errno (0 on success)
//! ```

/// Register offsets.
pub(crate) mod off {
    pub(crate) const ID: u64 = 0x00;
    pub(crate) const VERSION: u64 = 0x04;
    pub(crate) const RING_BASE: u64 = 0x08;
    pub(crate) const RING_SIZE: u64 = 0x10;
    pub(crate) const CONTROL: u64 = 0x14;
    pub(crate) const TAIL: u64 = 0x18;
    pub(crate) const HEAD: u64 = 0x1c;
    pub(crate) const STATUS: u64 = 0x20;
    pub(crate) const RAM_PAGES: u64 = 0x24;
    pub(crate) const COMPLETED: u64 = 0x28;
}

/// The ID register's value.
pub const ID: u32 = u32::from_le_bytes(*b"DMAE");
/// CONTROL: the ring is enabled (and pinned).
pub const CONTROL_ENABLE: u32 = 1;
/// CONTROL: completions may interrupt.
pub const CONTROL_IRQ: u32 = 2;
/// STATUS: the ring was unmapped under the device.
pub const STATUS_RING_LOST: u32 = 1 << 31;
/// Most descriptors in a ring.
pub const MAX_RING: u32 = 4096;
/// Bytes of one descriptor.
pub const DESCRIPTOR: u64 = 32;
/// Most bytes one descriptor moves.
pub const MAX_LEN: u32 = 1 << 20;
/// Descriptor completion bit in `word`.
pub const DONE: u32 = 1 << 31;
/// Descriptor flag: interrupt on completion.
pub const FLAG_IRQ: u32 = 1;
/// Descriptor flag: the completion interrupt is MSI-X vector 1, not 0 (without MSI-X it
/// changes nothing).
pub const FLAG_VECTOR1: u32 = 2;
/// MSI-X vectors: 0 and 1, chosen per descriptor by [`FLAG_VECTOR1`].
pub const MSIX_VECTORS: u16 = 2;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x800;
/// Offset of the MSI-X pending bit array in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0xc00;

/// What a descriptor asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Guest memory to device RAM.
    CopyToDevice,
    /// Device RAM to guest memory.
    CopyToGuest,
    /// Fill device RAM with a byte.
    FillDevice,
    /// Fill guest memory with a byte.
    FillGuest,
}

impl Op {
    /// The op code in a descriptor.
    pub const fn code(self) -> u32 {
        match self {
            Op::CopyToDevice => 1,
            Op::CopyToGuest => 2,
            Op::FillDevice => 3,
            Op::FillGuest => 4,
        }
    }

    fn from_code(code: u32) -> Option<Op> {
        Some(match code {
            1 => Op::CopyToDevice,
            2 => Op::CopyToGuest,
            3 => Op::FillDevice,
            4 => Op::FillGuest,
            _ => return None,
        })
    }
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The operation.
    pub op: Op,
    /// Interrupt on completion.
    pub irq: bool,
    /// Guest address.
    pub guest: u64,
    /// Device RAM offset.
    pub device: u64,
    /// Bytes.
    pub len: u32,
    /// Fill byte.
    pub fill: u8,
}

impl Descriptor {
    /// The 32 bytes of a descriptor a driver writes into the ring.
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&self.op.code().to_le_bytes());
        b[4..8].copy_from_slice(&u32::from(self.irq).to_le_bytes());
        b[8..16].copy_from_slice(&self.guest.to_le_bytes());
        b[16..24].copy_from_slice(&self.device.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&u32::from(self.fill).to_le_bytes());
        b
    }

    /// The descriptor's 32 bytes with [`FLAG_VECTOR1`] set as well: its completion interrupt
    /// goes to MSI-X vector 1.
    pub fn encode_on_vector1(&self) -> [u8; 32] {
        let mut b = self.encode();
        let flags = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) | FLAG_VECTOR1;
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b
    }

    /// The MSI-X vector the completion of the descriptor in `b` interrupts on.
    pub fn vector_of(b: &[u8; 32]) -> u16 {
        u16::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]]) & FLAG_VECTOR1 != 0)
    }

    /// Decodes the 32 bytes of a descriptor; `None` for an unknown op.
    pub fn decode(b: &[u8; 32]) -> Option<Descriptor> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Some(Descriptor {
            op: Op::from_code(u32_at(0))?,
            irq: u32_at(4) & FLAG_IRQ != 0,
            guest: u64_at(8),
            device: u64_at(16),
            len: u32_at(24),
            fill: b[28],
        })
    }
}

/// The register file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Regs {
    pub(crate) ring_base: u64,
    pub(crate) ring_size: u32,
    pub(crate) control: u32,
    pub(crate) tail: u32,
    pub(crate) head: u32,
    pub(crate) status: u32,
    pub(crate) completed: u64,
}

/// Saved size of the registers.
pub(crate) const REGS_LEN: usize = 8 + 4 * 5 + 8;

impl Regs {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ring_base.to_le_bytes());
        for v in [
            self.ring_size,
            self.control,
            self.tail,
            self.head,
            self.status,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.completed.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Regs> {
        let b: &[u8; REGS_LEN] = b.try_into().ok()?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let regs = Regs {
            ring_base: u64_at(0),
            ring_size: u32_at(8),
            control: u32_at(12),
            tail: u32_at(16),
            head: u32_at(20),
            status: u32_at(24),
            completed: u64_at(28),
        };
        let ring_ok = regs.ring_size == 0
            || (regs.ring_size.is_power_of_two() && regs.ring_size <= MAX_RING)
                && regs.head < regs.ring_size
                && regs.tail < regs.ring_size;
        ring_ok.then_some(regs)
    }
}
