//! Migratable vfio-user devices.
//!
//! * [`Migratable`]: the small trait a device implements to be migratable (no default bodies).
//! * [`migration::MigrationRegion`]: the v1 migration region built on it, exactly as the
//!   series' uAPI describes (`struct vfio_device_migration_info` at offset 0, the data section
//!   after it, trapped or mmapped).
//! * [`DeviceModel`]: what a device author writes (identity, BARs, accesses, reset, snapshot).
//! * [`devices`]: the sample devices, `mtty` and `dma-engine`.
//! * [`PciDevice`]: a model served over vfio-user (config space, IRQs, reset, migration region).
//! * [`conformance`]: the save / resume / compare check every migratable device passes.
//! * [`server`]: the device process entry point (`vfmig device <kind> --socket PATH`), with
//!   [`server::ServeOptions`] to leave out the migration region or dirty tracking (a stand-in
//!   for device servers vfmig did not write).
//! * [`pci`]: the configuration space and eventfd interrupts every device shares (INTx, MSI,
//!   and MSI-X for a model that offers it, with the MSI-X table kept in the model's BAR).
//! * [`digest`]: a fast digest of device state and guest memory, to verify a migration.
//!
//! Memory a device shares with its client (mappable BAR memory such as the dma-engine's BAR4,
//! the migration region's data section) is a `vfmig_memory::SharedMemory`: a memfd sealed to
//! its length, which the client maps through a sparse-mmap area.
//!
//! # Resume data is untrusted
//!
//! A destination resumes a device from bytes that came off the network. No allocation is sized
//! by them: a chunk lands in the region's fixed data section (`data_size` above its capacity is
//! EINVAL), and each parser writes into state of fixed size (the mtty's ports, with FIFOs of at
//! most 16 bytes; the dma-engine's registers, each checked, device RAM pages inside device
//! RAM, and at most 16 pages inside its 64 KiB BAR4; the configuration space and MSI-X table
//! in a chunk of exactly their length). A malformed chunk is EINVAL and leaves the device in the error state. Every sample
//! device's resume path has a fuzz target (`fuzz/`, replayed by `tests/corpus_replay.rs`).

pub mod conformance;
pub mod devices;
pub mod digest;
pub mod migratable;
pub mod migration;
pub mod model;
pub mod pci;
mod pci_device;
pub mod server;

pub use migratable::{Migratable, MigratableError};
pub use model::{Bar, BarMemory, DeviceContext, DeviceError, DeviceModel};
pub use pci_device::{
    DIGEST_REGION_INDEX, DIGEST_REGION_SUBTYPE, DIGEST_REGION_TYPE, MIGRATION_REGION_INDEX,
    PciDevice,
};
