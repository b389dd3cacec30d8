//! `vfmig vm migrate`, the command: each option of the convergence policy reaches the
//! engine. A busy guest and a downtime limit of 0 never converge, so the switch-over comes
//! from the cap under test, and the engine's statistics (`stats` on the control socket) say
//! which cap it was. `--chart FILE` writes the migration's chart.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::process::Command;

use serde_json::Value;

use common::{BUSY_GUEST, TestDir, VmProcess, free_port};

/// Runs `vfmig vm migrate` from `source` to a fresh destination with `options`, and returns
/// the source's final migration status.
fn migrate_with(tag: &str, options: &[&str]) -> Value {
    migrate_in(&TestDir::new(tag), options)
}

/// [`migrate_with`], the VMs' files in `dir`.
fn migrate_in(dir: &TestDir, options: &[&str]) -> Value {
    let source = VmProcess::source(dir, "src", BUSY_GUEST);
    let port = free_port();
    let _destination = VmProcess::destination(dir, "dst", port, BUSY_GUEST);
    let out = Command::new(env!("CARGO_BIN_EXE_vfmig"))
        .args(["vm", "migrate", "--control"])
        .arg(source.control())
        .args(["--to", &format!("tcp:127.0.0.1:{port}")])
        .args(options)
        .env("TMPDIR", dir.path())
        .output()
        .expect("run vfmig vm migrate");
    assert!(
        out.status.success(),
        "vfmig vm migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    source.migration()
}

#[test]
fn max_iterations_from_the_command_line_caps_pre_copy() {
    let m = migrate_with("maxit", &["--downtime-ms", "0", "--max-iterations", "2"]);
    assert_eq!(m["stats"]["switchover"], "iteration cap", "{m}");
    assert_eq!(
        m["stats"]["iterations"].as_array().map(Vec::len),
        Some(2),
        "{m}"
    );
}

#[test]
fn max_time_ms_from_the_command_line_caps_pre_copy() {
    let options = [
        "--downtime-ms",
        "0",
        "--max-iterations",
        "1000000",
        "--max-time-ms",
        "1",
    ];
    let m = migrate_with("maxtime", &options);
    assert_eq!(m["stats"]["switchover"], "time cap", "{m}");
}

/// The text of every `<text>` element of an SVG document.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = t.split_once('>')?.1;
            Some(body.split_once("</text>")?.0.trim().to_string())
        })
        .collect()
}

#[test]
fn the_chart_names_every_iteration_of_the_migration() {
    let dir = TestDir::new("chart");
    let chart = dir.path().join("migration.svg");
    let chart_arg = chart.to_str().expect("UTF-8 path");
    let options = [
        "--downtime-ms",
        "0",
        "--max-iterations",
        "3",
        "--chart",
        chart_arg,
    ];
    let m = migrate_in(&dir, &options);
    let iterations = m["stats"]["iterations"].as_array().map_or(0, Vec::len);
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    let texts = svg_texts(&svg);
    let unnamed: Vec<usize> = (0..iterations)
        .filter(|n| !texts.contains(&format!("#{n}")))
        .collect();
    assert!(
        iterations == 3 && unnamed.is_empty(),
        "{iterations} iterations, unnamed {unnamed:?}: {texts:?}"
    );
    assert!(texts.iter().any(|t| t == "stop-copy"), "{texts:?}");
}
