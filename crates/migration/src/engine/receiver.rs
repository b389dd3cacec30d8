//! The destination side: accept a stream, build the VM it describes (RAM; the destination's
//! own devices, each matched to the source's by id and profile; RAM mapped to them), put the
//! devices in RESUMING, apply RAM and device chunks in order,
//! devices to RUNNING, tell the source it is ready, and hand the VM over (guest paused) only
//! once the source says go. Anything wrong, a missing go included, discards the VM (its
//! device processes end) and tells the source.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use vfmig_abi::DeviceState;
use vfmig_memory::Gpa;
use vfmig_vmm::{DeviceHost, GuestProgram, GuestRam, PciConfigState, Vm, VmConfig};

use super::device::DeviceLink;
use super::error::MigrationError;
use super::{ACK_FAILED, ACK_READY, ACK_RUNNING, DeviceName, DeviceRecord, GO, read_line};
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

/// The devices the stream names, in its order: `(id, profile)`.
fn incoming_devices(config: &StreamConfig) -> Result<Vec<(String, String)>, MigrationError> {
    let mut devices: Vec<(String, String)> = Vec::with_capacity(config.devices().len());
    for d in config.devices() {
        let name: DeviceName = serde_json::from_slice(&d.config)
            .map_err(|e| MigrationError::Config(format!("{}: {e}", d.id)))?;
        if devices.iter().any(|(id, _)| *id == name.id) {
            return Err(MigrationError::Config(format!(
                "the incoming VM names device {} twice",
                name.id
            )));
        }
        devices.push((name.id, d.kind.clone()));
    }
    Ok(devices)
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

/// The VM to build for a stream of RAM `ram` and devices `incoming`: its RAM, and this
/// destination's own devices (`ours`; none without it) in the stream's order, each found by
/// its id (the order is the source's PCI slots, which the guest knows its devices by).
/// Refuses, naming the first difference, a stream whose RAM is laid out otherwise than
/// `ours` or whose device ids are not this destination's: a destination receives only the
/// VM it was started for. Whether each device is the same as the source's is for
/// [`check_profiles`], once they are attached.
fn vm_for(
    ram: Vec<(u64, u64)>,
    incoming: &[(String, String)],
    ours: Option<&VmConfig>,
) -> Result<VmConfig, MigrationError> {
    if let Some(ours) = ours
        && ours.ram != ram
    {
        return Err(MigrationError::Config(format!(
            "the incoming VM's RAM is laid out as {ram:x?}, this destination's as {:x?}",
            ours.ram
        )));
    }
    let our_devices = ours.map_or(&[][..], |c| &c.devices);
    let ids = |ids: &mut dyn Iterator<Item = &String>| {
        ids.map(String::as_str).collect::<Vec<_>>().join(", ")
    };
    let mut devices = Vec::with_capacity(incoming.len());
    for (id, profile) in incoming {
        let spec = our_devices.iter().find(|d| d.id == *id).ok_or_else(|| {
            MigrationError::Config(format!(
                "the incoming VM's device {id} ({profile}) has no device of that id here \
                 (this destination has: [{}])",
                ids(&mut our_devices.iter().map(|d| &d.id))
            ))
        })?;
        devices.push(spec.clone());
    }
    if let Some(extra) = our_devices
        .iter()
        .find(|d| !incoming.iter().any(|(id, _)| *id == d.id))
    {
        return Err(MigrationError::Config(format!(
            "this destination's device {} is not in the incoming VM (which has: [{}])",
            extra.id,
            ids(&mut incoming.iter().map(|(id, _)| id))
        )));
    }
    Ok(VmConfig { ram, devices })
}

/// Refuses a destination device that is not what the source's of the same id was: its
/// profile (`pci:VVVV:DDDD`) differs.
fn check_profiles(vm: &Vm, incoming: &[(String, String)]) -> Result<(), MigrationError> {
    for (dev, (id, profile)) in vm.devices().iter().zip(incoming) {
        let ours = dev.profile().name();
        if ours != *profile {
            return Err(MigrationError::Config(format!(
                "device {id}: the incoming VM's is {profile}, this destination's is {ours}"
            )));
        }
    }
    Ok(())
}

/// [`receive`] into guest RAM prepared beforehand (e.g. populated while waiting), used if its
/// layout is the stream's; otherwise RAM is made from the stream's layout. `expected` is the
/// VM this destination is for: its RAM layout and its own devices (spawned or on sockets),
/// which take the source's devices' places by id; a stream of any other VM (RAM layout,
/// device ids) is refused, naming the difference, before anything of it is built, and one
/// whose devices' profiles differ from ours before any state reaches them. Without
/// `expected`, the VM has the stream's RAM layout and no devices.
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
    let (ram_layout, incoming) = match reader.next_section()? {
        Section::Config(c) => (
            c.ram()
                .regions()
                .iter()
                .map(|r| (r.gpa.raw(), r.size))
                .collect::<Vec<_>>(),
            incoming_devices(c)?,
        ),
        // The reader refuses any other first section; this is for the type system.
        other => {
            return Err(MigrationError::Config(format!(
                "stream starts with {:?}",
                other.kind()
            )));
        }
    };
    tracing::info!(ram = ?ram_layout, devices = ?incoming, "incoming VM");
    let config = vm_for(ram_layout, &incoming, expected)?;
    let vm = match ram.filter(|r| r.layout() == config.ram) {
        Some(ram) => Vm::build_with_ram(config, ram, host, false),
        None => Vm::build(config, host, false),
    }
    .map_err(Box::new)?;
    check_profiles(&vm, &incoming)?;
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
                let ours = vm.devices().get(index).map(|d| d.id());
                if ours != Some(record.id.as_str()) {
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

#[cfg(test)]
mod tests {
    use vfmig_vmm::DeviceSpec;

    use super::*;

    const RAM: (u64, u64) = (0, 64 << 20);

    fn ours(ids: &[&str]) -> VmConfig {
        VmConfig {
            ram: vec![RAM],
            devices: ids
                .iter()
                .map(|id| DeviceSpec::socket(*id, format!("/run/{id}.sock")))
                .collect(),
        }
    }

    fn incoming(ids: &[&str]) -> Vec<(String, String)> {
        ids.iter()
            .map(|id| (id.to_string(), "pci:4348:3253".to_string()))
            .collect()
    }

    #[test]
    fn our_devices_take_the_streams_order_by_id() {
        let vm = vm_for(vec![RAM], &incoming(&["b", "a"]), Some(&ours(&["a", "b"]))).unwrap();
        let ids: Vec<_> = vm.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
    }

    #[test]
    fn an_incoming_device_without_one_of_its_id_here_is_refused_naming_it() {
        let e = vm_for(vec![RAM], &incoming(&["a", "x"]), Some(&ours(&["a", "b"]))).unwrap_err();
        assert!(e.to_string().contains("device x (pci:4348:3253)"), "{e}");
    }

    #[test]
    fn a_device_of_ours_missing_from_the_stream_is_refused_naming_it() {
        let e = vm_for(vec![RAM], &incoming(&["a"]), Some(&ours(&["a", "b"]))).unwrap_err();
        assert!(e.to_string().contains("device b is not in"), "{e}");
    }

    #[test]
    fn another_ram_layout_is_refused() {
        let e = vm_for(vec![(0, 32 << 20)], &[], Some(&ours(&[]))).unwrap_err();
        assert!(e.to_string().contains("RAM is laid out"), "{e}");
    }

    #[test]
    fn without_a_vm_of_its_own_a_destination_takes_no_devices() {
        let e = vm_for(vec![RAM], &incoming(&["a"]), None).unwrap_err();
        assert!(e.to_string().contains("device a"), "{e}");
    }
}
