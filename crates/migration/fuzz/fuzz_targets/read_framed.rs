//! Fuzzes the section decoders and order rules: any bytes as frames whose checksums the
//! harness fixes up (see `harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one entry point of the shared harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::read_framed(data);
});
