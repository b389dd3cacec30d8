//! The command line, as clap parses it. Each subcommand validates its arguments into a typed
//! configuration before anything starts.

use std::path::PathBuf;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vfmig_migration::engine::{DowntimeLimit, ReceiveTimeouts};
use vfmig_migration::transport::Address;
use vfmig_vmm::DeviceTimeouts;

/// Live migration of VMs with out-of-process vfio-user devices.
#[derive(Debug, Parser)]
#[command(name = "vfmig", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve one device over vfio-user on a UNIX socket, until killed.
    Device(DeviceArgs),
    /// Run or control a VM.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Start two VMs with two device processes each, live-migrate one to the other over
    /// 127.0.0.1 under load, verify the destination equals the source, print the report.
    Demo(DemoArgs),
    /// Make TLS credentials for migrations.
    #[command(subcommand)]
    Tls(crate::cmd::tls::TlsCommand),
}

/// The sample devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceName {
    /// A two-port 16550-style serial device.
    Mtty,
    /// A DMA engine with device RAM, like a small vGPU.
    DmaEngine,
}

#[derive(Debug, Args)]
pub(crate) struct DeviceArgs {
    /// Which device.
    pub(crate) kind: DeviceName,
    /// The UNIX socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    pub(crate) socket: PathBuf,
    /// Device RAM of the dma-engine, in MiB (a power of two).
    #[arg(long, default_value_t = 64)]
    pub(crate) ram_mib: u64,
    /// The dma-engine pins nothing: its container reports every mapped page dirty on every
    /// sync (a device without precise dirty tracking).
    #[arg(long)]
    pub(crate) all_mapped: bool,
    /// Offer no migration region: the device cannot migrate, and a VM that has it refuses
    /// `migrate` (stands in for a device server that does not support migration).
    #[arg(long)]
    pub(crate) no_migration: bool,
    /// Offer no dirty page tracking: no migration capability in VERSION, DIRTY_PAGES refused
    /// (stands in for a device server that cannot report the pages it writes).
    #[arg(long)]
    pub(crate) no_dirty_tracking: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum VmCommand {
    /// Run a VM until told to quit on its control socket.
    Run(VmRunArgs),
    /// Migrate a running VM (through its control socket) and show the progress.
    Migrate(MigrateArgs),
    /// Print a VM's status.
    Status(StatusArgs),
}

/// Which guest a VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum GuestChoice {
    /// The KVM guest where `/dev/kvm` works, the synthetic one elsewhere.
    Auto,
    /// The guest program on KVM vCPUs.
    Kvm,
    /// Host threads writing RAM and driving the devices.
    Synthetic,
}

/// What the guest is and how hard it works.
#[derive(Clone, Debug, Args)]
pub(crate) struct WorkloadArgs {
    /// The guest: a KVM VM running the guest program, or the synthetic guest.
    #[arg(long, value_enum, default_value_t = GuestChoice::Auto)]
    pub(crate) guest: GuestChoice,
    /// vCPUs of the KVM guest (1 to 16); vCPU 0 drives the devices, every vCPU dirties its
    /// slice of the working set.
    #[arg(long, default_value_t = 1)]
    pub(crate) vcpus: u32,
    /// Guest RAM pages written per second (0: idle RAM).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) dirty_rate: u64,
    /// Bytes of RAM the guest writes over (e.g. 64M).
    #[arg(long, default_value = "64M")]
    pub(crate) working_set: String,
    /// Threads writing RAM (synthetic guest).
    #[arg(long, default_value_t = 1)]
    pub(crate) writers: usize,
    /// Device operations per second, per device (0: idle devices).
    #[arg(long, default_value_t = 500)]
    pub(crate) device_ops: u64,
}

impl WorkloadArgs {
    /// The same options, as a command line gives them.
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            "--guest".into(),
            self.guest
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string()),
            "--vcpus".into(),
            self.vcpus.to_string(),
            "--dirty-rate".into(),
            self.dirty_rate.to_string(),
            "--working-set".into(),
            self.working_set.clone(),
            "--writers".into(),
            self.writers.to_string(),
            "--device-ops".into(),
            self.device_ops.to_string(),
        ]
    }
}

/// What a VM is made of, besides its devices: RAM, the dma-engines' options, the vIOMMU.
#[derive(Clone, Debug, Args)]
pub(crate) struct MachineArgs {
    /// Guest RAM (e.g. 2G, 512M), a multiple of 2 MiB, at most 16G.
    #[arg(long, default_value = "1G")]
    pub(crate) mem: String,
    /// Device RAM of each dma-engine, in MiB.
    #[arg(long, default_value_t = 64)]
    pub(crate) dma_ram_mib: u64,
    /// Run the dma-engines without precise dirty tracking (all-mapped scope).
    #[arg(long)]
    pub(crate) dma_all_mapped: bool,
    /// Emulate a guest vIOMMU: the guest remaps the devices' DMA window now and then, and
    /// during a migration the VMM unmaps it with GET_DIRTY_BITMAP and carries the bits into
    /// the next round.
    #[arg(long)]
    pub(crate) viommu: bool,
}

impl MachineArgs {
    /// The same options, as a command line gives them.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--mem".into(),
            self.mem.clone(),
            "--dma-ram-mib".into(),
            self.dma_ram_mib.to_string(),
        ];
        if self.dma_all_mapped {
            args.push("--dma-all-mapped".into());
        }
        if self.viommu {
            args.push("--viommu".into());
        }
        args
    }
}

#[derive(Debug, Args)]
pub(crate) struct VmRunArgs {
    #[command(flatten)]
    pub(crate) machine: MachineArgs,
    /// A device to attach (repeat for more): `mtty` or `dma-engine` (a device process this VM
    /// starts), or `socket=PATH` (a vfio-user server already listening there); each may end in
    /// `,id=NAME` (default: mtty0, dmaengine0, socket0, ...) and `,dma=messages` (guest RAM
    /// mapped to it without fds: it reaches guest memory only through DMA_READ / DMA_WRITE
    /// messages this VM answers; default `dma=shared`). A destination's devices take the
    /// places of the source's of the same id.
    #[arg(long = "device", value_name = "SPEC")]
    pub(crate) devices: Vec<crate::cmd::device_spec::DeviceArg>,
    /// How long a device may take to answer a request, in ms; past it the request fails with
    /// ETIMEDOUT and the device's connection is broken (a hung device stalls nothing).
    #[arg(long, default_value_t = ms(DeviceTimeouts::DEFAULT.reply),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) device_timeout_ms: u64,
    /// The same for accesses to a device's migration region, where the device saves or loads
    /// its state before it answers.
    #[arg(long, default_value_t = ms(DeviceTimeouts::DEFAULT.migration),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) device_migration_timeout_ms: u64,
    /// The control socket.
    #[arg(long)]
    pub(crate) control: PathBuf,
    /// Receive the VM from a migration on this address (tcp:HOST:PORT or unix:PATH) instead
    /// of starting a fresh one.
    #[arg(long)]
    pub(crate) incoming: Option<String>,
    /// With --incoming: how long a connection may take, in ms, for its TLS handshake and
    /// again for the stream's header and VM description. One that fails or takes longer is
    /// dropped and the next one accepted; only a migration that fails past that ends this.
    #[arg(long, default_value_t = ms(ReceiveTimeouts::DEFAULT.setup),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) incoming_timeout_ms: u64,
    /// Keep the guest paused until `cont` on the control socket.
    #[arg(long)]
    pub(crate) paused: bool,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
}

impl VmRunArgs {
    /// The devices' reply deadlines.
    pub(crate) fn device_timeouts(&self) -> DeviceTimeouts {
        DeviceTimeouts {
            reply: Duration::from_millis(self.device_timeout_ms),
            migration: Duration::from_millis(self.device_migration_timeout_ms),
        }
    }

    /// The receiver's timeouts: `--incoming-timeout-ms` before the commit point, the
    /// engine's defaults after it.
    pub(crate) fn incoming_timeouts(&self) -> ReceiveTimeouts {
        let before = Duration::from_millis(self.incoming_timeout_ms);
        ReceiveTimeouts {
            handshake: before,
            setup: before,
            ..ReceiveTimeouts::DEFAULT
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Mutual TLS on `tcp:` migrations, for the VM's incoming and outgoing streams.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct TlsArgs {
    /// A directory of TLS credentials (ca-cert.pem, server-cert.pem / server-key.pem for a
    /// destination, client-cert.pem / client-key.pem for a source; `vfmig tls gen` makes
    /// them): the peer must present a certificate of that CA. Without it, `tcp:` migrations
    /// are plain TCP: neither authenticated nor encrypted.
    #[arg(long)]
    pub(crate) tls_creds: Option<PathBuf>,
    /// A name the peer's certificate must carry (repeat for several; none: any the CA signed).
    #[arg(long = "tls-allow")]
    pub(crate) tls_allow: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The VM's control socket.
    #[arg(long)]
    pub(crate) control: PathBuf,
    /// The destination (tcp:HOST:PORT or unix:PATH).
    #[arg(long)]
    pub(crate) to: Address,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Print the statistics as JSON too.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write an SVG chart of the completed migration here (per iteration: dirty pages, bytes
    /// sent, rate, time, throttle; the downtime).
    #[arg(long, value_name = "FILE")]
    pub(crate) chart: Option<PathBuf>,
}

/// When pre-copy ends: the parameters of the engine's convergence policy. The defaults shown
/// are the engine's own ([`DowntimeLimit::default`]).
#[derive(Clone, Debug, Args)]
pub(crate) struct PolicyArgs {
    /// The downtime limit, in ms: the switch-over comes once what is left would cross the wire
    /// within it.
    #[arg(long, default_value_t = millis(DowntimeLimit::default().limit))]
    pub(crate) downtime_ms: u64,
    /// Most pre-copy iterations; if the last has not converged, the migration fails and the
    /// guest runs on here.
    #[arg(long, default_value_t = DowntimeLimit::default().max_iterations)]
    pub(crate) max_iterations: u64,
    /// Longest pre-copy, in ms; once over it without converging, the migration fails and the
    /// guest runs on here.
    #[arg(long, default_value_t = millis(DowntimeLimit::default().max_time))]
    pub(crate) max_time_ms: u64,
    /// The most the migration may send, in MiB/s (default: no cap).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_bandwidth_mib: Option<u64>,
    /// Do not slow the guest's vCPUs when it dirties faster than the link carries
    /// (auto-converge is on by default).
    #[arg(long)]
    pub(crate) no_auto_converge: bool,
}

impl PolicyArgs {
    /// The policy these options describe.
    pub(crate) fn policy(&self) -> DowntimeLimit {
        DowntimeLimit {
            limit: Duration::from_millis(self.downtime_ms),
            max_iterations: self.max_iterations,
            max_time: Duration::from_millis(self.max_time_ms),
            auto_converge: !self.no_auto_converge,
            max_bandwidth: self
                .max_bandwidth_mib
                .map(|mib| mib.saturating_mul(1 << 20))
                .or(DowntimeLimit::default().max_bandwidth),
            ..DowntimeLimit::default()
        }
    }
}

/// Whole milliseconds of `d`, for a default shown on the command line.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The VM's control socket.
    #[arg(long)]
    pub(crate) control: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    pub(crate) machine: MachineArgs,
    /// Seconds the guest runs before the migration starts.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup_s: u64,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Print the statistics as JSON too.
    #[arg(long)]
    pub(crate) json: bool,
    /// Migrate over plain TCP (by default the demo makes throwaway credentials and migrates
    /// over mutual TLS).
    #[arg(long)]
    pub(crate) plain: bool,
    /// Where to write the SVG chart of the migration (default: migration.svg in the demo's
    /// run directory, which is kept for it).
    #[arg(long, value_name = "FILE")]
    pub(crate) chart: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
}

/// Parses a size like `2G`, `512M`, `64K` or `4096` into bytes.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a size (e.g. 2G, 512M)"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| anyhow::anyhow!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vfmig vm migrate` with a control socket, a destination and `extra`, parsed.
    fn parse_migrate(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec![
            "vfmig",
            "vm",
            "migrate",
            "--control",
            "/c",
            "--to",
            "tcp:h:1",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    fn migrate_args(extra: &[&str]) -> MigrateArgs {
        match parse_migrate(extra).unwrap().command {
            Command::Vm(VmCommand::Migrate(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn migrate_options_left_out_are_the_engines_defaults() {
        assert_eq!(migrate_args(&[]).policy.policy(), DowntimeLimit::default());
    }

    #[test]
    fn max_iterations_reaches_the_policy() {
        let policy = migrate_args(&["--max-iterations", "4"]).policy.policy();
        assert_eq!(policy.max_iterations, 4);
    }

    #[test]
    fn max_time_ms_reaches_the_policy() {
        let policy = migrate_args(&["--max-time-ms", "1500"]).policy.policy();
        assert_eq!(policy.max_time, Duration::from_millis(1500));
    }

    #[test]
    fn downtime_ms_reaches_the_policy() {
        let policy = migrate_args(&["--downtime-ms", "20"]).policy.policy();
        assert_eq!(policy.limit, Duration::from_millis(20));
    }

    #[test]
    fn no_auto_converge_reaches_the_policy() {
        let policy = migrate_args(&["--no-auto-converge"]).policy.policy();
        assert!(!policy.auto_converge);
    }

    #[test]
    fn max_bandwidth_mib_reaches_the_policy() {
        let policy = migrate_args(&["--max-bandwidth-mib", "3"]).policy.policy();
        assert_eq!(policy.max_bandwidth, Some(3 << 20));
    }

    #[test]
    fn a_bandwidth_cap_of_zero_is_refused_by_the_command_line() {
        assert!(parse_migrate(&["--max-bandwidth-mib", "0"]).is_err());
    }

    #[test]
    fn a_bad_destination_is_refused_by_the_command_line() {
        let argv = ["vfmig", "vm", "migrate", "--control", "/c", "--to", "h:1"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
    }

    #[test]
    fn a_bad_size_is_an_error() {
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
