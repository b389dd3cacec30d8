//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
}

/// The sample devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceName {
    /// A two-port 16550-style serial device.
    Mtty,
    /// A DMA engine with device RAM, like a small vGPU.
    DmaEngine,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeviceArgs {
    /// Which device.
    pub(crate) kind: DeviceName,
    /// The UNIX socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    pub(crate) socket: PathBuf,
    /// Device RAM of the dma-engine, in MiB (a power of two).
    #[arg(long, default_value_t = 64)]
    pub(crate) ram_mib: u64,
}
