//! Live migration between `vfmig vm run` processes, each VM with an mtty and a dma-engine in
//! device processes of its own, driven through the VMs' control sockets: what happens when
//! things go wrong (the destination dies, a device dies, the stream is corrupted or cut, a
//! message of the switch-over handshake is lost, the user cancels), the byte-for-byte check
//! of a migration that goes right, and what a VM terminated by a signal leaves behind.
//!
//! After a failure or a cancel the source must be as if no migration had started: the guest
//! running, its devices RUNNING, and a later migration possible. The guest's own device
//! operations show a device left stopped (STOP, STOP_COPY refuse BAR accesses), which is what
//! a failure after the switch-over would leave; a device left in PRE_COPY behaves like a
//! running one to the guest, and only a second migration, verified by digests, shows it.
//!
//! A VM with a device that cannot migrate (refused before anything starts) is in
//! `attached_devices.rs`, with the other devices attached by socket.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::proxy::{Fault, FaultyProxy};
use common::{
    BUSY_GUEST, Guest, TestDir, VmProcess, digest, endless_migration, finite_migration, free_port,
    poll, signal, to,
};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn error_of(migration: &Value) -> &str {
    migration["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {migration}"))
}

/// Kills the destination in the middle of pre-copy and waits for the source to notice.
fn fail_a_migration_by_killing_its_destination(dir: &TestDir, source: &VmProcess) -> Value {
    let port = free_port();
    let mut destination = VmProcess::destination(dir, "dst0", port, BUSY_GUEST);
    source.call("migrate", endless_migration(&to(port)));
    source.wait_for_pre_copy(2);
    signal(destination.pid(), "KILL");
    destination.wait_for_exit();
    source.wait_for_migration_end()
}

#[test]
fn a_killed_destination_fails_the_migration_and_the_guest_runs_on_at_the_source() {
    let dir = TestDir::new("dkill");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);

    let migration = fail_a_migration_by_killing_its_destination(&dir, &source);

    assert_eq!(migration["state"], "failed", "{migration}");
    assert!(!error_of(&migration).is_empty(), "{migration}");
    source.assert_guest_runs_cleanly();
}

#[test]
fn after_a_failed_migration_the_source_migrates_exactly_to_a_fresh_destination() {
    let dir = TestDir::new("retry");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let failed = fail_a_migration_by_killing_its_destination(&dir, &source);
    assert_eq!(failed["state"], "failed", "{failed}");

    let port = free_port();
    let destination = VmProcess::destination(&dir, "dst1", port, BUSY_GUEST);
    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "completed", "{done}");

    // The source is paused since the switch-over, the destination by --paused.
    assert_eq!(source.status()["state"], "paused");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    assert_eq!(digest(&source), digest(&destination));
}

#[test]
fn a_killed_device_process_fails_the_migration_with_an_error_naming_the_device() {
    let dir = TestDir::new("devkill");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    let _destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    source.call("migrate", endless_migration(&to(port)));
    source.wait_for_pre_copy(2);

    signal(source.device_pid("dmaengine0"), "KILL");
    let migration = source.wait_for_migration_end();

    assert_eq!(migration["state"], "failed", "{migration}");
    assert!(
        error_of(&migration).contains("dmaengine0"),
        "the error does not name the device: {migration}"
    );
}

/// The source's device reply deadline in [`a_hung_device_process_fails_the_migration_within_its_reply_deadline`].
const DEVICE_TIMEOUT_MS: &str = "1500";

#[test]
fn a_hung_device_process_fails_the_migration_within_its_reply_deadline() {
    let dir = TestDir::new("devstop");
    // The synthetic guest: its RAM writers run on whatever its devices do.
    let mut args = vec![
        "--guest",
        "synthetic",
        "--device-timeout-ms",
        DEVICE_TIMEOUT_MS,
        "--device-migration-timeout-ms",
        DEVICE_TIMEOUT_MS,
    ];
    args.extend_from_slice(BUSY_GUEST);
    let source = VmProcess::source(&dir, "src", &args);
    let port = free_port();
    let _destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    source.call("migrate", endless_migration(&to(port)));
    source.wait_for_pre_copy(2);

    let device = source.device_pid("dmaengine0");
    signal(device, "STOP");
    let stopped = Instant::now();
    let migration = source.wait_for_migration_end();
    let took = stopped.elapsed();
    signal(device, "CONT");

    assert_eq!(migration["state"], "failed", "{migration}");
    let error = error_of(&migration);
    assert!(
        error.contains("dmaengine0") && error.contains("timed out"),
        "the error does not name the hung device and its deadline: {migration}"
    );
    // The deadline, not the 10 s default nor for ever.
    assert!(took < Duration::from_secs(9), "failed only after {took:?}");
    assert_eq!(source.status()["state"], "running");
    let before = source.guest();
    source.wait_for_guest_progress(before, 1000, 0);
}

#[test]
fn a_corrupted_byte_is_refused_by_the_destination_and_the_source_recovers() {
    let dir = TestDir::new("corrupt");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    let mut destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    let proxy = FaultyProxy::start(local(port), Fault::FlipInFirstRamPages);

    source.call("migrate", endless_migration(&proxy.address()));
    let migration = source.wait_for_migration_end();

    let offset = proxy.fault_at().expect("the proxy flipped a byte");
    assert_eq!(migration["state"], "failed", "{migration}");
    let error = error_of(&migration);
    assert!(
        error.contains("the destination refused the stream") && error.contains("checksum"),
        "the source's error does not carry the destination's reason: {error}"
    );
    // The destination refused the section holding the byte, and said why.
    assert!(!destination.wait_for_exit().success());
    let log = destination.log();
    assert!(
        log.contains("(ram-pages)") && log.contains("checksum"),
        "the destination does not report a checksum error in the section of byte {offset}:\n{log}"
    );
    source.assert_guest_runs_cleanly();
}

#[test]
fn a_connection_lost_after_the_switch_over_resumes_the_guest_and_its_devices_at_the_source() {
    let dir = TestDir::new("cut");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    let _destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    let proxy = FaultyProxy::start(local(port), Fault::CutAtFirstDeviceConfig);

    // The guest paused, the devices stopped: then the connection goes.
    source.call("migrate", finite_migration(&proxy.address()));
    let migration = source.wait_for_migration_end();

    assert!(proxy.fault_at().is_some(), "the source never switched over");
    assert_eq!(migration["state"], "failed", "{migration}");
    source.assert_guest_runs_cleanly();
}

#[test]
fn a_cancel_during_pre_copy_leaves_the_guest_running_at_the_source() {
    let dir = TestDir::new("cancel");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    let mut destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    source.call("migrate", endless_migration(&to(port)));
    source.wait_for_pre_copy(2);

    source.call("cancel", Value::Null);
    let migration = source.wait_for_migration_end();

    assert_eq!(migration["state"], "cancelled", "{migration}");
    source.assert_guest_runs_cleanly();
    // The destination saw the stream end early and gave up.
    assert!(!destination.wait_for_exit().success());
}

#[test]
fn a_cancel_takes_effect_while_the_destination_stalls() {
    let dir = TestDir::new("stall");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    let destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    source.call("migrate", endless_migration(&to(port)));
    source.wait_for_pre_copy(2);

    // The destination stops reading: the socket buffers fill and the sender blocks in a
    // write. Wait until no iteration has finished for a second.
    signal(destination.pid(), "STOP");
    let mut last = (source.migration()["iteration"].clone(), Instant::now());
    poll("the sender to block on the stalled destination", || {
        let now = source.migration()["iteration"].clone();
        if now != last.0 {
            last = (now, Instant::now());
        }
        (last.1.elapsed() > Duration::from_secs(1)).then_some(())
    });

    source.call("cancel", Value::Null);
    let migration = source.wait_for_migration_end();

    assert_eq!(migration["state"], "cancelled", "{migration}");
    source.assert_guest_runs_cleanly();
}

#[test]
fn a_migration_that_cannot_connect_is_reported_failed_with_the_reason() {
    let dir = TestDir::new("noconn");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    // Nothing listens on the port: the migration fails before its stream starts.
    source.call("migrate", finite_migration(&to(free_port())));
    let migration = source.wait_for_migration_end();
    assert_eq!(migration["state"], "failed", "{migration}");
    assert!(
        error_of(&migration).contains("refused"),
        "the reason is not the connect error: {migration}"
    );
}

#[test]
fn a_busy_vm_migrates_byte_for_byte_and_its_guest_runs_on_at_the_destination() {
    let dir = TestDir::new("exact");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    let destination = VmProcess::destination(&dir, "dst", port, BUSY_GUEST);
    // RAM and both devices busy before the migration starts (a KVM guest here stamps a
    // couple of thousand pages a second: its instructions are emulated).
    source.wait_for_guest_progress(Guest::default(), 2_000, 50);

    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "completed", "{done}");
    assert!(
        done["stats"]["device_bytes"].as_u64() > Some(0),
        "no device state moved: {done}"
    );

    assert_eq!(source.status()["state"], "paused");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    let (want, got) = (digest(&source), digest(&destination));
    assert_eq!(want.devices.len(), 2, "{want:?}");
    assert_eq!(got, want, "the destination differs from the source");

    destination.call("cont", Value::Null);
    destination.assert_guest_runs_cleanly();
}

/// Migrates through a relay that drops `fault`'s handshake message; returns the source, the
/// destination and the source's final migration status, once the relay dropped it.
fn migrate_losing(dir: &TestDir, fault: Fault) -> (VmProcess, VmProcess, Value) {
    let source = VmProcess::source(dir, "src", BUSY_GUEST);
    let port = free_port();
    let destination = VmProcess::destination(dir, "dst", port, BUSY_GUEST);
    let proxy = FaultyProxy::start(local(port), fault);
    source.call("migrate", finite_migration(&proxy.address()));
    let migration = source.wait_for_migration_end();
    assert!(
        proxy.fault_at().is_some(),
        "the relay dropped nothing: {migration}"
    );
    (source, destination, migration)
}

#[test]
fn a_lost_ready_leaves_the_guest_running_at_the_source_and_the_destination_discards_it() {
    let dir = TestDir::new("noready");
    let (source, mut destination, migration) = migrate_losing(&dir, Fault::DropReady);

    assert_eq!(migration["state"], "failed", "{migration}");
    assert!(!destination.wait_for_exit().success());
    assert!(
        destination.log().contains("did not say go"),
        "the destination does not say why it discarded the VM:\n{}",
        destination.log()
    );
    source.assert_guest_runs_cleanly();
}

#[test]
fn a_lost_go_leaves_the_guest_paused_at_the_source_and_the_destination_discards_it() {
    let dir = TestDir::new("nogo");
    let (source, mut destination, migration) = migrate_losing(&dir, Fault::DropGo);

    assert_eq!(migration["state"], "unconfirmed", "{migration}");
    assert!(
        error_of(&migration).contains("did not confirm"),
        "{migration}"
    );
    assert!(!destination.wait_for_exit().success());
    assert_eq!(source.status()["state"], "paused");
}

#[test]
fn cont_after_an_unconfirmed_switch_over_takes_the_guest_and_its_devices_back() {
    let dir = TestDir::new("reclaim");
    let (source, mut destination, _) = migrate_losing(&dir, Fault::DropGo);
    assert!(!destination.wait_for_exit().success());

    source.call("cont", Value::Null);

    source.assert_guest_runs_cleanly();
}

#[test]
fn a_second_migration_is_refused_while_a_switch_over_is_unconfirmed() {
    let dir = TestDir::new("nosecond");
    let (source, _destination, _) = migrate_losing(&dir, Fault::DropGo);

    let refused = source.request("migrate", finite_migration(&to(free_port())));

    let error = refused.expect_err("a second migration started").to_string();
    assert!(error.contains("unconfirmed"), "{error}");
}

#[test]
fn a_lost_running_leaves_the_guest_to_the_destination_alone() {
    let dir = TestDir::new("norunning");
    let (source, destination, migration) = migrate_losing(&dir, Fault::DropRunning);

    assert_eq!(migration["state"], "unconfirmed", "{migration}");
    assert_eq!(source.status()["state"], "paused");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    destination.call("cont", Value::Null);
    destination.assert_guest_runs_cleanly();
}

/// Whether process `pid` has ended (gone, or a zombie not reaped yet).
fn has_ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_terminated_vm_removes_its_runtime_directory_and_its_device_processes_end() {
    let dir = TestDir::new("term");
    let mut vm = VmProcess::source(&dir, "vm", BUSY_GUEST);
    let devices = [vm.device_pid("mtty0"), vm.device_pid("dmaengine0")];
    let runtime = dir.path().join(format!("vfmig-{}", vm.pid()));
    assert!(
        runtime.is_dir(),
        "no runtime directory {}",
        runtime.display()
    );

    signal(vm.pid(), "TERM");

    assert!(!vm.wait_for_exit().success());
    assert!(!runtime.exists(), "{} is left behind", runtime.display());
    for pid in devices {
        poll(&format!("device process {pid} to end"), || {
            has_ended(pid).then_some(())
        });
    }
}

#[test]
fn a_destination_refuses_a_vm_of_another_shape_naming_the_difference() {
    let dir = TestDir::new("shape");
    let source = VmProcess::source(&dir, "src", BUSY_GUEST);
    let port = free_port();
    // The destination was started for a VM with one more device than the source has.
    let _destination = VmProcess::destination(&dir, "dst", port, &["--device", "mtty"]);
    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        error_of(&done).contains("this destination's device mtty1 is not in the incoming VM"),
        "{done}"
    );
    source.assert_guest_runs_cleanly();
}
