//! The dma-engine's MSI-X over a real socket: the capability, the vectors GET_IRQ_INFO reports,
//! which eventfd a completion signals, the table and PBA in BAR0, and the migration of the
//! enable bit and the table.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use common::{ENTRIES, RING, drain, guest, send_chunk, serve, set_state};
use vfmig_abi::DeviceState;
use vfmig_abi::uapi::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfmig_device::devices::dma_engine::REGS_BAR;
use vfmig_device::devices::dma_engine::regs::{
    CONTROL_ENABLE, CONTROL_IRQ, Descriptor, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, Op,
};
use vfmig_memory::SharedMemory;
use vfmig_vfio_user::client::IrqValues;
use vfmig_vfio_user::message::IrqAction;
use vfmig_vfio_user::{Client, Errno};

const BAR0: u32 = REGS_BAR as u32;
const CONFIG: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
const MSIX: u32 = VFIO_PCI_MSIX_IRQ_INDEX;
const MSI: u32 = VFIO_PCI_MSI_IRQ_INDEX;
/// Message control of the MSI-X capability.
const MSIX_CONTROL: u64 = 0x52;
const ENABLE: u16 = 1 << 15;
const FUNCTION_MASK: u16 = 1 << 14;
const TABLE: u64 = MSIX_TABLE_OFFSET as u64;

fn eventfd() -> (OwnedFd, File) {
    // SAFETY: eventfd has no memory effects; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(raw >= 0);
    // SAFETY: a fresh fd owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let reader = File::from(fd.try_clone().unwrap());
    (fd, reader)
}

/// The eventfd's count, reset to 0 (0 if it was not signalled).
fn count(f: &mut File) -> u64 {
    let mut b = [0u8; 8];
    f.read(&mut b).map_or(0, |_| u64::from_le_bytes(b))
}

fn config_read(c: &Client, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(CONFIG, offset, &mut b[..len]).unwrap();
    u64::from_le_bytes(b)
}

fn set_msix_control(c: &Client, control: u16) {
    c.region_write(CONFIG, MSIX_CONTROL, &control.to_le_bytes())
        .unwrap();
}

fn bar0_read(c: &Client, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(BAR0, offset, &mut b[..len]).unwrap();
    u64::from_le_bytes(b)
}

fn bar0_write(c: &Client, offset: u64, v: u64, len: usize) {
    c.region_write(BAR0, offset, &v.to_le_bytes()[..len])
        .unwrap();
}

/// Eventfds on MSI-X vectors 0 and 1 and on MSI; the ring enabled at [`RING`] with
/// interrupts.
struct Rig {
    mem: SharedMemory,
    client: Client,
    vectors: [File; 2],
    msi: File,
}

fn rig() -> Rig {
    let (mem, container) = guest();
    let client = serve(&container);
    let (v0, r0) = eventfd();
    let (v1, r1) = eventfd();
    let (msi, rmsi) = eventfd();
    client
        .set_irqs(
            MSIX,
            0,
            IrqAction::Trigger,
            IrqValues::Eventfds(&[v0.as_fd(), v1.as_fd()]),
        )
        .unwrap();
    client
        .set_irqs(
            MSI,
            0,
            IrqAction::Trigger,
            IrqValues::Eventfds(&[msi.as_fd()]),
        )
        .unwrap();
    bar0_write(&client, 0x08, RING, 8);
    bar0_write(&client, 0x10, u64::from(ENTRIES), 4);
    bar0_write(&client, 0x14, u64::from(CONTROL_ENABLE | CONTROL_IRQ), 4);
    Rig {
        mem,
        client,
        vectors: [r0, r1],
        msi: rmsi,
    }
}

impl Rig {
    /// Runs one interrupting fill descriptor, on vector 1 if `vector1`.
    fn complete_one(&self, vector1: bool) {
        let d = Descriptor {
            op: Op::FillGuest,
            irq: true,
            guest: 0x8000,
            device: 0,
            len: 64,
            fill: 1,
        };
        let raw = if vector1 {
            d.encode_on_vector1()
        } else {
            d.encode()
        };
        let tail = bar0_read(&self.client, 0x18, 4) as u32;
        self.mem.write(RING + u64::from(tail) * 32, &raw).unwrap();
        bar0_write(&self.client, 0x18, u64::from((tail + 1) % ENTRIES), 4);
    }

    /// Signals seen since the last call: vector 0, vector 1, MSI.
    fn signals(&mut self) -> [u64; 3] {
        let [v0, v1] = &mut self.vectors;
        [count(v0), count(v1), count(&mut self.msi)]
    }
}

#[test]
fn the_msix_capability_follows_msi() {
    let (_mem, container) = guest();
    let c = serve(&container);
    assert_eq!(config_read(&c, 0x41, 1), 0x50, "MSI's next pointer");
    assert_eq!(config_read(&c, 0x50, 1), 0x11, "capability ID");
    assert_eq!(config_read(&c, 0x51, 1), 0, "end of the list");
}

#[test]
fn the_msix_table_size_field_says_two_vectors() {
    let (_mem, container) = guest();
    let c = serve(&container);
    assert_eq!(config_read(&c, MSIX_CONTROL, 2) & 0x7ff, 1);
}

#[test]
fn the_msix_table_and_pba_are_in_bar0() {
    let (_mem, container) = guest();
    let c = serve(&container);
    assert_eq!(config_read(&c, 0x54, 4), u64::from(MSIX_TABLE_OFFSET));
    assert_eq!(config_read(&c, 0x58, 4), u64::from(MSIX_PBA_OFFSET));
}

#[test]
fn get_irq_info_reports_two_msix_vectors() {
    let (_mem, container) = guest();
    let c = serve(&container);
    let info = c.irq_info(MSIX).unwrap();
    assert_eq!(info.count, 2);
    assert_eq!(info.flags, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE);
}

#[test]
fn with_msix_enabled_a_completion_signals_vector_0_and_not_msi() {
    let mut rig = rig();
    set_msix_control(&rig.client, ENABLE);
    rig.complete_one(false);
    assert_eq!(rig.signals(), [1, 0, 0]);
}

#[test]
fn a_completion_with_flag_vector1_signals_vector_1() {
    let mut rig = rig();
    set_msix_control(&rig.client, ENABLE);
    rig.complete_one(true);
    assert_eq!(rig.signals(), [0, 1, 0]);
}

#[test]
fn under_the_function_mask_the_device_still_signals_for_the_client_to_hold_back() {
    let mut rig = rig();
    set_msix_control(&rig.client, ENABLE | FUNCTION_MASK);
    rig.complete_one(false);
    rig.complete_one(true);
    assert_eq!(rig.signals(), [1, 1, 0]);
}

#[test]
fn with_msix_disabled_a_completion_signals_msi() {
    let mut rig = rig();
    rig.complete_one(true);
    assert_eq!(rig.signals(), [0, 0, 1]);
}

#[test]
fn a_deassigned_vector_signals_nothing() {
    let mut rig = rig();
    rig.client
        .set_irqs(
            MSIX,
            1,
            IrqAction::Trigger,
            IrqValues::Deassign { count: 1 },
        )
        .unwrap();
    set_msix_control(&rig.client, ENABLE);
    rig.complete_one(true);
    rig.complete_one(false);
    assert_eq!(rig.signals(), [1, 0, 0]);
}

#[test]
fn the_client_fires_a_vector_with_data_bool() {
    let mut rig = rig();
    rig.client
        .set_irqs(MSIX, 0, IrqAction::Trigger, IrqValues::Bool(&[0, 1]))
        .unwrap();
    assert_eq!(rig.signals(), [0, 1, 0]);
}

#[test]
fn set_irqs_beyond_the_vectors_is_einval_and_the_device_serves_on() {
    let (_mem, container) = guest();
    let c = serve(&container);
    let (fd, _r) = eventfd();
    let r = c.set_irqs(
        MSIX,
        2,
        IrqAction::Trigger,
        IrqValues::Eventfds(&[fd.as_fd()]),
    );
    assert_eq!(r.map_err(|e| e.errno()), Err(Errno::EINVAL));
    assert_eq!(c.irq_info(MSIX).unwrap().count, 2);
}

#[test]
fn table_entries_start_masked() {
    let (_mem, container) = guest();
    let c = serve(&container);
    assert_eq!(bar0_read(&c, TABLE + 12, 4), 1);
    assert_eq!(bar0_read(&c, TABLE + 16 + 12, 4), 1);
}

#[test]
fn table_writes_read_back() {
    let (_mem, container) = guest();
    let c = serve(&container);
    bar0_write(&c, TABLE + 16, 0xfee0_1000, 8);
    bar0_write(&c, TABLE + 16 + 8, 0x51, 4);
    bar0_write(&c, TABLE + 16 + 12, 0, 4);
    assert_eq!(bar0_read(&c, TABLE + 16, 8), 0xfee0_1000);
    assert_eq!(bar0_read(&c, TABLE + 16 + 8, 8), 0x51);
}

#[test]
fn the_pba_reads_zero() {
    let (_mem, container) = guest();
    let c = serve(&container);
    bar0_write(&c, u64::from(MSIX_PBA_OFFSET), u64::MAX, 8);
    assert_eq!(bar0_read(&c, u64::from(MSIX_PBA_OFFSET), 8), 0);
}

#[test]
fn an_unaligned_table_access_is_einval() {
    let (_mem, container) = guest();
    let c = serve(&container);
    let mut b = [0u8; 4];
    let r = c.region_read(BAR0, TABLE + 2, &mut b);
    assert_eq!(r.map_err(|e| e.errno()), Err(Errno::EINVAL));
}

/// Stop-and-copy on `c`: every chunk it saves.
fn save(c: &Client) -> Vec<Vec<u8>> {
    set_state(c, DeviceState::STOP_COPY).unwrap();
    drain(c)
}

/// The configuration-space chunk among `chunks` (tag 2).
fn config_chunk(chunks: &[Vec<u8>]) -> &[u8] {
    chunks.iter().find(|c| c.first() == Some(&2)).unwrap()
}

#[test]
fn migration_carries_the_enable_bit_and_the_table() {
    let (_mem, container) = guest();
    let src = serve(&container);
    let dst = serve(&container);
    set_msix_control(&src, ENABLE);
    bar0_write(&src, TABLE + 16, 0xfee0_0000, 8);
    bar0_write(&src, TABLE + 16 + 8, 0x51, 4);
    bar0_write(&src, TABLE + 16 + 12, 0, 4);
    let chunks = save(&src);
    set_state(&dst, DeviceState::RESUMING).unwrap();
    for chunk in &chunks {
        send_chunk(&dst, chunk).unwrap();
    }
    set_state(&dst, DeviceState::RUNNING).unwrap();
    assert_eq!(
        config_read(&dst, MSIX_CONTROL, 2) & u64::from(ENABLE),
        0x8000
    );
    assert_eq!(bar0_read(&dst, TABLE + 16, 8), 0xfee0_0000);
    assert_eq!(bar0_read(&dst, TABLE + 16 + 8, 8), 0x51);
}

#[test]
fn resume_refuses_a_config_chunk_without_the_table() {
    let (_mem, container) = guest();
    let src = serve(&container);
    let dst = serve(&container);
    let chunks = save(&src);
    let config = config_chunk(&chunks);
    set_state(&dst, DeviceState::RESUMING).unwrap();
    assert_eq!(send_chunk(&dst, &config[..257]), Err(Errno::EINVAL));
}

#[test]
fn resume_refuses_a_config_chunk_with_bytes_after_the_table() {
    let (_mem, container) = guest();
    let src = serve(&container);
    let dst = serve(&container);
    let chunks = save(&src);
    let mut config = config_chunk(&chunks).to_vec();
    config.extend_from_slice(&[0; 16]);
    set_state(&dst, DeviceState::RESUMING).unwrap();
    assert_eq!(send_chunk(&dst, &config), Err(Errno::EINVAL));
}

#[test]
fn a_reset_masks_every_table_entry_again() {
    let (_mem, container) = guest();
    let c = serve(&container);
    bar0_write(&c, TABLE + 12, 0, 4);
    c.reset().unwrap();
    assert_eq!(bar0_read(&c, TABLE + 12, 4), 1);
}

#[test]
fn a_reset_disables_msix() {
    let (_mem, container) = guest();
    let c = serve(&container);
    set_msix_control(&c, ENABLE);
    c.reset().unwrap();
    assert_eq!(config_read(&c, MSIX_CONTROL, 2) & u64::from(ENABLE), 0);
}
