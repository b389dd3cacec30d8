//! `vfmig vm run | migrate | status`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use vfmig_migration::engine::{MigrationStats, receive_into};
use vfmig_migration::transport::{Address, listen};
use vfmig_vmm::control::{self, request};
use vfmig_vmm::{DeviceHost, DeviceSpec, GuestRam, Vm, VmConfig, WorkloadConfig};

use super::handler::VmHandler;
use crate::cli::{DeviceName, MigrateArgs, VmCommand, VmRunArgs, WorkloadArgs, parse_size};

pub(crate) fn run(cmd: VmCommand) -> anyhow::Result<()> {
    match cmd {
        VmCommand::Run(args) => run_vm(args),
        VmCommand::Migrate(args) => migrate_vm(args),
        VmCommand::Status(args) => {
            let status = request(&args.control, "status", Value::Null)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}

pub(crate) fn workload(args: &WorkloadArgs) -> anyhow::Result<WorkloadConfig> {
    Ok(WorkloadConfig {
        writers: args.writers.max(1),
        pages_per_sec: args.dirty_rate,
        working_set: parse_size(&args.working_set)?,
        device_ops_per_sec: args.device_ops,
    })
}

fn device_specs(
    devices: &[DeviceName],
    dma_ram_mib: u64,
    all_mapped: bool,
) -> anyhow::Result<Vec<DeviceSpec>> {
    if !dma_ram_mib.is_power_of_two() || dma_ram_mib > 1024 {
        bail!("--dma-ram-mib must be a power of two up to 1024");
    }
    let (mut mtty, mut dma) = (0usize, 0usize);
    Ok(devices
        .iter()
        .map(|d| match d {
            DeviceName::Mtty => {
                mtty += 1;
                DeviceSpec {
                    id: format!("mtty{}", mtty - 1),
                    kind: "mtty".into(),
                    args: vec![],
                }
            }
            DeviceName::DmaEngine => {
                dma += 1;
                let mut args = vec!["--ram-mib".to_string(), dma_ram_mib.to_string()];
                if all_mapped {
                    args.push("--all-mapped".into());
                }
                DeviceSpec {
                    id: format!("dmaengine{}", dma - 1),
                    kind: "dma-engine".into(),
                    args,
                }
            }
        })
        .collect())
}

/// A directory for this VM's device sockets.
fn runtime_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vfmig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Makes SIGINT, SIGTERM and SIGHUP end the process as `quit` does, removing `dir` (the
/// device sockets) first; the device processes end with it (they are killed when their
/// parent dies). Call it before any other thread starts: the signals are blocked here, every
/// later thread inherits that, and one thread of its own waits for them.
fn quit_on_signal(dir: PathBuf) -> anyhow::Result<()> {
    // SAFETY: `set` is a local signal set, initialised by `sigemptyset` before any use; the
    // calls only read and write it and the calling thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let err = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err)).context("blocking signals");
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a valid place for the result.
            let err = unsafe { libc::sigwait(&set, &mut signal) };
            if err != 0 {
                tracing::warn!(error = %std::io::Error::from_raw_os_error(err), "waiting for signals");
                return;
            }
            tracing::info!(signal, "signal received: quitting");
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(128 + signal);
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn run_vm(args: VmRunArgs) -> anyhow::Result<()> {
    let workload = workload(&args.workload)?;
    let host = DeviceHost {
        program: std::env::current_exe()?,
        dir: runtime_dir()?,
        viommu: args.machine.viommu,
    };
    quit_on_signal(host.dir.clone())?;
    let handler = Arc::new(VmHandler::new(workload, host.dir.clone()));
    let listener = vfmig_device::server::bind(&args.control)
        .with_context(|| format!("control socket {}", args.control.display()))?;
    let _control = control::serve(listener, handler.clone());
    let vm = match &args.incoming {
        Some(addr) => {
            let addr: Address = addr.parse()?;
            let listener = listen(&addr).with_context(|| format!("listening on {addr}"))?;
            handler.set_incoming(Some("waiting".into()));
            tracing::info!(%addr, "waiting for an incoming migration");
            // Guest RAM as --mem lays it out, faulted in while the source connects; used if
            // the stream's layout is the same (it usually is: both ends get the same --mem).
            let layout = VmConfig::with_memory(parse_size(&args.machine.mem)?, Vec::new())?.ram;
            let ram = Arc::new(GuestRam::new(&layout)?);
            let populating = ram.clone();
            std::thread::spawn(move || {
                if let Err(e) = populating.populate() {
                    tracing::warn!(error = %e, "could not fault in guest RAM ahead of the migration");
                }
            });
            let (vm, stats) =
                receive_into(&listener, &host, Some(ram)).context("incoming migration")?;
            handler.set_incoming(Some("completed".into()));
            tracing::info!(?stats, "incoming migration completed");
            Arc::new(vm)
        }
        None => {
            let mem = parse_size(&args.machine.mem)?;
            let config = VmConfig::with_memory(
                mem,
                device_specs(
                    &args.devices,
                    args.machine.dma_ram_mib,
                    args.machine.dma_all_mapped,
                )?,
            )?;
            Arc::new(Vm::build(config, &host, true)?)
        }
    };
    handler.set_vm(vm);
    if !args.paused {
        handler.start_guest().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tracing::info!(control = %args.control.display(), "VM running");
    loop {
        std::thread::park();
    }
}

/// Polls the migration's status until it ends; shows progress on a terminal, plain lines
/// otherwise. Returns the final status.
pub(crate) fn follow_migration(control: &std::path::Path) -> anyhow::Result<Value> {
    let tty = std::io::stderr().is_terminal();
    let mut last_state = String::new();
    loop {
        let status = request(control, "stats", Value::Null)?;
        let state = status
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let iteration = status.get("iteration").and_then(Value::as_u64).unwrap_or(0);
        let sent = status
            .get("transferred")
            .and_then(Value::as_u64)
            .unwrap_or(0) as f64
            / f64::from(1u32 << 20);
        let remaining = status.get("remaining").and_then(Value::as_u64).unwrap_or(0) as f64
            / f64::from(1u32 << 20);
        let line = format!(
            "migration {state}: iteration {iteration}, {sent:.0} MiB sent, {remaining:.1} MiB dirty"
        );
        if tty {
            eprint!("\r{line:<79}");
            let _ = std::io::stderr().flush();
        } else if state != last_state {
            eprintln!("{line}");
        }
        last_state = state.clone();
        if matches!(
            state.as_str(),
            "completed" | "failed" | "cancelled" | "unconfirmed"
        ) {
            if tty {
                eprintln!();
            }
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(if tty { 100 } else { 50 }));
    }
}

fn migrate_vm(args: MigrateArgs) -> anyhow::Result<()> {
    request(
        &args.control,
        "migrate",
        json!({ "to": args.to, "downtime_ms": args.downtime_ms }),
    )?;
    let status = follow_migration(&args.control)?;
    match status.get("stats").filter(|s| !s.is_null()) {
        Some(stats) => {
            let stats: MigrationStats = serde_json::from_value(stats.clone())?;
            println!("{stats}");
            if args.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            }
            Ok(())
        }
        None => bail!(
            "migration {}: {}",
            status["state"],
            status["error"].as_str().unwrap_or("no reason given")
        ),
    }
}
