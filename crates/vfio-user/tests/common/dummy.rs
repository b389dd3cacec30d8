//! A small device for tests and benchmarks, like rust-vmm vhost's dummy backend: config space,
//! one BAR with registers and a memfd-backed mmappable part, one eventfd IRQ, reset, and a
//! "stopped" flag its state policy reads.
//!
//! BAR layout (4 MiB): registers at `[0, 0x1000)` (trapped, kept in the device); the rest is a
//! memfd, of which `[0x1000, 0x2000)` and `[1 MiB, 4 MiB)` may be mmapped (the sparse areas).
//! Writing a doorbell register makes the device act, on the server thread, in the middle of
//! the REGION_WRITE: DMA through the container (so DMA_WRITE / DMA_READ for fd-less memory),
//! an IRQ, or a state change.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use vfmig_abi::uapi::{VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};
use vfmig_iommu::{Container, Iova};
use vfmig_vfio_user::Errno;
use vfmig_vfio_user::message::{Command, IrqSet, SparseMmapArea};
use vfmig_vfio_user::server::{
    Backend, DeviceDescription, IrqDescription, IrqSetData, RegionDescription, RegionMmap,
};

/// Region 0: 256 bytes of config space.
pub const CONFIG: u32 = 0;
/// Region 1: the BAR.
pub const BAR: u32 = 1;
/// Bytes of config space.
pub const CONFIG_SIZE: u64 = 256;
/// Bytes of the BAR.
pub const BAR_SIZE: u64 = 4 << 20;
/// Bytes of registers at the start of the BAR.
pub const REGS_SIZE: u64 = 0x1000;
/// The BAR's mmappable areas.
pub const BAR_AREAS: [SparseMmapArea; 2] = [
    SparseMmapArea {
        offset: 0x1000,
        size: 0x1000,
    },
    SparseMmapArea {
        offset: 1 << 20,
        size: 3 << 20,
    },
];
/// The only IRQ index, one vector.
pub const IRQ: u32 = 0;

/// A plain register, kept across clients, cleared by reset.
pub const REG_SCRATCH: u64 = 0x00;
/// IOVA of the next DMA.
pub const REG_DMA_ADDR: u64 = 0x08;
/// Length of the next DMA.
pub const REG_DMA_LEN: u64 = 0x10;
/// Byte the device writes with a DMA write.
pub const REG_DMA_PATTERN: u64 = 0x18;
/// Doorbell: the device writes `len` bytes of `pattern` at `addr`.
pub const REG_DMA_WRITE: u64 = 0x20;
/// Doorbell: the device reads `len` bytes at `addr`, sums them into `REG_DMA_SUM`.
pub const REG_DMA_READ: u64 = 0x28;
/// The sum of the bytes of the last DMA read.
pub const REG_DMA_SUM: u64 = 0x30;
/// Doorbell: the device fires its IRQ.
pub const REG_IRQ: u64 = 0x38;
/// Longest DMA the device does at once.
pub const MAX_DMA_LEN: u64 = 16 << 20;
/// 1: the device is stopped and refuses DMA_MAP / DMA_UNMAP (EINVAL); 0: running.
pub const REG_STOPPED: u64 = 0x40;

/// What the tests observe of the device.
#[derive(Debug, Default)]
pub struct DummyState {
    /// The registers.
    pub regs: Vec<u8>,
    /// Config space.
    pub config: Vec<u8>,
    /// The IRQ's eventfd, if the client gave one.
    pub irq_eventfd: Option<OwnedFd>,
    /// Resets done.
    pub resets: u32,
    /// Clients gone.
    pub clients_gone: u32,
    /// SET_IRQS calls that disabled the index.
    pub irq_disables: u32,
}

impl DummyState {
    /// The 8-byte register at `offset`.
    pub fn reg(&self, offset: u64) -> u64 {
        let at = offset as usize;
        u64::from_le_bytes(self.regs[at..at + 8].try_into().unwrap())
    }
}

/// The device.
pub struct Dummy {
    state: Arc<Mutex<DummyState>>,
    container: Container,
    bar: File,
    migration: bool,
}

/// A sparse memfd of `size` bytes.
pub fn memfd(size: u64) -> OwnedFd {
    let name = c"vfmig-vfio-user-test";
    // SAFETY: a valid NUL-terminated name; the returned fd is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(size).expect("size the memfd");
    file.into()
}

impl Dummy {
    /// A device that reaches guest memory through `container`.
    pub fn new(container: Container, migration: bool) -> (Self, Arc<Mutex<DummyState>>) {
        let state = Arc::new(Mutex::new(DummyState {
            regs: vec![0; REGS_SIZE as usize],
            config: vec![0; CONFIG_SIZE as usize],
            ..DummyState::default()
        }));
        let dummy = Self {
            state: Arc::clone(&state),
            container,
            // Sealed, as a device must seal what it lets its client map.
            bar: vfmig_memory::memfd_sealed(c"vfmig-vfio-user-test-bar", BAR_SIZE as usize)
                .expect("the BAR's memfd"),
            migration,
        };
        (dummy, state)
    }

    fn state(&self) -> MutexGuard<'_, DummyState> {
        self.state.lock().unwrap()
    }

    fn doorbell(&mut self, offset: u64) -> Result<(), Errno> {
        let (addr, len, pattern) = {
            let s = self.state();
            (
                s.reg(REG_DMA_ADDR),
                s.reg(REG_DMA_LEN),
                s.reg(REG_DMA_PATTERN) as u8,
            )
        };
        // The length comes from the client: bounded like any peer-driven allocation.
        if len > MAX_DMA_LEN {
            return Err(Errno::EINVAL);
        }
        let len = len as usize;
        match offset {
            REG_DMA_WRITE => self
                .container
                .write(Iova(addr), &vec![pattern; len])
                .map_err(Errno::from),
            REG_DMA_READ => {
                let mut buf = vec![0; len];
                self.container.read(Iova(addr), &mut buf)?;
                let sum: u64 = buf.iter().map(|&b| u64::from(b)).sum();
                let at = REG_DMA_SUM as usize;
                self.state().regs[at..at + 8].copy_from_slice(&sum.to_le_bytes());
                Ok(())
            }
            REG_IRQ => self.fire(),
            _ => Ok(()),
        }
    }

    fn fire(&self) -> Result<(), Errno> {
        let state = self.state();
        let Some(fd) = &state.irq_eventfd else {
            return Ok(());
        };
        File::from(fd.try_clone().map_err(Errno::from)?)
            .write_all(&1u64.to_ne_bytes())
            .map_err(Errno::from)
    }
}

impl Backend for Dummy {
    fn device_info(&self) -> DeviceDescription {
        DeviceDescription {
            flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
            num_regions: 2,
            num_irqs: 1,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionDescription<'_>, Errno> {
        match index {
            CONFIG => Ok(RegionDescription {
                size: CONFIG_SIZE,
                readable: true,
                writable: true,
                region_type: None,
                mmap: None,
            }),
            BAR => Ok(RegionDescription {
                size: BAR_SIZE,
                readable: true,
                writable: true,
                region_type: Some((0x8086, 1)),
                mmap: Some(RegionMmap {
                    fd: self.bar.as_fd(),
                    offset: 0,
                    areas: BAR_AREAS.to_vec(),
                }),
            }),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let at = offset as usize;
        match index {
            CONFIG => data.copy_from_slice(&self.state().config[at..at + data.len()]),
            BAR if offset < REGS_SIZE => {
                let end = at + data.len();
                if end as u64 > REGS_SIZE {
                    return Err(Errno::EINVAL);
                }
                data.copy_from_slice(&self.state().regs[at..end]);
            }
            BAR => self.bar.read_exact_at(data, offset)?,
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let at = offset as usize;
        match index {
            CONFIG => self.state().config[at..at + data.len()].copy_from_slice(data),
            BAR if offset < REGS_SIZE => {
                let end = at + data.len();
                if end as u64 > REGS_SIZE {
                    return Err(Errno::EINVAL);
                }
                self.state().regs[at..end].copy_from_slice(data);
                self.doorbell(offset)?;
            }
            BAR => self.bar.write_all_at(data, offset)?,
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn irq_info(&self, index: u32) -> Result<IrqDescription, Errno> {
        match index {
            IRQ => Ok(IrqDescription {
                count: 1,
                eventfd: true,
                maskable: false,
                automasked: false,
                noresize: true,
            }),
            _ => Err(Errno::EINVAL),
        }
    }

    fn set_irqs(&mut self, set: &IrqSet, data: IrqSetData<'_>) -> Result<(), Errno> {
        let mut state = self.state();
        match data {
            IrqSetData::None if set.count == 0 => {
                state.irq_eventfd = None;
                state.irq_disables += 1;
                Ok(())
            }
            IrqSetData::Eventfds(mut fds) => {
                state.irq_eventfd = fds.pop();
                Ok(())
            }
            IrqSetData::None | IrqSetData::Bool(_) => {
                drop(state);
                self.fire()
            }
        }
    }

    fn reset(&mut self) -> Result<(), Errno> {
        let mut state = self.state();
        state.regs.fill(0);
        state.resets += 1;
        Ok(())
    }

    fn check_command(&self, command: Command) -> Result<(), Errno> {
        let stopped = self.state().reg(REG_STOPPED) != 0;
        match command {
            Command::DmaMap | Command::DmaUnmap if stopped => Err(Errno::EINVAL),
            _ => Ok(()),
        }
    }

    fn migration_capable(&self) -> bool {
        self.migration
    }

    fn client_gone(&mut self) {
        self.state().clients_gone += 1;
    }
}
