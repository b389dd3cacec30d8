//! PCI pieces every device shares: the configuration space with its standard header and an MSI
//! capability, and the interrupts (INTx, MSI) signalled through eventfds.

mod config;
mod irq;

pub use config::{BarKind, ConfigSpace, PciIdentity};
pub use irq::{IrqError, IrqIndex, Irqs};
