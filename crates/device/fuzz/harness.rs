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
//! last one cut to what is left). For `dma_engine_resume` a first byte comes before them (bit 0
//! set makes the device `AllMapped`: it reaches its ring by copies and runs it without a pin;
//! clear, `Pinned`), and the first chunk is not resume data but the guest memory at IOVA 0
//! when the device resumes: the descriptors its inherited ring will run.
//!
//! Checked: resuming never panics, whatever the chunks; a device that resumed to RUNNING
//! survives its own migration unchanged (saved through STOP_COPY and resumed into a fresh
//! device, the state snapshot is the same); and it then serves register accesses (the
//! dma-engine's doorbell runs the ring it inherited) without a panic.

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, PENDING_BYTES_OFFSET};
use vfmig_device::devices::dma_engine::{DmaEngine, REGS_BAR};
use vfmig_device::devices::mtty::Mtty;
use vfmig_device::{DeviceModel, MIGRATION_REGION_INDEX, PciDevice};
use vfmig_iommu::{Backing, Container, DirtyScope, Iova, Prot};
use vfmig_vfio_user::server::Backend;

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

/// Resumes a dma-engine from `data` (scope byte, guest memory, then chunks). Returns whether it
/// reached RUNNING.
pub(crate) fn dma_engine_resume(data: &[u8]) -> bool {
    let Some((&scope, data)) = data.split_first() else {
        return false;
    };
    let scope = if scope & 1 == 0 {
        DirtyScope::Pinned
    } else {
        DirtyScope::AllMapped
    };
    let chunks = chunks(data);
    let Some((memory, chunks)) = chunks.split_first() else {
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
    let regs = u32::try_from(REGS_BAR).expect("a BAR index");
    for (offset, len) in [(0x08, 8), (0x10, 4), (0x14, 4), (0x18, 4), (0x1c, 4)] {
        let _ = dev.region_read(regs, offset, &mut [0u8; 8][..len]);
    }
    for (offset, len) in [(0x20, 4), (0x24, 4), (0x28, 8)] {
        let _ = dev.region_read(regs, offset, &mut [0u8; 8][..len]);
    }
    // The doorbell a few descriptors past the inherited tail runs the inherited ring on the
    // resumed device RAM.
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
