//! MSI-X as the VMM emulates it, as QEMU's vfio-pci does: the capability's control bits
//! (enable, function mask) and the vector table are the VMM's, kept in the function's
//! [`PciConfigState`] and carried by a migration with it. The guest's accesses to the table
//! (in one of the device's BARs) never reach the device, and the device never sees the
//! function mask (the VMM masks by not routing). Every vector gets an eventfd, given to the
//! device by SET_IRQS on the MSI-X index when the guest enables MSI-X; a vector the guest
//! has unmasked (and the function not masked) is routed by the [`InterruptRouter`] to the
//! message its table entry holds, so the device's signal becomes that MSI without passing
//! through a VMM thread. A signal on a masked vector waits in its eventfd and is delivered
//! when the vector is routed again (KVM injects at once an irqfd registered on a signalled
//! eventfd): the pending bit, without a PBA. A migration carries those pending signals
//! ([`PciConfigState::msix_pending`]). The PBA itself is the device's.
//!
//! [`InterruptRouter`]: super::InterruptRouter

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use vfmig_abi::uapi::VFIO_PCI_MSIX_IRQ_INDEX;
use vfmig_vfio_user::client::IrqValues;
use vfmig_vfio_user::message::IrqAction;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Bar, BarDecode, InterruptRouter, PciConfigState, invalid};
use crate::devices::{AttachError, AttachedDevice};

/// The MSI-X capability's ID.
pub(super) const CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub(super) const ENABLE: u16 = 1 << 15;
/// Message control: every vector masked.
pub(super) const FUNCTION_MASK: u16 = 1 << 14;
/// Message control: the bits the VMM keeps (the rest is the device's, read-only).
pub(super) const CONTROL_BITS: u16 = ENABLE | FUNCTION_MASK;
/// Bytes of a table entry: address low, address high, data, vector control.
const ENTRY: u64 = 16;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;
/// The most vectors of one function the VMM routes: each routed vector is a GSI, and KVM's
/// routing table holds 4096 for the 32 functions of the bus. A function with more has the
/// rest of its table emulated but never delivered (said in the log at attach).
pub const MAX_VECTORS: usize = 64;

/// Where a function's MSI-X capability, table and PBA are.
#[derive(Clone, Copy, Debug)]
pub(super) struct MsixCap {
    /// The capability's offset in configuration space.
    pub(super) offset: u64,
    /// Vectors in the table.
    pub(super) vectors: usize,
    /// The BAR and offset of the table.
    pub(super) table_bar: usize,
    pub(super) table_offset: u64,
    /// The BAR and offset of the PBA.
    pub(super) pba_bar: usize,
    pub(super) pba_offset: u64,
}

impl MsixCap {
    /// Reads the capability at `offset` and checks that its table and PBA lie inside memory
    /// BARs of the function (`bars`).
    pub(super) fn probe(
        dev: &AttachedDevice,
        offset: u64,
        bars: &[Option<Bar>],
    ) -> Result<MsixCap, AttachError> {
        let control = super::config_u32(dev, offset)? >> 16;
        let table = super::config_u32(dev, offset + 4)?;
        let pba = super::config_u32(dev, offset + 8)?;
        let vectors = usize::try_from(control & 0x7ff).unwrap_or(0) + 1;
        let cap = MsixCap {
            offset,
            vectors,
            table_bar: usize::try_from(table & 0x7).unwrap_or(usize::MAX),
            table_offset: u64::from(table & !0x7),
            pba_bar: usize::try_from(pba & 0x7).unwrap_or(usize::MAX),
            pba_offset: u64::from(pba & !0x7),
        };
        let pba_len = vectors.div_ceil(64) as u64 * 8;
        for (what, bar, start, len) in [
            ("table", cap.table_bar, cap.table_offset, cap.table_len()),
            ("PBA", cap.pba_bar, cap.pba_offset, pba_len),
        ] {
            let inside = bars.get(bar).copied().flatten().is_some_and(|b| {
                b.kind != BarDecode::Io && start.checked_add(len).is_some_and(|end| end <= b.size)
            });
            if !inside {
                return Err(invalid(
                    dev,
                    format!(
                        "its MSI-X {what} ({len} bytes at {start:#x} of BAR{bar}) is not inside a memory BAR"
                    ),
                ));
            }
        }
        if vectors > MAX_VECTORS {
            tracing::warn!(
                device = dev.id(),
                vectors,
                routed = MAX_VECTORS,
                "MSI-X vectors past the routed ones are never delivered"
            );
        }
        Ok(cap)
    }

    /// Bytes of the table.
    pub(super) fn table_len(&self) -> u64 {
        self.vectors as u64 * ENTRY
    }

    /// The offset of the message control word in configuration space.
    pub(super) fn control_offset(&self) -> u64 {
        self.offset + 2
    }

    /// Whether `[offset, offset + len)` of BAR `bar` touches the table.
    pub(super) fn in_table(&self, bar: usize, offset: u64, len: u64) -> bool {
        bar == self.table_bar
            && super::overlap(offset, len, self.table_offset, self.table_len()).is_some()
    }

    /// Whether any byte of the pages `[offset, offset + len)` of BAR `bar` holds the table or
    /// the PBA: such pages must stay trapped.
    pub(super) fn in_pages(&self, bar: usize, offset: u64, len: u64) -> bool {
        let page = |at: u64| at & !(super::GUEST_PAGE - 1);
        let pba_len = self.vectors.div_ceil(64) as u64 * 8;
        [
            (self.table_bar, self.table_offset, self.table_len()),
            (self.pba_bar, self.pba_offset, pba_len),
        ]
        .into_iter()
        .any(|(b, start, n)| {
            let (first, end) = (page(start), page(start + n - 1) + super::GUEST_PAGE);
            b == bar && super::overlap(offset, len, first, end - first).is_some()
        })
    }

    /// A new, reset table: every vector masked.
    pub(super) fn reset_table(&self) -> Vec<[u32; 4]> {
        vec![[0, 0, 0, VECTOR_MASKED]; self.vectors]
    }

    /// Reads table bytes at `offset` of the table BAR.
    pub(super) fn table_read(&self, state: &PciConfigState, offset: u64, buf: &mut [u8]) {
        for (k, byte) in buf.iter_mut().enumerate() {
            *byte = self
                .word(offset + k as u64)
                .and_then(|(entry, word, shift)| {
                    let value = state.msix_table.get(entry)?[word];
                    u8::try_from(value >> shift & 0xff).ok()
                })
                .unwrap_or(0);
        }
    }

    /// Writes table bytes at `offset` of the table BAR. Of the vector control word only the
    /// mask bit is writable.
    pub(super) fn table_write(&self, state: &mut PciConfigState, offset: u64, data: &[u8]) {
        for (k, byte) in data.iter().enumerate() {
            let Some((entry, word, shift)) = self.word(offset + k as u64) else {
                continue;
            };
            let Some(words) = state.msix_table.get_mut(entry) else {
                continue;
            };
            let mut value = words[word] & !(0xff << shift) | u32::from(*byte) << shift;
            if word == 3 {
                value &= VECTOR_MASKED;
            }
            words[word] = value;
        }
    }

    /// `(entry, word, bit shift)` of the table byte at `offset` of the table BAR.
    fn word(&self, offset: u64) -> Option<(usize, usize, u32)> {
        let at = offset.checked_sub(self.table_offset)?;
        let entry = usize::try_from(at / ENTRY)
            .ok()
            .filter(|&e| e < self.vectors)?;
        let word = usize::try_from(at % ENTRY / 4).ok()?;
        Some((entry, word, u32::try_from(at % 4 * 8).ok()?))
    }
}

/// A function's MSI-X vectors as the VMM routes them.
pub(super) struct Vectors {
    pub(super) cap: MsixCap,
    /// One per routed vector, given to the device while MSI-X is enabled.
    eventfds: Vec<EventFd>,
    /// The message each vector is routed to now (`None`: not routed).
    routed: Vec<Option<(u64, u32)>>,
    /// The device holds the eventfds.
    assigned: bool,
}

impl Vectors {
    /// Eventfds for the vectors of `cap` the device can take (its GET_IRQ_INFO count for the
    /// MSI-X index; a device that has fewer than its table says gets that many) up to
    /// [`MAX_VECTORS`].
    pub(super) fn new(dev: &AttachedDevice, cap: MsixCap) -> Result<Vectors, AttachError> {
        let info = dev
            .client()
            .irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| dev.request("GET_IRQ_INFO of MSI-X", e))?;
        let irqs = usize::try_from(info.count).unwrap_or(usize::MAX);
        if irqs < cap.vectors {
            tracing::warn!(
                device = dev.id(),
                table = cap.vectors,
                irqs,
                "the MSI-X table has more vectors than the device takes eventfds for: the rest are never delivered"
            );
        }
        let n = cap.vectors.min(irqs).min(MAX_VECTORS);
        let eventfds = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(dev, format!("eventfd: {e}")))?;
        Ok(Vectors {
            cap,
            eventfds,
            routed: vec![None; n],
            assigned: false,
        })
    }

    /// The vectors whose signal waits in their eventfd (not routed, so KVM did not take it).
    /// Their count is read and written back: a source that goes on after a failed migration
    /// keeps them pending.
    pub(super) fn pending(&self) -> Vec<u16> {
        self.eventfds
            .iter()
            .zip(&self.routed)
            .enumerate()
            .filter(|(_, (_, routed))| routed.is_none())
            .filter_map(|(v, (eventfd, _))| {
                let count = eventfd.read().ok().filter(|&n| n > 0)?;
                if let Err(e) = eventfd.write(count) {
                    tracing::warn!(vector = v, error = %e, "a pending MSI-X signal could not be kept");
                }
                u16::try_from(v).ok()
            })
            .collect()
    }

    /// Signals the eventfd of each vector of `pending` (a restore of a source's pending
    /// signals); a vector without an eventfd here is an error.
    pub(super) fn signal(&self, dev: &AttachedDevice, pending: &[u16]) -> Result<(), AttachError> {
        for &v in pending {
            let eventfd = self.eventfds.get(usize::from(v)).ok_or_else(|| {
                invalid(dev, format!("a pending MSI-X vector {v} it does not route"))
            })?;
            eventfd
                .write(1)
                .map_err(|e| invalid(dev, format!("signalling MSI-X vector {v}: {e}")))?;
        }
        Ok(())
    }

    /// Vector `v`'s eventfd, as the device signals it.
    #[cfg(test)]
    pub(super) fn eventfd(&self, v: usize) -> &EventFd {
        &self.eventfds[v]
    }

    /// Vectors routed to the guest now.
    pub(super) fn routed(&self) -> usize {
        self.routed.iter().filter(|r| r.is_some()).count()
    }

    /// Forgets what is routed and assigned, as a fresh function (before a restore applies a
    /// saved state to a device that holds no eventfd of ours).
    pub(super) fn forget(&mut self) {
        self.routed.fill(None);
        self.assigned = false;
    }

    /// Makes the routes and the device's eventfds what `state` says: eventfds assigned while
    /// MSI-X is enabled, each vector routed while enabled, unmasked and the function not
    /// masked. `first_line` is the router's line of vector 0.
    pub(super) fn apply(
        &mut self,
        router: &Arc<dyn InterruptRouter>,
        dev: &AttachedDevice,
        first_line: u32,
        state: &PciConfigState,
    ) -> Result<(), AttachError> {
        let enabled = state.msix_control & ENABLE != 0;
        if enabled && !self.assigned {
            // SAFETY: the eventfds are ours and outlive this call.
            let fds: Vec<BorrowedFd<'_>> = self
                .eventfds
                .iter()
                .map(|e| unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) })
                .collect();
            dev.client()
                .set_irqs(
                    VFIO_PCI_MSIX_IRQ_INDEX,
                    0,
                    IrqAction::Trigger,
                    IrqValues::Eventfds(&fds),
                )
                .map_err(|e| dev.request("give the device its MSI-X eventfds", e))?;
            self.assigned = true;
        }
        let route_error = |e: std::io::Error| invalid(dev, format!("routing its MSI-X: {e}"));
        for (v, (eventfd, routed)) in self.eventfds.iter().zip(&mut self.routed).enumerate() {
            let line = first_line + u32::try_from(v).unwrap_or(u32::MAX);
            let wanted = state
                .msix_table
                .get(v)
                .filter(|e| {
                    enabled && state.msix_control & FUNCTION_MASK == 0 && e[3] & VECTOR_MASKED == 0
                })
                .map(|e| (u64::from(e[0]) | u64::from(e[1]) << 32, e[2]));
            if wanted == *routed {
                continue;
            }
            match wanted {
                Some((address, data)) => router
                    .route_msi(line, eventfd, address, data)
                    .map_err(route_error)?,
                None => router.unroute_msi(line, eventfd).map_err(route_error)?,
            }
            *routed = wanted;
        }
        if !enabled && self.assigned {
            dev.client()
                .set_irqs(
                    VFIO_PCI_MSIX_IRQ_INDEX,
                    0,
                    IrqAction::Trigger,
                    IrqValues::None { count: 0 },
                )
                .map_err(|e| dev.request("take the MSI-X eventfds back from the device", e))?;
            self.assigned = false;
            // A signal left from before the disable is no interrupt of the next enable.
            for eventfd in &self.eventfds {
                let _ = eventfd.read();
            }
        }
        Ok(())
    }
}
