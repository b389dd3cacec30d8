//! The v1 `device_state` register, typed.
//!
//! ```text
//!  31                              3   2          1        0
//! +-------------------------------+----------+--------+---------+
//! |        reserved (kept)        | RESUMING | SAVING | RUNNING |
//! +-------------------------------+----------+--------+---------+
//! ```
//!
//! | bits | state |
//! |------|-------|
//! | 000  | STOP |
//! | 001  | RUNNING (the state at open) |
//! | 010  | STOP_COPY (stop-and-copy) |
//! | 011  | PRE_COPY |
//! | 100  | RESUMING |
//! | 110  | ERROR (`SAVING | RESUMING`), reported by a device, left only by a reset |
//! | 101, 111 | invalid |
//!
//! Bits 3–31 are reserved and a user must read-modify-write to keep them: [`DeviceState`] holds
//! the whole register, and [`DeviceState::with_state`] replaces only bits 0–2.

use std::fmt;

use crate::uapi::{
    VFIO_DEVICE_STATE_MASK, VFIO_DEVICE_STATE_V1_RESUMING, VFIO_DEVICE_STATE_V1_RUNNING,
    VFIO_DEVICE_STATE_V1_SAVING, VFIO_DEVICE_STATE_V1_STOP,
};

/// The whole 32-bit `device_state` register: the three state bits and the reserved bits 3–31.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeviceState(u32);

/// A named v1 state: the six meaningful values of bits 0–2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// 000b: stopped; the device neither runs nor saves.
    Stop,
    /// 001b: running; the default at open.
    Running,
    /// 010b: stop-and-copy; stopped, saving its final state.
    StopCopy,
    /// 011b: pre-copy; running while saving.
    PreCopy,
    /// 100b: resuming; loading state on the destination.
    Resuming,
    /// 110b: the error state; only a device reset leaves it.
    Error,
}

/// Bits 0–2 hold a value that names no state (101b or 111b).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device_state bits {bits:03b}b name no v1 state")]
pub struct InvalidDeviceState {
    /// The state bits (0–2) that were found.
    pub bits: u32,
}

impl DeviceState {
    /// 000b.
    pub const STOP: Self = Self(VFIO_DEVICE_STATE_V1_STOP);
    /// 001b.
    pub const RUNNING: Self = Self(VFIO_DEVICE_STATE_V1_RUNNING);
    /// 010b.
    pub const STOP_COPY: Self = Self(VFIO_DEVICE_STATE_V1_SAVING);
    /// 011b.
    pub const PRE_COPY: Self = Self(VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RUNNING);
    /// 100b.
    pub const RESUMING: Self = Self(VFIO_DEVICE_STATE_V1_RESUMING);
    /// 110b.
    pub const ERROR: Self = Self(VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RESUMING);

    /// The register bits that hold the state (0–2), `VFIO_DEVICE_STATE_MASK`.
    pub const MASK: u32 = VFIO_DEVICE_STATE_MASK;

    /// The register as read or to be written, reserved bits included.
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The whole register value.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bits 0–2 only.
    pub const fn bits(self) -> u32 {
        self.0 & Self::MASK
    }

    /// Bits 3–31 only.
    pub const fn reserved(self) -> u32 {
        self.0 & !Self::MASK
    }

    /// `VFIO_DEVICE_STATE_VALID`: a state with RESUMING set is valid only if no other state bit is
    /// set. Like the macro, this calls the error state 110b invalid: a user may never write it.
    pub const fn is_valid(self) -> bool {
        if self.0 & VFIO_DEVICE_STATE_V1_RESUMING != 0 {
            self.bits() == VFIO_DEVICE_STATE_V1_RESUMING
        } else {
            true
        }
    }

    /// `VFIO_DEVICE_STATE_IS_ERROR`: bits 0–2 are `SAVING | RESUMING`.
    pub const fn is_error(self) -> bool {
        self.bits() == Self::ERROR.0
    }

    /// The error state with this register's reserved bits kept: what the header's
    /// `VFIO_DEVICE_STATE_SET_ERROR` meant (it misspells `SAVING` and never compiled).
    #[must_use]
    pub const fn set_error(self) -> Self {
        self.with_state(Self::ERROR)
    }

    /// The read-modify-write update: bits 0–2 from `state`, bits 3–31 from `self`.
    #[must_use]
    pub const fn with_state(self, state: Self) -> Self {
        Self(self.reserved() | state.bits())
    }

    /// QEMU's `vfio_migration_set_state` arithmetic, `(self & mask) | value`. The result may be
    /// invalid; check it with [`DeviceState::is_valid`] before writing it.
    #[must_use]
    pub const fn update(self, mask: u32, value: u32) -> Self {
        Self((self.0 & mask) | value)
    }

    /// Bit 0 (RUNNING) is set.
    pub const fn is_running(self) -> bool {
        self.0 & VFIO_DEVICE_STATE_V1_RUNNING != 0
    }

    /// Bit 1 (SAVING) is set.
    pub const fn is_saving(self) -> bool {
        self.0 & VFIO_DEVICE_STATE_V1_SAVING != 0
    }

    /// Bit 2 (RESUMING) is set.
    pub const fn is_resuming(self) -> bool {
        self.0 & VFIO_DEVICE_STATE_V1_RESUMING != 0
    }

    /// The named state of bits 0–2, or an error for 101b and 111b.
    pub const fn kind(self) -> Result<StateKind, InvalidDeviceState> {
        Ok(match self.bits() {
            0b000 => StateKind::Stop,
            0b001 => StateKind::Running,
            0b010 => StateKind::StopCopy,
            0b011 => StateKind::PreCopy,
            0b100 => StateKind::Resuming,
            0b110 => StateKind::Error,
            bits => return Err(InvalidDeviceState { bits }),
        })
    }
}

impl StateKind {
    /// Every named state, in the order of their bits.
    pub const ALL: [StateKind; 6] = [
        StateKind::Stop,
        StateKind::Running,
        StateKind::StopCopy,
        StateKind::PreCopy,
        StateKind::Resuming,
        StateKind::Error,
    ];

    /// The register value of this state with no reserved bits.
    pub const fn state(self) -> DeviceState {
        match self {
            StateKind::Stop => DeviceState::STOP,
            StateKind::Running => DeviceState::RUNNING,
            StateKind::StopCopy => DeviceState::STOP_COPY,
            StateKind::PreCopy => DeviceState::PRE_COPY,
            StateKind::Resuming => DeviceState::RESUMING,
            StateKind::Error => DeviceState::ERROR,
        }
    }

    /// The name the series uses for this state.
    pub const fn name(self) -> &'static str {
        match self {
            StateKind::Stop => "STOP",
            StateKind::Running => "RUNNING",
            StateKind::StopCopy => "STOP_COPY",
            StateKind::PreCopy => "PRE_COPY",
            StateKind::Resuming => "RESUMING",
            StateKind::Error => "ERROR",
        }
    }
}

impl From<StateKind> for DeviceState {
    fn from(kind: StateKind) -> Self {
        kind.state()
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for DeviceState {
    /// `PRE_COPY (011b)`; an invalid value prints as `INVALID (101b)`; reserved bits, when set,
    /// follow as `reserved 0x...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind().map_or("INVALID", StateKind::name);
        write!(f, "{name} ({:03b}b", self.bits())?;
        if self.reserved() != 0 {
            write!(f, ", reserved {:#x}", self.reserved())?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceState({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_states_have_the_series_bits() {
        let bits: Vec<u32> = StateKind::ALL.iter().map(|k| k.state().raw()).collect();
        assert_eq!(bits, [0b000, 0b001, 0b010, 0b011, 0b100, 0b110]);
    }

    #[test]
    fn valid_matches_the_header_macro_for_every_value_of_the_low_byte() {
        for raw in 0..=u8::MAX.into() {
            let header = if raw & 4 != 0 { (raw & 7) == 4 } else { true };
            assert_eq!(
                DeviceState::from_raw(raw).is_valid(),
                header,
                "raw {raw:#x}"
            );
        }
    }

    #[test]
    fn error_state_is_invalid_to_write() {
        assert!(!DeviceState::ERROR.is_valid());
    }

    #[test]
    fn resuming_with_reserved_bits_is_valid() {
        assert!(DeviceState::from_raw(0xf000_0004).is_valid());
    }

    #[test]
    fn is_error_ignores_reserved_bits() {
        assert!(DeviceState::from_raw(0x8000_0006).is_error());
        assert!(!DeviceState::from_raw(0x8000_0002).is_error());
    }

    #[test]
    fn set_error_keeps_reserved_bits() {
        let s = DeviceState::from_raw(0xabc0_0003).set_error();
        assert_eq!(s.raw(), 0xabc0_0006);
    }

    #[test]
    fn with_state_keeps_reserved_bits_and_replaces_state_bits() {
        let s = DeviceState::from_raw(0x1230_0001).with_state(DeviceState::PRE_COPY);
        assert_eq!(s.raw(), 0x1230_0003);
    }

    #[test]
    fn with_state_ignores_reserved_bits_of_the_new_state() {
        let s = DeviceState::RUNNING.with_state(DeviceState::from_raw(0xffff_fff8));
        assert_eq!(s.raw(), 0);
    }

    #[test]
    fn update_is_qemus_mask_and_value() {
        let s = DeviceState::from_raw(0x100_0003).update(!1, 0);
        assert_eq!(s, DeviceState::from_raw(0x100_0002));
    }

    #[test]
    fn kind_refuses_101_and_111() {
        assert_eq!(
            DeviceState::from_raw(0b101).kind(),
            Err(InvalidDeviceState { bits: 0b101 })
        );
        assert_eq!(
            DeviceState::from_raw(0b111).kind(),
            Err(InvalidDeviceState { bits: 0b111 })
        );
    }

    #[test]
    fn display_names_the_state_and_its_bits() {
        assert_eq!(DeviceState::PRE_COPY.to_string(), "PRE_COPY (011b)");
        assert_eq!(DeviceState::from_raw(0b101).to_string(), "INVALID (101b)");
        assert_eq!(
            DeviceState::from_raw(0x10).to_string(),
            "STOP (000b, reserved 0x10)"
        );
    }
}
