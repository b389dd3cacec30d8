//! The PCI device around a model: region layout, the stopped states, reset, config migration.
#![allow(clippy::cast_possible_truncation)]

use vfmig_abi::DeviceState;
use vfmig_abi::uapi::{VFIO_REGION_SUBTYPE_MIGRATION, VFIO_REGION_TYPE_MIGRATION};
use vfmig_device::devices::mtty::Mtty;
use vfmig_device::pci::PciIdentity;
use vfmig_device::{
    Bar, DeviceContext, DeviceError, DeviceModel, MIGRATION_REGION_INDEX, Migratable, PciDevice,
};
use vfmig_vfio_user::Errno;
use vfmig_vfio_user::message::Command;
use vfmig_vfio_user::server::Backend;

fn set_state(dev: &mut PciDevice<Mtty>, s: DeviceState) -> Result<(), Errno> {
    dev.region_write(MIGRATION_REGION_INDEX, 0, &s.raw().to_le_bytes())
}

/// A device that cannot migrate.
struct Plain;
impl DeviceModel for Plain {
    fn identity(&self) -> PciIdentity {
        PciIdentity {
            vendor: 1,
            device: 2,
            class: 0,
            revision: 0,
        }
    }
    fn bars(&self) -> Vec<Bar> {
        Vec::new()
    }
    fn bar_read(
        &mut self,
        _: usize,
        _: u64,
        _: &mut [u8],
        _: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::invalid("no BARs"))
    }
    fn bar_write(
        &mut self,
        _: usize,
        _: u64,
        _: &[u8],
        _: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::invalid("no BARs"))
    }
    fn reset(&mut self) {}
    fn migratable(&mut self) -> Option<&mut dyn Migratable> {
        None
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
}

#[test]
fn a_migratable_device_has_the_migration_region_at_9_and_the_digest_at_10() {
    let dev = PciDevice::new(Mtty::new()).unwrap();
    assert_eq!(dev.device_info().num_regions, 11);
    let region = dev.region_info(MIGRATION_REGION_INDEX).unwrap();
    assert_eq!(
        region.region_type,
        Some((VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_SUBTYPE_MIGRATION))
    );
    let mmap = region.mmap.expect("the data section is mmappable");
    assert_eq!(mmap.areas[0].offset, 4096);
    assert!(dev.migration_capable());
}

#[test]
fn a_device_that_cannot_migrate_offers_no_migration_region() {
    let dev = PciDevice::new(Plain).unwrap();
    assert_eq!(dev.device_info().num_regions, 9);
    assert!(dev.region_info(MIGRATION_REGION_INDEX).is_err());
    assert!(!dev.migration_capable());
}

#[test]
fn a_migratable_model_served_without_migration_offers_no_migration_region() {
    let dev = PciDevice::new(Mtty::new()).unwrap().without_migration();
    assert_eq!(dev.device_info().num_regions, 9);
    assert!(dev.region_info(MIGRATION_REGION_INDEX).is_err());
    assert!(!dev.migration_capable());
}

#[test]
fn a_device_without_dirty_tracking_keeps_its_migration_region_but_not_the_capability() {
    let dev = PciDevice::new(Mtty::new())
        .unwrap()
        .without_dirty_tracking();
    let region = dev.region_info(MIGRATION_REGION_INDEX).unwrap();
    assert_eq!(
        region.region_type,
        Some((VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_SUBTYPE_MIGRATION))
    );
    assert!(!dev.migration_capable());
}

#[test]
fn bar_accesses_are_refused_in_stop_copy() {
    let mut dev = PciDevice::new(Mtty::new()).unwrap();
    set_state(&mut dev, DeviceState::STOP_COPY).unwrap();
    assert_eq!(dev.region_write(0, 0, &[1]), Err(Errno::EINVAL));
}

#[test]
fn config_space_stays_accessible_when_stopped() {
    let mut dev = PciDevice::new(Mtty::new()).unwrap();
    set_state(&mut dev, DeviceState::STOP).unwrap();
    let mut b = [0u8; 2];
    dev.region_read(7, 0, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0x4348);
}

#[test]
fn dma_map_and_unmap_are_refused_in_stop_and_stop_copy() {
    let mut dev = PciDevice::new(Mtty::new()).unwrap();
    assert!(dev.check_command(Command::DmaMap).is_ok());
    for s in [DeviceState::STOP_COPY, DeviceState::STOP] {
        set_state(&mut dev, s).unwrap();
        assert_eq!(
            dev.check_command(Command::DmaMap),
            Err(Errno::EINVAL),
            "{s}"
        );
        assert_eq!(
            dev.check_command(Command::DmaUnmap),
            Err(Errno::EINVAL),
            "{s}"
        );
        assert!(dev.check_command(Command::RegionRead).is_ok());
    }
}

#[test]
fn reset_leaves_the_error_state_and_resets_the_model() {
    let mut dev = PciDevice::new(Mtty::new()).unwrap();
    dev.region_write(0, 7, &[0x42]).unwrap();
    set_state(&mut dev, DeviceState::RESUMING).unwrap();
    // A corrupt chunk puts the device in the error state.
    let mut off = [0u8; 8];
    dev.region_read(MIGRATION_REGION_INDEX, 16, &mut off)
        .unwrap();
    dev.region_write(MIGRATION_REGION_INDEX, u64::from_le_bytes(off), &[9, 9])
        .unwrap();
    assert!(
        dev.region_write(MIGRATION_REGION_INDEX, 24, &2u64.to_le_bytes())
            .is_err()
    );
    assert!(set_state(&mut dev, DeviceState::RUNNING).is_err());
    dev.reset().unwrap();
    set_state(&mut dev, DeviceState::RUNNING).unwrap();
    let mut b = [0u8];
    dev.region_read(0, 7, &mut b).unwrap();
    assert_eq!(b[0], 0, "SCR reset");
}

#[test]
fn config_space_migrates_with_the_device() {
    let mut src = PciDevice::new(Mtty::new()).unwrap();
    let mut dst = PciDevice::new(Mtty::new()).unwrap();
    src.region_write(7, 4, &0x0005u16.to_le_bytes()).unwrap(); // command: I/O + bus master
    src.region_write(7, 0x3c, &[11]).unwrap(); // interrupt line
    vfmig_device::conformance::check(&mut src, &mut dst, 1, |_| {}).unwrap();
    assert_eq!(dst.config().bytes(), src.config().bytes());
}

fn digest(dev: &mut PciDevice<Mtty>) -> u64 {
    let mut b = [0u8; 8];
    dev.region_read(vfmig_device::DIGEST_REGION_INDEX, 0, &mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn the_digest_region_tells_equal_devices_from_different_ones() {
    let mut a = PciDevice::new(Mtty::new()).unwrap();
    let mut b = PciDevice::new(Mtty::new()).unwrap();
    assert_eq!(digest(&mut a), digest(&mut b));
    a.region_write(0, 0, b"x").unwrap();
    assert_ne!(digest(&mut a), digest(&mut b));
    vfmig_device::conformance::check(&mut a, &mut b, 1, |_| {}).unwrap();
    assert_eq!(digest(&mut a), digest(&mut b));
}

#[test]
fn the_digest_region_is_read_only() {
    let mut a = PciDevice::new(Mtty::new()).unwrap();
    assert_eq!(
        a.region_write(vfmig_device::DIGEST_REGION_INDEX, 0, &[0; 8]),
        Err(Errno::EINVAL)
    );
}
