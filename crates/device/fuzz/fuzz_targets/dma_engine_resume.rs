//! Fuzzes the dma-engine's resume path: any bytes as the chunks of its saved state (device RAM
//! pages, BAR4 pages, registers), then the ring it inherited run (see `harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one entry point of the shared harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::dma_engine_resume(data);
});
