//! The `Config` section: the VM's RAM layout and its devices.
//!
//! ```text
//!  ConfigHeader (16)   page_size u32 = 4096 | regions u32 | devices u32 | reserved u32 = 0
//!  regions × 16        gpa u64 | size u64                  (sorted, disjoint, page-aligned)
//!  devices × (12 + k + c)
//!                      id u32 | kind_len u16 | reserved u16 = 0 | config_len u32
//!                      kind (k bytes, UTF-8) | config (c bytes, opaque to the stream)
//! ```
//!
//! A [`StreamConfig`] is validated when it is built, by the sender with [`StreamConfig::new`] and by
//! the receiver when it decodes one, with the same rules, so an invalid layout cannot exist
//! on either side. The per-device `config` is whatever the VMM needs to recreate the device
//! on the destination (its kind's command line, its options): the stream does not look
//! inside it.

use std::collections::HashSet;

use vfmig_memory::Gpa;
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

pub use crate::stream::error::ConfigError;
use crate::stream::error::PayloadError;

use crate::stream::wire::{Cursor, reserved_zero, u64_from, usize_from};
use crate::types::{DeviceIndex, STREAM_PAGE_SIZE};

/// The most RAM regions a VM may have: far more than any layout with hot-plugged memory.
pub const MAX_REGIONS: usize = 1024;

/// The most devices a VM may have.
pub const MAX_DEVICES: usize = 256;

/// The longest device kind name, in bytes.
pub const MAX_KIND_LEN: usize = 64;

/// The cap on the VM configuration: 1 MiB holds the RAM layout and the configuration of a
/// few hundred devices; a VM layout is not data, and a larger one is a bug or an attack.
pub const MAX_CONFIG_PAYLOAD: u32 = 1 << 20;

/// One region of guest RAM.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RegionDesc {
    /// The first byte; page-aligned.
    pub gpa: Gpa,
    /// Bytes; a non-zero multiple of the page size.
    pub size: u64,
}

impl RegionDesc {
    /// One past the last byte (`None` on overflow, which a validated region never has).
    pub fn end(&self) -> Option<u64> {
        self.gpa.raw().checked_add(self.size)
    }
}

/// The RAM regions of a VM: sorted by address, disjoint, page-aligned, non-empty.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RamLayout {
    regions: Vec<RegionDesc>,
}

impl RamLayout {
    /// Validates `regions` (any order) into a layout.
    ///
    /// # Errors
    /// [`ConfigError`] if there are too many regions, or one is empty, unaligned, wraps
    /// around, or overlaps another.
    pub fn new(mut regions: Vec<RegionDesc>) -> Result<RamLayout, ConfigError> {
        if regions.len() > MAX_REGIONS {
            return Err(ConfigError::TooManyRegions {
                count: u64_from(regions.len()),
                max: MAX_REGIONS,
            });
        }
        regions.sort_by_key(|region| region.gpa);
        let mut previous_end = 0u64;
        for (index, region) in regions.iter().enumerate() {
            let end = region.end().ok_or(ConfigError::RegionOverflow {
                gpa: region.gpa,
                size: region.size,
            })?;
            if region.size == 0
                || !region.gpa.is_aligned(STREAM_PAGE_SIZE.bytes())
                || !region.size.is_multiple_of(STREAM_PAGE_SIZE.bytes())
            {
                return Err(ConfigError::BadRegion {
                    gpa: region.gpa,
                    size: region.size,
                });
            }
            if index > 0 && region.gpa.raw() < previous_end {
                return Err(ConfigError::RegionsOverlap { gpa: region.gpa });
            }
            previous_end = end;
        }
        Ok(RamLayout { regions })
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[RegionDesc] {
        &self.regions
    }

    /// The total RAM in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |sum, region| sum.saturating_add(region.size))
    }

    /// The region that holds all of `[gpa, gpa + bytes)`, if one does. A range that spans
    /// two adjacent regions is not held by either: runs never cross a region boundary.
    pub fn region_of(&self, gpa: Gpa, bytes: u64) -> Option<&RegionDesc> {
        let end = gpa.raw().checked_add(bytes)?;
        let after = self.regions.partition_point(|region| region.gpa <= gpa);
        let region = self.regions.get(after.checked_sub(1)?)?;
        (end <= region.end()?).then_some(region)
    }
}

/// A device of the VM, as the destination must match it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DeviceDesc {
    /// The id every device section names it by.
    pub id: DeviceIndex,
    /// What device it is, as the destination's must be too: 1 to [`MAX_KIND_LEN`] bytes (the
    /// engine puts the device's profile, `pci:VVVV:DDDD`).
    pub kind: String,
    /// Its description, in a format the VMM defines (the engine's: its id in the VM, JSON).
    pub config: Vec<u8>,
}

/// The VM layout the `Config` section carries: RAM regions and devices, validated.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StreamConfig {
    ram: RamLayout,
    devices: Vec<DeviceDesc>,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ConfigHeader {
    page_size: U32,
    regions: U32,
    devices: U32,
    reserved: U32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RegionWire {
    gpa: U64,
    size: U64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct DeviceWire {
    id: U32,
    kind_len: U16,
    reserved: U16,
    config_len: U32,
}

const _: () = assert!(size_of::<ConfigHeader>() == 16);
const _: () = assert!(size_of::<RegionWire>() == 16);
const _: () = assert!(size_of::<DeviceWire>() == 12);

impl StreamConfig {
    /// Validates a layout and devices into a configuration.
    ///
    /// # Errors
    /// [`ConfigError`]: an invalid layout, too many devices, a duplicate id, a bad kind
    /// name, or an encoding larger than the 1 MiB section cap.
    pub fn new(ram: RamLayout, devices: Vec<DeviceDesc>) -> Result<StreamConfig, ConfigError> {
        if devices.len() > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices {
                count: u64_from(devices.len()),
                max: MAX_DEVICES,
            });
        }
        let mut seen = HashSet::with_capacity(devices.len());
        for device in &devices {
            if !seen.insert(device.id) {
                return Err(ConfigError::DuplicateDevice { id: device.id });
            }
            if device.kind.is_empty() || device.kind.len() > MAX_KIND_LEN {
                return Err(ConfigError::BadKind {
                    max: MAX_KIND_LEN,
                    id: device.id,
                    len: device.kind.len(),
                });
            }
        }
        let config = StreamConfig { ram, devices };
        let bytes = config.encoded_len();
        if bytes > u64::from(MAX_CONFIG_PAYLOAD) {
            return Err(ConfigError::TooLarge {
                bytes,
                max: MAX_CONFIG_PAYLOAD,
            });
        }
        Ok(config)
    }

    /// The RAM layout.
    pub fn ram(&self) -> &RamLayout {
        &self.ram
    }

    /// The devices, in the order the sender listed them.
    pub fn devices(&self) -> &[DeviceDesc] {
        &self.devices
    }

    /// The device with id `id`.
    pub fn device(&self, id: DeviceIndex) -> Option<&DeviceDesc> {
        self.devices.iter().find(|device| device.id == id)
    }

    fn encoded_len(&self) -> u64 {
        let devices = self.devices.iter().fold(0u64, |sum, device| {
            sum.saturating_add(12)
                .saturating_add(u64_from(device.kind.len()))
                .saturating_add(u64_from(device.config.len()))
        });
        u64_from(self.ram.regions.len())
            .saturating_mul(16)
            .saturating_add(16)
            .saturating_add(devices)
    }

    /// The payload of the `Config` section. At most 1 MiB ([`StreamConfig::new`] checked).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.encoded_len()).unwrap_or(0));
        let header = ConfigHeader {
            page_size: U32::new(4096),
            // Counts and lengths were bounded by `new` (1024 regions, 256 devices, 64-byte
            // kinds, 1 MiB in all), so none of these conversions saturates.
            regions: U32::new(u32::try_from(self.ram.regions.len()).unwrap_or(u32::MAX)),
            devices: U32::new(u32::try_from(self.devices.len()).unwrap_or(u32::MAX)),
            reserved: U32::new(0),
        };
        out.extend_from_slice(header.as_bytes());
        for region in &self.ram.regions {
            let wire = RegionWire {
                gpa: U64::new(region.gpa.raw()),
                size: U64::new(region.size),
            };
            out.extend_from_slice(wire.as_bytes());
        }
        for device in &self.devices {
            let wire = DeviceWire {
                id: U32::new(device.id.0),
                kind_len: U16::new(u16::try_from(device.kind.len()).unwrap_or(u16::MAX)),
                reserved: U16::new(0),
                config_len: U32::new(u32::try_from(device.config.len()).unwrap_or(u32::MAX)),
            };
            out.extend_from_slice(wire.as_bytes());
            out.extend_from_slice(device.kind.as_bytes());
            out.extend_from_slice(&device.config);
        }
        out
    }

    /// Decodes and validates the payload of a `Config` section. Every count and length is
    /// checked against the bytes present before anything is allocated for it.
    ///
    /// # Errors
    /// [`PayloadError`]: bytes missing or left over, a reserved field set, or a
    /// [`ConfigError`].
    pub fn decode(payload: &[u8]) -> Result<StreamConfig, PayloadError> {
        let mut cursor = Cursor::new(payload);
        let header = cursor.read::<ConfigHeader>()?;
        if header.page_size.get() != 4096 {
            return Err(ConfigError::PageSize {
                found: header.page_size.get(),
            }
            .into());
        }
        reserved_zero("config reserved", header.reserved.get().into())?;
        let region_count = usize_from(header.regions.get());
        if region_count > MAX_REGIONS {
            return Err(ConfigError::TooManyRegions {
                count: header.regions.get().into(),
                max: MAX_REGIONS,
            }
            .into());
        }
        let device_count = usize_from(header.devices.get());
        if device_count > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices {
                count: header.devices.get().into(),
                max: MAX_DEVICES,
            }
            .into());
        }
        let regions: Vec<RegionDesc> = cursor
            .read_slice::<RegionWire>(region_count)?
            .iter()
            .map(|wire| RegionDesc {
                gpa: Gpa(wire.gpa.get()),
                size: wire.size.get(),
            })
            .collect();
        // The wire order must be the sorted order, so that one config has one encoding.
        let unsorted = regions.windows(2).find_map(|pair| match pair {
            [a, b] if a.gpa > b.gpa => Some(b.gpa),
            _ => None,
        });
        if let Some(gpa) = unsorted {
            return Err(ConfigError::RegionsUnsorted { gpa }.into());
        }
        let ram = RamLayout::new(regions)?;
        let mut devices = Vec::with_capacity(device_count);
        for _ in 0..device_count {
            let wire = cursor.read::<DeviceWire>()?;
            let id = DeviceIndex(wire.id.get());
            reserved_zero("device reserved", wire.reserved.get().into())?;
            let kind = cursor.take(usize::from(wire.kind_len.get()))?;
            let kind = std::str::from_utf8(kind).map_err(|_| ConfigError::KindNotUtf8 { id })?;
            let config = cursor.take(usize_from(wire.config_len.get()))?;
            devices.push(DeviceDesc {
                id,
                kind: kind.to_owned(),
                config: config.to_vec(),
            });
        }
        cursor.finish()?;
        Ok(StreamConfig::new(ram, devices)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(gpa: u64, size: u64) -> RegionDesc {
        RegionDesc {
            gpa: Gpa(gpa),
            size,
        }
    }

    fn device(id: u32, kind: &str) -> DeviceDesc {
        DeviceDesc {
            id: DeviceIndex(id),
            kind: kind.to_owned(),
            config: br#"{"socket":"/tmp/x"}"#.to_vec(),
        }
    }

    #[test]
    fn layout_sorts_and_finds_regions() {
        let layout = RamLayout::new(vec![region(0x10_0000, 0x1000), region(0, 0x2000)]).unwrap();
        assert_eq!(layout.regions()[0].gpa, Gpa(0));
        assert_eq!(layout.total_bytes(), 0x3000);
        assert_eq!(
            layout.region_of(Gpa(0x1000), 0x1000),
            Some(&layout.regions()[0])
        );
        assert_eq!(layout.region_of(Gpa(0x1000), 0x2000), None);
        assert_eq!(layout.region_of(Gpa(0x8000), 0x1000), None);
        assert_eq!(
            layout.region_of(Gpa(0x10_0000), 0x1000),
            Some(&layout.regions()[1])
        );
        assert_eq!(layout.region_of(Gpa(u64::MAX), 2), None);
    }

    #[test]
    fn run_across_adjacent_regions_is_in_neither() {
        let layout = RamLayout::new(vec![region(0, 0x1000), region(0x1000, 0x1000)]).unwrap();
        assert_eq!(layout.region_of(Gpa(0), 0x2000), None);
    }

    #[test]
    fn overlapping_unaligned_empty_and_wrapping_regions_are_refused() {
        assert_eq!(
            RamLayout::new(vec![region(0, 0x2000), region(0x1000, 0x1000)]),
            Err(ConfigError::RegionsOverlap { gpa: Gpa(0x1000) })
        );
        assert!(matches!(
            RamLayout::new(vec![region(0x800, 0x1000)]),
            Err(ConfigError::BadRegion { .. })
        ));
        assert!(matches!(
            RamLayout::new(vec![region(0, 0)]),
            Err(ConfigError::BadRegion { .. })
        ));
        assert!(matches!(
            RamLayout::new(vec![region(u64::MAX - 0xfff, 0x2000)]),
            Err(ConfigError::RegionOverflow { .. })
        ));
    }

    #[test]
    fn config_round_trips() {
        let ram =
            RamLayout::new(vec![region(0, 0x4000_0000), region(0x1_0000_0000, 0x1000)]).unwrap();
        let config =
            StreamConfig::new(ram, vec![device(1, "mtty"), device(7, "dma-engine")]).unwrap();
        assert_eq!(StreamConfig::decode(&config.encode()), Ok(config));
    }

    #[test]
    fn duplicate_device_and_bad_kind_are_refused() {
        let ram = RamLayout::default();
        assert_eq!(
            StreamConfig::new(ram.clone(), vec![device(1, "a"), device(1, "b")]),
            Err(ConfigError::DuplicateDevice { id: DeviceIndex(1) })
        );
        assert!(matches!(
            StreamConfig::new(ram.clone(), vec![device(1, "")]),
            Err(ConfigError::BadKind { len: 0, .. })
        ));
        assert!(matches!(
            StreamConfig::new(ram, vec![device(1, &"k".repeat(65))]),
            Err(ConfigError::BadKind { len: 65, .. })
        ));
    }

    #[test]
    fn oversized_config_is_refused_at_build() {
        let mut big = device(1, "blob");
        big.config = vec![1; 1 << 20];
        assert!(matches!(
            StreamConfig::new(RamLayout::default(), vec![big]),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_counts_are_refused_before_reading() {
        let mut payload = StreamConfig::new(RamLayout::default(), vec![])
            .unwrap()
            .encode();
        payload[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            StreamConfig::decode(&payload),
            Err(PayloadError::Config(ConfigError::TooManyRegions { .. }))
        ));
    }
}
