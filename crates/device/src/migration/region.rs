//! The migration region's state machine: registers, the save and resume sequences, the data
//! section.

use std::io;
use std::os::fd::BorrowedFd;

use vfmig_abi::migration_info::Field;
use vfmig_abi::{DeviceState, StateKind};
use vfmig_memory::SharedMemory;

use super::error::AccessError;
use super::transitions::allowed;
use crate::migratable::Migratable;

/// Where the data section starts: the second page of the region, so it can be mmapped.
pub const DATA_OFFSET: u64 = 4096;

/// Default size of the data section: the largest chunk a device can hand over at once.
pub const DEFAULT_DATA_CAPACITY: usize = 1 << 20;

/// Where the region is in the save or resume sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No iteration under way: after a state change, or a consumed resume chunk.
    Idle,
    /// Saving: `pending_bytes` was read and is cached.
    Started { pending: u64 },
    /// Saving: `data_offset` was read; a chunk of `size` bytes is in the data section.
    Prepared { pending: u64, size: u64 },
    /// Resuming: `data_offset` was read; the client writes a chunk, then `data_size`.
    Receiving,
}

/// The v1 migration region of one device.
///
/// It does not own the device: every access takes the [`Migratable`] it drives, so a device
/// keeps its state and its region side by side.
pub struct MigrationRegion {
    state: DeviceState,
    phase: Phase,
    /// The whole region as a memfd; only the data section (from [`DATA_OFFSET`]) is used.
    memory: SharedMemory,
    capacity: u64,
    /// Where the device writes a chunk before it is copied to the shared data section.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for MigrationRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationRegion")
            .field("state", &self.state)
            .field("phase", &self.phase)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl MigrationRegion {
    /// A region with a data section of `capacity` bytes, the device RUNNING.
    pub fn new(capacity: usize) -> io::Result<Self> {
        let len = usize::try_from(DATA_OFFSET)
            .ok()
            .and_then(|d| d.checked_add(capacity))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(MigrationRegion {
            state: DeviceState::RUNNING,
            phase: Phase::Idle,
            memory: SharedMemory::new(c"vfmig-migration", len)?,
            capacity: capacity as u64,
            scratch: vec![0; capacity],
        })
    }

    /// The `device_state` register.
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// The named state (never invalid: the region only stores valid states or ERROR).
    pub fn kind(&self) -> StateKind {
        self.state.kind().unwrap_or(StateKind::Error)
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> u64 {
        DATA_OFFSET + self.capacity
    }

    /// Size of the data section.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The mmappable part as `(region offset, size)`: the data section.
    pub fn sparse_areas(&self) -> [(u64, u64); 1] {
        [(DATA_OFFSET, self.capacity)]
    }

    /// The memfd behind the region; region offset `o` is fd offset `o`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memory.fd()
    }

    /// DEVICE_RESET: the register returns to RUNNING (reserved bits kept), any iteration is
    /// dropped. The device resets its own state.
    pub fn reset(&mut self) {
        self.state = self.state.with_state(DeviceState::RUNNING);
        self.phase = Phase::Idle;
    }

    /// A trapped read of `buf.len()` bytes at `offset`.
    pub fn read(
        &mut self,
        dev: &mut dyn Migratable,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), AccessError> {
        if offset >= DATA_OFFSET {
            return self.read_data(offset, buf);
        }
        let field = Field::at(offset, buf.len()).ok_or(AccessError::NotAField {
            offset,
            len: buf.len(),
        })?;
        match field {
            Field::DeviceState => buf.copy_from_slice(&self.state.raw().to_le_bytes()),
            Field::Reserved => buf.fill(0),
            Field::PendingBytes => buf.copy_from_slice(&self.read_pending(dev)?.to_le_bytes()),
            Field::DataOffset => buf.copy_from_slice(&self.read_data_offset(dev)?.to_le_bytes()),
            Field::DataSize => buf.copy_from_slice(&self.read_data_size()?.to_le_bytes()),
        }
        Ok(())
    }

    /// A trapped write of `data` at `offset`.
    pub fn write(
        &mut self,
        dev: &mut dyn Migratable,
        offset: u64,
        data: &[u8],
    ) -> Result<(), AccessError> {
        if offset >= DATA_OFFSET {
            return self.write_data(offset, data);
        }
        let field = Field::at(offset, data.len()).ok_or(AccessError::NotAField {
            offset,
            len: data.len(),
        })?;
        match field {
            Field::DeviceState => self.write_state(dev, le_u32(data)),
            Field::Reserved => Ok(()),
            Field::PendingBytes | Field::DataOffset => Err(AccessError::ReadOnly { field }),
            Field::DataSize => self.write_data_size(dev, le_u64(data)),
        }
    }

    fn out_of_sequence(&self, what: &'static str) -> AccessError {
        AccessError::OutOfSequence {
            what,
            state: self.state,
        }
    }

    fn write_state(&mut self, dev: &mut dyn Migratable, raw: u32) -> Result<(), AccessError> {
        let new = DeviceState::from_raw(raw);
        if self.state.is_error() {
            return Err(AccessError::InError);
        }
        let to = match new.kind() {
            Ok(to) if new.is_valid() => to,
            _ => return Err(AccessError::InvalidState(new)),
        };
        let from = self.kind();
        if from == to {
            return Ok(());
        }
        if !allowed(from, to) {
            return Err(AccessError::NotAllowed { from, to });
        }
        self.phase = Phase::Idle;
        match dev.set_state(from, to) {
            Ok(()) => {
                tracing::debug!(%from, %to, "device state");
                self.state = self.state.with_state(new);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%from, %to, error = %e, "transition failed: device in error state");
                self.state = self.state.set_error();
                Err(e.into())
            }
        }
    }

    fn read_pending(&mut self, dev: &mut dyn Migratable) -> Result<u64, AccessError> {
        if !self.state.is_saving() || self.state.is_error() {
            return Err(self.out_of_sequence("pending_bytes read"));
        }
        match self.phase {
            Phase::Started { pending } => Ok(pending),
            // Idle starts an iteration; Prepared acknowledges the chunk and starts the next.
            Phase::Idle | Phase::Prepared { .. } => {
                let pending = dev.pending_bytes()?;
                self.phase = Phase::Started { pending };
                Ok(pending)
            }
            Phase::Receiving => Err(self.out_of_sequence("pending_bytes read")),
        }
    }

    fn read_data_offset(&mut self, dev: &mut dyn Migratable) -> Result<u64, AccessError> {
        if self.state.is_error() {
            return Err(self.out_of_sequence("data_offset read"));
        }
        if self.state.is_resuming() {
            self.phase = Phase::Receiving;
            return Ok(DATA_OFFSET);
        }
        match self.phase {
            _ if !self.state.is_saving() => Err(self.out_of_sequence("data_offset read")),
            Phase::Prepared { .. } => Ok(DATA_OFFSET),
            Phase::Started { pending } => {
                let n = dev.save_chunk(&mut self.scratch)?;
                let chunk = self.scratch.get(..n).ok_or_else(|| {
                    AccessError::Memory(format!("device produced {n} bytes into {}", self.capacity))
                })?;
                self.memory
                    .write(DATA_OFFSET, chunk)
                    .map_err(|e| AccessError::Memory(e.to_string()))?;
                self.phase = Phase::Prepared {
                    pending,
                    size: n as u64,
                };
                Ok(DATA_OFFSET)
            }
            Phase::Idle | Phase::Receiving => {
                Err(self.out_of_sequence("data_offset read before pending_bytes"))
            }
        }
    }

    fn read_data_size(&self) -> Result<u64, AccessError> {
        match self.phase {
            Phase::Prepared { size, .. } if self.state.is_saving() => Ok(size),
            _ => Err(self.out_of_sequence("data_size read")),
        }
    }

    fn write_data_size(&mut self, dev: &mut dyn Migratable, size: u64) -> Result<(), AccessError> {
        if self.state.is_saving() && !self.state.is_error() {
            return Err(AccessError::ReadOnly {
                field: Field::DataSize,
            });
        }
        if self.phase != Phase::Receiving || !self.state.is_resuming() || self.state.is_error() {
            return Err(self.out_of_sequence("data_size write before data_offset read"));
        }
        if size > self.capacity {
            return Err(AccessError::ChunkTooLarge {
                size,
                capacity: self.capacity,
            });
        }
        let chunk = usize::try_from(size)
            .ok()
            .and_then(|n| self.scratch.get_mut(..n))
            .ok_or(AccessError::ChunkTooLarge {
                size,
                capacity: self.capacity,
            })?;
        self.memory
            .read(DATA_OFFSET, chunk)
            .map_err(|e| AccessError::Memory(e.to_string()))?;
        self.phase = Phase::Idle;
        if let Err(e) = dev.load_chunk(chunk) {
            tracing::warn!(error = %e, "loading a chunk failed: device in error state");
            self.state = self.state.set_error();
            return Err(e.into());
        }
        Ok(())
    }

    fn read_data(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let Phase::Prepared { size, .. } = self.phase else {
            return Err(self.out_of_sequence("data read before data_offset"));
        };
        let limit = DATA_OFFSET + size;
        let in_chunk = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= limit);
        if !in_chunk || !self.state.is_saving() {
            return Err(AccessError::OutsideData {
                offset,
                len: buf.len(),
                limit,
            });
        }
        self.memory
            .read(offset, buf)
            .map_err(|e| AccessError::Memory(e.to_string()))
    }

    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        if self.phase != Phase::Receiving || !self.state.is_resuming() {
            return Err(self.out_of_sequence("data write before data_offset"));
        }
        let limit = self.size();
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > limit)
        {
            return Err(AccessError::OutsideData {
                offset,
                len: data.len(),
                limit,
            });
        }
        self.memory
            .write(offset, data)
            .map_err(|e| AccessError::Memory(e.to_string()))
    }
}

/// A 4-byte field's value (the caller checked the width).
fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(data);
    u32::from_le_bytes(b)
}

/// An 8-byte field's value (the caller checked the width).
fn le_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(data);
    u64::from_le_bytes(b)
}
