//! A minimal VMM: what a VM is to vfmig.
//!
//! * [`GuestRam`]: guest RAM in memfds, mapped here and shared with device processes (they map
//!   the same fds through DMA_MAP), with a dirty log of the VMM's own writes.
//! * [`AttachedDevice`]: a device over vfio-user, in a process the VMM spawns
//!   (`vfmig device <kind>`) or on a socket it is given, known by the [`DeviceProfile`] it
//!   answers with ([`profile`]): identity, migration region, digest region, dirty tracking;
//!   guest RAM mapped to it with its fds, or without them ([`DmaPath::Messages`]: the device
//!   reaches guest RAM only through DMA_READ / DMA_WRITE messages the VMM answers).
//! * [`Gate`]: how the guest is paused — the switch-over point of a migration.
//! * [`Machine`]: the guest where `/dev/kvm` works: a KVM VM over guest RAM (memslots with
//!   dirty logging: the kernel's dirty log joins [`GuestRam`]'s), vCPU threads running the
//!   guest program, paused and throttled at the gate, and its KVM state saved and restored.
//! * [`pci`]: the guest's PCI bus: configuration space, BARs (trapped, or mapped into the
//!   guest where a device offers sealed memory), MSI and MSI-X routed by irqfd.
//! * [`Workload`]: the synthetic guest for hosts without `/dev/kvm`: threads writing RAM at
//!   a set rate over a working set, and drivers keeping the devices busy.
//! * [`viommu`]: an emulated guest vIOMMU that remaps a DMA window, unmapping it with
//!   GET_DIRTY_BITMAP while a migration tracks dirty pages.
//! * [`Vm`]: all of it together; [`control`]: the JSON-lines control socket.

pub mod control;
mod devices;
mod gate;
pub mod machine;
pub mod pci;
pub mod profile;
mod ram;
mod ram_dma;
#[cfg(test)]
mod test_support;
pub mod viommu;
mod vm;
mod workload;

pub use devices::{AttachError, AttachedDevice, DeviceSource, DeviceSpec, DeviceTimeouts, DmaPath};
pub use gate::{Gate, Running};
pub use machine::{GuestProgram, Machine, MachineError, MachineRam};
pub use pci::{BarStatus, InterruptStatus, PciConfigState};
pub use profile::{DeviceProfile, MigrationData};
pub use ram::{GuestRam, RamError, RamRegion};
/// What a device's vfio-user client did ([`AttachedDevice::client_stats`]).
pub use vfmig_vfio_user::ClientStats;
pub use vm::{
    DeviceHost, GuestPlan, KvmGuestReport, MigrationBlocker, Vm, VmConfig, VmDigest, VmError,
};
pub use workload::{WORKING_SET_BASE, Workload, WorkloadConfig, WorkloadStats, init_drivers};
