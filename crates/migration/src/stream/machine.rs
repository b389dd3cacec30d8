//! The `MachineState` section: the guest's CPUs and interrupt controllers, sent once, paused, after
//! the last RAM the guest could change and before any device's configuration (whose MSI
//! routes need the machine).
//!
//! ```text
//!  MachineState   vcpus u32 | program_len u32 | state_len u32 | reserved u32 = 0 |
//!            program (program_len bytes) | state (state_len bytes)
//! ```
//!
//! `program` says what the guest runs (the VMM's description, opaque here) and `state` is
//! the hypervisor's state of the VM and each vCPU (opaque here; versioned and checksummed by
//! its own format). Both lengths are checked against the payload before anything is used.

use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::stream::error::PayloadError;
use crate::stream::kind::SectionKind;
use crate::stream::wire::{Cursor, reserved_zero};

/// The largest `MachineState` payload: 4 MiB holds the state of far more vCPUs than a VM of ours
/// has (each is about 10 KiB).
pub const MAX_MACHINE: u32 = 4 << 20;

/// Bytes of the `MachineState` header.
pub const MACHINE_HEADER_LEN: u32 = 16;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct MachineHeader {
    vcpus: U32,
    program_len: U32,
    state_len: U32,
    reserved: U32,
}

const _: () = assert!(size_of::<MachineHeader>() == MACHINE_HEADER_LEN as usize);

/// The guest machine: vCPU count, what it runs, and its hypervisor state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MachineState<'a> {
    /// vCPUs.
    pub vcpus: u32,
    /// What the guest runs, opaque to the stream.
    pub program: &'a [u8],
    /// The hypervisor state, opaque to the stream.
    pub state: &'a [u8],
}

impl<'a> MachineState<'a> {
    /// The header, or `None` if a length does not fit its field.
    pub(crate) fn header(&self) -> Option<MachineHeader> {
        Some(MachineHeader {
            vcpus: U32::new(self.vcpus),
            program_len: U32::new(u32::try_from(self.program.len()).ok()?),
            state_len: U32::new(u32::try_from(self.state.len()).ok()?),
            reserved: U32::new(0),
        })
    }

    /// Decodes a `MachineState` payload.
    ///
    /// # Errors
    /// [`PayloadError`] for a short header, a reserved field set, or lengths that do not add
    /// up to the payload.
    pub fn decode(payload: &'a [u8]) -> Result<MachineState<'a>, PayloadError> {
        let mut cursor = Cursor::new(payload);
        let header = cursor.read::<MachineHeader>()?;
        reserved_zero("machine reserved", header.reserved.get().into())?;
        let rest = cursor.rest();
        let program_len = usize::try_from(header.program_len.get()).unwrap_or(usize::MAX);
        let state_len = usize::try_from(header.state_len.get()).unwrap_or(usize::MAX);
        let expected = program_len.saturating_add(state_len);
        if expected != rest.len() {
            return Err(PayloadError::Length {
                kind: SectionKind::Machine,
                expected: expected.saturating_add(MACHINE_HEADER_LEN as usize),
                found: payload.len(),
            });
        }
        let (program, state) = rest.split_at(program_len);
        Ok(MachineState {
            vcpus: header.vcpus.get(),
            program,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(m: &MachineState<'_>) -> Vec<u8> {
        let mut out = m.header().unwrap().as_bytes().to_vec();
        out.extend_from_slice(m.program);
        out.extend_from_slice(m.state);
        out
    }

    #[test]
    fn a_machine_section_decodes_to_what_was_encoded() {
        let m = MachineState {
            vcpus: 2,
            program: b"{\"vcpus\":2}",
            state: &[7; 100],
        };
        assert_eq!(MachineState::decode(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let m = MachineState {
            vcpus: 1,
            program: b"p",
            state: b"state",
        };
        let mut bytes = encode(&m);
        bytes.pop();
        assert!(matches!(
            MachineState::decode(&bytes),
            Err(PayloadError::Length { .. })
        ));
    }
}
