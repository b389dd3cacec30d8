//! DEVICE_GET_IRQ_INFO and DEVICE_SET_IRQS.

use std::os::fd::OwnedFd;

use super::super::backend::{Backend, IrqSetData};
use super::super::session::Session;
use crate::errno::Errno;
use crate::message::{Header, IrqData, IrqInfo, IrqSetRequest, Reply};

/// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
pub(super) fn info<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: &IrqInfo,
) -> Result<(), Errno> {
    s.check_irq_index(request.index)?;
    let irq = s.backend.irq_info(request.index)?;
    let info = IrqInfo {
        argsz: IrqInfo::ARGSZ,
        flags: irq.flags(),
        index: request.index,
        count: irq.count,
    };
    s.reply(header, &Reply::DeviceGetIrqInfo(info));
    Ok(())
}

/// `VFIO_USER_DEVICE_SET_IRQS`: the index must exist and `[start, start + count)` lie within
/// its vectors (the form with `count` 0 disables the whole index).
pub(super) fn set<B: Backend>(
    s: &mut Session<'_, B>,
    header: &Header,
    request: &IrqSetRequest<'_>,
    fds: Vec<OwnedFd>,
) -> Result<(), Errno> {
    let set = &request.set;
    s.check_irq_index(set.index)?;
    let vectors = s.backend.irq_info(set.index)?.count;
    let end = u64::from(set.start) + u64::from(set.count);
    if set.count != 0 && end > u64::from(vectors) {
        return Err(Errno::EINVAL);
    }
    let data = match set.data_type()? {
        IrqData::None => IrqSetData::None,
        IrqData::Bool => IrqSetData::Bool(&request.data),
        IrqData::Eventfd => IrqSetData::Eventfds(fds),
    };
    s.backend.set_irqs(set, data)?;
    s.reply(header, &Reply::DeviceSetIrqs);
    Ok(())
}
