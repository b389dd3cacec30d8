//! The destination side: accept a stream, build the VM it describes (RAM; the destination's
//! own devices, each matched to the source's by id and profile; RAM mapped to them), put the
//! devices in RESUMING, apply RAM and device chunks in order,
//! devices to RUNNING, tell the source it is ready, and hand the VM over (guest paused) only
//! once the source says go. Anything wrong, a missing go included, discards the VM (its
//! device processes end) and tells the source.
//!
//! Before the commit point a failure is the peer's alone and the receiver listens on; see
//! "Who may end a waiting destination" in the [engine](super) docs.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfmig_abi::DeviceState;
use vfmig_memory::Gpa;
use vfmig_vmm::{DeviceHost, GuestProgram, GuestRam, PciConfigState, Vm, VmConfig};

use super::admit::{Admission, Admitted, RefusalLog, Refusals};
use super::device::DeviceLink;
use super::error::MigrationError;
use super::timed::Timed;
use super::{ACK_FAILED, ACK_READY, ACK_RUNNING, DeviceName, DeviceRecord, GO, read_line};
use crate::stream::{Section, StreamConfig, StreamReader, WriteGuestMemory};
use crate::transport::{Listener, StreamConnection, TransportError};

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
    /// The longest one read of the stream waited for the source, in ms: how close the
    /// migration came to [`ReceiveTimeouts::idle`].
    pub longest_wait_ms: f64,
    /// Connections refused before the commit point (see the [engine](super) docs), this
    /// receive's [`ReceiveOptions::refusals`] at its end.
    pub refused: u64,
    /// Why, for the last [`REFUSALS_KEPT`](super::REFUSALS_KEPT) of them, oldest first.
    pub refusals: Vec<String>,
}

/// How long each phase of a receive may take. The first two bound what a peer that is not
/// (yet) a migration can hold the destination for; see the [engine](super) docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveTimeouts {
    /// The TLS handshake, from the accept (TLS only).
    pub handshake: Duration,
    /// The stream header and the `Config` section, from the end of the handshake (or the
    /// accept).
    pub setup: Duration,
    /// The longest one read of the rest of the stream may wait for the source, once
    /// committed. The source writes while it syncs dirty pages and talks to its devices,
    /// so this is long.
    pub idle: Duration,
    /// From `VFMIG-READY` to the source's `VFMIG-GO`.
    pub go: Duration,
}

impl ReceiveTimeouts {
    /// The defaults: a handshake of 10 s, 10 s for the header and config, 60 s of silence
    /// mid-stream, 30 s for the go.
    pub const DEFAULT: ReceiveTimeouts = ReceiveTimeouts {
        handshake: crate::transport::HANDSHAKE_TIMEOUT,
        setup: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        go: Duration::from_secs(30),
    };
}

impl Default for ReceiveTimeouts {
    fn default() -> Self {
        ReceiveTimeouts::DEFAULT
    }
}

/// What a receive is given besides its listener and host.
#[derive(Clone, Debug, Default)]
pub struct ReceiveOptions<'a> {
    /// Guest RAM prepared beforehand (e.g. populated while waiting), used if its layout is
    /// the stream's; otherwise RAM is made from the stream's layout.
    pub ram: Option<Arc<GuestRam>>,
    /// The VM this destination is for: its RAM layout and its own devices (spawned or on
    /// sockets), which take the source's devices' places by id. A stream of any other VM
    /// (RAM layout, device ids) is refused, naming the difference, before the commit point;
    /// one whose devices' profiles differ from ours once they are attached, before any
    /// state reaches them. `None` takes the stream's RAM layout and no devices.
    pub expected: Option<&'a VmConfig>,
    /// How long each phase may take.
    pub timeouts: ReceiveTimeouts,
    /// Where each connection refused before the commit point is recorded as it happens
    /// (a clone of it sees them while the destination waits).
    pub refusals: RefusalLog,
}

/// The devices a stream names, in its order: `(id, profile)`.
pub(super) type IncomingDevices = Vec<(String, String)>;

/// The devices the stream names, in its order: `(id, profile)`.
fn incoming_devices(config: &StreamConfig) -> Result<IncomingDevices, MigrationError> {
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

/// Receives one migration on `listener` with the default [`ReceiveOptions`]: any VM, the
/// default timeouts.
pub fn receive(
    listener: &Listener,
    host: &DeviceHost,
) -> Result<(Vm, ReceiveStats), MigrationError> {
    receive_into(listener, host, &ReceiveOptions::default())
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

/// Accepts connections on `listener` until one passes the commit point (several peers on
/// their way there at once, see [`MAX_PENDING_PEERS`](super::MAX_PENDING_PEERS) and the
/// [engine](super) docs), refusing the others, then receives the migration it carries and
/// returns the VM, devices RUNNING and the guest paused: the caller lets it run. It returns
/// only once the source said go (see the [engine](super)'s handshake): the source will not
/// resume the guest on its side.
///
/// # Errors
/// A failure past the commit point, or of the listener itself; never a peer's before it.
pub fn receive_into(
    listener: &Listener,
    host: &DeviceHost,
    options: &ReceiveOptions<'_>,
) -> Result<(Vm, ReceiveStats), MigrationError> {
    let admission = Admission::new(listener, options);
    let received = std::thread::scope(|scope| {
        let (admitted, refused) = admission.admit(scope)?;
        let received = receive_admitted(admitted, host, options);
        admission.collect(refused);
        received
    });
    // Every peer's thread has ended, its refusal recorded.
    let Refusals { refused, reasons } = options.refusals.get();
    received.map(|(vm, stats)| {
        let stats = ReceiveStats {
            refused,
            refusals: reasons,
            ..stats
        };
        (vm, stats)
    })
}

/// Receives the migration of the admitted peer: builds the VM, applies the stream, and
/// waits for the go.
fn receive_admitted(
    admitted: Admitted,
    host: &DeviceHost,
    options: &ReceiveOptions<'_>,
) -> Result<(Vm, ReceiveStats), MigrationError> {
    let mut stats = ReceiveStats::default();
    let Admitted {
        reader,
        config,
        incoming,
        mut ack,
        start,
    } = admitted;
    let ram = options.ram.clone();
    match receive_on(
        reader,
        config,
        &incoming,
        host,
        ram,
        options.timeouts.idle,
        &mut stats,
    )
    .and_then(|(vm, mut timed, mut left)| {
        wait_for_go(&mut ack, &mut timed, &mut left, options.timeouts.go)?;
        Ok(vm)
    }) {
        Ok(vm) => {
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

/// Reads the stream header and `Config` within the setup timeout, and checks the VM it
/// describes: the last steps before the commit point.
pub(super) fn read_config(
    conn: StreamConnection,
    options: &ReceiveOptions<'_>,
) -> Result<(StreamReader<Timed>, VmConfig, IncomingDevices), MigrationError> {
    let timed = Timed::within(
        conn,
        options.timeouts.setup,
        "the stream header and Config section",
    );
    let mut reader = StreamReader::new(timed)?;
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
    let config = vm_for(ram_layout, &incoming, options.expected)?;
    Ok((reader, config, incoming))
}

/// Tells the source the VM is ready, then waits on the stream's connection (after `End`;
/// `left` is what the stream reader received past it) for its go, at most `within`.
fn wait_for_go(
    ack: &mut StreamConnection,
    conn: &mut Timed,
    left: &mut Vec<u8>,
    within: Duration,
) -> Result<(), MigrationError> {
    let no_go = |what: String| MigrationError::NoGo(what);
    ack.write_all(format!("{ACK_READY}\n").as_bytes())
        .map_err(|e| no_go(format!("telling the source the VM is ready: {e}")))?;
    conn.set_within(within, "waiting for the go");
    match read_line(conn, left) {
        Ok(line) if line == GO => Ok(()),
        Ok(line) if line.is_empty() => Err(no_go("the source closed the connection".into())),
        Ok(line) => Err(no_go(format!("unexpected message {line:?}"))),
        Err(e) => Err(no_go(e.to_string())),
    }
}

/// How long telling a peer why it was refused may take: the write of the reason, and then
/// again reading and dropping what it still sends.
const TELL_WITHIN: Duration = Duration::from_secs(2);

/// Sends the source why the stream was refused, then closes gently: a half-close, and what
/// the source still sends is read and dropped for a moment, so the close does not reset the
/// connection (a reset would discard the reason before the source reads it). A peer that
/// reads nothing holds it for at most twice [`TELL_WITHIN`].
pub(super) fn tell_source(ack: &mut StreamConnection, e: &MigrationError) {
    let _ = ack.set_write_timeout(Some(TELL_WITHIN));
    let _ = ack.write_all(format!("{ACK_FAILED} {e}\n").as_bytes());
    let _ = ack.shutdown_write();
    let _ = ack.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let deadline = Instant::now() + TELL_WITHIN;
    let mut sink = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match io::Read::read(ack, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = ack.shutdown();
}

/// Builds the VM of `config` (the stream's devices `incoming` checked against ours once
/// attached) and applies the rest of the stream to it, each read waiting at
/// most `idle` for the source; returns it, devices RUNNING, with the stream's connection
/// and the bytes received past `End`.
fn receive_on(
    mut reader: StreamReader<Timed>,
    config: VmConfig,
    incoming: &[(String, String)],
    host: &DeviceHost,
    ram: Option<Arc<GuestRam>>,
    idle: Duration,
    stats: &mut ReceiveStats,
) -> Result<(Vm, Timed, Vec<u8>), MigrationError> {
    reader.get_mut().set_idle(idle).map_err(|source| {
        MigrationError::Transport(TransportError::SocketOption {
            option: "SO_RCVTIMEO",
            source,
        })
    })?;
    let vm = match ram.filter(|r| r.layout() == config.ram) {
        Some(ram) => Vm::build_with_ram(config, ram, host, false),
        None => Vm::build(config, host, false),
    }
    .map_err(Box::new)?;
    check_profiles(&vm, incoming)?;
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
    stats.longest_wait_ms = reader.get_ref().longest_wait().as_secs_f64() * 1e3;
    drop(links);
    let (conn, left) = reader.into_inner();
    Ok((vm, conn, left))
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
