//! DEVICE_GET_INFO, DEVICE_RESET, and the commands a client may not send.

use super::super::backend::Backend;
use super::super::session::Session;
use crate::errno::Errno;
use crate::message::{DeviceInfo, Header, Reply};

/// VERSION after the first message: EINVAL, as libvfio-user answers any command it does not
/// serve at that point.
pub(super) fn version_again() -> Result<(), Errno> {
    tracing::debug!("VERSION after negotiation");
    Err(Errno::EINVAL)
}

/// DMA_READ / DMA_WRITE are sent by the server only: EINVAL.
pub(super) fn wrong_direction() -> Result<(), Errno> {
    Err(Errno::EINVAL)
}

/// `VFIO_USER_DEVICE_GET_INFO`: the backend's description.
pub(super) fn info<B: Backend>(s: &mut Session<'_, B>, header: &Header) -> Result<(), Errno> {
    let device = s.backend.device_info();
    let info = DeviceInfo {
        argsz: DeviceInfo::ARGSZ,
        flags: device.flags,
        num_regions: device.num_regions,
        num_irqs: device.num_irqs,
    };
    s.reply(header, &Reply::DeviceGetInfo(info));
    Ok(())
}

/// `VFIO_USER_DEVICE_RESET`.
pub(super) fn reset<B: Backend>(s: &mut Session<'_, B>, header: &Header) -> Result<(), Errno> {
    s.backend.reset()?;
    s.reply(header, &Reply::DeviceReset);
    Ok(())
}
