//! Guest RAM served to a device through DMA_READ / DMA_WRITE messages, for a device attached
//! with [`DmaPath::Messages`](crate::DmaPath::Messages): its mappings are made without an fd,
//! so the device process never maps guest memory and every byte it reads or writes is a
//! message the VMM's vfio-user client answers from here.
//!
//! A DMA_WRITE is not put in the VMM's own dirty log: the client records the page (while
//! dirty tracking is on) and reports it with the device's dirty bitmap, in place of the bitmap
//! the device's server keeps no longer for memory it was not given an fd of. The migration's
//! sync asks the device for that bitmap as for any other, so the page is sent.

use std::sync::Arc;

use vfmig_memory::Iova;
use vfmig_vfio_user::{ClientMemory, Errno};

use crate::ram::GuestRam;

/// Guest RAM as a vfio-user client's memory: IOVA = guest-physical address.
pub(crate) struct RamDma(pub(crate) Arc<GuestRam>);

impl RamDma {
    /// The region holding `[iova, iova + len)` and the offset of `iova` in it (EFAULT if no
    /// one region holds it all).
    fn locate(&self, iova: Iova, len: usize) -> Result<(&crate::RamRegion, usize), Errno> {
        let (gpa, len) = (iova.raw(), len as u64);
        let region = self
            .0
            .regions()
            .iter()
            .find(|r| {
                gpa >= r.gpa()
                    && gpa
                        .checked_add(len)
                        .is_some_and(|end| end <= r.gpa() + r.size())
            })
            .ok_or(Errno::EFAULT)?;
        let offset = usize::try_from(gpa - region.gpa()).map_err(|_| Errno::EFAULT)?;
        Ok((region, offset))
    }
}

impl ClientMemory for RamDma {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), Errno> {
        let (region, offset) = self.locate(iova, buf.len())?;
        region.mapping().read(offset, buf).map_err(Errno::from)
    }

    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), Errno> {
        let (region, offset) = self.locate(iova, data.len())?;
        region.mapping().write(offset, data).map_err(Errno::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> Arc<GuestRam> {
        Arc::new(GuestRam::new(&[(0, 2 << 20), (4 << 20, 2 << 20)]).unwrap())
    }

    #[test]
    fn a_dma_write_lands_in_guest_ram_and_reads_back() {
        let ram = ram();
        let dma = RamDma(ram.clone());
        dma.write(Iova((4 << 20) + 8), b"guest").unwrap();
        let mut back = [0u8; 5];
        ram.read((4 << 20) + 8, &mut back).unwrap();
        assert_eq!(&back, b"guest");
        let mut again = [0u8; 5];
        dma.read(Iova((4 << 20) + 8), &mut again).unwrap();
        assert_eq!(&again, b"guest");
    }

    #[test]
    fn a_dma_write_is_left_out_of_the_vmm_log() {
        let ram = ram();
        RamDma(ram.clone()).write(Iova(0x1000), &[1; 16]).unwrap();
        let mut bits = vec![0u64; 8];
        ram.take_dirty(0, &mut bits).unwrap();
        assert!(bits.iter().all(|&w| w == 0), "{bits:x?}");
    }

    #[test]
    fn an_access_outside_one_region_is_efault() {
        let dma = RamDma(ram());
        let mut buf = [0u8; 2];
        assert_eq!(dma.read(Iova((2 << 20) - 1), &mut buf), Err(Errno::EFAULT));
        assert_eq!(dma.write(Iova(3 << 20), &buf), Err(Errno::EFAULT));
    }
}
