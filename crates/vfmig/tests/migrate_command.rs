//! `vfmig vm migrate`, the command: each option of the convergence policy reaches the
//! engine. A busy guest and a downtime limit of 0 never converge, so pre-copy ends at the
//! limit under test: the migration fails, the command says which limit, and the guest runs
//! on at the source. `--chart FILE` writes the chart of a migration that completes.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::process::{Command, Output};

use serde_json::Value;

use common::{BUSY_GUEST, TestDir, VmProcess, free_port};

/// Runs `vfmig vm migrate` from a fresh source to a fresh destination with `options`; returns
/// the command's output and the source's final migration status, once it checked that the
/// guest still runs at the source if the migration failed.
fn migrate_with(tag: &str, options: &[&str]) -> (Output, Value) {
    migrate_in(&TestDir::new(tag), options)
}

/// [`migrate_with`], the VMs' files in `dir`.
fn migrate_in(dir: &TestDir, options: &[&str]) -> (Output, Value) {
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
    let migration = source.migration();
    if migration["state"] == "failed" {
        source.assert_guest_runs_cleanly();
    }
    (out, migration)
}

/// Asserts that the command failed and said `why`, and that the migration failed for it.
fn assert_failed_for(out: &Output, migration: &Value, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "vfmig vm migrate succeeded: {stderr}"
    );
    assert!(
        stderr.contains(why),
        "the command does not say {why:?}: {stderr}"
    );
    assert_eq!(migration["state"], "failed", "{migration}");
    let error = migration["error"].as_str().unwrap_or_default();
    assert!(error.contains(why), "{migration}");
}

#[test]
fn max_iterations_from_the_command_line_ends_a_pre_copy_that_does_not_converge() {
    let (out, m) = migrate_with("maxit", &["--downtime-ms", "0", "--max-iterations", "2"]);
    assert_failed_for(&out, &m, "the iteration limit (2 iterations)");
    assert_eq!(m["iterations"].as_array().map(Vec::len), Some(2), "{m}");
}

#[test]
fn max_time_ms_from_the_command_line_ends_a_pre_copy_that_does_not_converge() {
    let options = [
        "--downtime-ms",
        "0",
        "--max-iterations",
        "1000000",
        "--max-time-ms",
        "1",
    ];
    let (out, m) = migrate_with("maxtime", &options);
    assert_failed_for(&out, &m, "the time limit (1 ms)");
}

#[test]
fn max_bandwidth_mib_from_the_command_line_caps_the_stream() {
    let options = [
        "--downtime-ms",
        "0",
        "--max-iterations",
        "1000000",
        "--max-time-ms",
        "2000",
        "--max-bandwidth-mib",
        "8",
    ];
    let (out, m) = migrate_with("maxbw", &options);
    assert_failed_for(&out, &m, "the time limit (2000 ms)");
    // Bytes on the wire per second of the last iteration: at most the cap (a little over it
    // at most, for the last slice written before the sleep that pays for it).
    let bandwidth = m["bandwidth"].as_f64().expect("a bandwidth");
    assert!(
        bandwidth > 0.0 && bandwidth <= 1.1 * f64::from(8u32 << 20),
        "{bandwidth} B/s over an 8 MiB/s cap: {m}"
    );
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
    let (out, m) = migrate_in(&dir, &["--chart", chart_arg]);
    assert!(
        out.status.success(),
        "vfmig vm migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let iterations = m["stats"]["iterations"].as_array().map_or(0, Vec::len);
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    let texts = svg_texts(&svg);
    let unnamed: Vec<usize> = (0..iterations)
        .filter(|n| !texts.contains(&format!("#{n}")))
        .collect();
    assert!(
        iterations > 0 && unnamed.is_empty(),
        "{iterations} iterations, unnamed {unnamed:?}: {texts:?}"
    );
    assert!(texts.iter().any(|t| t == "stop-copy"), "{texts:?}");
}
