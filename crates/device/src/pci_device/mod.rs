//! [`PciDevice`]: a [`DeviceModel`] served over vfio-user, with a configuration space,
//! interrupts, reset and — when the model is migratable — the v1 migration region.
//!
//! | region | what |
//! |---|---|
//! | 0–5 | the model's BARs (trapped, or mmappable where the model shares memory) |
//! | 6 | ROM (absent, size 0) |
//! | 7 | configuration space (256 bytes) |
//! | 8 | VGA (absent, size 0) |
//! | 9 | the v1 migration region, type 3 / subtype 1 (only for a migratable model) |
//! | 10 | the state digest: 8 read-only bytes, a [`crate::digest`] of the whole device state, so a
//! VMM can check that a migrated device equals its source (vendor type, only with 9) |
//!
//! A model that offers MSI-X ([`DeviceModel::msix`]) gets the capability in its configuration
//! space, the MSI-X index in GET_IRQ_INFO / SET_IRQS, and an [`MsixTable`] kept here: trapped
//! accesses to the table and PBA ranges of its BAR are answered by the table and never reach
//! the model. The table migrates with the configuration space and is part of the snapshot.
//!
//! In STOP and STOP_COPY the device is stopped: BAR accesses are refused (EINVAL), as are the
//! commands that would change what the device sees (DMA_MAP, DMA_UNMAP), as the reference
//! server does. Configuration space and the migration region stay accessible.

mod migration;

use vfmig_abi::StateKind;
use vfmig_abi::uapi::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_SUBTYPE_MIGRATION,
    VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
};
use vfmig_vfio_user::Errno;
use vfmig_vfio_user::message::{Command, IrqSet, SparseMmapArea};
use vfmig_vfio_user::server::{
    Backend, DeviceDescription, IrqDescription, IrqSetData, RegionDescription, RegionMmap,
};

use crate::migration::{DEFAULT_DATA_CAPACITY, MigrationRegion};
use crate::model::{Bar, DeviceContext, DeviceModel};
use crate::pci::{ConfigSpace, Irqs, MsixAccess, MsixTable};
use migration::PciMigration;

/// Region index of the migration region.
pub const MIGRATION_REGION_INDEX: u32 = VFIO_PCI_NUM_REGIONS;

/// Region index of the state digest region.
pub const DIGEST_REGION_INDEX: u32 = VFIO_PCI_NUM_REGIONS + 1;

/// Region type of the state digest: PCI vendor-specific (bit 31) for vendor 0x1af4.
pub const DIGEST_REGION_TYPE: u32 = VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x1af4;

/// Region subtype of the state digest.
pub const DIGEST_REGION_SUBTYPE: u32 = 1;

/// A device model with everything PCI and vfio-user around it.
pub struct PciDevice<M: DeviceModel> {
    model: M,
    bars: Vec<Bar>,
    config: ConfigSpace,
    irqs: Irqs,
    /// The MSI-X table, for a model that offers MSI-X.
    msix: Option<MsixTable>,
    migration: Option<MigrationRegion>,
    /// The server offers the migration capability in VERSION and accepts DIRTY_PAGES.
    dirty_tracking: bool,
    config_pending: bool,
}

impl<M: DeviceModel> std::fmt::Debug for PciDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciDevice")
            .field("config", &self.config)
            .field("migration", &self.migration)
            .finish()
    }
}

fn errno(e: i32) -> Errno {
    Errno::new(e)
}

impl<M: DeviceModel> PciDevice<M> {
    /// Wraps `model`; a migration region with the default data section is offered if the model
    /// is migratable.
    pub fn new(model: M) -> std::io::Result<Self> {
        PciDevice::with_data_capacity(model, DEFAULT_DATA_CAPACITY)
    }

    /// Wraps `model` with a migration data section of `capacity` bytes.
    pub fn with_data_capacity(mut model: M, capacity: usize) -> std::io::Result<Self> {
        let bars = model.bars();
        let msix = model
            .msix()
            .filter(|spec| {
                let fits = |bar: usize, offset: u32, size: u64| {
                    bars.iter()
                        .any(|b| b.index == bar && u64::from(offset) + size <= u64::from(b.size))
                };
                let ok = spec.is_valid()
                    && fits(spec.table_bar, spec.table_offset, spec.table_size())
                    && fits(spec.pba_bar, spec.pba_offset, spec.pba_size());
                if !ok {
                    tracing::error!(?spec, "MSI-X table or PBA outside its BAR: no MSI-X");
                }
                ok
            })
            .map(MsixTable::new);
        let config = config_for(&model, &bars, msix.as_ref());
        let irqs = msix
            .as_ref()
            .map_or_else(Irqs::new, |t| Irqs::with_msix(t.spec().vectors));
        let migration = if model.migratable().is_some() {
            Some(MigrationRegion::new(capacity)?)
        } else {
            None
        };
        Ok(PciDevice {
            model,
            bars,
            config,
            irqs,
            msix,
            migration,
            dirty_tracking: true,
            config_pending: false,
        })
    }

    /// Offers no migration region (and so no digest region and no dirty tracking), even for
    /// a migratable model: a device that cannot migrate, as a VMM meets one.
    pub fn without_migration(mut self) -> Self {
        self.migration = None;
        self
    }

    /// Keeps the migration region but offers no dirty page tracking: no migration capability
    /// in VERSION, and DIRTY_PAGES refused (ENOTSUP), as a server that cannot report the pages
    /// it writes. A VMM must then count every page the device has mapped as dirty.
    pub fn without_dirty_tracking(mut self) -> Self {
        self.dirty_tracking = false;
        self
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutably.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The configuration space.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The migration state, if the device can migrate.
    pub fn migration_state(&self) -> Option<StateKind> {
        self.migration.as_ref().map(MigrationRegion::kind)
    }

    /// The whole device state, for verification: the model's snapshot, the configuration
    /// space and the MSI-X table.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut s = self.model.snapshot();
        s.extend_from_slice(self.config.bytes());
        if let Some(table) = &self.msix {
            table.encode(&mut s);
        }
        s
    }

    fn stopped(&self) -> bool {
        matches!(
            self.migration_state(),
            Some(StateKind::Stop | StateKind::StopCopy)
        )
    }

    fn bar(&self, index: u32) -> Option<&Bar> {
        self.bars
            .iter()
            .find(|b| u32::try_from(b.index) == Ok(index))
    }

    fn migration_access(
        &mut self,
        offset: u64,
        read: Option<&mut [u8]>,
        write: Option<&[u8]>,
    ) -> Result<(), Errno> {
        let (Some(region), Some(model)) = (self.migration.as_mut(), self.model.migratable()) else {
            return Err(Errno::EINVAL);
        };
        let mut dev = PciMigration {
            model,
            config: &mut self.config,
            msix: self.msix.as_mut(),
            config_pending: &mut self.config_pending,
        };
        let r = match (read, write) {
            (Some(buf), _) => region.read(&mut dev, offset, buf),
            (None, Some(data)) => region.write(&mut dev, offset, data),
            (None, None) => Ok(()),
        };
        r.map_err(|e| {
            tracing::debug!(offset, error = %e, "migration region access refused");
            errno(e.errno())
        })
    }

    fn bar_access(
        &mut self,
        index: u32,
        offset: u64,
        mut read: Option<&mut [u8]>,
        write: Option<&[u8]>,
    ) -> Result<(), Errno> {
        if self.stopped() {
            return Err(Errno::EINVAL);
        }
        let bar = self.bar(index).ok_or(Errno::EINVAL)?.clone();
        if let Some(mem) = &bar.mmap {
            let len = read
                .as_ref()
                .map_or_else(|| write.map_or(0, <[u8]>::len), |b| b.len())
                as u64;
            let mapped = mem.areas.iter().any(|&(o, s)| {
                offset >= o && offset.checked_add(len).is_some_and(|end| end <= o + s)
            });
            if mapped {
                let r = match (read, write) {
                    (Some(buf), _) => mem.memory.read(offset, buf),
                    (None, Some(data)) => mem.memory.write(offset, data),
                    (None, None) => Ok(()),
                };
                return r.map_err(|_| Errno::EINVAL);
            }
        }
        if let Some(table) = self.msix.as_mut() {
            let access = match (read.as_deref_mut(), write) {
                (Some(buf), _) => table.read(bar.index, offset, buf),
                (None, Some(data)) => table.write(bar.index, offset, data),
                (None, None) => MsixAccess::NotMsix,
            };
            match access {
                MsixAccess::Done => return Ok(()),
                MsixAccess::Invalid => return Err(Errno::EINVAL),
                MsixAccess::NotMsix => {}
            }
        }
        let mut ctx = DeviceContext {
            irqs: &mut self.irqs,
            intx_disabled: self.config.intx_disabled(),
            msix: self.config.msix(),
        };
        let r = match (read, write) {
            (Some(buf), _) => self.model.bar_read(bar.index, offset, buf, &mut ctx),
            (None, Some(data)) => self.model.bar_write(bar.index, offset, data, &mut ctx),
            (None, None) => Ok(()),
        };
        r.map_err(|e| {
            tracing::debug!(bar = bar.index, offset, error = %e, "BAR access refused");
            errno(e.errno)
        })
    }
}

fn config_for<M: DeviceModel>(model: &M, bars: &[Bar], msix: Option<&MsixTable>) -> ConfigSpace {
    let spec: Vec<_> = bars.iter().map(|b| (b.index, b.kind, b.size)).collect();
    let config = ConfigSpace::new(model.identity(), &spec);
    match msix {
        Some(table) => config.with_msix(&table.spec()),
        None => config,
    }
}

impl<M: DeviceModel> Backend for PciDevice<M> {
    fn device_info(&self) -> DeviceDescription {
        let extra = if self.migration.is_some() { 2 } else { 0 };
        DeviceDescription {
            flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
            num_regions: VFIO_PCI_NUM_REGIONS + extra,
            num_irqs: VFIO_PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionDescription<'_>, Errno> {
        let empty = RegionDescription {
            size: 0,
            readable: false,
            writable: false,
            region_type: None,
            mmap: None,
        };
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            return Ok(RegionDescription {
                size: ConfigSpace::size(),
                readable: true,
                writable: true,
                ..empty
            });
        }
        if index == MIGRATION_REGION_INDEX {
            let region = self.migration.as_ref().ok_or(Errno::EINVAL)?;
            let areas = region
                .sparse_areas()
                .iter()
                .map(|&(offset, size)| SparseMmapArea { offset, size })
                .collect();
            return Ok(RegionDescription {
                size: region.size(),
                readable: true,
                writable: true,
                region_type: Some((VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_SUBTYPE_MIGRATION)),
                mmap: Some(RegionMmap {
                    fd: region.fd(),
                    offset: 0,
                    areas,
                }),
            });
        }
        if index == DIGEST_REGION_INDEX && self.migration.is_some() {
            return Ok(RegionDescription {
                size: 8,
                readable: true,
                writable: false,
                region_type: Some((DIGEST_REGION_TYPE, DIGEST_REGION_SUBTYPE)),
                mmap: None,
            });
        }
        let Some(bar) = self.bar(index) else {
            return if index < VFIO_PCI_NUM_REGIONS {
                Ok(empty)
            } else {
                Err(Errno::EINVAL)
            };
        };
        let mmap = bar.mmap.as_ref().map(|m| RegionMmap {
            fd: m.memory.fd(),
            offset: 0,
            areas: m
                .areas
                .iter()
                .map(|&(offset, size)| SparseMmapArea { offset, size })
                .collect(),
        });
        Ok(RegionDescription {
            size: u64::from(bar.size),
            readable: true,
            writable: true,
            region_type: None,
            mmap,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        match index {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                if self.config.read(offset, data) {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            MIGRATION_REGION_INDEX => self.migration_access(offset, Some(data), None),
            DIGEST_REGION_INDEX if self.migration.is_some() && offset == 0 && data.len() == 8 => {
                data.copy_from_slice(&crate::digest::digest(&self.snapshot()).to_le_bytes());
                Ok(())
            }
            DIGEST_REGION_INDEX if self.migration.is_some() => Err(Errno::EINVAL),
            _ => self.bar_access(index, offset, Some(data), None),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                if self.config.write(offset, data) {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            MIGRATION_REGION_INDEX => self.migration_access(offset, None, Some(data)),
            DIGEST_REGION_INDEX if self.migration.is_some() => Err(Errno::EINVAL),
            _ => self.bar_access(index, offset, None, Some(data)),
        }
    }

    fn irq_info(&self, index: u32) -> Result<IrqDescription, Errno> {
        let (flags, count) = self.irqs.info(index).map_err(|e| errno(e.errno()))?;
        let has = |bit| flags & bit != 0;
        use vfmig_abi::uapi::{
            VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
            VFIO_IRQ_INFO_NORESIZE,
        };
        Ok(IrqDescription {
            count,
            eventfd: has(VFIO_IRQ_INFO_EVENTFD),
            maskable: has(VFIO_IRQ_INFO_MASKABLE),
            automasked: has(VFIO_IRQ_INFO_AUTOMASKED),
            noresize: has(VFIO_IRQ_INFO_NORESIZE),
        })
    }

    fn set_irqs(&mut self, set: &IrqSet, data: IrqSetData<'_>) -> Result<(), Errno> {
        self.irqs
            .set(set.index, set.flags, set.start, set.count, data)
            .map_err(|e| errno(e.errno()))
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.model.reset();
        self.config = config_for(&self.model, &self.bars, self.msix.as_ref());
        if let Some(table) = self.msix.as_mut() {
            table.reset();
        }
        if let Some(region) = self.migration.as_mut() {
            region.reset();
        }
        self.config_pending = false;
        Ok(())
    }

    fn check_command(&self, command: Command) -> Result<(), Errno> {
        match command {
            Command::DmaMap | Command::DmaUnmap if self.stopped() => Err(Errno::EINVAL),
            _ => Ok(()),
        }
    }

    fn migration_capable(&self) -> bool {
        self.migration.is_some() && self.dirty_tracking
    }

    fn client_gone(&mut self) {
        self.irqs.clear();
    }
}
