//! The fuzz harness, shared by the cargo-fuzz targets (nightly) and the corpus replay test
//! `tests/corpus_replay.rs` (stable), so both run the same checks on the same inputs.
//!
//! Each target resumes one sample device from bytes that came off the network, through its
//! migration region exactly as a client does: `device_state` = RESUMING, then per chunk a read
//! of `data_offset`, the chunk written there and `data_size` written, then RUNNING.
//!
//! The chunks are those a `PciDevice` saves: a tag byte, then either one of the model's own
//! chunks (the mtty's state; the dma-engine's device RAM pages, BAR4 pages or registers) or
//! the 256 bytes of the configuration space (for the dma-engine followed by its MSI-X table,
//! 2 entries of 16 bytes).
//!
//! An input is a sequence of chunks, each a little-endian `u16` length and that many bytes (the
//! last one cut to what is left). For `dma_engine_resume`:
//!
//! ```text
//! byte 0     flags: bit 0 AllMapped (the ring is reached by copies, never pinned; clear:
//!            Pinned); bit 1 both MSI-X vectors get an eventfd (SET_IRQS, MSI-X index,
//!            DATA_EVENTFD | ACTION_TRIGGER) before the BAR0 accesses
//! chunk 0    the guest memory at IOVA 0 when the device resumes: the descriptors its
//!            inherited ring will run
//! chunk 1    BAR0 accesses made after the resume, ACCESS bytes each (see `Bar0Access`):
//!            registers, doorbells (TAIL), the MSI-X table at 0x800 and PBA at 0xc00
//! chunks 2.. the resume data
//! ```
//!
//! Checked: resuming never panics, whatever the chunks; a device that resumed to RUNNING
//! survives its own migration unchanged (saved through STOP_COPY and resumed into a fresh
//! device, the state snapshot is the same); and it then serves register accesses (the
//! dma-engine's doorbell runs the ring it inherited) without a panic.

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, PENDING_BYTES_OFFSET};
use vfmig_abi::uapi::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfmig_device::devices::dma_engine::regs::MSIX_VECTORS;
use vfmig_device::devices::dma_engine::{DmaEngine, REGS_BAR};
use vfmig_device::devices::mtty::Mtty;
use vfmig_device::{DeviceModel, MIGRATION_REGION_INDEX, PciDevice};
use vfmig_iommu::{Backing, Container, DirtyScope, Iova, Prot};
use vfmig_vfio_user::message::IrqSet;
use vfmig_vfio_user::server::{Backend, IrqSetData};

/// The migration data section of every device here: room for a dma-engine chunk of 15 pages.
pub(crate) const DATA_CAPACITY: usize = 64 << 10;
/// The dma-engine's device RAM: 16 pages.
pub(crate) const DMA_RAM: u64 = 64 << 10;
/// Guest memory mapped at IOVA 0 for the dma-engine: room for the largest ring (4096 x 32 B).
pub(crate) const GUEST: u64 = 256 << 10;
/// The most chunks one input resumes (each costs a region round; inputs are small anyway).
const MAX_CHUNKS: usize = 64;

/// Splits an input into its chunks.
pub(crate) fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        if out.len() == MAX_CHUNKS {
            break;
        }
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (chunk, next) = rest.split_at(len);
        out.push(chunk);
        data = next;
    }
    out
}

/// Joins chunks into an input: the inverse of [`chunks`] (each must be under 64 KiB).
pub(crate) fn join(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let len = u16::try_from(c.len()).expect("a chunk under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

fn set_state<M: DeviceModel>(dev: &mut PciDevice<M>, s: DeviceState) -> bool {
    dev.region_write(MIGRATION_REGION_INDEX, 0, &s.raw().to_le_bytes())
        .is_ok()
}

fn read_u64<M: DeviceModel>(dev: &mut PciDevice<M>, offset: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    dev.region_read(MIGRATION_REGION_INDEX, offset, &mut b)
        .ok()?;
    Some(u64::from_le_bytes(b))
}

/// Resumes `dev` from `chunks` as a client does. Returns whether it reached RUNNING.
pub(crate) fn resume<M: DeviceModel>(dev: &mut PciDevice<M>, chunks: &[&[u8]]) -> bool {
    if !set_state(dev, DeviceState::RESUMING) {
        return false;
    }
    for chunk in chunks {
        let Some(offset) = read_u64(dev, DATA_OFFSET_OFFSET) else {
            return false;
        };
        let size = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        let written = dev
            .region_write(MIGRATION_REGION_INDEX, offset, chunk)
            .and_then(|()| {
                dev.region_write(
                    MIGRATION_REGION_INDEX,
                    DATA_SIZE_OFFSET,
                    &size.to_le_bytes(),
                )
            });
        if written.is_err() {
            return false;
        }
    }
    set_state(dev, DeviceState::RUNNING)
}

/// Saves `dev` through STOP_COPY, as a client does, and leaves it stopped; the chunks.
pub(crate) fn save<M: DeviceModel>(dev: &mut PciDevice<M>) -> Vec<Vec<u8>> {
    assert!(set_state(dev, DeviceState::STOP_COPY), "STOP_COPY refused");
    let mut out = Vec::new();
    while read_u64(dev, PENDING_BYTES_OFFSET).expect("pending_bytes") > 0 {
        let offset = read_u64(dev, DATA_OFFSET_OFFSET).expect("data_offset");
        let size = read_u64(dev, DATA_SIZE_OFFSET).expect("data_size");
        let mut chunk = vec![0u8; usize::try_from(size).expect("a data_size in memory")];
        dev.region_read(MIGRATION_REGION_INDEX, offset, &mut chunk)
            .expect("reading a chunk the device prepared");
        out.push(chunk);
    }
    assert!(set_state(dev, DeviceState::STOP), "STOP refused");
    out
}

/// Migrates a resumed device into `fresh`, and checks that nothing changed on the way.
fn round_trip<M: DeviceModel>(resumed: &mut PciDevice<M>, mut fresh: PciDevice<M>) {
    let before = resumed.snapshot();
    let saved = save(resumed);
    let refs: Vec<&[u8]> = saved.iter().map(Vec::as_slice).collect();
    assert!(
        resume(&mut fresh, &refs),
        "a device's own save does not resume"
    );
    assert!(
        fresh.snapshot() == before,
        "the state changed through save and resume"
    );
    assert!(set_state(resumed, DeviceState::RUNNING), "RUNNING refused");
}

pub(crate) fn mtty() -> PciDevice<Mtty> {
    PciDevice::with_data_capacity(Mtty::new(), DATA_CAPACITY).expect("an mtty")
}

/// Resumes an mtty from `data`. Returns whether it reached RUNNING.
pub(crate) fn mtty_resume(data: &[u8]) -> bool {
    let mut dev = mtty();
    if !resume(&mut dev, &chunks(data)) {
        return false;
    }
    round_trip(&mut dev, mtty());
    for port in 0..2 {
        for reg in 0..8 {
            let _ = dev.region_read(port, reg, &mut [0u8]);
        }
        let _ = dev.region_write(port, 0, b"x");
    }
    true
}

/// A container with [`GUEST`] bytes of zeroed guest memory at IOVA 0.
pub(crate) fn guest() -> Container {
    let container = Container::default();
    let size = usize::try_from(GUEST).expect("fits");
    let fd = vfmig_memory::memfd_sealed(c"fuzz-guest", size).expect("guest memory");
    container
        .map(
            Iova(0),
            GUEST,
            Prot::READ_WRITE,
            Backing::Fd {
                fd: fd.into(),
                offset: 0,
            },
        )
        .expect("map guest memory");
    container
}

pub(crate) fn dma_engine(container: &Container, scope: DirtyScope) -> PciDevice<DmaEngine> {
    let model = DmaEngine::with_scope(container.clone(), DMA_RAM, scope).expect("a dma-engine");
    PciDevice::with_data_capacity(model, DATA_CAPACITY).expect("a dma-engine")
}

/// Descriptors the doorbell runs at most, after a resume.
const MAX_RUN: u32 = 64;

/// Flags byte: the device is `AllMapped`.
pub(crate) const FLAG_ALL_MAPPED: u8 = 1;
/// Flags byte: both MSI-X vectors have an eventfd.
pub(crate) const FLAG_MSIX_EVENTFDS: u8 = 2;

/// One access to BAR0 after the resume, as ACCESS bytes of the input:
///
/// ```text
/// 0 offset u16  in BAR0 (taken modulo its 4 KiB)
/// 2 kind   u8   bits 1..0: length 1, 2, 4 or 8; bit 7: a write (else a read)
/// 3 pad    u8
/// 4 value  u64  what a write writes (its first `length` bytes)
/// ```
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bar0Access {
    pub(crate) offset: u16,
    pub(crate) len: usize,
    pub(crate) write: Option<u64>,
}

/// Bytes of one [`Bar0Access`] in the input.
pub(crate) const ACCESS: usize = 12;
const KIND_WRITE: u8 = 0x80;

impl Bar0Access {
    fn decode(b: &[u8; ACCESS]) -> Bar0Access {
        let [o0, o1, kind, _, value @ ..] = *b;
        Bar0Access {
            offset: u16::from_le_bytes([o0, o1]) % 4096,
            len: 1 << (kind & 3),
            write: (kind & KIND_WRITE != 0).then_some(u64::from_le_bytes(value)),
        }
    }

    /// The inverse of `decode`, for writing seeds.
    pub(crate) fn encode(&self) -> [u8; ACCESS] {
        let mut b = [0u8; ACCESS];
        b[..2].copy_from_slice(&self.offset.to_le_bytes());
        b[2] = u8::try_from(self.len.trailing_zeros()).expect("a length of 1, 2, 4 or 8")
            | if self.write.is_some() { KIND_WRITE } else { 0 };
        b[4..].copy_from_slice(&self.write.unwrap_or(0).to_le_bytes());
        b
    }
}

/// Gives both MSI-X vectors an "eventfd": the write end of a pipe (the device only writes
/// 8 bytes to it per interrupt, at most a few hundred per input, far below a pipe's buffer).
/// Returns the read ends, to keep open while the device runs (a closed one would make an
/// interrupt a SIGPIPE).
fn assign_msix_eventfds(dev: &mut PciDevice<DmaEngine>) -> Vec<std::io::PipeReader> {
    let mut readers = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..MSIX_VECTORS {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        readers.push(reader);
        fds.push(writer.into());
    }
    let set = IrqSet {
        argsz: 20,
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: u32::from(MSIX_VECTORS),
    };
    dev.set_irqs(&set, IrqSetData::Eventfds(fds))
        .expect("SET_IRQS of both MSI-X vectors");
    readers
}

/// Resumes a dma-engine from `data` (flags byte, guest memory, BAR0 accesses, then chunks).
/// Returns whether it reached RUNNING.
pub(crate) fn dma_engine_resume(data: &[u8]) -> bool {
    let Some((&flags, data)) = data.split_first() else {
        return false;
    };
    let scope = if flags & FLAG_ALL_MAPPED == 0 {
        DirtyScope::Pinned
    } else {
        DirtyScope::AllMapped
    };
    let chunks = chunks(data);
    let [memory, accesses, chunks @ ..] = chunks.as_slice() else {
        return false;
    };
    let container = guest();
    container
        .write(Iova(0), memory)
        .expect("a chunk fits guest memory");
    let mut dev = dma_engine(&container, scope);
    if !resume(&mut dev, chunks) {
        return false;
    }
    round_trip(&mut dev, dma_engine(&container, scope));
    let _eventfds = (flags & FLAG_MSIX_EVENTFDS != 0).then(|| assign_msix_eventfds(&mut dev));
    let regs = u32::try_from(REGS_BAR).expect("a BAR index");
    for access in accesses.chunks_exact(ACCESS) {
        let access = Bar0Access::decode(access.try_into().expect("ACCESS bytes"));
        let offset = u64::from(access.offset);
        let _ = match access.write {
            Some(value) => dev.region_write(regs, offset, &value.to_le_bytes()[..access.len]),
            None => dev.region_read(regs, offset, &mut [0u8; 8][..access.len]),
        };
    }
    for (offset, len) in [(0x08, 8), (0x10, 4), (0x14, 4), (0x18, 4), (0x1c, 4)] {
        let _ = dev.region_read(regs, offset, &mut [0u8; 8][..len]);
    }
    for (offset, len) in [(0x20, 4), (0x24, 4), (0x28, 8)] {
        let _ = dev.region_read(regs, offset, &mut [0u8; 8][..len]);
    }
    // The doorbell a few descriptors past the tail runs the inherited ring on the resumed
    // device RAM.
    let (mut tail, mut size) = ([0u8; 4], [0u8; 4]);
    let read = dev
        .region_read(regs, 0x18, &mut tail)
        .and_then(|()| dev.region_read(regs, 0x10, &mut size));
    let size = u32::from_le_bytes(size);
    if read.is_ok() && size > 1 {
        let next = u32::from_le_bytes(tail).wrapping_add(MAX_RUN.min(size - 1)) % size;
        let _ = dev.region_write(regs, 0x18, &next.to_le_bytes());
    }
    true
}
