//! `vfmig device <kind> --socket PATH`.

use anyhow::{Context, bail};
use vfmig_device::server::{DeviceKind, ServeOptions, serve_with};

use crate::cli::{DeviceArgs, DeviceName};

/// Validates the arguments and serves the device until the process is killed.
pub(crate) fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let kind = match args.kind {
        DeviceName::Mtty => DeviceKind::Mtty,
        DeviceName::DmaEngine => {
            if !args.ram_mib.is_power_of_two() || args.ram_mib > 1024 {
                bail!(
                    "--ram-mib must be a power of two up to 1024, not {}",
                    args.ram_mib
                );
            }
            DeviceKind::DmaEngine {
                ram: args.ram_mib << 20,
                all_mapped: args.all_mapped,
            }
        }
    };
    let options = ServeOptions {
        migration: !args.no_migration,
        dirty_tracking: !args.no_dirty_tracking,
    };
    let err = serve_with(kind, options, &args.socket);
    Err(err).with_context(|| format!("serving {} on {}", kind.name(), args.socket.display()))
}
