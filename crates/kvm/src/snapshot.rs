//! [`Snapshot`] as bytes: the section the migration stream carries for the VM's KVM state.
//! The bytes come off the network, so reading them is strict: fixed sizes, capped counts,
//! a version, a CRC32C over everything, no trailing bytes, errors and never a panic.
//!
//! ```text
//!  magic "VFKVMST\0" | version u32 | flags u32 (bit 0: PIT) | vCPUs u32
//!  VM:    PIC master, PIC slave, IOAPIC (kvm_irqchip each) | [kvm_pit_state2] | kvm_clock_data
//!  vCPU:  kvm_mp_state | kvm_regs | kvm_sregs | kvm_fpu (field by field) | kvm_xsave |
//!         kvm_xcrs | kvm_debugregs | kvm_lapic_state | MSRs u32 + kvm_msr_entry each |
//!         kvm_vcpu_events
//!  CRC32C (Castagnoli) u32 of every byte before it
//! ```
//!
//! Integers are little-endian; each KVM struct is its `#[repr(C)]` bytes (kvm-bindings'
//! zerocopy derives), so the format is this crate's version of the x86-64 KVM ABI. Both
//! ends must be x86-64 Linux hosts of the same CPU model: MSRs and XSAVE features of one
//! host are not all valid on another.

use kvm_bindings::kvm_fpu;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::SnapshotError;
use crate::state::{Snapshot, VcpuState, VmState};

const MAGIC: [u8; 8] = *b"VFKVMST\0";
/// The format version this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// The most vCPUs a snapshot may hold (KVM's own limit on x86 is 4096; this VMM uses 16).
pub const MAX_SNAPSHOT_VCPUS: u32 = 256;
/// The most MSRs one vCPU may carry (KVM lists under 200 today).
pub const MAX_MSRS: u32 = 1024;
const FLAG_PIT: u32 = 1 << 0;

impl Snapshot {
    /// The snapshot's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192 * (self.vcpus.len() + 1));
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, SNAPSHOT_VERSION);
        put_u32(&mut out, if self.vm.pit.is_some() { FLAG_PIT } else { 0 });
        put_u32(&mut out, len_u32(self.vcpus.len()));
        let vm = &self.vm;
        put(&mut out, &vm.pic_master);
        put(&mut out, &vm.pic_slave);
        put(&mut out, &vm.ioapic);
        if let Some(pit) = &vm.pit {
            put(&mut out, pit);
        }
        put(&mut out, &vm.clock);
        for vcpu in &self.vcpus {
            put(&mut out, &vcpu.mp_state);
            put(&mut out, &vcpu.regs);
            put(&mut out, &vcpu.sregs);
            put_fpu(&mut out, &vcpu.fpu);
            put(&mut out, &vcpu.xsave);
            put(&mut out, &vcpu.xcrs);
            put(&mut out, &vcpu.debug_regs);
            put(&mut out, &vcpu.lapic);
            put_u32(&mut out, len_u32(vcpu.msrs.len()));
            for msr in &vcpu.msrs {
                put(&mut out, msr);
            }
            put(&mut out, &vcpu.events);
        }
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &out);
        put_u32(&mut out, u32::try_from(crc).unwrap_or(0));
        out
    }

    /// Reads a snapshot written by [`Snapshot::to_bytes`].
    ///
    /// # Errors
    /// [`SnapshotError`]: bad magic, another version, a wrong checksum, a count above its
    /// cap, unknown flags, bytes missing or left over.
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let mut head = Reader::new(bytes);
        if head.take(MAGIC.len(), "magic")? != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = head.u32("version")?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let Some(body_len) = bytes.len().checked_sub(4) else {
            return Err(head.truncated("checksum", 4));
        };
        let (body, crc) = bytes.split_at(body_len);
        let found = u32::from_le_bytes(crc.try_into().map_err(|_| head.truncated("checksum", 4))?);
        let computed = u32::try_from(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body))
            .unwrap_or(0);
        if found != computed {
            return Err(SnapshotError::BadChecksum { found, computed });
        }
        let mut reader = Reader::new(body);
        reader.take(MAGIC.len() + 4, "header")?;
        let flags = reader.u32("flags")?;
        if flags & !FLAG_PIT != 0 {
            return Err(SnapshotError::UnknownFlags(flags));
        }
        let count = reader.u32("vCPU count")?;
        if count > MAX_SNAPSHOT_VCPUS {
            return Err(SnapshotError::CountTooLarge {
                field: "vCPU",
                count,
                cap: MAX_SNAPSHOT_VCPUS,
            });
        }
        let vm = VmState {
            pic_master: reader.get("PIC master")?,
            pic_slave: reader.get("PIC slave")?,
            ioapic: reader.get("IOAPIC")?,
            pit: if flags & FLAG_PIT != 0 {
                Some(reader.get("PIT")?)
            } else {
                None
            },
            clock: reader.get("clock")?,
        };
        let mut vcpus = Vec::new();
        for _ in 0..count {
            vcpus.push(read_vcpu(&mut reader)?);
        }
        if reader.remaining() != 0 {
            return Err(SnapshotError::TrailingBytes(reader.remaining()));
        }
        Ok(Snapshot { vm, vcpus })
    }
}

fn read_vcpu(reader: &mut Reader<'_>) -> Result<VcpuState, SnapshotError> {
    let mp_state = reader.get("MP state")?;
    let regs = reader.get("regs")?;
    let sregs = reader.get("sregs")?;
    let fpu = read_fpu(reader)?;
    let xsave = reader.get("XSAVE")?;
    let xcrs = reader.get("XCRs")?;
    let debug_regs = reader.get("debug registers")?;
    let lapic = reader.get("LAPIC")?;
    let count = reader.u32("MSR count")?;
    if count > MAX_MSRS {
        return Err(SnapshotError::CountTooLarge {
            field: "MSR",
            count,
            cap: MAX_MSRS,
        });
    }
    let mut msrs = Vec::new();
    for _ in 0..count {
        msrs.push(reader.get("MSR")?);
    }
    let events = reader.get("vCPU events")?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        events,
    })
}

/// `kvm_fpu` has no zerocopy derive in kvm-bindings; its fields have no padding between
/// them (416 bytes), and are written one by one.
fn put_fpu(out: &mut Vec<u8>, fpu: &kvm_fpu) {
    for reg in &fpu.fpr {
        out.extend_from_slice(reg);
    }
    out.extend_from_slice(&fpu.fcw.to_le_bytes());
    out.extend_from_slice(&fpu.fsw.to_le_bytes());
    out.push(fpu.ftwx);
    out.push(fpu.pad1);
    out.extend_from_slice(&fpu.last_opcode.to_le_bytes());
    out.extend_from_slice(&fpu.last_ip.to_le_bytes());
    out.extend_from_slice(&fpu.last_dp.to_le_bytes());
    for reg in &fpu.xmm {
        out.extend_from_slice(reg);
    }
    put_u32(out, fpu.mxcsr);
    put_u32(out, fpu.pad2);
}

fn read_fpu(reader: &mut Reader<'_>) -> Result<kvm_fpu, SnapshotError> {
    let mut fpu = kvm_fpu::default();
    for reg in &mut fpu.fpr {
        *reg = reader.get("FPU register")?;
    }
    fpu.fcw = reader.get("FPU fcw")?;
    fpu.fsw = reader.get("FPU fsw")?;
    fpu.ftwx = reader.get("FPU ftwx")?;
    fpu.pad1 = reader.get("FPU pad")?;
    fpu.last_opcode = reader.get("FPU opcode")?;
    fpu.last_ip = reader.get("FPU ip")?;
    fpu.last_dp = reader.get("FPU dp")?;
    for reg in &mut fpu.xmm {
        *reg = reader.get("XMM register")?;
    }
    fpu.mxcsr = reader.u32("MXCSR")?;
    fpu.pad2 = reader.u32("FPU pad")?;
    Ok(fpu)
}

fn put<T: IntoBytes + Immutable>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(value.as_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A count that the caps keep small; saturates rather than wraps (the reader then refuses).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads fields off the front of a byte slice, each exactly its size.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn truncated(&self, field: &'static str, needed: usize) -> SnapshotError {
        SnapshotError::Truncated {
            field,
            needed,
            offset: self.offset,
            len: self.bytes.len(),
        }
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.truncated(field, len))?;
        let slice = self
            .bytes
            .get(self.offset..end)
            .ok_or_else(|| self.truncated(field, len))?;
        self.offset = end;
        Ok(slice)
    }

    fn get<T: FromBytes>(&mut self, field: &'static str) -> Result<T, SnapshotError> {
        let size = std::mem::size_of::<T>();
        let bytes = self.take(size, field)?;
        T::read_from_bytes(bytes).map_err(|_| self.truncated(field, size))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SnapshotError> {
        let bytes = self.take(4, field)?;
        let array: [u8; 4] = bytes.try_into().map_err(|_| self.truncated(field, 4))?;
        Ok(u32::from_le_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_msr_entry;

    use super::*;
    use crate::state::{VcpuState, VmState};

    fn vcpu(seed: u64) -> VcpuState {
        let mut state = VcpuState {
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            fpu: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: seed,
                ..Default::default()
            }],
            events: Default::default(),
        };
        state.regs.rip = 0x10_0000 + seed;
        state.fpu.xmm[3][5] = 7;
        state.fpu.mxcsr = 0x1F80;
        state
    }

    fn snapshot(pit: bool) -> Snapshot {
        Snapshot {
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: pit.then(Default::default),
                clock: Default::default(),
            },
            vcpus: vec![vcpu(1), vcpu(2)],
        }
    }

    /// Re-seals `bytes` with a correct checksum after a test changed them.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - 4;
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes[..body]);
        bytes[body..].copy_from_slice(&u32::try_from(crc).unwrap().to_le_bytes());
        bytes
    }

    #[test]
    fn bytes_read_back_to_the_same_bytes() {
        for pit in [false, true] {
            let bytes = snapshot(pit).to_bytes();
            assert_eq!(Snapshot::from_bytes(&bytes).unwrap().to_bytes(), bytes);
        }
    }

    #[test]
    fn fields_survive_the_round_trip() {
        let read = Snapshot::from_bytes(&snapshot(true).to_bytes()).unwrap();
        assert_eq!(read.vcpus[1].regs.rip, 0x10_0002);
        assert_eq!(read.vcpus[1].msrs[0].data, 2);
        assert_eq!(read.vcpus[0].fpu.xmm[3][5], 7);
        assert!(read.vm.pit.is_some());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = snapshot(true).to_bytes();
        for len in (0..bytes.len()).step_by(61).chain([bytes.len() - 1]) {
            assert!(Snapshot::from_bytes(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn a_flipped_byte_is_refused_by_the_checksum() {
        let mut bytes = snapshot(false).to_bytes();
        bytes[3000] ^= 0x40;
        assert!(matches!(
            Snapshot::from_bytes(&bytes),
            Err(SnapshotError::BadChecksum { .. })
        ));
    }

    #[test]
    fn another_version_is_refused() {
        let mut bytes = snapshot(false).to_bytes();
        bytes[8] = 2;
        assert_eq!(
            Snapshot::from_bytes(&reseal(bytes)).unwrap_err(),
            SnapshotError::UnsupportedVersion {
                found: 2,
                supported: SNAPSHOT_VERSION
            }
        );
    }

    #[test]
    fn a_vcpu_count_above_the_cap_is_refused_before_any_allocation() {
        let mut bytes = snapshot(false).to_bytes();
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Snapshot::from_bytes(&reseal(bytes)),
            Err(SnapshotError::CountTooLarge { field: "vCPU", .. })
        ));
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut bytes = snapshot(false).to_bytes();
        bytes[12] |= 0x80;
        assert_eq!(
            Snapshot::from_bytes(&reseal(bytes)).unwrap_err(),
            SnapshotError::UnknownFlags(0x80)
        );
    }

    #[test]
    fn bytes_after_the_last_vcpu_are_refused() {
        let mut bytes = snapshot(false).to_bytes();
        bytes.splice(bytes.len() - 4..bytes.len() - 4, [0u8; 3]);
        assert_eq!(
            Snapshot::from_bytes(&reseal(bytes)).unwrap_err(),
            SnapshotError::TrailingBytes(3)
        );
    }
}
