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

use crate::ram::{GuestRam, RamError};

/// Guest RAM as a vfio-user client's memory: IOVA = guest-physical address.
pub(crate) struct RamDma(pub(crate) Arc<GuestRam>);

/// A guest RAM error as the errno the device's DMA fails with: EFAULT outside RAM.
fn errno(e: RamError) -> Errno {
    match e {
        RamError::Io(e) => Errno::from(e),
        _ => Errno::EFAULT,
    }
}

impl ClientMemory for RamDma {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.read(iova.raw(), buf).map_err(errno)
    }

    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), Errno> {
        self.0.write_for_device(iova.raw(), data).map_err(errno)
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
