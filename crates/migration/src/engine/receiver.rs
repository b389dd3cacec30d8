//! The destination side: accept a stream, build the VM it describes (RAM, device processes,
//! RAM mapped to them), put the devices in RESUMING, apply RAM and device chunks in order,
//! devices to RUNNING, tell the source it is ready, and hand the VM over (guest paused) only
//! once the source says go. Anything wrong, a missing go included, discards the VM (its
//! device processes end) and tells the source.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use vfmig_abi::DeviceState;
use vfmig_memory::Gpa;
use vfmig_vmm::{DeviceHost, DeviceSpec, GuestProgram, GuestRam, PciConfigState, Vm, VmConfig};

use super::device::DeviceLink;
use super::error::MigrationError;
use super::{ACK_FAILED, ACK_READY, ACK_RUNNING, DeviceRecord, GO, read_line};
use crate::stream::{Section, StreamConfig, StreamReader, WriteGuestMemory};
use crate::transport::{Listener, StreamConnection};

/// Guest RAM as the stream fills it: not dirty-tracked (the guest is not running), and zero
/// runs free their pages instead of writing zeros.
struct RamWriter<'a>(&'a GuestRam);

fn io_error(e: vfmig_vmm::RamError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl WriteGuestMemory for RamWriter<'_> {
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> io::Result<()> {
        self.0.write_untracked(gpa.raw(), data).map_err(io_error)
    }

    fn write_zeroes(&mut self, gpa: Gpa, len: u64) -> io::Result<()> {
        self.0.zero_untracked(gpa.raw(), len).map_err(io_error)
    }
}

/// What the destination saw.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReceiveStats {
    /// From the connection to the confirmation, in ms.
    pub total_ms: f64,
    /// Stream bytes read.
    pub bytes: u64,
    /// RAM pages applied (data and zero).
    pub pages: u64,
    /// Of those, zero pages.
    pub zero_pages: u64,
    /// Device chunks applied.
    pub device_chunks: u64,
    /// Pre-copy iterations the source announced.
    pub iterations: u64,
}

/// The VMM's configuration from the stream's.
fn vm_config(config: &StreamConfig) -> Result<VmConfig, MigrationError> {
    let ram = config
        .ram()
        .regions()
        .iter()
        .map(|r| (r.gpa.raw(), r.size))
        .collect();
    let devices = config
        .devices()
        .iter()
        .map(|d| {
            let spec: DeviceSpec = serde_json::from_slice(&d.config)
                .map_err(|e| MigrationError::Config(format!("{}: {e}", d.id)))?;
            if spec.kind != d.kind {
                return Err(MigrationError::Config(format!(
                    "{}: kind {} but config says {}",
                    d.id, d.kind, spec.kind
                )));
            }
            Ok(spec)
        })
        .collect::<Result<_, _>>()?;
    Ok(VmConfig { ram, devices })
}

/// How long the destination, ready, waits for the source's go before it discards the VM.
const GO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts one migration on `listener` and returns the VM, devices RUNNING and the guest
/// paused: the caller lets it run. It returns only once the source said go (see the
/// [engine](super)'s handshake): the source will not resume the guest on its side.
pub fn receive(
    listener: &Listener,
    host: &DeviceHost,
) -> Result<(Vm, ReceiveStats), MigrationError> {
    receive_into(listener, host, None, None)
}

/// Refuses a stream whose VM is not the one this destination was set up for (`expected`:
/// its RAM layout and devices), naming the first difference: a destination receives only
/// the VM it was started for.
fn check_shape(expected: &VmConfig, incoming: &VmConfig) -> Result<(), MigrationError> {
    if expected.ram != incoming.ram {
        return Err(MigrationError::Config(format!(
            "the incoming VM's RAM is laid out as {:x?}, this destination's as {:x?}",
            incoming.ram, expected.ram
        )));
    }
    if expected.devices.len() != incoming.devices.len() {
        return Err(MigrationError::Config(format!(
            "the incoming VM has {} devices, this destination {}",
            incoming.devices.len(),
            expected.devices.len()
        )));
    }
    for (i, (ours, theirs)) in expected.devices.iter().zip(&incoming.devices).enumerate() {
        if ours != theirs {
            return Err(MigrationError::Config(format!(
                "device {i} of the incoming VM is {} ({} {:?}), this destination's is {} ({} {:?})",
                theirs.id, theirs.kind, theirs.args, ours.id, ours.kind, ours.args
            )));
        }
    }
    Ok(())
}

/// [`receive`] into guest RAM prepared beforehand (e.g. populated while waiting), used if its
/// layout is the stream's; otherwise RAM is made from the stream's layout. With `expected`, a
/// stream of any other VM (RAM layout, devices) is refused, naming the difference, before
/// anything of it is built.
pub fn receive_into(
    listener: &Listener,
    host: &DeviceHost,
    ram: Option<Arc<GuestRam>>,
    expected: Option<&VmConfig>,
) -> Result<(Vm, ReceiveStats), MigrationError> {
    let conn = listener.accept()?;
    let start = Instant::now();
    let mut ack = conn
        .try_clone()
        .map_err(|e| MigrationError::NoAck(e.to_string()))?;
    match receive_on(conn, host, ram, expected).and_then(|(vm, stats, conn, left)| {
        wait_for_go(&mut ack, conn, left)?;
        Ok((vm, stats))
    }) {
        Ok((vm, mut stats)) => {
            // The VM is ours now, whether or not the source hears it.
            if let Err(e) = ack.write_all(format!("{ACK_RUNNING}\n").as_bytes()) {
                tracing::warn!(error = %e, "could not confirm to the source that the VM runs here");
            }
            stats.total_ms = start.elapsed().as_secs_f64() * 1e3;
            Ok((vm, stats))
        }
        Err(e) => {
            tell_source(&mut ack, &e);
            Err(e)
        }
    }
}

/// Tells the source the VM is ready, then waits on the stream's connection (after `End`;
/// `left` is what the stream reader received past it) for its go.
fn wait_for_go(
    ack: &mut StreamConnection,
    mut conn: StreamConnection,
    mut left: Vec<u8>,
) -> Result<(), MigrationError> {
    let no_go = |what: String| MigrationError::NoGo(what);
    ack.write_all(format!("{ACK_READY}\n").as_bytes())
        .map_err(|e| no_go(format!("telling the source the VM is ready: {e}")))?;
    conn.set_read_timeout(Some(GO_TIMEOUT))
        .map_err(|e| no_go(e.to_string()))?;
    match read_line(&mut conn, &mut left) {
        Ok(line) if line == GO => Ok(()),
        Ok(line) if line.is_empty() => Err(no_go("the source closed the connection".into())),
        Ok(line) => Err(no_go(format!("unexpected message {line:?}"))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(no_go(format!("nothing in {} s", GO_TIMEOUT.as_secs())))
        }
        Err(e) => Err(no_go(e.to_string())),
    }
}

/// Sends the source why the stream was refused, then closes gently: a half-close, and what
/// the source still sends is read and dropped for a moment, so the close does not reset the
/// connection (a reset would discard the reason before the source reads it).
fn tell_source(ack: &mut StreamConnection, e: &MigrationError) {
    let _ = ack.write_all(format!("{ACK_FAILED} {e}\n").as_bytes());
    let _ = ack.shutdown_write();
    let _ = ack.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    let mut sink = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match io::Read::read(ack, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = ack.shutdown();
}

/// Reads the stream and builds the VM; returns it, devices RUNNING, with the stream's
/// connection and the bytes received past `End`.
fn receive_on(
    conn: StreamConnection,
    host: &DeviceHost,
    ram: Option<Arc<GuestRam>>,
    expected: Option<&VmConfig>,
) -> Result<(Vm, ReceiveStats, StreamConnection, Vec<u8>), MigrationError> {
    let mut stats = ReceiveStats::default();
    let mut reader = StreamReader::new(conn)?;
    let config = match reader.next_section()? {
        Section::Config(c) => vm_config(c)?,
        // The reader refuses any other first section; this is for the type system.
        other => {
            return Err(MigrationError::Config(format!(
                "stream starts with {:?}",
                other.kind()
            )));
        }
    };
    tracing::info!(ram = ?config.ram, devices = config.devices.len(), "incoming VM");
    if let Some(expected) = expected {
        check_shape(expected, &config)?;
    }
    let vm = match ram.filter(|r| r.layout() == config.ram) {
        Some(ram) => Vm::build_with_ram(config, ram, host, false),
        None => Vm::build(config, host, false),
    }
    .map_err(Box::new)?;
    // The KVM VM and its memslots now, while RAM arrives, rather than in the downtime when
    // the Machine section comes (a stream without a KVM guest leaves them unused).
    if let Err(e) = vm.prepare_machine() {
        tracing::debug!(error = %e, "no KVM VM made ahead of the stream's machine");
    }
    let mut links = vm
        .devices()
        .iter()
        .map(DeviceLink::new)
        .collect::<Result<Vec<_>, _>>()?;
    for link in &links {
        link.set_state(DeviceState::RESUMING)?;
    }
    let mut pci: Vec<Option<PciConfigState>> = vec![None; vm.devices().len()];
    loop {
        match reader.next_section()? {
            Section::RamPages(pages) => {
                pages
                    .apply(&mut RamWriter(vm.ram()))
                    .map_err(|e| MigrationError::Config(e.to_string()))?;
                stats.pages += pages.data_pages() + pages.zero_pages();
                stats.zero_pages += pages.zero_pages();
            }
            Section::DeviceChunk(chunk) => {
                let link = usize::try_from(chunk.device.0)
                    .ok()
                    .and_then(|i| links.get_mut(i))
                    .ok_or_else(|| {
                        MigrationError::Config(format!("chunk for unknown {}", chunk.device))
                    })?;
                link.write_chunk(chunk.data)?;
                stats.device_chunks += 1;
            }
            Section::Machine(m) => {
                let program: GuestProgram = serde_json::from_slice(m.program)
                    .map_err(|e| MigrationError::Config(format!("the guest program: {e}")))?;
                if program.vcpus != m.vcpus {
                    return Err(MigrationError::Config(format!(
                        "the machine section says {} vCPUs, its program {}",
                        m.vcpus, program.vcpus
                    )));
                }
                let restoring = Instant::now();
                vm.restore_machine(&program, m.state)
                    .map_err(|e| MigrationError::Guest(Box::new(e)))?;
                tracing::debug!(
                    vcpus = m.vcpus,
                    ms = restoring.elapsed().as_secs_f64() * 1e3,
                    "KVM guest built and its state restored"
                );
            }
            Section::DeviceConfig(c) => {
                let record: DeviceRecord = serde_json::from_slice(c.data)
                    .map_err(|e| MigrationError::Config(format!("{}: {e}", c.device)))?;
                let index = usize::try_from(c.device.0).unwrap_or(usize::MAX);
                let ours = vm.devices().get(index).map(|d| d.spec());
                if ours != Some(&record.spec) {
                    return Err(MigrationError::Config(format!(
                        "{} config differs from the one built",
                        c.device
                    )));
                }
                if let (Some(state), Some(slot)) = (record.pci, pci.get_mut(index)) {
                    *slot = Some(state);
                }
            }
            Section::Iteration(_) => stats.iterations += 1,
            Section::End(_) => break,
            Section::Config(_) => {
                return Err(MigrationError::Config("a second Config section".into()));
            }
        }
    }
    // What the guest programmed goes back after the devices' own data, before they run.
    if pci.iter().any(Option::is_some) {
        let states = pci
            .into_iter()
            .map(|s| {
                s.ok_or_else(|| {
                    MigrationError::Config("PCI configuration of some devices only".into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        vm.restore_pci(&states)
            .map_err(|e| MigrationError::Guest(Box::new(e)))?;
    }
    for link in &links {
        link.set_state(DeviceState::RUNNING)?;
    }
    stats.bytes = reader.bytes_read();
    drop(links);
    let (conn, left) = reader.into_inner();
    Ok((vm, stats, conn, left))
}
