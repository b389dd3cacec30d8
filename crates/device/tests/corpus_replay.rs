//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz harness on stable
//! Rust, so CI checks every input the fuzzers ever kept without nightly or cargo-fuzz; and
//! holds the regression inputs of what fuzzing found, one test each.
//!
//! `cargo test -p vfmig-device --test corpus_replay -- --ignored` rewrites the `seed-*` files
//! from the device states below.

use std::fs;
use std::path::{Path, PathBuf};

use vfmig_device::PciDevice;
use vfmig_device::devices::dma_engine::regs::{
    CONTROL_ENABLE, CONTROL_IRQ, Descriptor, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, Op,
};
use vfmig_device::devices::dma_engine::{DmaEngine, RAM_BAR, REGS_BAR, SHARED_BAR};
use vfmig_iommu::DirtyScope;
use vfmig_vfio_user::server::Backend;

#[path = "../fuzz/harness.rs"]
mod harness;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs every file of a corpus through `resume`; seeds must resume to RUNNING, other inputs
/// must not panic. Returns the number of files.
fn replay(target: &str, resume: fn(&[u8]) -> bool) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(corpus(target)).unwrap() {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let running = resume(&data);
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            running || !name.starts_with("seed-"),
            "seed {name} does not resume"
        );
        count += 1;
    }
    count
}

#[test]
fn mtty_corpus_replays_without_panic() {
    assert!(replay("mtty_resume", harness::mtty_resume) > 0);
}

#[test]
fn dma_engine_corpus_replays_without_panic() {
    assert!(replay("dma_engine_resume", harness::dma_engine_resume) > 0);
}

#[test]
fn seeds_are_what_the_devices_save_today() {
    for (target, name, input) in seeds() {
        let file = corpus(target).join(format!("seed-{name}"));
        assert_eq!(
            fs::read(&file).unwrap(),
            input,
            "{target}/{name}: rewrite the seeds (see the top of this file)"
        );
    }
}

/// Guest memory from IOVA 0 to the end of a 16-descriptor ring at 0x1000, one descriptor of
/// each op at its start: what the seeds' resumed ring runs. With `vector1`, the second and
/// fourth complete on MSI-X vector 1.
fn ring_image(vector1: bool) -> Vec<u8> {
    let mut image = vec![0u8; 0x1000 + 16 * 32];
    let ops = [
        (Op::FillGuest, 0x2000, 0, 7),
        (Op::CopyToDevice, 0x2000, 0x100, 0),
        (Op::CopyToGuest, 0x3000, 0x100, 0),
        (Op::FillDevice, 0, 0x4000, 9),
    ];
    for (i, (op, guest, device, fill)) in ops.into_iter().enumerate() {
        let d = Descriptor {
            op,
            irq: true,
            guest,
            device,
            len: 64,
            fill,
        };
        let raw = if vector1 && i % 2 == 1 {
            d.encode_on_vector1()
        } else {
            d.encode()
        };
        image[0x1000 + i * 32..0x1000 + (i + 1) * 32].copy_from_slice(&raw);
    }
    image
}

/// The seed inputs, by target and name: the saves of real devices.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    let mut mtty = harness::mtty();
    seeds.push((
        "mtty_resume",
        "power-on",
        harness::join(&harness::save(&mut mtty)),
    ));
    let mut mtty = harness::mtty();
    for &byte in b"vfmig" {
        mtty.region_write(0, 0, &[byte]).unwrap();
    }
    mtty.region_write(1, 1, &[0x03]).unwrap();
    mtty.region_write(1, 7, &[0x42]).unwrap();
    seeds.push((
        "mtty_resume",
        "fifo",
        harness::join(&harness::save(&mut mtty)),
    ));

    for (scope, name) in [
        (DirtyScope::Pinned, "ring-pinned"),
        (DirtyScope::AllMapped, "ring-all-mapped"),
    ] {
        let flags = if scope == DirtyScope::AllMapped {
            harness::FLAG_ALL_MAPPED
        } else {
            0
        };
        let chunks = vec![ring_image(false), Vec::new()];
        let dev = ring_device(scope, CONTROL_ENABLE);
        seeds.push(("dma_engine_resume", name, dma_input(flags, chunks, dev)));
    }
    // Completions on both MSI-X vectors, with eventfds, and the table driven through BAR0.
    let chunks = vec![ring_image(true), msix_accesses()];
    let dev = ring_device(DirtyScope::Pinned, CONTROL_ENABLE | CONTROL_IRQ);
    let flags = harness::FLAG_MSIX_EVENTFDS;
    seeds.push((
        "dma_engine_resume",
        "msix-vectors",
        dma_input(flags, chunks, dev),
    ));

    let container = harness::guest();
    let dev = harness::dma_engine(&container, DirtyScope::Pinned);
    let chunks = vec![Vec::new(), Vec::new()];
    seeds.push(("dma_engine_resume", "power-on", dma_input(0, chunks, dev)));
    seeds
}

/// A dma-engine (on fresh guest memory) with a 16-descriptor ring at 0x1000, `control`, bytes in
/// device RAM and BAR4, MSI-X enabled and entry 1 programmed and unmasked.
fn ring_device(scope: DirtyScope, control: u32) -> PciDevice<DmaEngine> {
    let container = harness::guest();
    let mut dev = harness::dma_engine(&container, scope);
    let regs = u32::try_from(REGS_BAR).unwrap();
    dev.region_write(regs, 0x08, &0x1000u64.to_le_bytes())
        .unwrap();
    dev.region_write(regs, 0x10, &16u32.to_le_bytes()).unwrap();
    dev.region_write(regs, 0x14, &control.to_le_bytes())
        .unwrap();
    dev.region_write(u32::try_from(RAM_BAR).unwrap(), 0x2000, b"device ram")
        .unwrap();
    dev.region_write(u32::try_from(SHARED_BAR).unwrap(), 0x3000, b"shared bar")
        .unwrap();
    let entry1 = u64::from(MSIX_TABLE_OFFSET) + 16;
    dev.region_write(regs, entry1, &0xfee0_0000u64.to_le_bytes())
        .unwrap();
    dev.region_write(regs, entry1 + 8, &0x51u32.to_le_bytes())
        .unwrap();
    dev.region_write(regs, entry1 + 12, &0u32.to_le_bytes())
        .unwrap();
    dev.region_write(7, 0x52, &0x8000u16.to_le_bytes()).unwrap();
    dev
}

/// A `dma_engine_resume` input: `flags`, then `chunks` (guest memory and BAR0 accesses), then
/// the save of `dev`.
fn dma_input(flags: u8, mut chunks: Vec<Vec<u8>>, mut dev: PciDevice<DmaEngine>) -> Vec<u8> {
    chunks.extend(harness::save(&mut dev));
    let mut input = vec![flags];
    input.extend(harness::join(&chunks));
    input
}

/// BAR0 accesses after the resume: the MSI-X table read whole (4- and 8-byte), entry 0
/// programmed and unmasked, the PBA read, refused accesses (unaligned, straddling the table's
/// end, 2 bytes), then a doorbell that runs the four descriptors.
fn msix_accesses() -> Vec<u8> {
    let table = u16::try_from(MSIX_TABLE_OFFSET).unwrap();
    let pba = u16::try_from(MSIX_PBA_OFFSET).unwrap();
    let read = |offset, len| harness::Bar0Access {
        offset,
        len,
        write: None,
    };
    let write = |offset, len, value| harness::Bar0Access {
        offset,
        len,
        write: Some(value),
    };
    let mut accesses = Vec::new();
    accesses.extend((0..8).map(|w| read(table + 4 * w, 4)));
    accesses.extend((0..4).map(|q| read(table + 8 * q, 8)));
    accesses.extend([
        write(table, 8, 0xfee0_1000),
        write(table + 8, 4, 0x41),
        write(table + 12, 4, 0),
        read(pba, 8),
        write(pba, 8, u64::MAX),
        read(table + 2, 4),
        read(table + 0x1c, 8),
        read(table, 2),
        write(0x18, 4, 4),
    ]);
    accesses
        .iter()
        .flat_map(harness::Bar0Access::encode)
        .collect()
}
#[test]
#[ignore = "rewrites the seed corpus"]
fn write_seed_corpus() {
    for (target, name, input) in seeds() {
        fs::write(corpus(target).join(format!("seed-{name}")), &input).unwrap();
    }
}

/// A dma-engine registers chunk, as a `PciDevice` tags it: `ring_base`, `ring_size`,
/// `control`, `tail`, `head`, `status`, `completed`.
fn dma_regs_chunk(
    ring: (u64, u32),
    control: u32,
    tail_head: (u32, u32),
    completed: u64,
) -> Vec<u8> {
    let mut c = vec![1u8]; // the model's tag
    c.extend_from_slice(b"DMAE");
    c.extend_from_slice(&[2, 0, 0, 0]);
    c.extend_from_slice(&1u32.to_le_bytes());
    c.extend_from_slice(&ring.0.to_le_bytes());
    for v in [ring.1, control, tail_head.0, tail_head.1, 0] {
        c.extend_from_slice(&v.to_le_bytes());
    }
    c.extend_from_slice(&completed.to_le_bytes());
    c
}

#[test]
fn a_resumed_completion_count_at_its_maximum_wraps_on_the_next_descriptor() {
    for scope in [0u8, 1] {
        let mut input = vec![scope];
        input.extend(harness::join(&[
            Vec::new(),
            Vec::new(),
            dma_regs_chunk((0x1000, 16), CONTROL_ENABLE, (0, 0), u64::MAX),
        ]));
        assert!(harness::dma_engine_resume(&input), "scope {scope}");
    }
}
