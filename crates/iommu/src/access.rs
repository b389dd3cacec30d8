//! The device side (what the kernel offers vendor drivers): pin pages, read and write guest
//! memory by IOVA, report pages written some other way. Every access is checked against the
//! mappings and their protection: a device never touches memory it was not given.
//!
//! A read or write is planned under the shared side of the container lock. Pieces in host
//! memory are copied (and marked) at once, under it; pieces at the peer are only collected,
//! then sent after the lock is dropped, so a slow peer never holds up map, unmap, START or STOP
//! (nor, through the lock's writer preference, the other device threads). A remote write marks
//! nothing: a mapping without an fd has no bitmap, its peer records the write (see the
//! [crate docs](crate#mappings-without-an-fd)).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use vfmig_memory::Iova;

use crate::container::{Container, State};
use crate::error::{IommuError, Result};
use crate::host::{AccessPath, HostMemory, RemoteMemory};
use crate::mapping::{Mapping, Memory, range_end};
use crate::types::{CONTAINER_PAGE_SIZE, DeviceId, Prot};

/// One piece of an access, inside one mapping.
struct Piece<'a> {
    mapping: &'a Mapping,
    /// Offset of the piece in the mapping.
    offset: u64,
    /// Offset of the piece in the caller's buffer.
    at: usize,
    len: usize,
}

impl Piece<'_> {
    /// The error for a copy of this piece that failed: EFAULT for a page the client cut off
    /// (see [`AccessPath::Checked`](crate::AccessPath::Checked)).
    fn fault(&self, source: std::io::Error) -> IommuError {
        IommuError::Fault {
            iova: Iova(self.mapping.iova + self.offset),
            len: self.len as u64,
            source,
        }
    }
}

/// Splits `[iova, iova + len)` into pieces, one per mapping, refusing any byte that is not
/// mapped or whose mapping does not allow `need`.
fn plan<'a>(state: &'a State, iova: u64, len: usize, need: Prot) -> Result<Vec<Piece<'a>>> {
    let total = len as u64;
    range_end(iova, total)?;
    let mut pieces = Vec::with_capacity(1);
    let mut done = 0u64;
    while done < total {
        let cur = iova + done;
        let m = state.containing(cur).ok_or(IommuError::NotMapped {
            iova: Iova(cur),
            len: total - done,
        })?;
        if !m.prot.allows(need) {
            let access = if need.write { "write" } else { "read" };
            return Err(IommuError::Permission {
                iova: Iova(cur),
                access,
            });
        }
        let n = (m.end() - cur).min(total - done);
        // `done` and `n` are both at most `len`, a usize.
        let (at, n_usize) = (to_usize(done), to_usize(n));
        pieces.push(Piece {
            mapping: m,
            offset: cur - m.iova,
            at,
            len: n_usize,
        });
        done += n;
    }
    Ok(pieces)
}

/// A piece of an access that goes to the peer, with all it needs to be sent without the
/// container lock.
struct RemotePiece {
    memory: Arc<dyn RemoteMemory>,
    /// First IOVA of the mapping the piece was planned in.
    mapping: u64,
    /// Offset of the piece in the mapping.
    offset: u64,
    /// Offset of the piece in the caller's buffer.
    at: usize,
    len: usize,
}

impl RemotePiece {
    fn new(p: &Piece<'_>, memory: &Arc<dyn RemoteMemory>) -> Self {
        RemotePiece {
            memory: Arc::clone(memory),
            mapping: p.mapping.iova,
            offset: p.offset,
            at: p.at,
            len: p.len,
        }
    }

    /// Where the piece starts. Cannot overflow: the piece lies inside a mapping.
    fn iova(&self) -> Iova {
        Iova(self.mapping + self.offset)
    }

    fn read(&self, buf: &mut [u8]) -> Result<()> {
        let at = self.iova();
        self.memory
            .read(at, &mut buf[self.at..self.at + self.len])
            .map_err(|source| IommuError::Remote { iova: at, source })
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        let at = self.iova();
        self.memory
            .write(at, &data[self.at..self.at + self.len])
            .map_err(|source| IommuError::Remote { iova: at, source })
    }
}

/// A length already bounded by a `usize` buffer length.
#[allow(clippy::cast_possible_truncation)]
fn to_usize(v: u64) -> usize {
    v as usize
}

impl Container {
    /// Reads guest memory at `iova` into `buf` (the kernel's `vfio_dma_rw`, read side). The
    /// whole range must be mapped readable, possibly across adjacent mappings.
    ///
    /// Host memory is read under the container lock, the peer's after it is dropped (see the
    /// [crate docs](crate#concurrency)): a read racing with an unmap of its range may still be
    /// answered by the peer, as DMA already in flight is.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<()> {
        let remote = {
            let state = self.state();
            let mut remote = Vec::new();
            for p in plan(&state, iova.0, buf.len(), Prot::READ)? {
                match &p.mapping.memory {
                    Memory::Host(host) => {
                        host.read(to_usize(p.offset), &mut buf[p.at..p.at + p.len])
                            .map_err(|e| p.fault(e))?;
                    }
                    Memory::Remote(memory) => remote.push(RemotePiece::new(&p, memory)),
                }
            }
            remote
        };
        for r in &remote {
            r.read(buf)?;
        }
        Ok(())
    }

    /// Writes `data` to guest memory at `iova` and marks the written pages dirty while tracking
    /// is on (the kernel's `vfio_dma_rw`, write side). The whole range must be mapped writable;
    /// otherwise nothing is written.
    ///
    /// Host memory is written and marked under the container lock; the peer is sent its pieces,
    /// in IOVA order, after the lock is dropped, and marks nothing (see the
    /// [crate docs](crate#mappings-without-an-fd)).
    pub fn write(&self, iova: Iova, data: &[u8]) -> Result<()> {
        let remote = {
            let state = self.state();
            let mut remote = Vec::new();
            for p in plan(&state, iova.0, data.len(), Prot::WRITE)? {
                match &p.mapping.memory {
                    Memory::Host(host) => {
                        let written = host.write(to_usize(p.offset), &data[p.at..p.at + p.len]);
                        // Marked also when the copy failed part-way: the bytes before the
                        // fault were written.
                        if let Some(bitmap) = &p.mapping.bitmap {
                            bitmap.mark_bytes(p.offset, p.len as u64)?;
                        }
                        written.map_err(|e| p.fault(e))?;
                    }
                    Memory::Remote(memory) => remote.push(RemotePiece::new(&p, memory)),
                }
            }
            remote
        };
        // Sent in IOVA order, the first failure ending the write.
        for r in &remote {
            r.write(data)?;
        }
        Ok(())
    }

    /// Reports that the device wrote `[iova, iova + len)` some other way (through a pinned
    /// slice, or by DMA it tracks itself): the seeds' "API for a driver to report dirty pages".
    /// The range must be mapped writable. Nothing is recorded while tracking is off.
    pub fn mark_dirty(&self, iova: Iova, len: u64) -> Result<()> {
        let state = self.state();
        let len = usize::try_from(len).map_err(|_| IommuError::Wraps { iova, size: len })?;
        for p in plan(&state, iova.0, len, Prot::WRITE)? {
            if let Some(bitmap) = &p.mapping.bitmap {
                bitmap.mark_bytes(p.offset, p.len as u64)?;
            }
        }
        Ok(())
    }

    /// Pins `[iova, iova + len)` for `device` and lends its host memory until the guard drops
    /// (the kernel's `vfio_pin_pages`). Pins are counted per page; a pinned page is reported
    /// dirty on every GET while pinned, and its bit is set at once if tracking is on. The range
    /// must lie in one mapping, with memory in this process, allowing `prot`. The device's first
    /// pin makes it `Pinned` scope.
    pub fn pin(&self, device: DeviceId, iova: Iova, len: u64, prot: Prot) -> Result<PinGuard> {
        if len == 0 {
            return Err(IommuError::ZeroSize { what: "pin" });
        }
        let end = range_end(iova.0, len)?;
        let state = self.state();
        let dev = state
            .devices
            .get(&device)
            .ok_or(IommuError::NoSuchDevice(device))?;
        let m = state
            .containing(iova.0)
            .ok_or(IommuError::NotMapped { iova, len })?;
        if end > m.end() {
            return Err(match state.containing(m.end()) {
                Some(_) => IommuError::PinCrossesMappings { iova, len },
                None => IommuError::NotMapped {
                    iova: Iova(m.end()),
                    len: end - m.end(),
                },
            });
        }
        if !m.prot.allows(prot) {
            let access = if prot.write && !m.prot.write {
                "write"
            } else {
                "read"
            };
            return Err(IommuError::Permission { iova, access });
        }
        let Memory::Host(host) = &m.memory else {
            return Err(IommuError::NotHostMapped { iova: m.start() });
        };
        let shift = CONTAINER_PAGE_SIZE.shift();
        let first_page = (iova.0 - m.iova) >> shift;
        let last_page = (end - 1 - m.iova) >> shift;
        {
            let mut pins = m.pins();
            for page in first_page..=last_page {
                *pins.entry(page).or_insert(0) += 1;
            }
        }
        if let Some(bitmap) = &m.bitmap {
            bitmap.mark_pages(first_page, last_page - first_page + 1)?;
        }
        if !dev.pinned_scope.swap(true, Ordering::AcqRel) {
            tracing::debug!(%device, "first pin: device is now Pinned scope");
        }
        Ok(PinGuard {
            container: self.clone(),
            mapping: m.iova,
            first_page,
            pages: last_page - first_page + 1,
            iova,
            host: Arc::clone(host),
            offset: to_usize(iova.0 - m.iova),
            len: to_usize(len),
            writable: m.prot.write && prot.write,
        })
    }

    fn unpin(&self, mapping: u64, first_page: u64, pages: u64) {
        let state = self.state();
        let Some(m) = state.mappings.get(&mapping) else {
            debug_assert!(false, "a pinned mapping was removed");
            return;
        };
        let mut pins = m.pins();
        for page in first_page..first_page + pages {
            if let Some(count) = pins.get_mut(&page) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(&page);
                }
            }
        }
    }

    /// Pages pinned now, over all mappings.
    pub fn pinned_pages(&self) -> u64 {
        self.state()
            .mappings
            .values()
            .map(|m| m.pins().len() as u64)
            .sum()
    }
}

/// Pinned guest memory lent to a device. The pages stay pinned, and their mapping in place,
/// until the guard drops. Copies take the mapping's [`AccessPath`]: a pin of a mapping whose
/// file may shrink is copied through the kernel, and a page the client cut off is EFAULT.
pub struct PinGuard {
    container: Container,
    mapping: u64,
    first_page: u64,
    pages: u64,
    iova: Iova,
    /// The mapping's memory, kept mapped by this reference even if the mapping is removed.
    host: Arc<HostMemory>,
    /// Offset of the pinned range in `host`.
    offset: usize,
    len: usize,
    writable: bool,
}

impl PinGuard {
    /// First IOVA of the pinned range.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Bytes pinned.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no bytes are pinned (never: a pin covers at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How copies reach the pinned memory: [`AccessPath::Direct`] or [`AccessPath::Checked`].
    pub fn path(&self) -> AccessPath {
        self.host.path()
    }

    /// The host address of the first byte, on an [`AccessPath::Direct`] mapping only: valid for
    /// [`PinGuard::len`] bytes while the guard lives; writable only if the pin and the mapping
    /// allow writes. `None` on a `Checked` mapping, whose client may cut pages off under a raw
    /// access (SIGBUS): use [`PinGuard::read_at`] / [`PinGuard::write_at`] there.
    pub fn as_ptr(&self) -> Option<*mut u8> {
        match self.path() {
            AccessPath::Direct => self.host.ptr_at(self.offset, self.len).ok(),
            AccessPath::Checked | AccessPath::Remote => None,
        }
    }

    /// Copies `buf.len()` bytes at `offset` in the pinned range into `buf`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        self.host
            .read(self.offset + offset, buf)
            .map_err(|source| self.fault(offset, buf.len(), source))
    }

    /// Copies `data` to `offset` in the pinned range. Pinned pages are reported dirty while
    /// pinned and once more after, so no separate report is needed.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(IommuError::Permission {
                iova: self.iova,
                access: "write",
            });
        }
        self.check(offset, data.len())?;
        self.host
            .write(self.offset + offset, data)
            .map_err(|source| self.fault(offset, data.len(), source))
    }

    fn fault(&self, offset: usize, len: usize, source: std::io::Error) -> IommuError {
        IommuError::Fault {
            iova: Iova(self.iova.0.saturating_add(offset as u64)),
            len: len as u64,
            source,
        }
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(IommuError::NotMapped {
                iova: Iova(self.iova.0.saturating_add(offset as u64)),
                len: len as u64,
            }),
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.container
            .unpin(self.mapping, self.first_page, self.pages);
    }
}

impl std::fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinGuard")
            .field("iova", &self.iova)
            .field("len", &self.len)
            .finish()
    }
}
