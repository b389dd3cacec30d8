//! Compares every size, field offset and constant of `vfmig_guest::layout` with
//! `guest/layout.h` as the C compiler sees it: the guest program is built from that header,
//! the VMM reads through these types.
//!
//! One table lists each C expression beside the Rust value it must equal; the C program is
//! generated from the table.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use vfmig_guest::layout::*;

macro_rules! size {
    ($c:literal, $t:ty) => {
        (format!("sizeof(struct {})", $c), size_of::<$t>() as u64)
    };
}

macro_rules! offsets {
    ($c:literal, $t:ty, $($f:ident),+) => {
        vec![$((
            format!("offsetof(struct {}, {})", $c, stringify!($f)),
            offset_of!($t, $f) as u64,
        )),+]
    };
}

macro_rules! constant {
    ($c:literal, $v:expr) => {
        ($c.to_string(), u64::from($v))
    };
}

/// Every (C expression, Rust value) pair the test checks.
fn table() -> Vec<(String, u64)> {
    let mut t = vec![
        size!("vfmig_boot_page", BootPage),
        size!("vfmig_vcpu_status", VcpuStatus),
        size!("vfmig_error", FirstError),
        size!("vfmig_status_page", StatusPage),
    ];
    t.extend(offsets!(
        "vfmig_boot_page",
        BootPage,
        magic,
        version,
        vcpus,
        ram_size,
        tsc_hz,
        ws_base,
        ws_size,
        dirty_rate,
        device_rate,
        workloads,
        reserved0,
        reserved
    ));
    t.extend(offsets!(
        "vfmig_vcpu_status",
        VcpuStatus,
        state,
        loops,
        pages_written,
        pages_verified,
        passes,
        mtty_tx,
        mtty_rx,
        mtty_checked,
        dma_submitted,
        dma_completed,
        dma_checked,
        irq_mtty,
        irq_dma,
        irq_timer,
        irq_other,
        shared_checked
    ));
    t.extend(offsets!("vfmig_error", FirstError, code, vcpu, a, b, c));
    t.extend(offsets!(
        "vfmig_status_page",
        StatusPage,
        magic,
        version,
        vcpus_started,
        devices,
        pci_functions,
        fatal,
        reserved0,
        errors,
        first_error,
        mtty_bdf,
        mtty_ports,
        dma_bdf,
        dma_regs,
        dma_ram,
        dma_ram_size,
        lapic_ticks_per_ms,
        dma_shared,
        irq_dma_vector1,
        dma_msix,
        reserved,
        vcpu
    ));
    t.extend([
        constant!("VFMIG_BOOT_PAGE_GPA", BOOT_PAGE_GPA),
        constant!("VFMIG_STATUS_PAGE_GPA", STATUS_PAGE_GPA),
        constant!("VFMIG_IMAGE_GPA", IMAGE_GPA),
        constant!("VFMIG_SCRATCH_GPA", SCRATCH_GPA),
        constant!("VFMIG_SCRATCH_END", SCRATCH_END),
        constant!("VFMIG_MAX_VCPUS", MAX_VCPUS as u64),
        constant!("VFMIG_BOOT_MAGIC", BOOT_MAGIC),
        constant!("VFMIG_STATUS_MAGIC", STATUS_MAGIC),
        constant!("VFMIG_LAYOUT_VERSION", LAYOUT_VERSION),
        constant!("VFMIG_WORKLOAD_DIRTIER", Workloads::DIRTIER.0),
        constant!("VFMIG_WORKLOAD_MTTY", Workloads::MTTY.0),
        constant!("VFMIG_WORKLOAD_DMA", Workloads::DMA.0),
        constant!("VFMIG_DEVICE_MTTY", DEVICE_MTTY),
        constant!("VFMIG_DEVICE_DMA", DEVICE_DMA),
        constant!("VFMIG_VCPU_OFF", VCPU_OFF),
        constant!("VFMIG_VCPU_SETUP", VCPU_SETUP),
        constant!("VFMIG_VCPU_RUNNING", VCPU_RUNNING),
        constant!("VFMIG_VCPU_HALTED", VCPU_HALTED),
        constant!("VFMIG_ERR_NONE", 0u32),
    ]);
    let names = [
        "BOOT_PAGE",
        "EXCEPTION",
        "PAGE_SEQ",
        "PAGE_DATA",
        "BAR_SPACE",
        "MTTY_DATA",
        "MTTY_OVERRUN",
        "DMA_DEVICE",
        "DMA_STATUS",
        "DMA_DATA",
        "DMA_TIMEOUT",
        "IRQ_TIMEOUT",
        "TIMER",
        "SHARED_MEMORY",
    ];
    assert_eq!(names.len(), ErrorCode::ALL.len());
    for (name, code) in names.iter().zip(ErrorCode::ALL) {
        t.push((format!("VFMIG_ERR_{name}"), u64::from(code as u32)));
    }
    t
}

fn c_source(table: &[(String, u64)]) -> String {
    let mut s = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"layout.h\"\nint main(void) {\n",
    );
    for (i, (expr, _)) in table.iter().enumerate() {
        s.push_str(&format!(
            "  printf(\"{i} %llu\\n\", (unsigned long long)({expr}));\n"
        ));
    }
    s.push_str("  return 0;\n}\n");
    s
}

fn run_c(source: &str) -> BTreeMap<usize, u64> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest_c_layout");
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    let c = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c, source).expect("write the C source");
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
        .unwrap_or_else(|e| panic!("{cc} must be installed to check the layout: {e}"));
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the C program");
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .expect("ascii output")
        .lines()
        .map(|l| {
            let (i, v) = l.split_once(' ').expect("index and value");
            (i.parse().expect("index"), v.parse().expect("value"))
        })
        .collect()
}

#[test]
fn every_size_offset_and_constant_matches_layout_h() {
    let table = table();
    let c = run_c(&c_source(&table));
    let mismatches: Vec<String> = table
        .iter()
        .enumerate()
        .filter(|(i, (_, rust))| c.get(i) != Some(rust))
        .map(|(i, (expr, rust))| format!("{expr}: C {:?}, Rust {rust}", c.get(&i)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "layout mismatches:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(c.len(), table.len());
}
