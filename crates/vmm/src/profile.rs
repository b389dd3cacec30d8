//! What the VMM learns of a device by asking it, and all it needs to migrate it: a
//! [`DeviceProfile`], probed once when the device is attached.
//!
//! A device is known by its answers, never by who wrote it or how it was started, as a
//! kernel VMM knows a vendor driver:
//!
//! * its identity: the vendor and device ID of its configuration space (`pci:VVVV:DDDD`);
//! * its v1 migration region: the device-specific region (index from
//!   `VFIO_PCI_NUM_REGIONS` on, as QEMU searches) whose region-type capability is type 3
//!   (`VFIO_REGION_TYPE_MIGRATION`), subtype 1. None: the device cannot migrate, and blocks
//!   the migration of its VM;
//! * its state digest region, if it has one (vfmig's own vendor type; a device vfmig did not
//!   write has none, and is then verified only through what it does);
//! * whether it tracks the pages it dirties: the `migration` capability in its VERSION. A
//!   device without it is counted as dirtying every page it has mapped at every sync.
//!
//! The migration region is read and written through [`MigrationData`]: its data straight
//! from the region's sparse-mmap area where the device offers one, the rest by
//! REGION_READ/WRITE, each answered within the device's migration deadline
//! ([`crate::DeviceTimeouts::migration`]). Its bytes are opaque to the VMM.

use std::time::Duration;

use vfmig_abi::uapi::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_REGION_SUBTYPE_MIGRATION,
    VFIO_REGION_TYPE_MIGRATION,
};
use vfmig_device::{DIGEST_REGION_SUBTYPE, DIGEST_REGION_TYPE};
use vfmig_vfio_user::client::{MmapArea, Region};
use vfmig_vfio_user::{Client, ClientError};

/// The most regions probed: a device claiming more is looked at only up to here (the
/// device-specific regions a VMM knows of come right after the nine PCI ones).
pub const MAX_PROBED_REGIONS: u32 = 64;

/// What a device is to the VMM, from its own answers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceProfile {
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID.
    pub device: u16,
    /// Index of the v1 migration region, if the device has one.
    pub migration_region: Option<u32>,
    /// Whether the migration region's data area is mapped here (else: trapped accesses).
    pub migration_data_mapped: bool,
    /// Index of the state digest region, if the device has one.
    pub digest_region: Option<u32>,
    /// The device offers dirty page tracking (the `migration` capability in VERSION).
    pub dirty_tracking: bool,
}

impl DeviceProfile {
    /// `pci:VVVV:DDDD`: what a destination's device must match, with its id.
    pub fn name(&self) -> String {
        format!("pci:{:04x}:{:04x}", self.vendor, self.device)
    }

    /// True for the device `(vendor, device)`.
    pub fn is(&self, vendor: u16, device: u16) -> bool {
        (self.vendor, self.device) == (vendor, device)
    }
}

/// The migration region, read and written through the sparse-mmap areas the device offered
/// (mapped when it was attached) where an access lies inside one, and by trapped
/// REGION_READ/WRITE otherwise, each awaited for at most the migration deadline.
#[derive(Debug)]
pub struct MigrationData {
    region: u32,
    /// `(offset in the region, mapping)`.
    areas: Vec<(u64, MmapArea)>,
    /// How long a trapped access may take.
    timeout: Duration,
}

impl MigrationData {
    /// The migration region's index.
    pub fn region(&self) -> u32 {
        self.region
    }

    /// The area holding `[offset, offset + len)`, with the offset inside it.
    fn area(&self, offset: u64, len: usize) -> Option<(&MmapArea, usize)> {
        let end = offset.checked_add(len as u64)?;
        self.areas.iter().find_map(|(start, area)| {
            let inside = offset >= *start && end <= start.checked_add(area.len() as u64)?;
            inside
                .then(|| usize::try_from(offset - start).ok())
                .flatten()
                .map(|at| (area, at))
        })
    }

    /// Reads `buf.len()` bytes at `offset` of the region.
    pub fn read(&self, client: &Client, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        match self.area(offset, buf.len()) {
            Some((area, at)) => area.read_bytes(at, buf),
            None => client.region_read_within(self.region, offset, buf, self.timeout),
        }
    }

    /// Writes `data` at `offset` of the region.
    pub fn write(&self, client: &Client, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        match self.area(offset, data.len()) {
            Some((area, at)) => area.write_bytes(at, data),
            None => client.region_write_within(self.region, offset, data, self.timeout),
        }
    }
}

/// Why a device could not be probed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ProbeError {
    /// What was asked.
    pub what: &'static str,
    /// The error, with its errno.
    pub source: ClientError,
}

fn probe_error(what: &'static str) -> impl FnOnce(ClientError) -> ProbeError {
    move |source| ProbeError { what, source }
}

/// Maps the sparse areas of the migration region; an area that cannot be mapped (among them
/// one in a file the device could shrink under the mapping: see `MmapArea`) is left to
/// trapped accesses (logged), as is the whole region without an fd.
fn map_areas(region: &Region) -> Vec<(u64, MmapArea)> {
    (0..region.sparse_areas.len())
        .filter_map(|i| {
            let offset = region.sparse_areas.get(i)?.offset;
            match region.mmap_area(i) {
                Ok(area) => Some((offset, area)),
                Err(e) => {
                    tracing::warn!(region = region.index, area = i, error = %e,
                        "migration data area not mapped: trapped accesses instead");
                    None
                }
            }
        })
        .collect()
}

/// Asks `client`'s device what it is: identity, migration and digest regions, dirty
/// tracking. A region the device refuses to describe is passed over; a failed transport is
/// an error. The migration region's trapped accesses will wait `migration_timeout` for
/// their replies.
pub fn probe(
    client: &Client,
    migration_timeout: Duration,
) -> Result<(DeviceProfile, Option<MigrationData>), ProbeError> {
    let info = client
        .device_info()
        .map_err(probe_error("DEVICE_GET_INFO"))?;
    let mut id = [0u8; 4];
    client
        .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut id)
        .map_err(probe_error("read the vendor and device ID"))?;
    let mut migration: Option<MigrationData> = None;
    let mut digest_region = None;
    for index in VFIO_PCI_NUM_REGIONS..info.num_regions.min(MAX_PROBED_REGIONS) {
        let region = match client.region_info(index) {
            Ok(region) => region,
            Err(e @ ClientError::Remote { .. }) => {
                tracing::debug!(index, error = %e, "region not described; passed over");
                continue;
            }
            Err(e) => return Err(probe_error("DEVICE_GET_REGION_INFO")(e)),
        };
        match region.region_type {
            Some((VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_SUBTYPE_MIGRATION))
                if migration.is_none() =>
            {
                migration = Some(MigrationData {
                    region: index,
                    areas: map_areas(&region),
                    timeout: migration_timeout,
                });
            }
            Some((DIGEST_REGION_TYPE, DIGEST_REGION_SUBTYPE)) if digest_region.is_none() => {
                digest_region = Some(index);
            }
            _ => {}
        }
    }
    let profile = DeviceProfile {
        vendor: u16::from_le_bytes([id[0], id[1]]),
        device: u16::from_le_bytes([id[2], id[3]]),
        migration_region: migration.as_ref().map(MigrationData::region),
        migration_data_mapped: migration.as_ref().is_some_and(|m| !m.areas.is_empty()),
        digest_region,
        dirty_tracking: client.server_version().capabilities.migration.is_some(),
    };
    Ok((profile, migration))
}

#[cfg(test)]
mod tests {
    use vfmig_device::server::ServeOptions;

    use super::MigrationData;
    use crate::test_support::{served, served_with};

    #[test]
    fn an_mtty_is_profiled_by_its_pci_id_with_both_regions_and_dirty_tracking() {
        let (dev, socket) = served("mtty");
        let p = dev.profile();
        assert_eq!(p.name(), "pci:4348:3253");
        assert_eq!(p.migration_region, Some(9));
        assert_eq!(p.digest_region, Some(10));
        assert!(p.dirty_tracking);
        let _ = std::fs::remove_file(socket);
    }

    #[test]
    fn the_migration_data_area_is_mapped_where_the_device_offers_it() {
        let (dev, socket) = served("dma-engine");
        assert!(dev.profile().migration_data_mapped);
        let _ = std::fs::remove_file(socket);
    }

    #[test]
    fn a_chunk_reads_the_same_through_the_mapped_area_and_trapped() {
        use vfmig_abi::DeviceState;
        use vfmig_abi::migration_info::{
            DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, DEVICE_STATE_OFFSET, PENDING_BYTES_OFFSET,
        };

        let (dev, socket) = served("mtty");
        let (c, data) = (dev.client(), dev.migration_data().unwrap());
        let reg = |offset: u64| {
            let mut b = [0u8; 8];
            c.region_read(data.region(), offset, &mut b).unwrap();
            u64::from_le_bytes(b)
        };
        let stop_copy = DeviceState::STOP_COPY.raw().to_le_bytes();
        c.region_write(data.region(), DEVICE_STATE_OFFSET, &stop_copy)
            .unwrap();
        assert!(reg(PENDING_BYTES_OFFSET) > 0);
        let (offset, size) = (reg(DATA_OFFSET_OFFSET), reg(DATA_SIZE_OFFSET));
        assert!(size > 0);
        let mut mapped = vec![0u8; usize::try_from(size).unwrap()];
        data.read(c, offset, &mut mapped).unwrap();
        let trapped_only = MigrationData {
            region: data.region(),
            areas: Vec::new(),
            timeout: data.timeout,
        };
        let mut trapped = vec![0u8; mapped.len()];
        trapped_only.read(c, offset, &mut trapped).unwrap();
        assert!(data.area(offset, mapped.len()).is_some(), "not read mapped");
        assert_eq!(mapped, trapped);
        let _ = std::fs::remove_file(socket);
    }

    #[test]
    fn a_device_without_a_migration_region_has_none_in_its_profile() {
        let options = ServeOptions {
            migration: false,
            ..ServeOptions::default()
        };
        let (dev, socket) = served_with("mtty", options);
        let p = dev.profile();
        assert_eq!((p.migration_region, p.digest_region), (None, None));
        assert!(dev.migration_data().is_none());
        let _ = std::fs::remove_file(socket);
    }

    #[test]
    fn a_device_without_the_migration_capability_is_profiled_untracked() {
        let options = ServeOptions {
            dirty_tracking: false,
            ..ServeOptions::default()
        };
        let (dev, socket) = served_with("mtty", options);
        let p = dev.profile();
        assert!(!p.dirty_tracking);
        assert_eq!(p.migration_region, Some(9));
        let _ = std::fs::remove_file(socket);
    }
}
