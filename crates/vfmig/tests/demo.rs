//! `vfmig demo` end to end, in its variants: two VMs in their own processes, four device
//! processes, a live migration over 127.0.0.1 verified by digests of RAM and device state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory for one demo's `TMPDIR` (the demo keeps its run directory there, with
/// its chart), removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vfmig-demo-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a test directory");
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn demo(extra: &[&str]) -> String {
    demo_in(&Tmp::new().0, extra)
}

/// Runs the demo with `tmp` as its `TMPDIR`; returns its output.
fn demo_in(tmp: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vfmig"))
        .args([
            "demo",
            "--mem",
            "256M",
            "--warmup-s",
            "1",
            "--dma-ram-mib",
            "8",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("TMPDIR", tmp)
        .output()
        .expect("run vfmig demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK: the destination equals the source"),
        "{stdout}"
    );
    stdout
}

#[test]
fn a_busy_vm_with_two_devices_migrates_exactly() {
    let out = demo(&[]);
    assert!(out.contains("dmaengine0") && out.contains("mtty0"), "{out}");
}

#[test]
fn an_all_mapped_device_is_accounted_for_and_the_vm_still_migrates_exactly() {
    let out = demo(&["--dma-all-mapped"]);
    assert!(out.contains("all-mapped scope  dmaengine0"), "{out}");
    assert!(out.contains("all-mapped device (cannot converge)"), "{out}");
}

#[test]
fn viommu_unmaps_carry_their_dirty_bits_and_the_vm_migrates_exactly() {
    let out = demo(&["--viommu", "--device-ops", "2000"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("vIOMMU on the source:"))
        .expect("vIOMMU line");
    let json: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("vIOMMU on the source:").trim())
            .expect("counters");
    assert!(json["remaps"].as_u64().unwrap_or(0) > 0, "{line}");
    assert!(
        json["carried_pages"].as_u64().unwrap_or(0) > 0,
        "no dirty bits carried: {line}"
    );
}

#[test]
fn the_demo_keeps_its_chart_in_its_run_directory_and_says_where() {
    let tmp = Tmp::new();
    let out = demo_in(&tmp.0, &["--plain"]);
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("chart: "))
        .expect("the chart's path is printed");
    let path = Path::new(path);
    let svg = std::fs::read_to_string(path).expect("the chart is kept");
    let dir = path.parent().expect("a run directory");
    let kept: Vec<_> = std::fs::read_dir(dir)
        .expect("the run directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let names_first = svg.split("</text>").any(|t| {
        t.rsplit_once('>')
            .is_some_and(|(_, text)| text.trim() == "#0")
    });
    assert!(names_first, "no iteration #0 in the chart");
    assert_eq!(kept, ["migration.svg"], "only the chart is left");
}
