//! The container: mappings, attached devices, and the map / unmap rules of type1 v2.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vfmig_abi::uapi::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
};
use vfmig_memory::Iova;

use crate::error::{IommuError, Result};
use crate::host::{AccessPath, Backing, HostMemory};
use crate::mapping::{Mapping, Memory, check_aligned, range_end};
use crate::report::{
    BitmapRequest, check_bitmap_size, check_page_size, check_tracked, report_mapping,
};
use crate::types::{DeviceId, DirtyScope, Prot};

/// Asked to drop the pins a device holds in a range about to be unmapped: the kernel's
/// `VFIO_IOMMU_NOTIFY_DMA_UNMAP` notifier. The device must drop every [`crate::PinGuard`] in
/// the range (possibly from another thread) before the unmap can go on.
pub trait UnmapNotifier: Send + Sync {
    /// The range `[iova, iova + size)` is being unmapped.
    fn dma_unmap(&self, iova: Iova, size: u64);
}

/// Limits of a container: everything a peer can make it allocate is capped here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Most mappings at once (type1's `dma_entry_limit`, 65535 by default).
    pub max_mappings: usize,
    /// Most bytes of dirty bitmaps at once, over all mappings (1 GiB by default, see
    /// [`ContainerConfig::DEFAULT_MAX_BITMAP_BYTES`]). Each mapping is charged
    /// `DIRTY_BITMAP_BYTES(pages)` while tracking is on; a START or a map while tracking that
    /// would go over is refused with ENOMEM ([`crate::IommuError::BitmapBudget`]).
    pub max_bitmap_bytes: u64,
}

impl ContainerConfig {
    /// The default bitmap budget: 1 GiB, one bit per 4 KiB page of 32 TiB of mappings, more
    /// guest memory than any VM this runs; a peer that maps more than that without an fd (which
    /// costs it nothing) cannot make START allocate more. The kernel has no such limit of its
    /// own: its bitmaps are charged to the VMM's memory cgroup instead.
    pub const DEFAULT_MAX_BITMAP_BYTES: u64 = 1 << 30;
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            max_mappings: 65535,
            max_bitmap_bytes: ContainerConfig::DEFAULT_MAX_BITMAP_BYTES,
        }
    }
}

/// How often an unmap asks the pinning devices to unpin before giving up with EBUSY (the kernel
/// retries 10 times, then BUGs).
const UNPIN_RETRIES: usize = 10;

pub(crate) struct Device {
    /// `true` once the device is `Pinned` scope.
    pub(crate) pinned_scope: AtomicBool,
    notifier: Option<Arc<dyn UnmapNotifier>>,
}

/// Everything the container lock protects.
pub(crate) struct State {
    /// Mappings by first IOVA; they never overlap.
    pub(crate) mappings: BTreeMap<u64, Mapping>,
    /// Dirty tracking is on: every fd-backed mapping has a bitmap.
    pub(crate) tracking: bool,
    /// Bytes of all the mappings' bitmaps ([`Mapping::bitmap_bytes`] of every mapping while
    /// tracking, 0 otherwise), charged against [`ContainerConfig::max_bitmap_bytes`].
    pub(crate) bitmap_bytes: u64,
    pub(crate) devices: BTreeMap<DeviceId, Device>,
}

pub(crate) struct Shared {
    state: RwLock<State>,
    /// Serializes GET_BITMAP calls: a GET clears and re-populates pinned pages, and a second GET
    /// must not see them cleared in between.
    sync: Mutex<()>,
    next_device: AtomicU32,
    config: ContainerConfig,
}

/// An IOMMU container with the rules of Linux 5.10 `vfio_iommu_type1` (a v2 container).
///
/// A cheap handle: clones share the same container. Device threads pin, read, write and mark
/// through `&self` concurrently with a thread answering GET_BITMAP; map, unmap, start and stop
/// take the container lock exclusively.
#[derive(Clone)]
pub struct Container {
    pub(crate) shared: Arc<Shared>,
}

impl Default for Container {
    fn default() -> Self {
        Container::new(ContainerConfig::default())
    }
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Container")
            .field("mappings", &s.mappings.len())
            .field("tracking", &s.tracking)
            .field("bitmap_bytes", &s.bitmap_bytes)
            .field("devices", &s.devices.len())
            .finish()
    }
}

impl State {
    /// Any mapping overlapping `[start, end)` (the kernel's `vfio_find_dma`).
    pub(crate) fn find(&self, start: u64, end: u64) -> Option<&Mapping> {
        self.mappings
            .range(..end)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.end() > start)
    }

    /// The mapping containing `iova`.
    pub(crate) fn containing(&self, iova: u64) -> Option<&Mapping> {
        self.mappings
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.contains(iova))
    }

    /// Every device is `Pinned` scope: the bitmaps are precise.
    pub(crate) fn precise(&self) -> bool {
        self.devices
            .values()
            .all(|d| d.pinned_scope.load(Ordering::Acquire))
    }

    /// The type1 v2 rule shared by unmap and GET_BITMAP: `[iova, end)` may cover several whole
    /// mappings and holes, but must not cut one.
    pub(crate) fn check_not_bisected(&self, iova: u64, end: u64) -> Result<()> {
        let size = end - iova;
        let cut = |m: &Mapping| IommuError::Bisects {
            iova: Iova(iova),
            size,
            mapping: m.start(),
            mapping_size: m.size,
        };
        if let Some(m) = self.containing(iova).filter(|m| m.iova != iova) {
            return Err(cut(m));
        }
        if let Some(m) = self.containing(end - 1).filter(|m| m.end() != end) {
            return Err(cut(m));
        }
        Ok(())
    }

    /// Removes the mapping at `iova`, and its bitmap's bytes from the budget's account.
    pub(crate) fn remove(&mut self, iova: u64) -> Option<Mapping> {
        let m = self.mappings.remove(&iova)?;
        if m.bitmap.is_some() {
            debug_assert!(self.bitmap_bytes >= m.bitmap_bytes());
            self.bitmap_bytes = self.bitmap_bytes.saturating_sub(m.bitmap_bytes());
        }
        Some(m)
    }

    /// Mappings that start in `[iova, end)`, in IOVA order.
    pub(crate) fn starting_in(&self, iova: u64, end: u64) -> impl Iterator<Item = &Mapping> {
        self.mappings.range(iova..end).map(|(_, m)| m)
    }
}

/// What an unmap asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapRequest {
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// First IOVA (0 with `VFIO_DMA_UNMAP_FLAG_ALL`).
    pub iova: u64,
    /// Bytes (0 with `VFIO_DMA_UNMAP_FLAG_ALL`).
    pub size: u64,
    /// With `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`: the bitmap's page size and byte size.
    pub bitmap: Option<BitmapRequest>,
}

impl Container {
    /// An empty container.
    pub fn new(config: ContainerConfig) -> Self {
        Container {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    mappings: BTreeMap::new(),
                    tracking: false,
                    bitmap_bytes: 0,
                    devices: BTreeMap::new(),
                }),
                sync: Mutex::new(()),
                next_device: AtomicU32::new(0),
                config,
            }),
        }
    }

    /// The container's limits.
    pub fn config(&self) -> ContainerConfig {
        self.shared.config
    }

    // A poisoned lock is taken over: every writer leaves the state consistent before any point
    // that can panic.
    pub(crate) fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn sync_lock(&self) -> MutexGuard<'_, ()> {
        self.shared.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a device. `AllMapped` is what type1 assumes of a device that can DMA through an
    /// IOMMU; it is promoted to `Pinned` by its first pin. `notifier` is asked to unpin when a
    /// range the device has pinned is unmapped.
    pub fn attach_device(
        &self,
        scope: DirtyScope,
        notifier: Option<Arc<dyn UnmapNotifier>>,
    ) -> DeviceId {
        let id = DeviceId(self.shared.next_device.fetch_add(1, Ordering::Relaxed));
        let device = Device {
            pinned_scope: AtomicBool::new(scope == DirtyScope::Pinned),
            notifier,
        };
        self.state_mut().devices.insert(id, device);
        id
    }

    /// Detaches a device. If it could DMA anywhere (`AllMapped`) while tracking is on, every
    /// mapped page is marked dirty: what it wrote is no longer reported on GET otherwise (the
    /// fix later kernels made).
    pub fn detach_device(&self, id: DeviceId) -> Result<()> {
        let mut state = self.state_mut();
        let device = state
            .devices
            .remove(&id)
            .ok_or(IommuError::NoSuchDevice(id))?;
        if state.tracking && !device.pinned_scope.load(Ordering::Acquire) {
            for m in state.mappings.values() {
                if let Some(bitmap) = &m.bitmap {
                    bitmap.set_all();
                }
            }
        }
        Ok(())
    }

    /// The dirty scope of a device now.
    pub fn device_scope(&self, id: DeviceId) -> Result<DirtyScope> {
        let state = self.state();
        let device = state.devices.get(&id).ok_or(IommuError::NoSuchDevice(id))?;
        Ok(if device.pinned_scope.load(Ordering::Acquire) {
            DirtyScope::Pinned
        } else {
            DirtyScope::AllMapped
        })
    }

    /// The container's scope: `Pinned` only if every attached device is.
    pub fn scope(&self) -> DirtyScope {
        if self.state().precise() {
            DirtyScope::Pinned
        } else {
            DirtyScope::AllMapped
        }
    }

    /// `VFIO_IOMMU_MAP_DMA`: maps `[iova, iova + size)` with the protection of `flags`
    /// (`VFIO_DMA_MAP_FLAG_READ` / `_WRITE`), backed by `backing`.
    ///
    /// Checks, in the kernel's order: unknown flags; no protection, zero size, or iova / size /
    /// fd offset not page-aligned (EINVAL); wrap (EINVAL); overlap (EEXIST); the mapping limit
    /// (ENOSPC); a regular file that ends before the mapping does (EFAULT); mapping the fd (its
    /// errno). A mapping whose file is not sealed against shrinking is reached by checked
    /// copies ([`AccessPath::Checked`]). A mapping made while tracking is on gets its bitmap
    /// at once, which comes last, as in the kernel: more pages than one bitmap covers (EINVAL),
    /// then the bitmap budget (ENOMEM). A refused mapping maps nothing.
    pub fn map_dma(&self, flags: u32, iova: u64, size: u64, backing: Backing) -> Result<()> {
        let known = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
        if flags & !known != 0 {
            return Err(IommuError::UnknownFlags { flags, known });
        }
        self.map(Iova(iova), size, Prot::from_map_flags(flags), backing)
    }

    /// Maps `[iova, iova + size)` with `prot`; see [`Container::map_dma`] for the rules.
    pub fn map(&self, iova: Iova, size: u64, prot: Prot, backing: Backing) -> Result<()> {
        let Iova(iova) = iova;
        if !prot.read && !prot.write {
            return Err(IommuError::NoProtection);
        }
        if size == 0 {
            return Err(IommuError::ZeroSize { what: "mapping" });
        }
        check_aligned("mapping size", size)?;
        check_aligned("mapping iova", iova)?;
        if let Backing::Fd { offset, .. } = &backing {
            check_aligned("mapping fd offset", *offset)?;
        }
        let end = range_end(iova, size)?;

        // Refuse what can be refused before mapping anything into this process.
        {
            let state = self.state();
            self.check_insert(&state, iova, size, end)?;
        }
        let memory = match backing {
            Backing::Fd { fd, offset } => {
                Memory::Host(Arc::new(HostMemory::map(&fd, offset, size, prot)?))
            }
            Backing::Remote(remote) => Memory::Remote(remote),
        };
        let mut mapping = Mapping::new(iova, size, prot, memory);

        let mut state = self.state_mut();
        // The state may have changed while the lock was dropped for mmap.
        self.check_insert(&state, iova, size, end)?;
        if state.tracking {
            let charged = mapping.charge_bitmap(state.bitmap_bytes, self.max_bitmap_bytes())?;
            mapping.bitmap = mapping.new_bitmap()?;
            state.bitmap_bytes = charged;
        }
        state.mappings.insert(iova, mapping);
        tracing::debug!(iova, size, ?prot, "mapped");
        Ok(())
    }

    fn check_insert(&self, state: &State, iova: u64, size: u64, end: u64) -> Result<()> {
        if let Some(m) = state.find(iova, end) {
            return Err(IommuError::Overlap {
                iova: Iova(iova),
                size,
                existing: m.start(),
                existing_size: m.size,
            });
        }
        if state.mappings.len() >= self.shared.config.max_mappings {
            return Err(IommuError::TooManyMappings {
                limit: self.shared.config.max_mappings,
            });
        }
        Ok(())
    }

    /// `VFIO_IOMMU_UNMAP_DMA`, type1 v2: removes every mapping in the range and returns the
    /// bytes unmapped (0 for a hole).
    ///
    /// With `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`, the dirty bits of every removed mapping are
    /// ORed into `out`, bit 0 being `iova`; a range with a mapping without an fd in it is
    /// EINVAL ([`IommuError::Untracked`]) and unmaps nothing. With `VFIO_DMA_UNMAP_FLAG_ALL` (iova = size = 0, no
    /// bitmap) every mapping goes. Pinned pages in the range: their devices are asked to unpin;
    /// if they do not, the unmap fails with EBUSY and nothing is removed.
    pub fn unmap_dma(&self, req: &UnmapRequest, out: Option<&mut [u64]>) -> Result<u64> {
        let known = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_ALL;
        if req.flags & !known != 0 {
            return Err(IommuError::UnknownFlags {
                flags: req.flags,
                known,
            });
        }
        let all = req.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0;
        let with_bitmap = req.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0;
        if all {
            if with_bitmap || req.iova != 0 || req.size != 0 {
                return Err(IommuError::UnmapAllMisused);
            }
            return self.unmap_range(0, u64::MAX, None, true);
        }
        let bitmap = match (with_bitmap, req.bitmap, out) {
            (false, _, _) => None,
            (true, Some(b), Some(out)) => {
                check_bitmap_size(req.size, &b, out)?;
                Some((b, out))
            }
            (true, _, _) => {
                return Err(IommuError::ArgszTooSmall {
                    argsz: vfmig_abi::uapi::DMA_UNMAP_MINSZ,
                    min: vfmig_abi::uapi::DMA_UNMAP_MINSZ + 24,
                });
            }
        };
        check_aligned("unmap iova", req.iova)?;
        if req.size == 0 {
            return Err(IommuError::ZeroSize { what: "unmap" });
        }
        check_aligned("unmap size", req.size)?;
        let end = range_end(req.iova, req.size)?;
        self.unmap_range(req.iova, end, bitmap, false)
    }

    fn unmap_range(
        &self,
        iova: u64,
        end: u64,
        mut bitmap: Option<(BitmapRequest, &mut [u64])>,
        all: bool,
    ) -> Result<u64> {
        for _ in 0..=UNPIN_RETRIES {
            let mut state = self.state_mut();
            if let Some((b, _)) = &bitmap {
                if !state.tracking {
                    return Err(IommuError::TrackingOff);
                }
                check_page_size(b.pgsize)?;
            }
            if !all {
                state.check_not_bisected(iova, end)?;
            }
            let pinned: Vec<(u64, u64)> = state
                .starting_in(iova, end)
                .filter(|m| m.has_pins())
                .map(|m| (m.iova, m.size))
                .collect();
            if !pinned.is_empty() {
                let notifiers: Vec<Arc<dyn UnmapNotifier>> = state
                    .devices
                    .values()
                    .filter_map(|d| d.notifier.clone())
                    .collect();
                drop(state);
                for (m_iova, m_size) in pinned {
                    for n in &notifiers {
                        n.dma_unmap(Iova(m_iova), m_size);
                    }
                }
                continue;
            }
            let keys: Vec<u64> = state.starting_in(iova, end).map(|m| m.iova).collect();
            if let Some((_, out)) = bitmap.as_mut() {
                check_tracked(state.starting_in(iova, end))?;
                let precise = state.precise();
                for m in state.starting_in(iova, end) {
                    report_mapping(m, iova, precise, out)?;
                }
            }
            let mut unmapped = 0u64;
            for key in keys {
                if let Some(m) = state.remove(key) {
                    unmapped += m.size;
                }
            }
            tracing::debug!(iova, end, unmapped, "unmapped");
            return Ok(unmapped);
        }
        Err(IommuError::Busy {
            iova: Iova(iova),
            size: end - iova,
        })
    }

    /// Bytes of dirty bitmaps the container holds now (0 while tracking is off), charged
    /// against [`ContainerConfig::max_bitmap_bytes`].
    pub fn bitmap_bytes(&self) -> u64 {
        self.state().bitmap_bytes
    }

    pub(crate) fn max_bitmap_bytes(&self) -> u64 {
        self.shared.config.max_bitmap_bytes
    }

    /// Number of mappings.
    pub fn mappings(&self) -> usize {
        self.state().mappings.len()
    }

    /// How device accesses reach the mapping that contains `iova`; `None` if none does.
    pub fn access_path(&self, iova: Iova) -> Option<AccessPath> {
        self.state().containing(iova.0).map(Mapping::path)
    }

    /// The mappings as `(iova, size, prot)`, in IOVA order.
    pub fn mapping_list(&self) -> Vec<(Iova, u64, Prot)> {
        self.state()
            .mappings
            .values()
            .map(|m| (m.start(), m.size, m.prot))
            .collect()
    }
}
