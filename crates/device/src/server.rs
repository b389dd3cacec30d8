//! The device server: one device process serving one device over vfio-user on a UNIX socket.
//! `vfmig device <kind> --socket PATH` calls [`serve`].

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;

use vfmig_iommu::{Container, DirtyScope};
use vfmig_vfio_user::{Limits, Server};

use crate::devices::dma_engine::{DEFAULT_RAM, DmaEngine};
use crate::devices::mtty::Mtty;
use crate::model::DeviceModel;
use crate::pci_device::PciDevice;

/// Which sample device to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The two-port serial device.
    Mtty,
    /// The DMA engine with `ram` bytes of device RAM.
    DmaEngine {
        /// Device RAM in bytes.
        ram: u64,
        /// `AllMapped`: the engine pins nothing, so every dirty sync reports all of guest RAM
        /// (a device without precise dirty tracking).
        all_mapped: bool,
    },
}

impl DeviceKind {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Mtty => "mtty",
            DeviceKind::DmaEngine { .. } => "dma-engine",
        }
    }

    /// Parses `mtty` or `dma-engine` (with the default RAM size).
    pub fn parse(name: &str) -> Option<DeviceKind> {
        match name {
            "mtty" => Some(DeviceKind::Mtty),
            "dma-engine" => Some(DeviceKind::DmaEngine {
                ram: DEFAULT_RAM,
                all_mapped: false,
            }),
            _ => None,
        }
    }
}

/// What a served device leaves out, to stand in for devices vfmig did not write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// Offer the v1 migration region (and the state digest region). Without it the device
    /// cannot migrate, and a VMM refuses to migrate a VM that has it.
    pub migration: bool,
    /// Offer dirty page tracking: the migration capability in VERSION and DIRTY_PAGES.
    /// Without it a VMM counts every page the device has mapped as dirty at every sync.
    pub dirty_tracking: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            migration: true,
            dirty_tracking: true,
        }
    }
}

/// Binds `socket` (replacing a stale socket file) and serves a new device of `kind` to one
/// client after another, forever; returns only on an error accepting connections.
pub fn serve(kind: DeviceKind, socket: &Path) -> io::Error {
    serve_with(kind, ServeOptions::default(), socket)
}

/// [`serve`] with parts of the device left out.
pub fn serve_with(kind: DeviceKind, options: ServeOptions, socket: &Path) -> io::Error {
    let listener = match bind(socket) {
        Ok(l) => l,
        Err(e) => return e,
    };
    tracing::info!(device = kind.name(), socket = %socket.display(), ?options, "serving");
    let container = Container::default();
    match kind {
        DeviceKind::Mtty => serve_model(Mtty::new(), options, container, listener),
        DeviceKind::DmaEngine { ram, all_mapped } => {
            let scope = if all_mapped {
                DirtyScope::AllMapped
            } else {
                DirtyScope::Pinned
            };
            match DmaEngine::with_scope(container.clone(), ram, scope) {
                Ok(model) => serve_model(model, options, container, listener),
                Err(e) => io::Error::from_raw_os_error(e.errno),
            }
        }
    }
}

fn serve_model<M: DeviceModel>(
    model: M,
    options: ServeOptions,
    container: Container,
    listener: UnixListener,
) -> io::Error {
    let mut device = match PciDevice::new(model) {
        Ok(device) => device,
        Err(e) => return e,
    };
    if !options.migration {
        device = device.without_migration();
    }
    if !options.dirty_tracking {
        device = device.without_dirty_tracking();
    }
    Server::new(device, container, Limits::default()).serve(listener)
}

/// Binds a UNIX listener at `path`, removing a socket file left by a previous server.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}
