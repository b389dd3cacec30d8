//! Fuzzes the mtty's resume path: any bytes as the chunks of its saved state (see `harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// Each target uses one entry point of the shared harness.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::mtty_resume(data);
});
