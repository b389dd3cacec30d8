//! `vfmig demo`: everything on this machine. A source VM and a destination VM, each a `vfmig vm
//! run` process with two device processes (mtty and dma-engine); the source's guest dirties RAM
//! and keeps both devices busy; it live-migrates over 127.0.0.1; the destination's RAM and
//! device state are checked against the source's at the switch-over (digests); the destination
//! guest then runs on. Exits non-zero if anything differs. The migration's SVG chart is
//! written to `--chart FILE`, by default `migration.svg` in the demo's run directory, which
//! is then kept (its sockets and credentials removed) and its path printed.

use crate::out::say;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vfmig::control::{self, ControlClient, IncomingState, RunState, VmInfo, VmStatus};

use super::vm::completed;
use crate::cli::{DemoArgs, parse_size};
use crate::progress::follow_migration;

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

/// Waits until the VM behind `control` answers with a status that `ready` accepts.
fn wait_for(
    control: &ControlClient,
    what: &str,
    ready: impl Fn(&VmStatus) -> bool,
) -> anyhow::Result<VmStatus> {
    let start = Instant::now();
    loop {
        match control.status() {
            Ok(status) if ready(&status) => return Ok(status),
            Ok(_) if start.elapsed() > Duration::from_secs(60) => {
                bail!("{what} did not get ready")
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                bail!("{what} did not come up: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The part of `status` that exists once the VM does.
fn vm_info(status: VmStatus, what: &str) -> anyhow::Result<VmInfo> {
    status.vm.ok_or_else(|| anyhow::anyhow!("{what} has no VM"))
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
    let (src_path, dst_path) = (dir.join("source.sock"), dir.join("destination.sock"));
    let (src_ctl, dst_ctl) = (ControlClient::new(&src_path), ControlClient::new(&dst_path));
    let mem = parse_size(&args.machine.mem)?;
    let port = free_port()?;
    let to = format!("tcp:127.0.0.1:{port}");
    let address = to.parse()?;
    let w = &args.workload;
    let devices = ["--device", "mtty", "--device", "dma-engine"].map(String::from);
    let mut common: Vec<String> = [args.machine.to_args(), devices.to_vec(), w.to_args()].concat();
    if !args.plain {
        let creds = dir.join("tls");
        let local = ["localhost", "127.0.0.1"].map(String::from);
        super::tls::generate(&creds, &local, "vfmig-source")?;
        common.extend(["--tls-creds".to_string(), path_str(&creds)?.to_string()]);
        say!(
            "migrating over mutual TLS (throwaway credentials in {})",
            creds.display()
        );
    }
    say!(
        "vfmig demo: two VMs of {} MiB, each with an mtty and a dma-engine ({} MiB device RAM) in their own processes",
        mem >> 20,
        args.machine.dma_ram_mib
    );
    let _source = vm_process(&exe, &common, &["--control", path_str(&src_path)?])?;
    let _destination = vm_process(
        &exe,
        &common,
        &[
            "--control",
            path_str(&dst_path)?,
            "--incoming",
            &to,
            "--paused",
        ],
    )?;
    let status = wait_for(&src_ctl, "the source VM", |s| s.state == RunState::Running)?;
    wait_for(&dst_ctl, "the destination VM", |s| {
        s.incoming == Some(IncomingState::Waiting)
    })?;
    let devices: Vec<String> = vm_info(status, "the source")?
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();
    say!(
        "source VM running, devices {}; destination waiting on {to}",
        devices.join(", ")
    );
    say!(
        "guest writing {} pages/s over {}, {} device ops/s per device; warming up {} s",
        w.dirty_rate,
        w.working_set,
        w.device_ops,
        args.warmup_s
    );
    std::thread::sleep(Duration::from_secs(args.warmup_s));

    src_ctl.migrate(control::MigrateArgs {
        to: address,
        policy: args.policy.policy(),
    })?;
    let stats = completed(follow_migration(&src_ctl)?)?;
    say!("{stats}");
    if args.json {
        say!("{}", serde_json::to_string_pretty(&stats)?);
    }
    let chart = args.chart.unwrap_or_else(|| dir.join("migration.svg"));
    crate::chart::write(&stats, &chart)?;
    say!("chart: {}", chart.display());

    // Both guests are paused now: the source since the switch-over, the destination by --paused.
    let source = src_ctl.digest()?;
    let destination = dst_ctl.digest()?;
    let mut same = true;
    say!("verification at the switch-over:");
    let ram_ok = source.ram == destination.ram;
    same &= ram_ok;
    say!(
        "  guest RAM        source {:016x}  destination {:016x}  {}",
        source.ram,
        destination.ram,
        verdict(ram_ok)
    );
    let hex = |d: &Option<u64>| {
        d.map_or_else(|| format!("{:>16}", "(no digest)"), |d| format!("{d:016x}"))
    };
    for ((id, a), (_, b)) in source.devices.iter().zip(&destination.devices) {
        same &= a == b;
        say!(
            "  {id:<16} source {}  destination {}  {}",
            hex(a),
            hex(b),
            verdict(a == b)
        );
    }
    same &= source.devices.len() == destination.devices.len();

    dst_ctl.cont()?;
    std::thread::sleep(Duration::from_secs(1));
    let guest = vm_info(dst_ctl.status()?, "the destination")?.guest;
    let runs = guest.pages_written > 0 || w.dirty_rate == 0;
    let errors = guest.device_errors;
    say!(
        "destination guest after 1 s: {} pages written, {} device ops, {} device errors",
        guest.pages_written,
        guest.device_ops,
        errors
    );
    if args.machine.viommu {
        let viommu = vm_info(src_ctl.status()?, "the source")?.viommu;
        say!("vIOMMU on the source: {}", serde_json::to_string(&viommu)?);
    }
    let _ = src_ctl.quit();
    let _ = dst_ctl.quit();
    remove_all_but(&dir, &chart);
    if !same || !runs || errors > 0 {
        bail!("the destination does not match the source, or does not run cleanly");
    }
    say!("OK: the destination equals the source at the switch-over and runs on");
    Ok(())
}

/// Removes `dir` with everything in it, except `keep` if that lies in it.
fn remove_all_but(dir: &Path, keep: &Path) {
    if keep.parent() != Some(dir) {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path != keep {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "equal" } else { "DIFFERENT" }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", p.display()))
}
