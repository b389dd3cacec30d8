//! Builds the guest program: each C and assembly file of `guest/` compiled freestanding by gcc,
//! linked at 0x10_0000 by `guest/guest.ld`, flattened by objcopy into `$OUT_DIR/guest.bin`.
//!
//! `GUEST_CC` and `GUEST_OBJCOPY` name other tools (defaults: `gcc`, `objcopy`); the target is
//! x86-64, so the host's gcc on an x86-64 machine is the compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The flags every guest object is compiled with: no library, no red zone (interrupts run on
/// the same stack), no SSE (the interrupt stubs save only general registers), absolute code.
const CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    // No calls to memset/memcpy made up from loops, no `rep movs`: simple loops only.
    "-fno-tree-loop-distribute-patterns",
    "-mstringop-strategy=loop",
    "-O2",
    "-static",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
];

/// The image must fit below the scratch area (boot contract: at most 1 MiB).
const IMAGE_MAX: u64 = 1 << 20;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (gcc and binutils build the guest)"));
    if !out.status.success() {
        panic!(
            "{shown} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() {
    let src =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("guest");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let cc = std::env::var("GUEST_CC").unwrap_or_else(|_| "gcc".into());
    let objcopy = std::env::var("GUEST_OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    println!("cargo:rerun-if-env-changed=GUEST_CC");
    println!("cargo:rerun-if-env-changed=GUEST_OBJCOPY");
    println!("cargo:rerun-if-changed={}", src.display());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("the guest sources")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "S")))
        .collect();
    sources.sort();

    let mut objects = Vec::new();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
        let name = s
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 name");
        let obj = out.join(format!("{name}.o"));
        run(Command::new(&cc)
            .args(CFLAGS)
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(s)
            .arg("-o")
            .arg(&obj));
        objects.push(obj);
    }
    for h in ["guest.h", "layout.h", "guest.ld"] {
        println!("cargo:rerun-if-changed={}", src.join(h).display());
    }

    let elf = out.join("guest.elf");
    run(Command::new(&cc)
        .args(CFLAGS)
        .args([
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
        .arg("-o")
        .arg(&elf)
        .args(&objects));
    let bin = out.join("guest.bin");
    run(Command::new(&objcopy)
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin));
    check_size(&bin);
}

fn check_size(bin: &Path) {
    let len = std::fs::metadata(bin).expect("the guest image").len();
    assert!(
        len > 0 && len <= IMAGE_MAX,
        "the guest image is {len} bytes; it must be 1..={IMAGE_MAX}"
    );
}
