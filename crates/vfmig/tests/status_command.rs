//! `vfmig vm status`, the command, as a shell pipeline uses it.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::process::Command;

use common::{BUSY_GUEST, TestDir, VmProcess};

#[test]
fn status_into_a_pipe_whose_reader_has_gone_ends_quietly() {
    let dir = TestDir::new("status-pipe");
    let vm = VmProcess::source(&dir, "vm", BUSY_GUEST);
    // As `vfmig vm status | head -0`: the reader is gone before the first write.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_vfmig"))
        .args(["vm", "status", "--control"])
        .arg(vm.control())
        .stdout(writer)
        .output()
        .expect("run vfmig vm status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
