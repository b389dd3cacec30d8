//! Devices attached over vfio-user: a device process the VMM spawns (`vfmig device <kind>`),
//! or a server already listening on a socket it is given (started by anyone, written in
//! anything). Attaching connects, negotiates, probes the device's [`DeviceProfile`], and
//! maps all guest RAM into the device's container with the RAM's fds, so the device reaches
//! guest memory directly. From then on nothing distinguishes the two: the kind of a spawned
//! device only says which program to start.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfmig_iommu::Prot;
use vfmig_memory::Iova;
use vfmig_vfio_user::{Client, ClientConfig, ClientError};

use crate::profile::{DeviceProfile, MigrationData, ProbeError, probe};
use crate::ram::GuestRam;

/// Why a device could not be attached or used.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The device process could not be started.
    #[error("device {id}: cannot start {program}: {source}")]
    Spawn {
        /// Device id.
        id: String,
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device never answered on its socket.
    #[error("device {id}: no vfio-user server on {socket} after {waited:?}: {last}")]
    Connect {
        /// Device id.
        id: String,
        /// The socket.
        socket: String,
        /// How long it was tried.
        waited: Duration,
        /// The last error.
        last: Box<ClientError>,
    },
    /// Guest RAM could not be used on the device's behalf.
    #[error("device {id}: guest RAM: {source}")]
    Ram {
        /// Device id.
        id: String,
        /// The error.
        source: crate::ram::RamError,
    },
    /// The device is not one the VMM can attach as it is.
    #[error("device {id}: {what}")]
    Invalid {
        /// Device id.
        id: String,
        /// What is wrong.
        what: String,
    },
    /// The device did not say what it is.
    #[error("device {id}: probing it: {source}")]
    Probe {
        /// Device id.
        id: String,
        /// The error.
        source: ProbeError,
    },
    /// A vfio-user request failed.
    #[error("device {id}: {what}: {source}")]
    Request {
        /// Device id.
        id: String,
        /// What was asked.
        what: &'static str,
        /// The error, with its errno.
        source: Box<ClientError>,
    },
}

/// What the VMM knows of a device it should attach: its id, and where its server comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceSpec {
    /// Unique name in the VM (e.g. `mtty0`); a migration matches devices by it.
    pub id: String,
    /// Where its vfio-user server comes from.
    pub source: DeviceSource,
}

/// Where a device's vfio-user server comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceSource {
    /// A device process the VMM starts: `vfmig device <kind> --socket … <args>`.
    Spawn {
        /// Device kind as `vfmig device` names it (`mtty`, `dma-engine`).
        kind: String,
        /// Extra arguments for the device process (e.g. `--ram-mib 64`).
        #[serde(default)]
        args: Vec<String>,
    },
    /// A server already listening on this socket.
    Socket {
        /// The socket.
        path: PathBuf,
    },
}

impl DeviceSpec {
    /// A device process of `kind`, started by the VMM with `args`.
    pub fn spawn(id: impl Into<String>, kind: impl Into<String>, args: Vec<String>) -> Self {
        DeviceSpec {
            id: id.into(),
            source: DeviceSource::Spawn {
                kind: kind.into(),
                args,
            },
        }
    }

    /// A server already listening on `path`.
    pub fn socket(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        DeviceSpec {
            id: id.into(),
            source: DeviceSource::Socket { path: path.into() },
        }
    }
}

impl std::fmt::Display for DeviceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSource::Spawn { kind, .. } => write!(f, "{kind} (spawned)"),
            DeviceSource::Socket { path } => write!(f, "socket {}", path.display()),
        }
    }
}

/// A device attached to the VM.
pub struct AttachedDevice {
    spec: DeviceSpec,
    socket: PathBuf,
    process: Option<Child>,
    client: Client,
    profile: DeviceProfile,
    migration: Option<MigrationData>,
}

impl std::fmt::Debug for AttachedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedDevice")
            .field("id", &self.spec.id)
            .field("source", &self.spec.source)
            .field("profile", &self.profile)
            .field("pid", &self.pid())
            .finish()
    }
}

fn connect(id: &str, socket: &Path, timeout: Duration) -> Result<Client, AttachError> {
    let start = Instant::now();
    loop {
        match Client::connect(socket, ClientConfig::default()) {
            Ok(client) => return Ok(client),
            Err(last) if start.elapsed() >= timeout => {
                return Err(AttachError::Connect {
                    id: id.to_string(),
                    socket: socket.display().to_string(),
                    waited: start.elapsed(),
                    last: Box::new(last),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl AttachedDevice {
    /// Attaches the device of `spec`: starts its process (`program device <kind> --socket
    /// <dir>/<id>.sock <args>`) or connects to its socket; then probes it.
    pub fn attach(spec: DeviceSpec, program: &Path, dir: &Path) -> Result<Self, AttachError> {
        match &spec.source {
            DeviceSource::Spawn { kind, args } => {
                let (kind, args) = (kind.clone(), args.clone());
                AttachedDevice::spawn(spec, &kind, &args, program, dir)
            }
            DeviceSource::Socket { path } => {
                let path = path.clone();
                AttachedDevice::connect(spec, &path)
            }
        }
    }

    fn spawn(
        spec: DeviceSpec,
        kind: &str,
        args: &[String],
        program: &Path,
        dir: &Path,
    ) -> Result<Self, AttachError> {
        let socket = dir.join(format!("{}.sock", spec.id));
        let mut command = Command::new(program);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // sigemptyset and sigprocmask, which are async-signal-safe, on its own stack; it
        // touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // The device process dies with the VMM (the thread that spawned it).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A mask survives exec: the VMM may block the signals it waits for.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut process = command
            .arg("device")
            .arg(kind)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| AttachError::Spawn {
                id: spec.id.clone(),
                program: program.display().to_string(),
                source,
            })?;
        let client = connect(&spec.id, &socket, Duration::from_secs(10))
            .and_then(|client| Self::probed(&spec.id, client));
        match client {
            Ok((client, profile, migration)) => Ok(AttachedDevice {
                spec,
                socket,
                process: Some(process),
                client,
                profile,
                migration,
            }),
            Err(e) => {
                let _ = process.kill();
                let _ = process.wait();
                Err(e)
            }
        }
    }

    /// Connects to a device served on `socket` by someone else, and probes it.
    pub fn connect(spec: DeviceSpec, socket: &Path) -> Result<Self, AttachError> {
        let client = connect(&spec.id, socket, Duration::from_secs(10))?;
        let (client, profile, migration) = Self::probed(&spec.id, client)?;
        Ok(AttachedDevice {
            spec,
            socket: socket.to_path_buf(),
            process: None,
            client,
            profile,
            migration,
        })
    }

    #[allow(clippy::type_complexity)]
    fn probed(
        id: &str,
        client: Client,
    ) -> Result<(Client, DeviceProfile, Option<MigrationData>), AttachError> {
        let (profile, migration) = probe(&client).map_err(|source| AttachError::Probe {
            id: id.to_string(),
            source,
        })?;
        tracing::info!(device = id, profile = %profile.name(), migration = ?profile.migration_region,
            dirty_tracking = profile.dirty_tracking, "device attached");
        Ok((client, profile, migration))
    }

    /// Maps every RAM region into the device's container, by fd.
    pub fn map_ram(&self, ram: &GuestRam, window: Option<(u64, u64)>) -> Result<(), AttachError> {
        for r in ram.regions() {
            let (start, end) = (r.gpa(), r.gpa() + r.size());
            // A window inside the region is mapped on its own, so it can be unmapped alone.
            let mut cuts = vec![start];
            if let Some((w, len)) = window.filter(|&(w, len)| w > start && w + len < end) {
                cuts.extend([w, w + len]);
            }
            cuts.push(end);
            for piece in cuts.windows(2) {
                let (from, to) = (piece[0], piece[1]);
                self.client
                    .dma_map(
                        Iova(from),
                        to - from,
                        Prot::READ_WRITE,
                        Some((r.fd(), from - start)),
                    )
                    .map_err(|source| self.request("DMA_MAP of guest RAM", source))?;
            }
        }
        Ok(())
    }

    /// A guest RAM failure while serving this device.
    pub fn ram_error(&self, e: crate::ram::RamError) -> AttachError {
        AttachError::Ram {
            id: self.spec.id.clone(),
            source: e,
        }
    }

    /// An error of a request to this device.
    pub fn request(&self, what: &'static str, source: ClientError) -> AttachError {
        AttachError::Request {
            id: self.spec.id.clone(),
            what,
            source: Box::new(source),
        }
    }

    /// The device's spec.
    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// What the device said it is.
    pub fn profile(&self) -> &DeviceProfile {
        &self.profile
    }

    /// Its migration region's data (mapped or trapped), if it has the region.
    pub fn migration_data(&self) -> Option<&MigrationData> {
        self.migration.as_ref()
    }

    /// The vfio-user client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The device process id, if the VMM started it.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// True if the VMM started the process and it has exited.
    pub fn exited(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.try_wait(), Ok(Some(_))))
    }
}

impl Drop for AttachedDevice {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}
