//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz harness on stable
//! Rust, so CI checks every input the fuzzers ever kept without nightly or cargo-fuzz; and
//! holds the regression inputs of what fuzzing found, one test each.
//!
//! `cargo test -p vfmig-device --test corpus_replay -- --ignored` rewrites the `seed-*` files
//! from the device states below.

use std::fs;
use std::path::{Path, PathBuf};

use vfmig_device::devices::dma_engine::regs::CONTROL_ENABLE;
use vfmig_device::devices::dma_engine::{RAM_BAR, REGS_BAR};
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
        let container = harness::guest();
        let mut dev = harness::dma_engine(&container, scope);
        let regs = u32::try_from(REGS_BAR).unwrap();
        dev.region_write(regs, 0x08, &0x1000u64.to_le_bytes())
            .unwrap();
        dev.region_write(regs, 0x10, &16u32.to_le_bytes()).unwrap();
        dev.region_write(regs, 0x14, &CONTROL_ENABLE.to_le_bytes())
            .unwrap();
        dev.region_write(u32::try_from(RAM_BAR).unwrap(), 0x2000, b"device ram")
            .unwrap();
        let mut input = vec![u8::from(scope == DirtyScope::AllMapped)];
        input.extend(harness::join(&harness::save(&mut dev)));
        seeds.push(("dma_engine_resume", name, input));
    }
    let container = harness::guest();
    let mut dev = harness::dma_engine(&container, DirtyScope::Pinned);
    let mut input = vec![0];
    input.extend(harness::join(&harness::save(&mut dev)));
    seeds.push(("dma_engine_resume", "power-on", input));
    seeds
}

#[test]
#[ignore = "rewrites the seed corpus"]
fn write_seed_corpus() {
    for (target, name, input) in seeds() {
        fs::write(corpus(target).join(format!("seed-{name}")), &input).unwrap();
    }
}
