//! Interrupts: `DEVICE_GET_IRQ_INFO` (7) and `DEVICE_SET_IRQS` (8).
//!
//! ```text
//! GET_IRQ_INFO (16 B both ways)       SET_IRQS request (20 B + data, + eventfds)
//!  0 argsz                              0 argsz  ≥ 20 (QEMU sends the kernel's, fds included)
//!  4 flags  reply: EVENTFD 1 |          4 flags  data NONE 1 | BOOL 2 | EVENTFD 4 (one)
//!           MASKABLE 2 | AUTOMASKED 4 |          action MASK 8 | UNMASK 0x10 | TRIGGER 0x20 (one)
//!           NORESIZE 8                  8 index
//!  8 index                             12 start
//! 12 count                             16 count
//!                                      20 data   BOOL: count bytes; otherwise none
//! SET_IRQS reply: header only. EVENTFD: count fds (one per vector), or none to de-assign.
//! count = 0 (with start = 0) is only DATA_NONE | ACTION_TRIGGER: disable the whole index.
//! ```

use std::borrow::Cow;

use vfmig_abi::uapi::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK, vfio_irq_info, vfio_irq_set,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Payload, wire};
use crate::error::MessageError;

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct IrqInfo {
    /// Request: most reply payload accepted; reply: 16.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*` (reply).
    pub flags: u32,
    /// IRQ index (e.g. `VFIO_PCI_MSIX_IRQ_INDEX`).
    pub index: u32,
    /// Number of vectors (reply).
    pub count: u32,
}

const _: () = assert!(size_of::<IrqInfo>() == 16);
const _: () = assert!(size_of::<IrqInfo>() == size_of::<vfio_irq_info>());

impl IrqInfo {
    /// `argsz` of the whole struct.
    pub const ARGSZ: u32 = 16;

    /// The request for IRQ `index`.
    pub fn request(index: u32) -> Self {
        Self {
            argsz: Self::ARGSZ,
            index,
            ..Self::default()
        }
    }
}

impl Payload<'_> for IrqInfo {
    const NAME: &'static str = "DEVICE_GET_IRQ_INFO";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let info = wire::prefix::<Self>(body, Self::NAME)?;
        wire::check_argsz(info.argsz, Self::ARGSZ.into(), Self::NAME)?;
        Ok(info)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        wire::check_argsz(self.argsz, Self::ARGSZ.into(), Self::NAME)?;
        Ok(self.as_bytes().to_vec())
    }
}

/// `struct vfio_irq_set` without its data.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct IrqSet {
    /// At least 20.
    pub argsz: u32,
    /// One data type and one action.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

const _: () = assert!(size_of::<IrqSet>() == 20);
const _: () = assert!(size_of::<IrqSet>() == size_of::<vfio_irq_set>());

/// What the data of a SET_IRQS is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqData {
    /// No data: act on every vector of the range.
    None,
    /// One byte per vector: act where it is 1.
    Bool,
    /// One eventfd per vector in the message's fds (none: de-assign).
    Eventfd,
}

/// What a SET_IRQS does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask.
    Mask,
    /// Unmask.
    Unmask,
    /// Trigger (or, with eventfds, signal them when the device triggers).
    Trigger,
}

impl IrqSet {
    /// The data type; flags other than exactly one data type and one action are an error.
    pub fn data_type(&self) -> Result<IrqData, MessageError> {
        self.check_flags()?;
        Ok(match self.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_BOOL => IrqData::Bool,
            VFIO_IRQ_SET_DATA_EVENTFD => IrqData::Eventfd,
            _ => IrqData::None,
        })
    }

    /// The action; flags other than exactly one data type and one action are an error.
    pub fn action(&self) -> Result<IrqAction, MessageError> {
        self.check_flags()?;
        Ok(match self.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
            VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
            VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            _ => IrqAction::Trigger,
        })
    }

    fn check_flags(&self) -> Result<(), MessageError> {
        let data = self.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = self.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let known = VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if self.flags & !known == 0 && data.count_ones() == 1 && action.count_ones() == 1 {
            Ok(())
        } else {
            Err(MessageError::InvalidFlags {
                what: IrqSetRequest::NAME,
                flags: self.flags,
            })
        }
    }

    /// Bytes of data this header calls for: `count` with DATA_BOOL, else 0.
    pub fn data_len(&self) -> Result<u64, MessageError> {
        Ok(match self.data_type()? {
            IrqData::Bool => self.count.into(),
            IrqData::None | IrqData::Eventfd => 0,
        })
    }
}

/// A SET_IRQS request: the header and its DATA_BOOL bytes (empty for the other data types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqSetRequest<'a> {
    /// The header.
    pub set: IrqSet,
    /// `count` bytes with DATA_BOOL, else empty.
    pub data: Cow<'a, [u8]>,
}

impl IrqSetRequest<'_> {
    /// The header's checks; the data is checked by the caller (exactly its length to encode,
    /// at least it to decode).
    fn validate_header(&self) -> Result<u64, MessageError> {
        let set = &self.set;
        wire::check_argsz(set.argsz, size_of::<IrqSet>() as u64, Self::NAME)?;
        let data_len = set.data_len()?;
        if set.count == 0
            && (set.start != 0 || set.flags != VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER)
        {
            return Err(MessageError::IrqDisableForm {
                start: set.start,
                flags: set.flags,
            });
        }
        Ok(data_len)
    }
}

impl<'a> Payload<'a> for IrqSetRequest<'a> {
    const NAME: &'static str = "DEVICE_SET_IRQS";

    fn decode(body: &'a [u8]) -> Result<Self, MessageError> {
        let (set, rest) = wire::split::<IrqSet>(body, Self::NAME)?;
        let mut request = Self {
            set,
            data: Cow::Borrowed(&[]),
        };
        let data_len = request.validate_header()?;
        // Bytes after the data the flags call for are ignored: e.g. the kernel's array of
        // eventfd numbers, which a client forwarding the ioctl's struct may leave in.
        request.data = Cow::Borrowed(wire::data_prefix(
            rest,
            data_len,
            size_of::<IrqSet>(),
            Self::NAME,
        )?);
        Ok(request)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let data_len = self.validate_header()?;
        wire::data_exact(&self.data, data_len, size_of::<IrqSet>(), Self::NAME)?;
        Ok(wire::concat(&[self.set.as_bytes(), &self.data]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTFD_TRIGGER: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;

    fn set(flags: u32, start: u32, count: u32) -> IrqSet {
        IrqSet {
            argsz: 20,
            flags,
            index: 2,
            start,
            count,
        }
    }

    #[test]
    fn sample_eventfd_trigger_decodes() {
        // size=36 body 14000000 24000000 00000000 00000000 01000000 (+ 1 eventfd)
        let body = [
            0x14, 0, 0, 0, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
        ];
        let request = IrqSetRequest::decode(&body).unwrap();
        assert_eq!(request.set.data_type().unwrap(), IrqData::Eventfd);
        assert_eq!(request.set.action().unwrap(), IrqAction::Trigger);
        assert_eq!((request.set.index, request.set.count), (0, 1));
    }

    #[test]
    fn bool_data_must_be_at_least_count_bytes() {
        let header = set(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK, 0, 3);
        let body = wire::concat(&[header.as_bytes(), &[1, 0]]);
        let err = IrqSetRequest::decode(&body).unwrap_err();
        assert!(matches!(
            err,
            MessageError::BodyTooShort {
                need: 23,
                got: 22,
                ..
            }
        ));
    }

    #[test]
    fn bool_data_beyond_count_is_ignored() {
        let header = set(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK, 0, 2);
        let body = wire::concat(&[header.as_bytes(), &[1, 0, 1, 1]]);
        assert_eq!(&*IrqSetRequest::decode(&body).unwrap().data, &[1, 0]);
    }

    #[test]
    fn eventfd_set_with_the_kernels_fd_array_is_read_without_it() {
        let body = wire::concat(&[set(EVENTFD_TRIGGER, 0, 1).as_bytes(), &[0; 4]]);
        let request = IrqSetRequest::decode(&body).unwrap();
        assert!(request.data.is_empty());
    }

    #[test]
    fn eventfd_set_with_data_bytes_does_not_encode() {
        let request = IrqSetRequest {
            set: set(EVENTFD_TRIGGER, 0, 1),
            data: Cow::Borrowed(&[0; 4]),
        };
        assert!(matches!(
            request.encode(),
            Err(MessageError::BodyLength { .. })
        ));
    }

    #[test]
    fn two_data_types_are_einval() {
        let header = set(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
        );
        let err = IrqSetRequest::decode(header.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::InvalidFlags { flags: 0x23, .. }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn no_action_is_einval() {
        let err = IrqSetRequest::decode(set(VFIO_IRQ_SET_DATA_NONE, 0, 1).as_bytes()).unwrap_err();
        assert!(matches!(err, MessageError::InvalidFlags { flags: 1, .. }));
    }

    #[test]
    fn count_zero_disables_only_with_none_trigger_at_start_zero() {
        let disable = set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0);
        assert!(IrqSetRequest::decode(disable.as_bytes()).is_ok());
        let err = IrqSetRequest::decode(set(EVENTFD_TRIGGER, 0, 0).as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::IrqDisableForm {
                start: 0,
                flags: 0x24
            }
        ));
        let err = IrqSetRequest::decode(
            set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 1, 0).as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, MessageError::IrqDisableForm { start: 1, .. }));
    }

    #[test]
    fn qemu_argsz_larger_than_the_body_is_accepted() {
        let header = IrqSet {
            argsz: 20 + 4 * 8,
            ..set(EVENTFD_TRIGGER, 0, 8)
        };
        assert!(IrqSetRequest::decode(header.as_bytes()).is_ok());
    }

    #[test]
    fn irq_info_argsz_below_16_is_einval() {
        let info = IrqInfo {
            argsz: 8,
            ..IrqInfo::request(2)
        };
        assert!(matches!(
            IrqInfo::decode(info.as_bytes()),
            Err(MessageError::ArgszTooSmall { .. })
        ));
    }
}
