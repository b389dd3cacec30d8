//! `vfmig vm run | migrate | status`.

use crate::out::say;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use vfmig::control::{self, ControlClient, IncomingState};
use vfmig_migration::engine::{MigrationStatus, ReceiveOptions, RefusalLog, receive_into};
use vfmig_migration::transport::{Address, TlsCreds, TransportSecurity, listen_with};
use vfmig_vmm::{
    DeviceHost, GuestPlan, GuestProgram, GuestRam, Machine, Vm, VmConfig, WorkloadConfig,
};

use super::device_spec::device_specs;
use super::handler::VmHandler;
use crate::cli::{
    GuestChoice, MigrateArgs, TlsArgs, VmCommand, VmRunArgs, WorkloadArgs, parse_size,
};
use crate::progress::follow_migration;

pub(crate) fn run(cmd: VmCommand) -> anyhow::Result<()> {
    match cmd {
        VmCommand::Run(args) => run_vm(args),
        VmCommand::Migrate(args) => migrate_vm(args),
        VmCommand::Status(args) => {
            let status = ControlClient::new(&args.control).status()?;
            say!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}

/// Plain TCP, or mutual TLS with the credentials of `--tls-creds`.
fn security(args: &TlsArgs) -> anyhow::Result<TransportSecurity> {
    Ok(match &args.tls_creds {
        None => TransportSecurity::Plain,
        Some(dir) => TransportSecurity::Tls(Arc::new(
            TlsCreds::load(dir, &args.tls_allow)
                .with_context(|| format!("TLS credentials in {}", dir.display()))?,
        )),
    })
}

/// The guest the options ask for: the KVM guest program (where `/dev/kvm` works, for
/// `auto`) or the synthetic guest. The emulated vIOMMU's remaps are the synthetic guest's
/// doing, so `--viommu` runs it.
pub(crate) fn guest_plan(args: &WorkloadArgs, viommu: bool) -> anyhow::Result<GuestPlan> {
    let working_set = parse_size(&args.working_set)?;
    let kvm = match args.guest {
        GuestChoice::Kvm if viommu => bail!("--viommu needs --guest synthetic"),
        GuestChoice::Kvm => true,
        GuestChoice::Synthetic => false,
        GuestChoice::Auto => !viommu && Machine::available(),
    };
    if !kvm {
        return Ok(GuestPlan::Synthetic(WorkloadConfig {
            writers: args.writers.max(1),
            pages_per_sec: args.dirty_rate,
            working_set,
            device_ops_per_sec: args.device_ops,
        }));
    }
    if args.vcpus == 0 || args.vcpus > 16 {
        bail!("--vcpus must be from 1 to 16");
    }
    Ok(GuestPlan::Kvm(GuestProgram {
        vcpus: args.vcpus,
        working_set,
        // The option is pages per second in all; each vCPU stamps its share.
        dirty_rate: (args.dirty_rate / u64::from(args.vcpus)).max(1),
        device_rate: args.device_ops,
        dirtier: args.dirty_rate > 0,
        devices: args.device_ops > 0,
    }))
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
    let plan = guest_plan(&args.workload, args.machine.viommu)?;
    let synthetic = matches!(plan, GuestPlan::Synthetic(_));
    let host = DeviceHost {
        program: std::env::current_exe()?,
        dir: runtime_dir()?,
        viommu: args.machine.viommu,
    };
    quit_on_signal(host.dir.clone())?;
    let security = security(&args.tls)?;
    let handler = Arc::new(VmHandler::new(plan, security.clone(), host.dir.clone()));
    let listener = vfmig_device::server::bind(&args.control)
        .with_context(|| format!("control socket {}", args.control.display()))?;
    let _control = vfmig_vmm::control::serve(listener, handler.clone());
    let vm = match &args.incoming {
        Some(addr) => {
            let addr: Address = addr.parse()?;
            let listener =
                listen_with(&addr, &security).with_context(|| format!("listening on {addr}"))?;
            handler.set_incoming(Some(IncomingState::Waiting));
            tracing::info!(%addr, "waiting for an incoming migration");
            // The VM this destination is for: its --mem and its own --device servers, which
            // take the places of the source's devices of the same ids. A stream of any other
            // is refused. Its RAM is faulted in while the source connects.
            let expected = VmConfig::with_memory(
                parse_size(&args.machine.mem)?,
                device_specs(
                    &args.devices,
                    args.machine.dma_ram_mib,
                    args.machine.dma_all_mapped,
                    args.device_timeouts(),
                )?,
            )?;
            let ram = Arc::new(GuestRam::new(&expected.ram)?);
            let populating = ram.clone();
            std::thread::spawn(move || {
                if let Err(e) = populating.populate() {
                    tracing::warn!(error = %e, "could not fault in guest RAM ahead of the migration");
                }
            });
            let refusals = RefusalLog::default();
            handler.set_incoming_refusals(refusals.clone());
            let options = ReceiveOptions {
                ram: Some(ram),
                expected: Some(&expected),
                timeouts: args.incoming_timeouts(),
                refusals,
            };
            let (vm, stats) =
                receive_into(&listener, &host, &options).context("incoming migration")?;
            handler.set_incoming(Some(IncomingState::Completed));
            tracing::info!(?stats, "incoming migration completed");
            (Arc::new(vm), false)
        }
        None => {
            let mem = parse_size(&args.machine.mem)?;
            let config = VmConfig::with_memory(
                mem,
                device_specs(
                    &args.devices,
                    args.machine.dma_ram_mib,
                    args.machine.dma_all_mapped,
                    args.device_timeouts(),
                )?,
            )?;
            // The synthetic guest's drivers need the devices programmed by the VMM; the KVM
            // guest programs them itself.
            (Arc::new(Vm::build(config, &host, synthetic)?), true)
        }
    };
    handler.set_vm(vm.0, vm.1);
    if !args.paused {
        handler.start_guest().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tracing::info!(control = %args.control.display(), "VM running");
    loop {
        std::thread::park();
    }
}

/// The state's name as the control socket spells it (`stop-copy`, `unconfirmed`, ...).
fn state_name(status: &MigrationStatus) -> String {
    serde_json::to_value(status.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", status.state))
}

/// The statistics of a completed migration, or why it did not complete.
pub(crate) fn completed(
    status: MigrationStatus,
) -> anyhow::Result<vfmig_migration::engine::MigrationStats> {
    match status.stats {
        Some(stats) => Ok(stats),
        None => bail!(
            "migration {}: {}",
            state_name(&status),
            status.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

fn migrate_vm(args: MigrateArgs) -> anyhow::Result<()> {
    let client = ControlClient::new(&args.control);
    client.migrate(control::MigrateArgs {
        to: args.to.clone(),
        policy: args.policy.policy(),
    })?;
    let stats = completed(follow_migration(&client)?)?;
    say!("{stats}");
    if args.json {
        say!("{}", serde_json::to_string_pretty(&stats)?);
    }
    if let Some(path) = &args.chart {
        crate::chart::write(&stats, path)?;
        say!("chart: {}", path.display());
    }
    Ok(())
}
