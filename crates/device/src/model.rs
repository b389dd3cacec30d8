//! What a device author writes: a [`DeviceModel`] with an identity, BARs, and the behaviour of
//! accesses to them. [`crate::PciDevice`] adds the configuration space, interrupts, reset and,
//! when the model is [`Migratable`], the v1 migration region.
//!
//! A model that offers MSI-X says where its table and PBA are ([`DeviceModel::msix`]); the
//! `PciDevice` then adds the capability, keeps the table (accesses to it never reach the
//! model) and migrates it with the configuration space. The model raises a vector with
//! [`DeviceContext::interrupt_vector`].

use std::sync::Arc;

use vfmig_memory::SharedMemory;

use crate::migratable::Migratable;
use crate::pci::{BarKind, IrqIndex, Irqs, MsixControl, MsixSpec, PciIdentity};

/// Why a BAR access failed; carries the errno the client gets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} (errno {errno})")]
pub struct DeviceError {
    /// The errno.
    pub errno: i32,
    /// What went wrong.
    pub what: String,
}

impl DeviceError {
    /// An access the device does not decode: EINVAL.
    pub fn invalid(what: impl Into<String>) -> Self {
        DeviceError {
            errno: libc::EINVAL,
            what: what.into(),
        }
    }

    /// A failed DMA or internal operation with its errno.
    pub fn with_errno(errno: i32, what: impl Into<String>) -> Self {
        DeviceError {
            errno,
            what: what.into(),
        }
    }
}

/// One BAR of a device.
#[derive(Clone, Debug)]
pub struct Bar {
    /// BAR index, 0–5.
    pub index: usize,
    /// Memory or I/O space.
    pub kind: BarKind,
    /// Size in bytes, a power of two of at least 16.
    pub size: u32,
    /// Memory the client may map; `None`: every access is trapped.
    pub mmap: Option<BarMemory>,
}

/// The mappable memory of a BAR.
#[derive(Clone, Debug)]
pub struct BarMemory {
    /// The memory; BAR offset `o` is memory offset `o`.
    pub memory: Arc<SharedMemory>,
    /// The areas the client may map, as `(offset, size)` in the BAR; the rest is trapped.
    pub areas: Vec<(u64, u64)>,
}

/// What a model may touch while it handles an access: the interrupts.
pub struct DeviceContext<'a> {
    /// The interrupts of the device.
    pub irqs: &'a mut Irqs,
    /// Whether the guest has INTx disabled in the command register.
    pub intx_disabled: bool,
    /// What MSI-X message control says in the device's configuration space.
    pub msix: MsixControl,
}

impl DeviceContext<'_> {
    /// Raises the device's interrupt: [`DeviceContext::interrupt_vector`] 0.
    pub fn interrupt(&mut self) {
        self.interrupt_vector(0);
    }

    /// Raises interrupt vector `vector`. With MSI-X enabled, its eventfd is signalled if one
    /// is assigned (nothing if not). Masking is the client's, as with VFIO: it holds a masked
    /// vector's signal back (the signal waits in the eventfd), whether the vector or the whole
    /// function is masked, so the device signals under the function mask too: dropping the
    /// signal would lose the interrupt that PCI says is pending. With MSI-X disabled, the
    /// vector does not matter: MSI if set up, else INTx unless disabled.
    pub fn interrupt_vector(&mut self, vector: u16) {
        match self.msix {
            MsixControl::Enabled | MsixControl::FunctionMasked => {
                self.irqs.raise_msix(vector);
            }
            MsixControl::Disabled => {
                if self.irqs.is_assigned(IrqIndex::Msi) || !self.intx_disabled {
                    self.irqs.raise(IrqIndex::Msi);
                }
            }
        }
    }
}

/// A device model.
pub trait DeviceModel: Send {
    /// Vendor, device and class for the configuration space.
    fn identity(&self) -> PciIdentity;

    /// The BARs the device implements.
    fn bars(&self) -> Vec<Bar>;

    /// A trapped read of `buf.len()` bytes at `offset` of BAR `bar`.
    fn bar_read(
        &mut self,
        bar: usize,
        offset: u64,
        buf: &mut [u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError>;

    /// A trapped write of `data` at `offset` of BAR `bar`.
    fn bar_write(
        &mut self,
        bar: usize,
        offset: u64,
        data: &[u8],
        ctx: &mut DeviceContext<'_>,
    ) -> Result<(), DeviceError>;

    /// Where the model's MSI-X table and PBA live, if it offers MSI-X. Asked once, when the
    /// device is built; the table and PBA ranges are then the device's, not the model's.
    fn msix(&self) -> Option<MsixSpec> {
        None
    }

    /// Returns the device to its power-on state.
    fn reset(&mut self);

    /// The device's migration interface, or `None` if it cannot migrate (then no migration
    /// region is offered and a VMM refuses to migrate it before starting).
    fn migratable(&mut self) -> Option<&mut dyn Migratable>;

    /// The whole device state as bytes, for verification (hash it, compare two devices). Two
    /// devices with equal snapshots behave identically from now on.
    fn snapshot(&self) -> Vec<u8>;
}
