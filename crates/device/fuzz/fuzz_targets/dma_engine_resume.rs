//! Fuzzes the dma-engine's resume path: any bytes as the chunks of its saved state (device RAM
//! pages, BAR4 pages, registers, the configuration space with the MSI-X table), then BAR0
//! accesses (registers, doorbells, the MSI-X table) and the ring it inherited run, with or
//! without MSI-X eventfds (see `harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one entry point of the shared harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::dma_engine_resume(data);
});
