//! Interrupts into the guest and doorbells out of it.
//!
//! * **MSI** through GSI routing: each vector a device may raise gets a GSI whose route is
//!   an MSI message (address, data) (KVM_SET_GSI_ROUTING); an eventfd registered as that
//!   GSI's irqfd (KVM_IRQFD) makes every write to it an MSI into the in-kernel LAPICs, with
//!   no exit to user space. The eventfd is the one a vfio-user device signals for that
//!   vector, so a device interrupt never passes through the VMM's threads.
//! * **KVM_SIGNAL_MSI** for a one-off MSI from the VMM itself.
//! * **ioeventfd** (KVM_IOEVENTFD): a guest write to a PIO or MMIO address (optionally of
//!   one value) signals an eventfd inside KVM instead of exiting to the run loop: about
//!   5–9 µs here against 20–90 µs for an exit.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the table kept here always holds the
//! legacy routes KVM_CREATE_IRQCHIP set up (GSI 0–15 to the PICs, 0–23 to the IOAPIC)
//! beside the MSI routes, which therefore use GSIs from [`FIRST_MSI_GSI`] up.

use std::collections::BTreeMap;

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry, kvm_msi,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::{KvmError, KvmVm};

/// GSIs below this are the IOAPIC's pins; MSI routes start here.
pub const FIRST_MSI_GSI: u32 = 24;
/// The largest GSI accepted (KVM's routing table holds 4096 entries).
pub const MAX_GSI: u32 = 4095;

/// An MSI message as a device's MSI capability holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// The message address (0xFEEx_xxxx on x86: destination APIC ID in bits 19:12).
    pub address: u64,
    /// The message data (vector in bits 7:0, delivery mode in bits 10:8).
    pub data: u32,
}

/// Where an ioeventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorbellAddress {
    /// A port.
    Pio(u16),
    /// A guest-physical address.
    Mmio(u64),
}

/// Which writes an ioeventfd takes: any write of the length, or only one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datamatch {
    /// Any value; KVM then matches writes of any length.
    Any,
    /// A 1-byte write of this value.
    U8(u8),
    /// A 2-byte write of this value.
    U16(u16),
    /// A 4-byte write of this value.
    U32(u32),
    /// An 8-byte write of this value.
    U64(u64),
}

/// The GSI routing table: legacy routes plus one MSI route per GSI the caller set.
#[derive(Debug)]
pub(crate) struct MsiRoutes {
    msi: BTreeMap<u32, MsiMessage>,
}

impl MsiRoutes {
    pub(crate) fn new() -> MsiRoutes {
        MsiRoutes {
            msi: BTreeMap::new(),
        }
    }

    /// Installs the whole table with KVM_SET_GSI_ROUTING.
    pub(crate) fn apply(&self, vm: &VmFd) -> Result<(), KvmError> {
        let mut entries = Vec::with_capacity(40 + self.msi.len());
        for gsi in 0..FIRST_MSI_GSI {
            if gsi < 16 {
                let (chip, pin) = if gsi < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, gsi)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
                };
                entries.push(irqchip_entry(gsi, chip, pin));
            }
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, message) in &self.msi {
            entries.push(msi_entry(gsi, *message));
        }
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| KvmError::InvalidArgument("too many GSI routes"))?;
        vm.set_gsi_routing(&routing)
            .map_err(KvmError::ioctl("KVM_SET_GSI_ROUTING"))
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    entry
}

fn msi_entry(gsi: u32, message: MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = low32(message.address);
    entry.u.msi.address_hi = high32(message.address);
    entry.u.msi.data = message.data;
    entry
}

fn low32(value: u64) -> u32 {
    u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0)
}

fn high32(value: u64) -> u32 {
    u32::try_from(value >> 32).unwrap_or(0)
}

impl KvmVm {
    /// Routes `gsi` (at least [`FIRST_MSI_GSI`]) to `message`, replacing its previous
    /// route. Call it again when the guest reprograms the vector; the irqfd stays.
    ///
    /// # Errors
    /// [`KvmError::InvalidArgument`] for a GSI out of range; [`KvmError::Ioctl`] (the table
    /// is left as it was in KVM, and here).
    pub fn set_msi_route(&self, gsi: u32, message: MsiMessage) -> Result<(), KvmError> {
        if !(FIRST_MSI_GSI..=MAX_GSI).contains(&gsi) {
            return Err(KvmError::InvalidArgument("MSI GSI outside 24..=4095"));
        }
        let mut routes = self.routes();
        let previous = routes.msi.insert(gsi, message);
        if let Err(err) = routes.apply(self.fd()) {
            match previous {
                Some(old) => routes.msi.insert(gsi, old),
                None => routes.msi.remove(&gsi),
            };
            return Err(err);
        }
        Ok(())
    }

    /// Removes the MSI route of `gsi`.
    ///
    /// # Errors
    /// [`KvmError::Ioctl`].
    pub fn remove_msi_route(&self, gsi: u32) -> Result<(), KvmError> {
        let mut routes = self.routes();
        if let Some(old) = routes.msi.remove(&gsi)
            && let Err(err) = routes.apply(self.fd())
        {
            routes.msi.insert(gsi, old);
            return Err(err);
        }
        Ok(())
    }

    /// Makes every write to `event` raise `gsi` (KVM_IRQFD).
    ///
    /// # Errors
    /// [`KvmError::Ioctl`] (EBUSY if `event` is already an irqfd of this VM).
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd()
            .register_irqfd(event, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD"))
    }

    /// Undoes [`KvmVm::register_irqfd`].
    ///
    /// # Errors
    /// [`KvmError::Ioctl`].
    pub fn unregister_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd()
            .unregister_irqfd(event, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD(DEASSIGN)"))
    }

    /// Delivers one MSI now (KVM_SIGNAL_MSI). Returns whether a LAPIC took it (KVM returns
    /// 0 when the interrupt was blocked or no destination matched).
    ///
    /// # Errors
    /// [`KvmError::Ioctl`].
    pub fn signal_msi(&self, message: MsiMessage) -> Result<bool, KvmError> {
        let msi = kvm_msi {
            address_lo: low32(message.address),
            address_hi: high32(message.address),
            data: message.data,
            ..Default::default()
        };
        let delivered = self
            .fd()
            .signal_msi(msi)
            .map_err(KvmError::ioctl("KVM_SIGNAL_MSI"))?;
        Ok(delivered > 0)
    }

    /// Makes guest writes at `address` (matching `datamatch`) signal `event` inside KVM
    /// instead of exiting (KVM_IOEVENTFD).
    ///
    /// # Errors
    /// [`KvmError::Ioctl`] (EEXIST for the same address and match twice).
    pub fn register_ioeventfd(
        &self,
        event: &EventFd,
        address: DoorbellAddress,
        datamatch: Datamatch,
    ) -> Result<(), KvmError> {
        ioeventfd(self.fd(), Assign::Register, event, address, datamatch)
            .map_err(KvmError::ioctl("KVM_IOEVENTFD"))
    }

    /// Undoes [`KvmVm::register_ioeventfd`] (same address and match).
    ///
    /// # Errors
    /// [`KvmError::Ioctl`].
    pub fn unregister_ioeventfd(
        &self,
        event: &EventFd,
        address: DoorbellAddress,
        datamatch: Datamatch,
    ) -> Result<(), KvmError> {
        ioeventfd(self.fd(), Assign::Unregister, event, address, datamatch)
            .map_err(KvmError::ioctl("KVM_IOEVENTFD(DEASSIGN)"))
    }
}

/// Whether KVM_IOEVENTFD adds or removes an ioeventfd.
#[derive(Clone, Copy)]
enum Assign {
    Register,
    Unregister,
}

/// KVM_IOEVENTFD for `event` at `address`, with `datamatch` as the width and value kvm-ioctls
/// takes it in.
fn ioeventfd(
    fd: &VmFd,
    assign: Assign,
    event: &EventFd,
    address: DoorbellAddress,
    datamatch: Datamatch,
) -> Result<(), kvm_ioctls::Error> {
    fn call<T: Into<u64>>(
        fd: &VmFd,
        assign: Assign,
        event: &EventFd,
        address: &IoEventAddress,
        datamatch: T,
    ) -> Result<(), kvm_ioctls::Error> {
        match assign {
            Assign::Register => fd.register_ioevent(event, address, datamatch),
            Assign::Unregister => fd.unregister_ioevent(event, address, datamatch),
        }
    }
    let address = io_event_address(address);
    match datamatch {
        Datamatch::Any => call(fd, assign, event, &address, NoDatamatch),
        Datamatch::U8(value) => call(fd, assign, event, &address, value),
        Datamatch::U16(value) => call(fd, assign, event, &address, value),
        Datamatch::U32(value) => call(fd, assign, event, &address, value),
        Datamatch::U64(value) => call(fd, assign, event, &address, value),
    }
}

fn io_event_address(address: DoorbellAddress) -> IoEventAddress {
    match address {
        DoorbellAddress::Pio(port) => IoEventAddress::Pio(u64::from(port)),
        DoorbellAddress::Mmio(gpa) => IoEventAddress::Mmio(gpa),
    }
}
