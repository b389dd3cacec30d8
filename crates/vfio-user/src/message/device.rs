//! `VFIO_USER_DEVICE_GET_INFO` (4), request and reply; `VFIO_USER_DEVICE_RESET` (13) has no
//! payload either way.
//!
//! ```text
//!  0 argsz        request: most reply payload (≥ 16); reply: 16
//!  4 flags        reply: VFIO_DEVICE_FLAGS_RESET 1 | VFIO_DEVICE_FLAGS_PCI 2
//!  8 num_regions  reply: 10 for a v1 PCI device with migration (region 9)
//! 12 num_irqs     reply: 5 (INTx, MSI, MSI-X, ERR, REQ)
//! ```

use vfmig_abi::uapi::{DEVICE_INFO_MINSZ, vfio_device_info};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Payload, wire};
use crate::error::MessageError;

/// `struct vfio_user_device_info`: the kernel's `vfio_device_info` up to `num_irqs`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DeviceInfo {
    /// Request: most reply payload accepted; reply: payload size, 16.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*` (reply).
    pub flags: u32,
    /// Number of regions (reply).
    pub num_regions: u32,
    /// Number of IRQ indexes (reply).
    pub num_irqs: u32,
}

const _: () = assert!(size_of::<DeviceInfo>() == DEVICE_INFO_MINSZ as usize);
const _: () = assert!(
    std::mem::offset_of!(DeviceInfo, num_irqs) == std::mem::offset_of!(vfio_device_info, num_irqs)
);

impl DeviceInfo {
    /// `argsz` of the whole struct.
    pub const ARGSZ: u32 = DEVICE_INFO_MINSZ;

    /// The request: `argsz` 16, everything else zero.
    pub fn request() -> Self {
        Self {
            argsz: Self::ARGSZ,
            ..Self::default()
        }
    }
}

impl Payload<'_> for DeviceInfo {
    const NAME: &'static str = "DEVICE_GET_INFO";

    fn decode(body: &[u8]) -> Result<Self, MessageError> {
        // Longer bodies (the kernel's 24-byte struct) are read for their first 16 bytes.
        let info = wire::prefix::<Self>(body, Self::NAME)?;
        wire::check_argsz(info.argsz, Self::ARGSZ.into(), Self::NAME)?;
        Ok(info)
    }

    fn encode(&self) -> Result<Vec<u8>, MessageError> {
        wire::check_argsz(self.argsz, Self::ARGSZ.into(), Self::NAME)?;
        Ok(self.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reply_decodes() {
        let info = DeviceInfo {
            argsz: 16,
            flags: 3,
            num_regions: 10,
            num_irqs: 5,
        };
        assert_eq!(DeviceInfo::decode(info.as_bytes()).unwrap(), info);
    }

    #[test]
    fn argsz_below_16_is_einval() {
        let info = DeviceInfo {
            argsz: 15,
            ..DeviceInfo::default()
        };
        let err = DeviceInfo::decode(info.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            MessageError::ArgszTooSmall {
                argsz: 15,
                min: 16,
                ..
            }
        ));
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn the_24_byte_kernel_struct_is_read_for_its_first_16_bytes() {
        let info = DeviceInfo::decode(&[0x18; 24]).unwrap();
        assert_eq!(info.argsz, 0x1818_1818);
    }
}
