//! MSI-X: where a model puts its table and PBA ([`MsixSpec`]), and the table itself
//! ([`MsixTable`]), which the device keeps as trapped registers inside that BAR.
//!
//! ```text
//! table entry (16 bytes, little endian)
//!  0 message address low   (bits 1..0 read as zero)
//!  4 message address high
//!  8 message data
//! 12 vector control        (bit 0 mask; reset 1, masked)
//! PBA: one bit per vector, read as zero (the device keeps no pending bits)
//! ```
//!
//! The device stores what the client writes and returns it, but does not read the table to
//! deliver: a vector is signalled through its eventfd, and its client (the VMM, which
//! emulates the table for the guest, as QEMU's vfio-pci does) routes or holds it back by the
//! mask it sees. The table is device state: it migrates with the configuration space.

/// Bytes of one table entry.
pub const MSIX_ENTRY_SIZE: u32 = 16;
/// Most vectors a device may offer (the table size field is 11 bits).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Vector control: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// Where a model's MSI-X table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixSpec {
    /// Vectors, 1..=[`MSIX_MAX_VECTORS`].
    pub vectors: u16,
    /// BAR of the table.
    pub table_bar: usize,
    /// Offset of the table in its BAR, 8-byte aligned.
    pub table_offset: u32,
    /// BAR of the pending bit array.
    pub pba_bar: usize,
    /// Offset of the PBA in its BAR, 8-byte aligned.
    pub pba_offset: u32,
}

impl MsixSpec {
    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * u64::from(MSIX_ENTRY_SIZE)
    }

    /// Bytes of the PBA: one bit per vector, in whole quadwords.
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// The spec can be put in a configuration space: vectors in range, BARs 0..=5, offsets
    /// 8-byte aligned.
    pub fn is_valid(&self) -> bool {
        (1..=MSIX_MAX_VECTORS).contains(&self.vectors)
            && self.table_bar < 6
            && self.pba_bar < 6
            && self.table_offset.is_multiple_of(8)
            && self.pba_offset.is_multiple_of(8)
    }
}

/// What an access to a BAR meant for MSI-X.
#[derive(Debug, PartialEq, Eq)]
pub enum MsixAccess {
    /// The access is not in the table or the PBA: the model handles it.
    NotMsix,
    /// Handled.
    Done,
    /// It touches the table or PBA but is not a 4- or 8-byte access inside it, naturally
    /// aligned (EINVAL).
    Invalid,
}

/// The MSI-X table a device keeps: one entry per vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixTable {
    spec: MsixSpec,
    /// `[address low, address high, data, vector control]` per vector.
    entries: Vec<[u32; 4]>,
}

impl MsixTable {
    /// A table at reset: every entry zero and masked.
    pub fn new(spec: MsixSpec) -> Self {
        MsixTable {
            spec,
            entries: vec![[0, 0, 0, VECTOR_MASKED]; usize::from(spec.vectors)],
        }
    }

    /// Where the table lives.
    pub fn spec(&self) -> MsixSpec {
        self.spec
    }

    /// Returns every entry to its reset value.
    pub fn reset(&mut self) {
        self.entries.fill([0, 0, 0, VECTOR_MASKED]);
    }

    /// A read of `buf` at `offset` of BAR `bar`.
    pub fn read(&self, bar: usize, offset: u64, buf: &mut [u8]) -> MsixAccess {
        if let Some(at) = self.in_table(bar, offset, buf.len()) {
            let Some(words) = words(at, buf.len(), self.spec.table_size()) else {
                return MsixAccess::Invalid;
            };
            let mut v = [0u8; 8];
            for (i, (entry, word)) in words.enumerate() {
                let value = self.entries.get(entry).map_or(0, |e| e[word]);
                v[4 * i..4 * i + 4].copy_from_slice(&value.to_le_bytes());
            }
            buf.copy_from_slice(&v[..buf.len()]);
            return MsixAccess::Done;
        }
        if let Some(at) = self.in_pba(bar, offset, buf.len()) {
            if !aligned(at, buf.len()) {
                return MsixAccess::Invalid;
            }
            buf.fill(0);
            return MsixAccess::Done;
        }
        MsixAccess::NotMsix
    }

    /// A write of `data` at `offset` of BAR `bar`. Writes to the PBA are ignored.
    pub fn write(&mut self, bar: usize, offset: u64, data: &[u8]) -> MsixAccess {
        if let Some(at) = self.in_table(bar, offset, data.len()) {
            let Some(words) = words(at, data.len(), self.spec.table_size()) else {
                return MsixAccess::Invalid;
            };
            for (i, (entry, word)) in words.enumerate() {
                let mut b = [0u8; 4];
                b.copy_from_slice(&data[4 * i..4 * i + 4]);
                if let Some(e) = self.entries.get_mut(entry) {
                    e[word] = sanitize(word, u32::from_le_bytes(b));
                }
            }
            return MsixAccess::Done;
        }
        if let Some(at) = self.in_pba(bar, offset, data.len()) {
            return if aligned(at, data.len()) {
                MsixAccess::Done
            } else {
                MsixAccess::Invalid
            };
        }
        MsixAccess::NotMsix
    }

    /// Bytes of [`MsixTable::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.entries.len() * MSIX_ENTRY_SIZE as usize
    }

    /// The table as bytes, for migration and snapshots: each entry's four words, little
    /// endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for e in &self.entries {
            for w in e {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }

    /// Restores a table saved by [`MsixTable::encode`] on a device with the same spec. The
    /// length must be exactly this table's; reserved bits are dropped. False (and the table
    /// unchanged) otherwise.
    pub fn restore(&mut self, saved: &[u8]) -> bool {
        if saved.len() != self.encoded_len() {
            return false;
        }
        for (e, raw) in self
            .entries
            .iter_mut()
            .zip(saved.chunks_exact(MSIX_ENTRY_SIZE as usize))
        {
            for (word, (w, b)) in e.iter_mut().zip(raw.chunks_exact(4)).enumerate() {
                *w = sanitize(word, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        true
    }

    /// The offset in the table of an access of `len` bytes at `offset` of `bar` that
    /// overlaps it.
    fn in_table(&self, bar: usize, offset: u64, len: usize) -> Option<u64> {
        overlap(
            bar == self.spec.table_bar,
            offset,
            len,
            u64::from(self.spec.table_offset),
            self.spec.table_size(),
        )
    }

    fn in_pba(&self, bar: usize, offset: u64, len: usize) -> Option<u64> {
        overlap(
            bar == self.spec.pba_bar,
            offset,
            len,
            u64::from(self.spec.pba_offset),
            self.spec.pba_size(),
        )
    }
}

/// The `(entry, word)` pairs an aligned 4- or 8-byte access at offset `at` of a table of
/// `size` bytes covers; `None` for any other access.
fn words(at: u64, len: usize, size: u64) -> Option<impl Iterator<Item = (usize, usize)>> {
    if !aligned(at, len) || at.checked_add(len as u64)? > size {
        return None;
    }
    let first = usize::try_from(at / 4).ok()?;
    Some((first..first + len / 4).map(|w| (w / 4, w % 4)))
}

/// Where `[offset, offset + len)` of a BAR starts relative to `[start, start + size)` of
/// the same BAR, if the two overlap; an access that starts before it gets an offset no
/// aligned access has (`u64::MAX`), so that it is refused rather than given to the model.
fn overlap(same_bar: bool, offset: u64, len: usize, start: u64, size: u64) -> Option<u64> {
    let end = offset.checked_add(len as u64)?;
    if !same_bar || offset >= start.saturating_add(size) || end <= start {
        return None;
    }
    Some(offset.checked_sub(start).unwrap_or(u64::MAX))
}

fn aligned(at: u64, len: usize) -> bool {
    (len == 4 || len == 8) && at.is_multiple_of(len as u64)
}

/// A table word as stored: the address is dword aligned, only the mask bit of vector control
/// exists.
fn sanitize(word: usize, v: u32) -> u32 {
    match word {
        0 => v & !3,
        3 => v & VECTOR_MASKED,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: MsixSpec = MsixSpec {
        vectors: 2,
        table_bar: 0,
        table_offset: 0x800,
        pba_bar: 0,
        pba_offset: 0xc00,
    };

    fn read_u32(t: &MsixTable, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        assert_eq!(t.read(0, offset, &mut b), MsixAccess::Done);
        u32::from_le_bytes(b)
    }

    #[test]
    fn entries_start_masked() {
        let t = MsixTable::new(SPEC);
        assert_eq!(read_u32(&t, 0x80c), 1);
        assert_eq!(read_u32(&t, 0x81c), 1);
    }

    #[test]
    fn a_written_entry_reads_back() {
        let mut t = MsixTable::new(SPEC);
        assert_eq!(
            t.write(0, 0x810, &0x1_fee0_0000u64.to_le_bytes()),
            MsixAccess::Done
        );
        assert_eq!(t.write(0, 0x818, &0x42u32.to_le_bytes()), MsixAccess::Done);
        assert_eq!(read_u32(&t, 0x810), 0xfee0_0000);
        assert_eq!(read_u32(&t, 0x814), 1);
        assert_eq!(read_u32(&t, 0x818), 0x42);
    }

    #[test]
    fn the_pba_reads_zero_and_ignores_writes() {
        let mut t = MsixTable::new(SPEC);
        assert_eq!(t.write(0, 0xc00, &[0xff; 8]), MsixAccess::Done);
        let mut b = [0xffu8; 8];
        assert_eq!(t.read(0, 0xc00, &mut b), MsixAccess::Done);
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn accesses_elsewhere_are_the_models() {
        let t = MsixTable::new(SPEC);
        assert_eq!(t.read(0, 0x7fc, &mut [0u8; 4]), MsixAccess::NotMsix);
        assert_eq!(t.read(0, 0x820, &mut [0u8; 4]), MsixAccess::NotMsix);
        assert_eq!(t.read(2, 0x800, &mut [0u8; 4]), MsixAccess::NotMsix);
    }

    #[test]
    fn unaligned_or_straddling_accesses_are_invalid() {
        let mut t = MsixTable::new(SPEC);
        assert_eq!(t.read(0, 0x802, &mut [0u8; 4]), MsixAccess::Invalid);
        assert_eq!(t.read(0, 0x800, &mut [0u8; 2]), MsixAccess::Invalid);
        assert_eq!(t.write(0, 0x7fc, &[0u8; 8]), MsixAccess::Invalid);
        assert_eq!(t.read(0, 0x81c, &mut [0u8; 8]), MsixAccess::Invalid);
        assert_eq!(t.read(0, u64::MAX - 2, &mut [0u8; 4]), MsixAccess::NotMsix);
    }

    #[test]
    fn restore_takes_exactly_one_table() {
        let mut a = MsixTable::new(SPEC);
        a.write(0, 0x80c, &0u32.to_le_bytes());
        let mut saved = Vec::new();
        a.encode(&mut saved);
        let mut b = MsixTable::new(SPEC);
        assert!(!b.restore(&saved[1..]));
        assert!(b.restore(&saved));
        assert_eq!(a, b);
    }
}
