//! The conformance check every migratable device passes: drive a [`PciDevice`] through the
//! v1 migration region exactly as a VMM does — pre-copy while the device keeps working,
//! stop-and-copy until nothing is pending, STOP — then resume the chunks, in order and with
//! their sizes, into a fresh device and compare the whole state.

use vfmig_abi::DeviceState;
use vfmig_abi::migration_info::{
    DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, DEVICE_STATE_OFFSET, PENDING_BYTES_OFFSET,
};
use vfmig_vfio_user::server::Backend;

use crate::model::DeviceModel;
use crate::pci_device::{MIGRATION_REGION_INDEX, PciDevice};

/// What a conformance run moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Chunks, in order, as the source produced them.
    pub chunks: Vec<Vec<u8>>,
    /// Bytes sent in each pre-copy round.
    pub precopy_rounds: Vec<u64>,
    /// Bytes sent in stop-and-copy.
    pub stop_copy_bytes: u64,
}

fn set_state<M: DeviceModel>(dev: &mut PciDevice<M>, s: DeviceState) -> Result<(), String> {
    dev.region_write(
        MIGRATION_REGION_INDEX,
        DEVICE_STATE_OFFSET,
        &s.raw().to_le_bytes(),
    )
    .map_err(|e| format!("device_state <- {s}: {e}"))
}

fn read_u64<M: DeviceModel>(dev: &mut PciDevice<M>, offset: u64) -> Result<u64, String> {
    let mut b = [0u8; 8];
    dev.region_read(MIGRATION_REGION_INDEX, offset, &mut b)
        .map_err(|e| format!("read at {offset}: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

/// One save iteration: the next chunk, or `None` if nothing is pending.
fn next_chunk<M: DeviceModel>(dev: &mut PciDevice<M>) -> Result<Option<Vec<u8>>, String> {
    if read_u64(dev, PENDING_BYTES_OFFSET)? == 0 {
        return Ok(None);
    }
    let offset = read_u64(dev, DATA_OFFSET_OFFSET)?;
    let size = read_u64(dev, DATA_SIZE_OFFSET)?;
    let mut data = vec![0u8; usize::try_from(size).map_err(|e| e.to_string())?];
    dev.region_read(MIGRATION_REGION_INDEX, offset, &mut data)
        .map_err(|e| format!("data: {e}"))?;
    Ok(Some(data))
}

/// Saves `src`: `rounds` pre-copy rounds (each drains what is pending, calling `work` before
/// every chunk so the device changes under the save), then stop-and-copy, then STOP.
pub fn save<M: DeviceModel>(
    src: &mut PciDevice<M>,
    rounds: usize,
    mut work: impl FnMut(&mut PciDevice<M>),
) -> Result<Moved, String> {
    let mut moved = Moved::default();
    set_state(src, DeviceState::PRE_COPY)?;
    for _ in 0..rounds {
        let mut bytes = 0;
        // A round ends when the device has nothing pending, or after a bounded number of
        // chunks (a busy device may keep producing).
        for _ in 0..4096 {
            work(src);
            let Some(chunk) = next_chunk(src)? else { break };
            bytes += chunk.len() as u64;
            moved.chunks.push(chunk);
        }
        moved.precopy_rounds.push(bytes);
    }
    set_state(src, DeviceState::STOP_COPY)?;
    while let Some(chunk) = next_chunk(src)? {
        moved.stop_copy_bytes += chunk.len() as u64;
        moved.chunks.push(chunk);
    }
    set_state(src, DeviceState::STOP)?;
    Ok(moved)
}

/// Resumes `chunks` into `dst` (RESUMING, each chunk at `data_offset` then its `data_size`,
/// RUNNING).
pub fn resume<M: DeviceModel>(dst: &mut PciDevice<M>, chunks: &[Vec<u8>]) -> Result<(), String> {
    set_state(dst, DeviceState::RESUMING)?;
    for chunk in chunks {
        let offset = read_u64(dst, DATA_OFFSET_OFFSET)?;
        dst.region_write(MIGRATION_REGION_INDEX, offset, chunk)
            .map_err(|e| format!("data: {e}"))?;
        dst.region_write(
            MIGRATION_REGION_INDEX,
            DATA_SIZE_OFFSET,
            &(chunk.len() as u64).to_le_bytes(),
        )
        .map_err(|e| format!("data_size: {e}"))?;
    }
    set_state(dst, DeviceState::RUNNING)
}

/// The whole check: save `src` while `work` runs, resume into `dst`, and require equal
/// snapshots.
pub fn check<M: DeviceModel>(
    src: &mut PciDevice<M>,
    dst: &mut PciDevice<M>,
    rounds: usize,
    work: impl FnMut(&mut PciDevice<M>),
) -> Result<Moved, String> {
    let moved = save(src, rounds, work)?;
    resume(dst, &moved.chunks)?;
    if src.snapshot() != dst.snapshot() {
        return Err("the resumed device differs from the saved one".into());
    }
    Ok(moved)
}
