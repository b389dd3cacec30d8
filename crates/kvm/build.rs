//! Builds the test guests: each `tests/guests/*.S` is assembled by `gcc` (so the C
//! preprocessor runs), linked by `ld` to run at the image address of the boot contract
//! (0x10_0000, entry = first byte) and turned into a flat binary by `objcopy`. The
//! binaries land in `OUT_DIR` as `<name>.bin`; tests and benchmarks `include_bytes!` them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// Where a flat guest image is linked to run (BOOT.md).
const IMAGE_ADDRESS: &str = "0x100000";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guests = Path::new("tests/guests");
    println!("cargo:rerun-if-changed={}", guests.display());
    let mut sources: Vec<PathBuf> = fs::read_dir(guests)
        .expect("tests/guests exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "S"))
        .collect();
    sources.sort();
    for source in sources {
        println!("cargo:rerun-if-changed={}", source.display());
        build_guest(&source, &out);
    }
}

/// Assembles, links and flattens one guest.
fn build_guest(source: &Path, out: &Path) {
    let name = source.file_stem().expect("a file name").to_string_lossy();
    let object = out.join(format!("{name}.o"));
    let elf = out.join(format!("{name}.elf"));
    let flat = out.join(format!("{name}.bin"));
    run(Command::new("gcc")
        .args(["-c", "-m64", "-nostdlib", "-ffreestanding", "-o"])
        .arg(&object)
        .arg(source));
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "-nostdlib", "-static", "-e", "_start"])
        .arg(format!("-Ttext={IMAGE_ADDRESS}"))
        .args(["-z", "noexecstack", "-o"])
        .arg(&elf)
        .arg(&object));
    run(Command::new("objcopy")
        .args([
            "-O", "binary", "-j", ".text", "-j", ".data", "-j", ".rodata",
        ])
        .arg(&elf)
        .arg(&flat));
}

/// Runs a tool and fails the build, with its name, if it does not succeed.
fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(status.success(), "{command:?} failed: {status}");
}
