//! The dma-engine's migration: iterative pre-copy of device RAM; in stop-and-copy the device
//! RAM pages still dirty, then all of BAR4, then the registers.
//!
//! ```text
//! chunk   0 magic "DMAE" | 4 kind (1 pages, 2 registers, 3 shared) | 5 pad | 8 count u32
//! pages   count x { page u32 | flags u32 (bit 0: all zero, no data) | 4096 bytes unless zero }
//! shared  as pages, page < 16: pages of BAR4 (count at most 16)
//! regs    the register file (regs::REGS_LEN bytes)
//! ```
//!
//! BAR4 is mapped by the client, so the device cannot know which of its pages changed: every
//! stop-and-copy sends all 16 of them (all-zero ones as a flag). A resume writes each into
//! BAR4's memory, which has a fixed size; a page outside it, more than 16 entries, short data
//! or trailing bytes are EINVAL.

use vfmig_abi::StateKind;

use super::regs::{CONTROL_ENABLE, REGS_LEN, Regs};
use super::{DmaEngine, RAM_PAGE_SIZE, SHARED_SIZE};
use crate::migratable::{Migratable, MigratableError};

const MAGIC: &[u8; 4] = b"DMAE";
const KIND_PAGES: u8 = 1;
const KIND_REGS: u8 = 2;
const KIND_SHARED: u8 = 3;
const HEADER: usize = 12;
const ENTRY: usize = 8;
const FLAG_ZERO: u32 = 1;
/// Pages of BAR4.
const SHARED_PAGES: u64 = SHARED_SIZE / RAM_PAGE_SIZE.bytes();
/// What a zero page of BAR4 is written from on resume.
static ZERO_PAGE: [u8; RAM_PAGE_SIZE.bytes_usize()] = [0; RAM_PAGE_SIZE.bytes_usize()];

/// Where a save stands.
#[derive(Debug, Default)]
pub(super) struct SaveState {
    /// The registers are still to be sent (stop-and-copy).
    regs_pending: bool,
    /// A save is under way (pre-copy or stop-and-copy).
    saving: bool,
    /// The next page of BAR4 to send, while stop-and-copy still has some to send.
    shared_next: Option<u64>,
}

fn header(buf: &mut [u8], kind: u8, count: u32) {
    buf[..4].copy_from_slice(MAGIC);
    buf[4..8].copy_from_slice(&[kind, 0, 0, 0]);
    buf[8..12].copy_from_slice(&count.to_le_bytes());
}

impl DmaEngine {
    /// Fills `buf` with dirty pages of device RAM, claiming each as it goes.
    fn save_pages(&mut self, buf: &mut [u8]) -> usize {
        let mut at = HEADER;
        let mut count = 0u32;
        let pages: Vec<u64> = self
            .ram_dirty
            .runs()
            .flat_map(|run| run.first..run.end())
            .take(buf.len() / ENTRY)
            .collect();
        for page in pages {
            if at + ENTRY + RAM_PAGE_SIZE.bytes_usize() > buf.len() {
                break;
            }
            let mut bit = [0u64];
            if self.ram_dirty.read_and_clear(page, 1, &mut bit, 0).is_err() || bit[0] == 0 {
                continue;
            }
            let Some(range) = self.ram_range(page * RAM_PAGE_SIZE.bytes(), RAM_PAGE_SIZE.bytes())
            else {
                continue;
            };
            let data = &self.ram[range];
            let zero = data.iter().all(|&b| b == 0);
            let page32 = u32::try_from(page).unwrap_or(u32::MAX);
            buf[at..at + 4].copy_from_slice(&page32.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&u32::from(zero).to_le_bytes());
            at += ENTRY;
            if !zero {
                buf[at..at + RAM_PAGE_SIZE.bytes_usize()].copy_from_slice(data);
                at += RAM_PAGE_SIZE.bytes_usize();
            }
            count += 1;
        }
        if count == 0 {
            return 0;
        }
        header(buf, KIND_PAGES, count);
        at
    }

    /// Sends pages of BAR4 from `shared_next` on, as many as fit in `buf`.
    fn save_shared(&mut self, buf: &mut [u8]) -> Result<usize, MigratableError> {
        let Some(first) = self.save.shared_next else {
            return Ok(0);
        };
        let page_len = RAM_PAGE_SIZE.bytes_usize();
        let mut at = HEADER;
        let mut page = first;
        while page < SHARED_PAGES && at + ENTRY + page_len <= buf.len() {
            let data = &mut buf[at + ENTRY..at + ENTRY + page_len];
            self.shared
                .read(page * RAM_PAGE_SIZE.bytes(), data)
                .map_err(|e| errno_of(&e, "reading BAR4"))?;
            let zero = data.iter().all(|&b| b == 0);
            let page32 = u32::try_from(page).unwrap_or(u32::MAX);
            buf[at..at + 4].copy_from_slice(&page32.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&u32::from(zero).to_le_bytes());
            at += ENTRY + if zero { 0 } else { page_len };
            page += 1;
        }
        self.save.shared_next = (page < SHARED_PAGES).then_some(page);
        let count = u32::try_from(page - first).unwrap_or(u32::MAX);
        header(buf, KIND_SHARED, count);
        Ok(at)
    }

    fn load_pages(&mut self, count: u32, body: &[u8]) -> Result<(), MigratableError> {
        for_each_page(count, body, |page, data| {
            let range = self
                .ram_range(
                    page.saturating_mul(RAM_PAGE_SIZE.bytes()),
                    RAM_PAGE_SIZE.bytes(),
                )
                .ok_or_else(|| {
                    MigratableError::bad_chunk(format!("page {page} outside device RAM"))
                })?;
            match data {
                Some(data) => self.ram[range].copy_from_slice(data),
                None => self.ram[range].fill(0),
            }
            Ok(())
        })
    }

    fn load_shared(&mut self, count: u32, body: &[u8]) -> Result<(), MigratableError> {
        if u64::from(count) > SHARED_PAGES {
            return Err(MigratableError::bad_chunk(format!(
                "{count} pages of BAR4, which has {SHARED_PAGES}"
            )));
        }
        for_each_page(count, body, |page, data| {
            if page >= SHARED_PAGES {
                return Err(MigratableError::bad_chunk(format!(
                    "page {page} outside BAR4"
                )));
            }
            self.shared
                .write(page * RAM_PAGE_SIZE.bytes(), data.unwrap_or(&ZERO_PAGE))
                .map_err(|e| errno_of(&e, "writing BAR4"))
        })
    }
}

/// A failed memory access as a migration error that keeps its errno.
fn errno_of(e: &std::io::Error, what: &str) -> MigratableError {
    MigratableError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

/// Walks `count` page entries of `body`, handing each page number and its data (`None`: all
/// zero) to `apply`. Short entries or data, and bytes after the last entry, are EINVAL.
fn for_each_page(
    count: u32,
    mut body: &[u8],
    mut apply: impl FnMut(u64, Option<&[u8]>) -> Result<(), MigratableError>,
) -> Result<(), MigratableError> {
    for _ in 0..count {
        let (entry, rest) = body
            .split_first_chunk::<ENTRY>()
            .ok_or_else(|| MigratableError::bad_chunk("short page entry"))?;
        let page = u64::from(u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]));
        let flags = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        if flags & FLAG_ZERO != 0 {
            apply(page, None)?;
            body = rest;
        } else {
            let (data, rest) = rest
                .split_at_checked(RAM_PAGE_SIZE.bytes_usize())
                .ok_or_else(|| MigratableError::bad_chunk("short page data"))?;
            apply(page, Some(data))?;
            body = rest;
        }
    }
    if !body.is_empty() {
        return Err(MigratableError::bad_chunk("trailing bytes after the pages"));
    }
    Ok(())
}

impl Migratable for DmaEngine {
    fn set_state(&mut self, from: StateKind, to: StateKind) -> Result<(), MigratableError> {
        match to {
            StateKind::PreCopy => {
                // The first round sends all of device RAM.
                self.ram_dirty.set_all();
                self.save = SaveState {
                    regs_pending: false,
                    saving: true,
                    shared_next: None,
                };
            }
            StateKind::StopCopy => {
                if from != StateKind::PreCopy {
                    self.ram_dirty.set_all();
                }
                // BAR4 is written through the client's mapping, unseen: all of it goes now.
                self.save = SaveState {
                    regs_pending: true,
                    saving: true,
                    shared_next: Some(0),
                };
            }
            StateKind::Running if from == StateKind::Resuming => {
                self.save = SaveState::default();
                if self.regs.control & CONTROL_ENABLE != 0 {
                    self.take_ring_pin()
                        .map_err(|e| MigratableError::new(e.errno, e.what))?;
                }
            }
            StateKind::Resuming => {
                *super::lock(&self.ring) = None;
                self.save = SaveState::default();
            }
            _ => self.save = SaveState::default(),
        }
        Ok(())
    }

    fn pending_bytes(&mut self) -> Result<u64, MigratableError> {
        if !self.save.saving {
            return Ok(0);
        }
        let pages = self.ram_dirty.count() * (RAM_PAGE_SIZE.bytes() + ENTRY as u64);
        let shared = self.save.shared_next.map_or(0, |next| {
            HEADER as u64 + (SHARED_PAGES - next) * (RAM_PAGE_SIZE.bytes() + ENTRY as u64)
        });
        let regs = if self.save.regs_pending {
            (HEADER + REGS_LEN) as u64
        } else {
            0
        };
        Ok(pages + shared + regs)
    }

    fn save_chunk(&mut self, buf: &mut [u8]) -> Result<usize, MigratableError> {
        if buf.len() < HEADER + ENTRY + RAM_PAGE_SIZE.bytes_usize() {
            return Err(MigratableError::new(
                libc::ENOSPC,
                "data section smaller than one page",
            ));
        }
        let n = self.save_pages(buf);
        if n > 0 {
            return Ok(n);
        }
        let n = self.save_shared(buf)?;
        if n > 0 || !self.save.regs_pending {
            return Ok(n);
        }
        header(buf, KIND_REGS, 1);
        let mut regs = Vec::with_capacity(REGS_LEN);
        self.regs.encode(&mut regs);
        buf[HEADER..HEADER + REGS_LEN].copy_from_slice(&regs);
        self.save.regs_pending = false;
        Ok(HEADER + REGS_LEN)
    }

    fn load_chunk(&mut self, chunk: &[u8]) -> Result<(), MigratableError> {
        let (head, body) = chunk
            .split_first_chunk::<HEADER>()
            .filter(|(h, _)| &h[..4] == MAGIC)
            .ok_or_else(|| MigratableError::bad_chunk("not a dma-engine chunk"))?;
        let count = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        match head[4] {
            KIND_PAGES => self.load_pages(count, body),
            KIND_SHARED => self.load_shared(count, body),
            KIND_REGS => {
                self.regs = Regs::decode(body)
                    .ok_or_else(|| MigratableError::bad_chunk("invalid dma-engine registers"))?;
                Ok(())
            }
            kind => Err(MigratableError::bad_chunk(format!(
                "unknown dma-engine chunk kind {kind}"
            ))),
        }
    }
}
