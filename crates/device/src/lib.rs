//! Migratable vfio-user devices.
//!
//! * [`Migratable`]: the small trait a device implements to be migratable (no default bodies).
//! * [`migration::MigrationRegion`]: the v1 migration region built on it, exactly as the
//!   series' uAPI describes (`struct vfio_device_migration_info` at offset 0, the data section
//!   after it, trapped or mmapped).
//! * [`DeviceModel`]: what a device author writes (identity, BARs, accesses, reset, snapshot).
//! * [`devices`]: the sample devices, `mtty` and `dma-engine`.
//! * [`pci`]: the configuration space and eventfd interrupts every device shares.
//! * [`memory::SharedMemory`]: memfd-backed memory a device shares with its client.

pub mod devices;
pub mod memory;
pub mod migratable;
pub mod migration;
pub mod model;
pub mod pci;

pub use migratable::{Migratable, MigrationError};
pub use model::{Bar, BarMemory, DeviceContext, DeviceError, DeviceModel};
