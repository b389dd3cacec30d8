//! PCI pieces every device shares: the configuration space with its standard header, an MSI
//! capability and (if the model offers it) an MSI-X capability; the MSI-X table a device keeps
//! in its BAR; and the interrupts (INTx, MSI, MSI-X) signalled through eventfds.

mod config;
mod irq;
mod msix;

pub use config::{BarKind, ConfigSpace, MsixControl, PciIdentity};
pub use irq::{IrqError, IrqIndex, Irqs};
pub use msix::{MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS, MsixAccess, MsixSpec, MsixTable};
