//! The register layout of `struct vfio_device_migration_info`, at offset 0 of the v1 migration
//! region.
//!
//! ```text
//! offset  width  field          access
//!      0      4  device_state   read / write (bits 3-31 reserved, kept)
//!      4      4  reserved       reads 0, writes ignored
//!      8      8  pending_bytes  read only
//!     16      8  data_offset    read only; reading it makes a chunk available while saving
//!     24      8  data_size      read while saving, written while resuming
//!     32         (data section, wherever data_offset points)
//! ```
//!
//! The series allows each field to be accessed only at its native width and alignment; a device
//! should refuse anything else. [`Field::at`] finds the field an access names, if it names one
//! exactly.

use std::mem::{offset_of, size_of};

use crate::uapi::vfio_device_migration_info as Info;

/// One register of the migration info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// `device_state`, 4 bytes at offset 0.
    DeviceState,
    /// `reserved`, 4 bytes at offset 4.
    Reserved,
    /// `pending_bytes`, 8 bytes at offset 8.
    PendingBytes,
    /// `data_offset`, 8 bytes at offset 16.
    DataOffset,
    /// `data_size`, 8 bytes at offset 24.
    DataSize,
}

/// Offset of `device_state`.
pub const DEVICE_STATE_OFFSET: u64 = offset_of!(Info, device_state) as u64;
/// Offset of `reserved`.
pub const RESERVED_OFFSET: u64 = offset_of!(Info, reserved) as u64;
/// Offset of `pending_bytes`.
pub const PENDING_BYTES_OFFSET: u64 = offset_of!(Info, pending_bytes) as u64;
/// Offset of `data_offset`.
pub const DATA_OFFSET_OFFSET: u64 = offset_of!(Info, data_offset) as u64;
/// Offset of `data_size`.
pub const DATA_SIZE_OFFSET: u64 = offset_of!(Info, data_size) as u64;
/// Size of the whole structure; the data section may start at or after it.
pub const INFO_SIZE: u64 = size_of::<Info>() as u64;

const _: () = {
    assert!(DEVICE_STATE_OFFSET == 0);
    assert!(RESERVED_OFFSET == 4);
    assert!(PENDING_BYTES_OFFSET == 8);
    assert!(DATA_OFFSET_OFFSET == 16);
    assert!(DATA_SIZE_OFFSET == 24);
    assert!(INFO_SIZE == 32);
};

impl Field {
    /// Every field, in register order.
    pub const ALL: [Field; 5] = [
        Field::DeviceState,
        Field::Reserved,
        Field::PendingBytes,
        Field::DataOffset,
        Field::DataSize,
    ];

    /// Byte offset of the field in the region.
    pub const fn offset(self) -> u64 {
        match self {
            Field::DeviceState => DEVICE_STATE_OFFSET,
            Field::Reserved => RESERVED_OFFSET,
            Field::PendingBytes => PENDING_BYTES_OFFSET,
            Field::DataOffset => DATA_OFFSET_OFFSET,
            Field::DataSize => DATA_SIZE_OFFSET,
        }
    }

    /// Native width of the field in bytes: the only access size the series allows.
    pub const fn width(self) -> usize {
        match self {
            Field::DeviceState | Field::Reserved => 4,
            Field::PendingBytes | Field::DataOffset | Field::DataSize => 8,
        }
    }

    /// The field an access of `len` bytes at `offset` names exactly (its offset and its native
    /// width), or `None` if the access is misaligned, of another width, or partly outside.
    pub fn at(offset: u64, len: usize) -> Option<Field> {
        Field::ALL
            .into_iter()
            .find(|f| f.offset() == offset && f.width() == len)
    }

    /// The field's name in the header.
    pub const fn name(self) -> &'static str {
        match self {
            Field::DeviceState => "device_state",
            Field::Reserved => "reserved",
            Field::PendingBytes => "pending_bytes",
            Field::DataOffset => "data_offset",
            Field::DataSize => "data_size",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_tile_the_structure_without_gaps() {
        let mut end = 0;
        for f in Field::ALL {
            assert_eq!(f.offset(), end, "{}", f.name());
            end += f.width() as u64;
        }
        assert_eq!(end, INFO_SIZE);
    }

    #[test]
    fn at_finds_a_field_only_at_native_width() {
        assert_eq!(Field::at(0, 4), Some(Field::DeviceState));
        assert_eq!(Field::at(8, 8), Some(Field::PendingBytes));
        assert_eq!(Field::at(0, 8), None);
        assert_eq!(Field::at(8, 4), None);
        assert_eq!(Field::at(12, 4), None);
        assert_eq!(Field::at(24, 8), Some(Field::DataSize));
        assert_eq!(Field::at(32, 8), None);
    }
}
