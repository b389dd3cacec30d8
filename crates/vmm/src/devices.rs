//! Devices attached over vfio-user: a device process the VMM spawns (`vfmig device <kind>`),
//! or a server already listening on a socket it is given (started by anyone, written in
//! anything). Attaching connects, negotiates, probes the device's [`DeviceProfile`], and
//! maps all guest RAM into the device's container, the way its [`DmaPath`] says: with the
//! RAM's fds, so the device reaches guest memory directly (the default), or without them, so
//! it reaches guest memory only through DMA_READ / DMA_WRITE messages the VMM's client
//! answers ([`crate::ram_dma`]). From then on nothing distinguishes a spawned device from
//! one on a socket: the kind of a spawned device only says which program to start.
//!
//! Every request to a device has a reply deadline ([`DeviceTimeouts`]): a hung device process
//! fails the request with `ETIMEDOUT` and its connection is broken, instead of stalling the
//! VMM (and a migration) for ever.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfmig_iommu::Prot;
use vfmig_memory::Iova;
use vfmig_vfio_user::{Client, ClientConfig, ClientError, ClientStats};

use crate::profile::{DeviceProfile, MigrationData, ProbeError, probe};
use crate::ram::{GuestRam, RamRegion};
use crate::ram_dma::RamDma;

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

/// What the VMM knows of a device it should attach: its id, where its server comes from, how
/// it reaches guest RAM and how long its replies may take.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceSpec {
    /// Unique name in the VM (e.g. `mtty0`); a migration matches devices by it.
    pub id: String,
    /// Where its vfio-user server comes from.
    pub source: DeviceSource,
    /// How the device reaches guest RAM.
    #[serde(default)]
    pub dma: DmaPath,
    /// Its reply deadlines.
    #[serde(default)]
    pub timeouts: DeviceTimeouts,
}

/// How a device reaches guest RAM: the choice of its DMA_MAPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DmaPath {
    /// Guest RAM is mapped with its memfds: the device process maps it and reaches it
    /// directly; its server keeps the dirty bitmap of what it writes.
    #[default]
    Shared,
    /// Guest RAM is mapped without an fd: every access of the device is a DMA_READ or
    /// DMA_WRITE message answered by the VMM's client, which records the pages written and
    /// reports them as the device's dirty pages (the server keeps no bitmap of such memory,
    /// and is never asked for one).
    Messages,
}

/// How long a device's replies may take; past it the request fails with `ETIMEDOUT` and the
/// device's connection is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceTimeouts {
    /// Every request but those below: register and BAR accesses, maps, dirty bitmaps.
    pub reply: Duration,
    /// Accesses to the v1 migration region, where the device does its own work before it
    /// answers (saves its state at a `device_state` write, prepares a chunk at a
    /// `pending_bytes` read, loads one at a `data_size` write), which for a large device can
    /// take seconds.
    pub migration: Duration,
}

impl DeviceTimeouts {
    /// 10 s for every request, 60 s for the migration region's.
    pub const DEFAULT: DeviceTimeouts = DeviceTimeouts {
        reply: vfmig_vfio_user::client::DEFAULT_REPLY_TIMEOUT,
        migration: Duration::from_secs(60),
    };
}

impl Default for DeviceTimeouts {
    fn default() -> Self {
        DeviceTimeouts::DEFAULT
    }
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
            dma: DmaPath::default(),
            timeouts: DeviceTimeouts::DEFAULT,
        }
    }

    /// A server already listening on `path`.
    pub fn socket(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        DeviceSpec {
            id: id.into(),
            source: DeviceSource::Socket { path: path.into() },
            dma: DmaPath::default(),
            timeouts: DeviceTimeouts::DEFAULT,
        }
    }

    /// The same device, reaching guest RAM through `dma`.
    pub fn with_dma(mut self, dma: DmaPath) -> Self {
        self.dma = dma;
        self
    }

    /// The same device, with reply deadlines `timeouts`.
    pub fn with_timeouts(mut self, timeouts: DeviceTimeouts) -> Self {
        self.timeouts = timeouts;
        self
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

fn connect(spec: &DeviceSpec, socket: &Path, timeout: Duration) -> Result<Client, AttachError> {
    let id = &spec.id;
    let config = ClientConfig {
        reply_timeout: spec.timeouts.reply,
        ..ClientConfig::default()
    };
    let start = Instant::now();
    loop {
        match Client::connect(socket, config.clone()) {
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
    /// Attaches the device of `spec`: starts its process
    /// (`program device <kind> --socket <dir>/<id>.sock <args>`) or connects to its socket;
    /// then probes it.
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
        let client = connect(&spec, &socket, Duration::from_secs(10))
            .and_then(|client| Self::probed(&spec, client));
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
        let client = connect(&spec, socket, Duration::from_secs(10))?;
        let (client, profile, migration) = Self::probed(&spec, client)?;
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
        spec: &DeviceSpec,
        client: Client,
    ) -> Result<(Client, DeviceProfile, Option<MigrationData>), AttachError> {
        let id = &spec.id;
        let (profile, migration) =
            probe(&client, spec.timeouts.migration).map_err(|source| AttachError::Probe {
                id: id.to_string(),
                source,
            })?;
        tracing::info!(device = %id, profile = %profile.name(), migration = ?profile.migration_region,
            dirty_tracking = profile.dirty_tracking, dma = ?spec.dma, "device attached");
        Ok((client, profile, migration))
    }

    /// Maps every RAM region into the device's container, by fd or without ([`DmaPath`]).
    pub fn map_ram(
        &self,
        ram: &Arc<GuestRam>,
        window: Option<(u64, u64)>,
    ) -> Result<(), AttachError> {
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
                self.map_in(ram, r, from, to - from)
                    .map_err(|source| self.request("DMA_MAP of guest RAM", source))?;
            }
        }
        Ok(())
    }

    /// Maps `[gpa, gpa + size)` of guest RAM, which must lie in one region, into the device's
    /// container as [`Self::map_ram`] does (the vIOMMU maps its window again this way).
    pub fn map_range(&self, ram: &Arc<GuestRam>, gpa: u64, size: u64) -> Result<(), AttachError> {
        let region = ram
            .regions()
            .iter()
            .find(|r| r.gpa() <= gpa && gpa.saturating_add(size) <= r.gpa() + r.size())
            .ok_or_else(|| self.ram_error(crate::ram::RamError::NotRam { gpa, len: size }))?;
        self.map_in(ram, region, gpa, size)
            .map_err(|source| self.request("DMA_MAP of guest RAM", source))
    }

    fn map_in(
        &self,
        ram: &Arc<GuestRam>,
        region: &RamRegion,
        gpa: u64,
        size: u64,
    ) -> Result<(), ClientError> {
        match self.spec.dma {
            DmaPath::Shared => self.client.dma_map(
                Iova(gpa),
                size,
                Prot::READ_WRITE,
                Some((region.fd(), gpa - region.gpa())),
            ),
            DmaPath::Messages => self.client.dma_map_with_memory(
                Iova(gpa),
                size,
                Prot::READ_WRITE,
                Arc::new(RamDma(Arc::clone(ram))),
            ),
        }
    }

    /// What the device's vfio-user client did so far: dirty bitmap requests, the device's
    /// DMA_READ / DMA_WRITE messages, pages reported from the client's record of the latter.
    pub fn client_stats(&self) -> ClientStats {
        self.client.stats()
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
