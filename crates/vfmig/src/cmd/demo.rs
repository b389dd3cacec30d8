//! `vfmig demo`: everything on this machine. A source VM and a destination VM, each a `vfmig vm
//! run` process with two device processes (mtty and dma-engine); the source's guest dirties RAM
//! and keeps both devices busy; it live-migrates over 127.0.0.1; the destination's RAM and
//! device state are checked against the source's at the switch-over (digests); the destination
//! guest then runs on. Exits non-zero if anything differs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use vfmig_migration::engine::MigrationStats;
use vfmig_vmm::VmDigest;
use vfmig_vmm::control::request;

use super::vm::follow_migration;
use crate::cli::{DemoArgs, parse_size};

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until the VM behind `control` answers with a status whose state is `state`.
fn wait_for(control: &Path, what: &str, state: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        match request(control, "status", Value::Null) {
            Ok(status) if status["state"] == state => return Ok(status),
            Ok(_) if start.elapsed() > Duration::from_secs(60) => {
                bail!("{what} did not reach {state}")
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                bail!("{what} did not come up: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn vm_process(exe: &Path, args: &[String], extra: &[&str]) -> anyhow::Result<Process> {
    let child = Command::new(exe)
        .args(["vm", "run"])
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting a VM process")?;
    Ok(Process(child))
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir: PathBuf = std::env::temp_dir().join(format!("vfmig-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (src_ctl, dst_ctl) = (dir.join("source.sock"), dir.join("destination.sock"));
    let mem = parse_size(&args.machine.mem)?;
    let port = free_port()?;
    let to = format!("tcp:127.0.0.1:{port}");
    let w = &args.workload;
    let devices = ["--device", "mtty", "--device", "dma-engine"].map(String::from);
    let common: Vec<String> = [args.machine.to_args(), devices.to_vec(), w.to_args()].concat();
    println!(
        "vfmig demo: two VMs of {} MiB, each with an mtty and a dma-engine ({} MiB device RAM) in their own processes",
        mem >> 20,
        args.machine.dma_ram_mib
    );
    let _source = vm_process(&exe, &common, &["--control", path_str(&src_ctl)?])?;
    let _destination = vm_process(
        &exe,
        &common,
        &[
            "--control",
            path_str(&dst_ctl)?,
            "--incoming",
            &to,
            "--paused",
        ],
    )?;
    let status = wait_for(&src_ctl, "the source VM", "running")?;
    wait_for(&dst_ctl, "the destination VM", "incoming")?;
    println!(
        "source VM running, devices {}; destination waiting on {to}",
        status["devices"]
    );
    println!(
        "guest writing {} pages/s over {}, {} device ops/s per device; warming up {} s",
        w.dirty_rate, w.working_set, w.device_ops, args.warmup_s
    );
    std::thread::sleep(Duration::from_secs(args.warmup_s));

    request(
        &src_ctl,
        "migrate",
        json!({ "to": to, "downtime_ms": args.downtime_ms }),
    )?;
    let status = follow_migration(&src_ctl)?;
    let Some(stats) = status.get("stats").filter(|s| !s.is_null()) else {
        bail!(
            "migration {}: {}",
            status["state"],
            status["error"].as_str().unwrap_or("no reason given")
        );
    };
    let stats: MigrationStats = serde_json::from_value(stats.clone())?;
    println!("{stats}");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    }

    // Both guests are paused now: the source since the switch-over, the destination by --paused.
    let source: VmDigest = serde_json::from_value(request(&src_ctl, "digest", Value::Null)?)?;
    let destination: VmDigest = serde_json::from_value(request(&dst_ctl, "digest", Value::Null)?)?;
    let mut same = true;
    println!("verification at the switch-over:");
    let ram_ok = source.ram == destination.ram;
    same &= ram_ok;
    println!(
        "  guest RAM        source {:016x}  destination {:016x}  {}",
        source.ram,
        destination.ram,
        verdict(ram_ok)
    );
    for ((id, a), (_, b)) in source.devices.iter().zip(&destination.devices) {
        same &= a == b;
        println!(
            "  {id:<16} source {a:016x}  destination {b:016x}  {}",
            verdict(a == b)
        );
    }
    same &= source.devices.len() == destination.devices.len();

    request(&dst_ctl, "cont", Value::Null)?;
    std::thread::sleep(Duration::from_secs(1));
    let after = request(&dst_ctl, "status", Value::Null)?;
    let guest = &after["guest"];
    let runs = guest["pages_written"].as_u64().unwrap_or(0) > 0 || w.dirty_rate == 0;
    let errors = guest["device_errors"].as_u64().unwrap_or(0);
    println!(
        "destination guest after 1 s: {} pages written, {} device ops, {} device errors",
        guest["pages_written"], guest["device_ops"], errors
    );
    if args.machine.viommu {
        println!(
            "vIOMMU on the source: {}",
            request(&src_ctl, "status", Value::Null)?["viommu"]
        );
    }
    let _ = request(&src_ctl, "quit", Value::Null);
    let _ = request(&dst_ctl, "quit", Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    if !same || !runs || errors > 0 {
        bail!("the destination does not match the source, or does not run cleanly");
    }
    println!("OK: the destination equals the source at the switch-over and runs on");
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "equal" } else { "DIFFERENT" }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", p.display()))
}
