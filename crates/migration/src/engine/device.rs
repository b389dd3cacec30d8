//! One device's side of a migration, over its vfio-user client: the v1 migration region's
//! register protocol and the device's dirty page tracking.
//!
//! Nothing here knows what the device is. The migration region is the one its
//! [`DeviceProfile`](vfmig_vmm::DeviceProfile) found by its region-type capability; its
//! registers are trapped accesses, its data goes through the sparse-mmap area where the
//! device offers one and by REGION_READ/WRITE otherwise, and the data is carried as opaque
//! bytes. A device that offers no dirty tracking, or refuses DIRTY_PAGES START, is
//! *untracked*: the sender counts every page it has mapped as dirty at every sync.
//!
//! Every access to the migration region goes through [`MigrationData`], trapped ones awaited
//! for the device's migration deadline (`DeviceTimeouts::migration`): a device that hangs
//! fails the migration with `ETIMEDOUT`, naming it, instead of stalling it.
//!
//! The dirty pages of a device are what its client reports ([`DeviceLink::dirty`]): its
//! server's bitmap of the memory mapped to it by fd, and, of memory it reaches only through
//! DMA_WRITE messages (`DmaPath::Messages`), the client's own record of the pages written,
//! for which no server is ever asked.

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{
    DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, DEVICE_STATE_OFFSET, PENDING_BYTES_OFFSET,
};
use vfmig_memory::Iova;
use vfmig_vfio_user::{Client, ClientError};
use vfmig_vmm::{AttachedDevice, MigrationData};

use super::error::MigrationError;

/// The largest chunk a device may hand over; a bigger `data_size` is refused.
pub const MAX_CHUNK: u64 = 16 << 20;

/// A device being migrated.
pub struct DeviceLink<'a> {
    device: &'a AttachedDevice,
    data: &'a MigrationData,
    /// The device reports the pages it dirties (see [`DeviceLink::start_dirty`]).
    tracked: bool,
    /// Saving: bytes of chunks read so far.
    pub(crate) bytes: u64,
}

impl<'a> DeviceLink<'a> {
    /// Checks that `device` offers the v1 migration region, so a migration that cannot finish
    /// never starts.
    pub fn new(device: &'a AttachedDevice) -> Result<Self, MigrationError> {
        let data = device
            .migration_data()
            .ok_or_else(|| MigrationError::NotMigratable {
                device: device.id().to_string(),
                profile: device.profile().name(),
            })?;
        Ok(DeviceLink {
            device,
            data,
            tracked: device.profile().dirty_tracking,
            bytes: 0,
        })
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        self.device.id()
    }

    /// The device reports the pages it dirties; false: every page it has mapped counts as
    /// dirty at every sync.
    pub fn tracked(&self) -> bool {
        self.tracked
    }

    fn client(&self) -> &Client {
        self.device.client()
    }

    fn error(&self, what: &'static str, source: ClientError) -> MigrationError {
        MigrationError::Device {
            device: self.id().to_string(),
            what,
            error: Box::new(source),
        }
    }

    fn read_u64(&self, offset: u64, what: &'static str) -> Result<u64, MigrationError> {
        let mut b = [0u8; 8];
        self.data
            .read(self.client(), offset, &mut b)
            .map_err(|e| self.error(what, e))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Moves the device to `state`, keeping the register's reserved bits (read-modify-write).
    pub fn set_state(&self, state: DeviceState) -> Result<(), MigrationError> {
        let mut b = [0u8; 4];
        let (c, data) = (self.client(), self.data);
        data.read(c, DEVICE_STATE_OFFSET, &mut b)
            .map_err(|e| self.error("read device_state", e))?;
        let new = DeviceState::from_raw(u32::from_le_bytes(b)).with_state(state);
        data.write(c, DEVICE_STATE_OFFSET, &new.raw().to_le_bytes())
            .map_err(|e| self.error("write device_state", e))
    }

    /// `pending_bytes`: starts an iteration, or acknowledges the last chunk.
    pub fn pending(&self) -> Result<u64, MigrationError> {
        self.read_u64(PENDING_BYTES_OFFSET, "read pending_bytes")
    }

    /// The next chunk (`data_offset`, `data_size`, the data), after a non-zero `pending`.
    pub fn read_chunk(&mut self) -> Result<Vec<u8>, MigrationError> {
        let offset = self.read_u64(DATA_OFFSET_OFFSET, "read data_offset")?;
        let size = self.read_u64(DATA_SIZE_OFFSET, "read data_size")?;
        if size > MAX_CHUNK {
            return Err(MigrationError::ChunkTooLarge {
                device: self.id().to_string(),
                size,
            });
        }
        let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
        self.data
            .read(self.client(), offset, &mut data)
            .map_err(|e| self.error("read migration data", e))?;
        self.bytes += size;
        Ok(data)
    }

    /// Hands one chunk to a resuming device: `data_offset`, the data, `data_size`.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), MigrationError> {
        let offset = self.read_u64(DATA_OFFSET_OFFSET, "read data_offset")?;
        self.data
            .write(self.client(), offset, chunk)
            .map_err(|e| self.error("write migration data", e))?;
        self.data
            .write(
                self.client(),
                DATA_SIZE_OFFSET,
                &(chunk.len() as u64).to_le_bytes(),
            )
            .map_err(|e| self.error("write data_size", e))?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// DIRTY_PAGES START, for a device that offers tracking. A device that refuses it (an
    /// error reply) is untracked from now on, as one that never offered it: QEMU's rule.
    /// Only a failed transport is an error.
    pub fn start_dirty(&mut self) -> Result<(), MigrationError> {
        if !self.tracked {
            return Ok(());
        }
        match self.client().dirty_pages_start() {
            Ok(()) => Ok(()),
            Err(e @ ClientError::Remote { .. }) => {
                tracing::warn!(device = self.id(), error = %e,
                    "DIRTY_PAGES refused: every page it has mapped counts as dirty");
                self.tracked = false;
                Ok(())
            }
            Err(e) => Err(self.error("start dirty page tracking", e)),
        }
    }

    /// DIRTY_PAGES STOP, for a tracked device.
    pub fn stop_dirty(&self) -> Result<(), MigrationError> {
        if !self.tracked {
            return Ok(());
        }
        self.client()
            .dirty_pages_stop()
            .map_err(|e| self.error("stop dirty page tracking", e))
    }

    /// The pages of `[gpa, gpa + size)` the device dirtied since the last call (bit 0 = `gpa`):
    /// its server's bits of what is mapped to it by fd, the client's record of what it wrote
    /// by DMA_WRITE into what is not (see the module docs).
    pub fn dirty(&self, gpa: u64, size: u64) -> Result<Vec<u64>, MigrationError> {
        self.client()
            .dirty_pages_get(Iova(gpa), size)
            .map_err(|e| self.error("get its dirty bitmap", e))
    }
}
