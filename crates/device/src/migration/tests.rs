//! One test per rule of the v1 migration region.
#![allow(clippy::cast_possible_truncation)]

use vfmig_abi::migration_info::{
    DATA_OFFSET_OFFSET, DATA_SIZE_OFFSET, DEVICE_STATE_OFFSET, PENDING_BYTES_OFFSET,
    RESERVED_OFFSET,
};
use vfmig_abi::{DeviceState, StateKind};

use super::*;
use crate::migratable::{Migratable, MigratableError};

/// A device whose state is a byte vector, saved in chunks of `chunk` bytes.
#[derive(Default)]
struct Blob {
    state: Vec<u8>,
    /// Bytes of `state` not yet saved in this save.
    cursor: usize,
    chunk: usize,
    loaded: Vec<u8>,
    transitions: Vec<(StateKind, StateKind)>,
    fail_transition: bool,
    fail_load: bool,
}

impl Blob {
    fn new(len: usize, chunk: usize) -> Self {
        Blob {
            state: (0..len).map(|i| (i * 7 + 1) as u8).collect(),
            chunk,
            ..Default::default()
        }
    }
}

impl Migratable for Blob {
    fn set_state(&mut self, from: StateKind, to: StateKind) -> Result<(), MigratableError> {
        if self.fail_transition {
            return Err(MigratableError::new(libc::EIO, "refused"));
        }
        if to == StateKind::PreCopy || (to == StateKind::StopCopy && from != StateKind::PreCopy) {
            self.cursor = 0;
        }
        self.transitions.push((from, to));
        Ok(())
    }
    fn pending_bytes(&mut self) -> Result<u64, MigratableError> {
        Ok((self.state.len() - self.cursor) as u64)
    }
    fn save_chunk(&mut self, buf: &mut [u8]) -> Result<usize, MigratableError> {
        let n = self
            .chunk
            .min(buf.len())
            .min(self.state.len() - self.cursor);
        buf[..n].copy_from_slice(&self.state[self.cursor..self.cursor + n]);
        self.cursor += n;
        Ok(n)
    }
    fn load_chunk(&mut self, chunk: &[u8]) -> Result<(), MigratableError> {
        if self.fail_load {
            return Err(MigratableError::bad_chunk("corrupt"));
        }
        self.loaded.extend_from_slice(chunk);
        Ok(())
    }
}

const CAP: usize = 64 * 1024;

fn region() -> MigrationRegion {
    MigrationRegion::new(CAP).unwrap()
}

fn read_u32(r: &mut MigrationRegion, d: &mut Blob, off: u64) -> Result<u32, AccessError> {
    let mut b = [0u8; 4];
    r.read(d, off, &mut b).map(|()| u32::from_le_bytes(b))
}

fn read_u64(r: &mut MigrationRegion, d: &mut Blob, off: u64) -> Result<u64, AccessError> {
    let mut b = [0u8; 8];
    r.read(d, off, &mut b).map(|()| u64::from_le_bytes(b))
}

fn set(r: &mut MigrationRegion, d: &mut Blob, s: DeviceState) -> Result<(), AccessError> {
    r.write(d, DEVICE_STATE_OFFSET, &s.raw().to_le_bytes())
}

/// Drives a fresh region into `kind` through allowed transitions.
fn reach(kind: StateKind) -> (MigrationRegion, Blob) {
    let (mut r, mut d) = (region(), Blob::new(100, 10));
    let path: &[DeviceState] = match kind {
        StateKind::Running => &[],
        StateKind::Stop => &[DeviceState::STOP],
        StateKind::StopCopy => &[DeviceState::STOP_COPY],
        StateKind::PreCopy => &[DeviceState::PRE_COPY],
        StateKind::Resuming => &[DeviceState::RESUMING],
        StateKind::Error => {
            d.fail_transition = true;
            let _ = set(&mut r, &mut d, DeviceState::STOP);
            d.fail_transition = false;
            &[]
        }
    };
    for s in path {
        set(&mut r, &mut d, *s).unwrap();
    }
    assert_eq!(r.kind(), kind);
    (r, d)
}

/// Saves everything the device produces from its current saving state into chunks.
fn drain(r: &mut MigrationRegion, d: &mut Blob) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while read_u64(r, d, PENDING_BYTES_OFFSET).unwrap() > 0 {
        let off = read_u64(r, d, DATA_OFFSET_OFFSET).unwrap();
        let size = read_u64(r, d, DATA_SIZE_OFFSET).unwrap();
        let mut buf = vec![0u8; size as usize];
        r.read(d, off, &mut buf).unwrap();
        chunks.push(buf);
    }
    chunks
}

fn load(r: &mut MigrationRegion, d: &mut Blob, chunk: &[u8]) -> Result<(), AccessError> {
    let off = read_u64(r, d, DATA_OFFSET_OFFSET)?;
    r.write(d, off, chunk)?;
    r.write(d, DATA_SIZE_OFFSET, &(chunk.len() as u64).to_le_bytes())
}

// device_state

#[test]
fn device_state_reads_running_at_open() {
    let (mut r, mut d) = (region(), Blob::default());
    assert_eq!(
        read_u32(&mut r, &mut d, 0).unwrap(),
        DeviceState::RUNNING.raw()
    );
}

#[test]
fn writing_101b_is_einval_and_keeps_the_state() {
    let (mut r, mut d) = reach(StateKind::Running);
    let e = set(&mut r, &mut d, DeviceState::from_raw(0b101)).unwrap_err();
    assert_eq!((e.errno(), r.kind()), (libc::EINVAL, StateKind::Running));
}

#[test]
fn writing_111b_is_einval_and_keeps_the_state() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    let e = set(&mut r, &mut d, DeviceState::from_raw(0b111)).unwrap_err();
    assert_eq!((e.errno(), r.kind()), (libc::EINVAL, StateKind::PreCopy));
}

#[test]
fn writing_the_error_state_is_einval() {
    let (mut r, mut d) = reach(StateKind::Running);
    assert_eq!(
        set(&mut r, &mut d, DeviceState::ERROR).unwrap_err(),
        AccessError::InvalidState(DeviceState::ERROR)
    );
    assert_eq!(r.kind(), StateKind::Running);
}

fn check_transitions_from(from: StateKind, expect_allowed: &[StateKind]) {
    for to in StateKind::ALL {
        let (mut r, mut d) = reach(from);
        let result = set(&mut r, &mut d, to.state());
        if expect_allowed.contains(&to) || to == from && from != StateKind::Error {
            assert!(result.is_ok(), "{from} -> {to} must be allowed: {result:?}");
            assert_eq!(r.kind(), to);
        } else {
            assert_eq!(result.unwrap_err().errno(), libc::EINVAL, "{from} -> {to}");
            assert_eq!(r.kind(), from, "{from} -> {to} must leave the state");
        }
    }
}

#[test]
fn transitions_from_running() {
    use StateKind::*;
    check_transitions_from(Running, &[Stop, StopCopy, PreCopy, Resuming]);
}

#[test]
fn transitions_from_stop() {
    use StateKind::*;
    check_transitions_from(Stop, &[Running, StopCopy]);
}

#[test]
fn transitions_from_pre_copy() {
    use StateKind::*;
    check_transitions_from(PreCopy, &[StopCopy, Running, Stop]);
}

#[test]
fn transitions_from_stop_copy() {
    use StateKind::*;
    check_transitions_from(StopCopy, &[Stop, Running]);
}

#[test]
fn transitions_from_resuming() {
    use StateKind::*;
    check_transitions_from(Resuming, &[Running]);
}

#[test]
fn transitions_from_error() {
    check_transitions_from(StateKind::Error, &[]);
}

#[test]
fn writing_the_current_state_is_a_no_op() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    let before = d.transitions.len();
    set(&mut r, &mut d, DeviceState::PRE_COPY).unwrap();
    assert_eq!(d.transitions.len(), before);
}

#[test]
fn state_writes_keep_the_reserved_bits() {
    let (mut r, mut d) = reach(StateKind::Running);
    set(&mut r, &mut d, DeviceState::from_raw(0xff00_0003)).unwrap();
    assert_eq!(r.state(), DeviceState::PRE_COPY);
}

#[test]
fn a_failed_transition_puts_the_device_in_error() {
    let (mut r, mut d) = reach(StateKind::Running);
    d.fail_transition = true;
    let e = set(&mut r, &mut d, DeviceState::PRE_COPY).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(r.state().is_error());
    assert_eq!(read_u32(&mut r, &mut d, 0).unwrap(), 0b110);
}

#[test]
fn only_reset_leaves_the_error_state() {
    let (mut r, mut d) = reach(StateKind::Error);
    assert_eq!(
        set(&mut r, &mut d, DeviceState::RUNNING).unwrap_err(),
        AccessError::InError
    );
    r.reset();
    assert_eq!(r.kind(), StateKind::Running);
}

// Widths and offsets

#[test]
fn device_state_accessed_with_8_bytes_is_einval() {
    let (mut r, mut d) = reach(StateKind::Running);
    assert!(matches!(
        read_u64(&mut r, &mut d, 0),
        Err(AccessError::NotAField { .. })
    ));
}

#[test]
fn device_state_accessed_with_2_bytes_is_einval() {
    let (mut r, mut d) = reach(StateKind::Running);
    let e = r.write(&mut d, 0, &[1, 0]).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert_eq!(r.kind(), StateKind::Running);
}

#[test]
fn pending_bytes_accessed_with_4_bytes_is_einval() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    assert!(matches!(
        read_u32(&mut r, &mut d, PENDING_BYTES_OFFSET),
        Err(AccessError::NotAField { .. })
    ));
}

#[test]
fn misaligned_access_inside_a_field_is_einval() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    assert!(matches!(
        read_u32(&mut r, &mut d, 12),
        Err(AccessError::NotAField { .. })
    ));
}

#[test]
fn access_between_the_registers_and_the_data_section_is_einval() {
    let (mut r, mut d) = reach(StateKind::Running);
    assert!(matches!(
        read_u64(&mut r, &mut d, 32),
        Err(AccessError::NotAField { .. })
    ));
    assert!(matches!(
        read_u64(&mut r, &mut d, 4088),
        Err(AccessError::NotAField { .. })
    ));
}

#[test]
fn reserved_reads_zero_and_ignores_writes() {
    let (mut r, mut d) = reach(StateKind::Running);
    r.write(&mut d, RESERVED_OFFSET, &[0xff; 4]).unwrap();
    assert_eq!(read_u32(&mut r, &mut d, RESERVED_OFFSET).unwrap(), 0);
}

#[test]
fn pending_bytes_is_read_only() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    assert!(matches!(
        r.write(&mut d, PENDING_BYTES_OFFSET, &[0; 8]),
        Err(AccessError::ReadOnly { .. })
    ));
}

#[test]
fn data_offset_is_read_only() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    assert!(matches!(
        r.write(&mut d, DATA_OFFSET_OFFSET, &[0; 8]),
        Err(AccessError::ReadOnly { .. })
    ));
}

#[test]
fn data_size_is_read_only_while_saving() {
    let (mut r, mut d) = reach(StateKind::StopCopy);
    assert!(matches!(
        r.write(&mut d, DATA_SIZE_OFFSET, &[0; 8]),
        Err(AccessError::ReadOnly { .. })
    ));
}

// The save sequence

#[test]
fn pending_bytes_outside_saving_is_einval() {
    for kind in [StateKind::Running, StateKind::Stop, StateKind::Resuming] {
        let (mut r, mut d) = reach(kind);
        assert!(
            matches!(
                read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET),
                Err(AccessError::OutOfSequence { .. })
            ),
            "{kind}"
        );
    }
}

#[test]
fn data_offset_before_pending_bytes_is_einval() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    assert!(matches!(
        read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn data_size_before_data_offset_is_einval() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    assert!(matches!(
        read_u64(&mut r, &mut d, DATA_SIZE_OFFSET),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn data_read_before_data_offset_is_einval() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    let mut b = [0u8; 4];
    assert!(matches!(
        r.read(&mut d, DATA_OFFSET, &mut b),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn data_read_beyond_the_chunk_is_einval() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    let off = read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    let mut b = [0u8; 11];
    assert!(matches!(
        r.read(&mut d, off, &mut b),
        Err(AccessError::OutsideData { .. })
    ));
}

#[test]
fn repeated_pending_bytes_reads_have_no_side_effect() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    let a = read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    d.state.push(1); // the device grows; the cached value stands until the chunk is taken
    assert_eq!(read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap(), a);
}

#[test]
fn repeated_data_offset_and_data_size_reads_return_the_same_chunk() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    let o1 = read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    let s1 = read_u64(&mut r, &mut d, DATA_SIZE_OFFSET).unwrap();
    let o2 = read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    let s2 = read_u64(&mut r, &mut d, DATA_SIZE_OFFSET).unwrap();
    assert_eq!((o1, s1), (o2, s2));
    assert_eq!(d.cursor, 10, "one chunk produced");
}

#[test]
fn data_offset_is_page_aligned() {
    let (mut r, mut d) = reach(StateKind::StopCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    assert_eq!(
        read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap() % 4096,
        0
    );
}

#[test]
fn reading_pending_bytes_again_acknowledges_the_chunk() {
    let (mut r, mut d) = reach(StateKind::StopCopy);
    assert_eq!(read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap(), 100);
    read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    assert_eq!(read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap(), 90);
}

#[test]
fn stop_copy_iterates_until_pending_bytes_is_zero() {
    let (mut r, mut d) = reach(StateKind::StopCopy);
    let chunks = drain(&mut r, &mut d);
    assert_eq!(chunks.len(), 10);
    assert_eq!(chunks.concat(), d.state);
}

#[test]
fn pre_copy_may_switch_to_stop_copy_with_data_pending() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    set(&mut r, &mut d, DeviceState::STOP_COPY).unwrap();
    assert_eq!(read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap(), 90);
}

#[test]
fn a_state_change_ends_the_iteration() {
    let (mut r, mut d) = reach(StateKind::PreCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    set(&mut r, &mut d, DeviceState::STOP_COPY).unwrap();
    assert!(matches!(
        read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn the_data_section_is_readable_through_its_memfd() {
    let (mut r, mut d) = reach(StateKind::StopCopy);
    read_u64(&mut r, &mut d, PENDING_BYTES_OFFSET).unwrap();
    let off = read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    let file = std::fs::File::from(r.fd().try_clone_to_owned().unwrap());
    let mut b = [0u8; 10];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, off).unwrap();
    assert_eq!(&b[..], &d.state[..10]);
    assert_eq!(r.sparse_areas(), [(DATA_OFFSET, CAP as u64)]);
}

// The resume sequence

#[test]
fn resuming_consumes_each_chunk_when_data_size_is_written() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    load(&mut r, &mut d, b"hello").unwrap();
    assert_eq!(d.loaded, b"hello");
    load(&mut r, &mut d, b"world").unwrap();
    assert_eq!(d.loaded, b"helloworld");
}

#[test]
fn data_size_write_before_data_offset_is_einval() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    assert!(matches!(
        r.write(&mut d, DATA_SIZE_OFFSET, &5u64.to_le_bytes()),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn data_write_before_data_offset_is_einval() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    assert!(matches!(
        r.write(&mut d, DATA_OFFSET, b"x"),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn data_size_larger_than_the_section_is_einval() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    let e = r
        .write(&mut d, DATA_SIZE_OFFSET, &(CAP as u64 + 1).to_le_bytes())
        .unwrap_err();
    assert!(matches!(e, AccessError::ChunkTooLarge { .. }));
    assert!(d.loaded.is_empty());
}

#[test]
fn data_size_is_not_readable_while_resuming() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    assert!(matches!(
        read_u64(&mut r, &mut d, DATA_SIZE_OFFSET),
        Err(AccessError::OutOfSequence { .. })
    ));
}

#[test]
fn a_failed_load_puts_the_device_in_error() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    d.fail_load = true;
    assert_eq!(
        load(&mut r, &mut d, b"junk").unwrap_err().errno(),
        libc::EINVAL
    );
    assert!(r.state().is_error());
}

#[test]
fn the_data_section_is_writable_through_its_memfd() {
    let (mut r, mut d) = reach(StateKind::Resuming);
    let off = read_u64(&mut r, &mut d, DATA_OFFSET_OFFSET).unwrap();
    let file = std::fs::File::from(r.fd().try_clone_to_owned().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&file, b"mapped", off).unwrap();
    r.write(&mut d, DATA_SIZE_OFFSET, &6u64.to_le_bytes())
        .unwrap();
    assert_eq!(d.loaded, b"mapped");
}

#[test]
fn a_whole_save_resumes_into_a_fresh_device() {
    let (mut src, mut dev) = reach(StateKind::PreCopy);
    let mut chunks = drain(&mut src, &mut dev);
    set(&mut src, &mut dev, DeviceState::STOP_COPY).unwrap();
    chunks.extend(drain(&mut src, &mut dev));
    set(&mut src, &mut dev, DeviceState::STOP).unwrap();
    let (mut dst, mut fresh) = reach(StateKind::Resuming);
    for c in &chunks {
        load(&mut dst, &mut fresh, c).unwrap();
    }
    set(&mut dst, &mut fresh, DeviceState::RUNNING).unwrap();
    assert_eq!(fresh.loaded, dev.state);
}
