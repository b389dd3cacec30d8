//! One device's side of a migration, over its vfio-user client: the v1 migration region's
//! register protocol and the device's dirty page tracking.

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{
    DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, DEVICE_STATE_OFFSET, PENDING_BYTES_OFFSET,
};
use vfmig_abi::uapi::{VFIO_REGION_SUBTYPE_MIGRATION, VFIO_REGION_TYPE_MIGRATION};
use vfmig_device::MIGRATION_REGION_INDEX;
use vfmig_memory::Iova;
use vfmig_vfio_user::{Client, ClientError};
use vfmig_vmm::AttachedDevice;

use super::error::MigrationError;

/// The largest chunk a device may hand over; a bigger `data_size` is refused.
pub const MAX_CHUNK: u64 = 16 << 20;

/// A device being migrated.
pub struct DeviceLink<'a> {
    device: &'a AttachedDevice,
    /// Saving: bytes of chunks read so far.
    pub(crate) bytes: u64,
}

impl<'a> DeviceLink<'a> {
    /// Checks that `device` offers the v1 migration region, so a migration that cannot finish
    /// never starts.
    pub fn new(device: &'a AttachedDevice) -> Result<Self, MigrationError> {
        let link = DeviceLink { device, bytes: 0 };
        let region = link
            .client()
            .region_info(MIGRATION_REGION_INDEX)
            .map_err(|e| link.error("find its migration region", e))?;
        if region.region_type != Some((VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_SUBTYPE_MIGRATION)) {
            return Err(MigrationError::NotMigratable {
                device: device.id().to_string(),
            });
        }
        Ok(link)
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        self.device.id()
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
        self.client()
            .region_read(MIGRATION_REGION_INDEX, offset, &mut b)
            .map_err(|e| self.error(what, e))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Moves the device to `state`, keeping the register's reserved bits (read-modify-write).
    pub fn set_state(&self, state: DeviceState) -> Result<(), MigrationError> {
        let mut b = [0u8; 4];
        let c = self.client();
        c.region_read(MIGRATION_REGION_INDEX, DEVICE_STATE_OFFSET, &mut b)
            .map_err(|e| self.error("read device_state", e))?;
        let new = DeviceState::from_raw(u32::from_le_bytes(b)).with_state(state);
        c.region_write(
            MIGRATION_REGION_INDEX,
            DEVICE_STATE_OFFSET,
            &new.raw().to_le_bytes(),
        )
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
        self.client()
            .region_read(MIGRATION_REGION_INDEX, offset, &mut data)
            .map_err(|e| self.error("read migration data", e))?;
        self.bytes += size;
        Ok(data)
    }

    /// Hands one chunk to a resuming device: `data_offset`, the data, `data_size`.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), MigrationError> {
        let offset = self.read_u64(DATA_OFFSET_OFFSET, "read data_offset")?;
        let c = self.client();
        c.region_write(MIGRATION_REGION_INDEX, offset, chunk)
            .map_err(|e| self.error("write migration data", e))?;
        c.region_write(
            MIGRATION_REGION_INDEX,
            DATA_SIZE_OFFSET,
            &(chunk.len() as u64).to_le_bytes(),
        )
        .map_err(|e| self.error("write data_size", e))?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// DIRTY_PAGES START.
    pub fn start_dirty(&self) -> Result<(), MigrationError> {
        self.client()
            .dirty_pages_start()
            .map_err(|e| self.error("start dirty page tracking", e))
    }

    /// DIRTY_PAGES STOP.
    pub fn stop_dirty(&self) -> Result<(), MigrationError> {
        self.client()
            .dirty_pages_stop()
            .map_err(|e| self.error("stop dirty page tracking", e))
    }

    /// The pages of `[gpa, gpa + size)` the device dirtied since the last call (bit 0 = `gpa`).
    pub fn dirty(&self, gpa: u64, size: u64) -> Result<Vec<u64>, MigrationError> {
        self.client()
            .dirty_pages_get(Iova(gpa), size)
            .map_err(|e| self.error("get its dirty bitmap", e))
    }
}
