//! Interrupts through eventfds: INTx (one vector, maskable), MSI (one vector) and, for a model
//! that offers it, MSI-X (its vectors, each with an eventfd of its own), set up with
//! `VFIO_DEVICE_SET_IRQS` semantics. ERR and REQ (and MSI-X of a model without it) exist with
//! no vectors.
//!
//! MSI-X vectors are assigned, de-assigned (DATA_EVENTFD with no fds for the range, or
//! DATA_NONE with count 0 for all) and fired from the client (DATA_NONE, DATA_BOOL) by TRIGGER
//! only: the index is not maskable here, since masking a vector is the business of its client,
//! which emulates the table. Which index a raised interrupt goes to is decided by the
//! configuration space ([`crate::DeviceContext::interrupt_vector`]).

use std::fs::File;
use std::io::Write;

use vfmig_abi::uapi::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
};
use vfmig_vfio_user::server::IrqSetData;

/// An interrupt index of a PCI device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqIndex {
    /// Legacy INTx.
    Intx,
    /// MSI.
    Msi,
}

/// Why a SET_IRQS request was refused (EINVAL for all).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IrqError {
    /// The index is not a PCI interrupt index.
    #[error("no interrupt index {0}")]
    NoSuchIndex(u32),
    /// Vectors outside the index's count.
    #[error("vectors {start}..+{count} outside the {available} of index {index}")]
    OutOfRange {
        /// The index.
        index: u32,
        /// First vector.
        start: u32,
        /// Vectors asked for.
        count: u32,
        /// Vectors the index has.
        available: u32,
    },
    /// Not exactly one data type and one action, or an action the index does not support.
    #[error("unsupported SET_IRQS flags {0:#x} for this index")]
    BadFlags(u32),
    /// The data does not match the flags (bool count, number of fds).
    #[error("SET_IRQS data does not match its flags: {0}")]
    BadData(&'static str),
}

impl IrqError {
    /// The errno for the client.
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// The interrupt state of a device.
#[derive(Debug, Default)]
pub struct Irqs {
    intx: Option<File>,
    intx_masked: bool,
    /// An INTx raised while masked, delivered at unmask.
    intx_pending: bool,
    msi: Option<File>,
    /// One slot per MSI-X vector; empty for a device without MSI-X. Its length is the
    /// model's, never the client's.
    msix: Vec<Option<File>>,
}

impl Irqs {
    /// No eventfds assigned, no MSI-X vectors.
    pub fn new() -> Self {
        Irqs::default()
    }

    /// No eventfds assigned, `vectors` MSI-X vectors.
    pub fn with_msix(vectors: u16) -> Self {
        Irqs {
            msix: (0..vectors).map(|_| None).collect(),
            ..Irqs::default()
        }
    }

    /// `vfio_irq_info` for `index`: `(flags, count)`.
    pub fn info(&self, index: u32) -> Result<(u32, u32), IrqError> {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => Ok((VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE, 1)),
            VFIO_PCI_MSI_IRQ_INDEX => Ok((VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 1)),
            VFIO_PCI_MSIX_IRQ_INDEX if !self.msix.is_empty() => Ok((
                VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                self.msix_vectors(),
            )),
            i if i < VFIO_PCI_NUM_IRQS => Ok((VFIO_IRQ_INFO_EVENTFD, 0)),
            i => Err(IrqError::NoSuchIndex(i)),
        }
    }

    /// MSI-X vectors of the device.
    fn msix_vectors(&self) -> u32 {
        u32::try_from(self.msix.len()).unwrap_or(u32::MAX)
    }

    /// Applies a SET_IRQS request.
    pub fn set(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: IrqSetData<'_>,
    ) -> Result<(), IrqError> {
        let (_, available) = self.info(index)?;
        let data_type = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if !data_type.is_power_of_two() || !action.is_power_of_two() {
            return Err(IrqError::BadFlags(flags));
        }
        let in_range = start.checked_add(count).is_some_and(|end| end <= available);
        // count 0 with DATA_NONE | TRIGGER disables every vector of the index.
        let disable_all = count == 0 && data_type == VFIO_IRQ_SET_DATA_NONE;
        if !in_range && !disable_all {
            return Err(IrqError::OutOfRange {
                index,
                start,
                count,
                available,
            });
        }
        let slot = match index {
            VFIO_PCI_INTX_IRQ_INDEX => IrqIndex::Intx,
            VFIO_PCI_MSI_IRQ_INDEX => IrqIndex::Msi,
            VFIO_PCI_MSIX_IRQ_INDEX if available > 0 => {
                return match action {
                    VFIO_IRQ_SET_ACTION_TRIGGER => self.msix_trigger(data_type, start, count, data),
                    _ => Err(IrqError::BadFlags(flags)),
                };
            }
            // Indexes without vectors accept only "disable all".
            _ if disable_all && action == VFIO_IRQ_SET_ACTION_TRIGGER => return Ok(()),
            _ => {
                return Err(IrqError::OutOfRange {
                    index,
                    start,
                    count,
                    available,
                });
            }
        };
        match action {
            VFIO_IRQ_SET_ACTION_TRIGGER => self.trigger_action(slot, data_type, count, data),
            VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK if slot == IrqIndex::Intx => {
                let set = match data {
                    IrqSetData::None => true,
                    IrqSetData::Bool(b) => b.first().is_some_and(|&v| v != 0),
                    IrqSetData::Eventfds(_) => return Err(IrqError::BadFlags(flags)),
                };
                if set {
                    self.mask_intx(action == VFIO_IRQ_SET_ACTION_MASK);
                }
                Ok(())
            }
            _ => Err(IrqError::BadFlags(flags)),
        }
    }

    fn trigger_action(
        &mut self,
        slot: IrqIndex,
        data_type: u32,
        count: u32,
        data: IrqSetData<'_>,
    ) -> Result<(), IrqError> {
        match (data_type, data) {
            (VFIO_IRQ_SET_DATA_NONE, IrqSetData::None) if count == 0 => {
                *self.slot(slot) = None;
                Ok(())
            }
            (VFIO_IRQ_SET_DATA_NONE, IrqSetData::None) => {
                self.raise(slot);
                Ok(())
            }
            (VFIO_IRQ_SET_DATA_BOOL, IrqSetData::Bool(b)) => {
                if b.len() != count as usize {
                    return Err(IrqError::BadData("one bool per vector"));
                }
                if b.iter().any(|&v| v != 0) {
                    self.raise(slot);
                }
                Ok(())
            }
            (VFIO_IRQ_SET_DATA_EVENTFD, IrqSetData::Eventfds(mut fds)) => {
                match fds.len() {
                    0 => *self.slot(slot) = None,
                    1 if count == 1 => *self.slot(slot) = fds.pop().map(File::from),
                    _ => return Err(IrqError::BadData("one eventfd per vector")),
                }
                Ok(())
            }
            _ => Err(IrqError::BadData("data does not match the data type")),
        }
    }

    /// TRIGGER on MSI-X vectors `start..start + count`, a range already checked against the
    /// vector count (or `count` 0 with DATA_NONE: every vector).
    fn msix_trigger(
        &mut self,
        data_type: u32,
        start: u32,
        count: u32,
        data: IrqSetData<'_>,
    ) -> Result<(), IrqError> {
        let range = usize::try_from(start).unwrap_or(usize::MAX)
            ..usize::try_from(start.saturating_add(count)).unwrap_or(usize::MAX);
        match (data_type, data) {
            (VFIO_IRQ_SET_DATA_NONE, IrqSetData::None) if count == 0 => {
                self.msix.fill_with(|| None);
            }
            (VFIO_IRQ_SET_DATA_NONE, IrqSetData::None) => {
                for v in range {
                    self.raise_msix_slot(v);
                }
            }
            (VFIO_IRQ_SET_DATA_BOOL, IrqSetData::Bool(b)) => {
                if b.len() != range.len() {
                    return Err(IrqError::BadData("one bool per vector"));
                }
                for (v, _) in range.zip(b).filter(|(_, set)| **set != 0) {
                    self.raise_msix_slot(v);
                }
            }
            (VFIO_IRQ_SET_DATA_EVENTFD, IrqSetData::Eventfds(fds)) => {
                let slots = self
                    .msix
                    .get_mut(range.clone())
                    .ok_or(IrqError::BadData("vectors outside the table"))?;
                if fds.is_empty() {
                    slots.fill_with(|| None);
                } else if fds.len() == slots.len() {
                    for (slot, fd) in slots.iter_mut().zip(fds) {
                        *slot = Some(File::from(fd));
                    }
                } else {
                    return Err(IrqError::BadData("one eventfd per vector"));
                }
            }
            _ => return Err(IrqError::BadData("data does not match the data type")),
        }
        Ok(())
    }

    fn raise_msix_slot(&mut self, vector: usize) -> bool {
        signal(self.msix.get_mut(vector).and_then(Option::as_mut))
    }

    /// Signals MSI-X vector `vector` if an eventfd is assigned to it (nothing otherwise).
    /// Returns whether an eventfd was signalled.
    pub fn raise_msix(&mut self, vector: u16) -> bool {
        self.raise_msix_slot(usize::from(vector))
    }

    /// True if an eventfd is assigned to MSI-X vector `vector`.
    pub fn is_msix_assigned(&self, vector: u16) -> bool {
        self.msix
            .get(usize::from(vector))
            .is_some_and(Option::is_some)
    }

    fn slot(&mut self, index: IrqIndex) -> &mut Option<File> {
        match index {
            IrqIndex::Intx => &mut self.intx,
            IrqIndex::Msi => &mut self.msi,
        }
    }

    fn mask_intx(&mut self, masked: bool) {
        self.intx_masked = masked;
        if !masked && std::mem::take(&mut self.intx_pending) {
            self.raise(IrqIndex::Intx);
        }
    }

    /// Signals the interrupt: MSI if its eventfd is set, else INTx (held back while masked).
    /// Returns whether an eventfd was signalled.
    pub fn raise(&mut self, preferred: IrqIndex) -> bool {
        if preferred == IrqIndex::Msi && self.msi.is_some() {
            return signal(self.msi.as_mut());
        }
        if self.intx_masked {
            self.intx_pending = true;
            return false;
        }
        signal(self.intx.as_mut())
    }

    /// True if an eventfd is assigned to `index`.
    pub fn is_assigned(&self, index: IrqIndex) -> bool {
        match index {
            IrqIndex::Intx => self.intx.is_some(),
            IrqIndex::Msi => self.msi.is_some(),
        }
    }

    /// Closes every eventfd (the client went away); the MSI-X vectors stay.
    pub fn clear(&mut self) {
        *self = Irqs::with_msix(u16::try_from(self.msix.len()).unwrap_or(u16::MAX));
    }
}

fn signal(fd: Option<&mut File>) -> bool {
    match fd {
        Some(f) => match f.write_all(&1u64.to_le_bytes()) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "eventfd write failed");
                false
            }
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    fn eventfd() -> (OwnedFd, File) {
        // SAFETY: eventfd has no memory effects; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(raw >= 0);
        // SAFETY: a fresh fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let reader = File::from(fd.try_clone().unwrap());
        (fd, reader)
    }

    fn fired(f: &mut File) -> bool {
        let mut b = [0u8; 8];
        f.read(&mut b).is_ok()
    }

    const EVENTFD_TRIGGER: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;

    #[test]
    fn intx_eventfd_fires_when_raised() {
        let (fd, mut r) = eventfd();
        let mut irqs = Irqs::new();
        irqs.set(0, EVENTFD_TRIGGER, 0, 1, IrqSetData::Eventfds(vec![fd]))
            .unwrap();
        assert!(irqs.raise(IrqIndex::Intx));
        assert!(fired(&mut r));
    }

    #[test]
    fn msi_is_preferred_when_assigned() {
        let (a, mut ra) = eventfd();
        let (b, mut rb) = eventfd();
        let mut irqs = Irqs::new();
        irqs.set(0, EVENTFD_TRIGGER, 0, 1, IrqSetData::Eventfds(vec![a]))
            .unwrap();
        irqs.set(1, EVENTFD_TRIGGER, 0, 1, IrqSetData::Eventfds(vec![b]))
            .unwrap();
        irqs.raise(IrqIndex::Msi);
        assert!(fired(&mut rb));
        assert!(!fired(&mut ra));
    }

    #[test]
    fn masked_intx_is_delivered_at_unmask() {
        let (fd, mut r) = eventfd();
        let mut irqs = Irqs::new();
        irqs.set(0, EVENTFD_TRIGGER, 0, 1, IrqSetData::Eventfds(vec![fd]))
            .unwrap();
        irqs.set(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
            0,
            1,
            IrqSetData::None,
        )
        .unwrap();
        assert!(!irqs.raise(IrqIndex::Intx));
        assert!(!fired(&mut r));
        irqs.set(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            IrqSetData::None,
        )
        .unwrap();
        assert!(fired(&mut r));
    }

    #[test]
    fn count_zero_with_data_none_disables() {
        let (fd, _r) = eventfd();
        let mut irqs = Irqs::new();
        irqs.set(1, EVENTFD_TRIGGER, 0, 1, IrqSetData::Eventfds(vec![fd]))
            .unwrap();
        irqs.set(
            1,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            IrqSetData::None,
        )
        .unwrap();
        assert!(!irqs.is_assigned(IrqIndex::Msi));
    }

    #[test]
    fn vectors_beyond_the_count_are_einval() {
        let mut irqs = Irqs::new();
        let r = irqs.set(
            0,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            1,
            1,
            IrqSetData::None,
        );
        assert!(matches!(r, Err(IrqError::OutOfRange { .. })));
    }

    #[test]
    fn two_data_types_are_einval() {
        let mut irqs = Irqs::new();
        let flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER;
        assert_eq!(
            irqs.set(0, flags, 0, 1, IrqSetData::None),
            Err(IrqError::BadFlags(flags))
        );
    }

    #[test]
    fn an_unknown_index_is_einval() {
        assert_eq!(Irqs::new().info(9), Err(IrqError::NoSuchIndex(9)));
    }

    const MSIX: u32 = VFIO_PCI_MSIX_IRQ_INDEX;

    #[test]
    fn msix_reports_its_vectors_without_resize() {
        assert_eq!(
            Irqs::with_msix(2).info(MSIX),
            Ok((VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 2))
        );
        assert_eq!(Irqs::new().info(MSIX), Ok((VFIO_IRQ_INFO_EVENTFD, 0)));
    }

    /// Two MSI-X vectors, each with an eventfd; their read ends.
    fn msix_pair() -> (Irqs, [File; 2]) {
        let (a, ra) = eventfd();
        let (b, rb) = eventfd();
        let mut irqs = Irqs::with_msix(2);
        irqs.set(
            MSIX,
            EVENTFD_TRIGGER,
            0,
            2,
            IrqSetData::Eventfds(vec![a, b]),
        )
        .unwrap();
        (irqs, [ra, rb])
    }

    #[test]
    fn each_msix_vector_fires_its_own_eventfd() {
        let (mut irqs, [mut ra, mut rb]) = msix_pair();
        assert!(irqs.raise_msix(1));
        assert!(fired(&mut rb));
        assert!(!fired(&mut ra));
    }

    #[test]
    fn an_msix_range_without_fds_is_deassigned() {
        let (mut irqs, _reads) = msix_pair();
        irqs.set(MSIX, EVENTFD_TRIGGER, 1, 1, IrqSetData::Eventfds(vec![]))
            .unwrap();
        assert!(irqs.is_msix_assigned(0));
        assert!(!irqs.is_msix_assigned(1));
    }

    #[test]
    fn an_unassigned_msix_vector_signals_nothing() {
        assert!(!Irqs::with_msix(2).raise_msix(0));
        assert!(!Irqs::with_msix(2).raise_msix(7));
    }

    #[test]
    fn msix_vectors_beyond_the_count_are_einval() {
        let (a, _ra) = eventfd();
        let mut irqs = Irqs::with_msix(2);
        let r = irqs.set(MSIX, EVENTFD_TRIGGER, 2, 1, IrqSetData::Eventfds(vec![a]));
        assert!(matches!(r, Err(IrqError::OutOfRange { .. })));
    }

    #[test]
    fn msix_is_not_maskable_here() {
        let mut irqs = Irqs::with_msix(2);
        let flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK;
        assert_eq!(
            irqs.set(MSIX, flags, 0, 1, IrqSetData::None),
            Err(IrqError::BadFlags(flags))
        );
    }
}
