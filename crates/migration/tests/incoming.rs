//! A waiting destination over real TCP sockets, one phase timeout per test: before the
//! commit point a peer that is silent, trickles bytes, never finishes the TLS handshake or
//! describes another VM is dropped at its deadline (told why where the stream got that far)
//! and the destination then receives a real source's VM; after it, a source that goes
//! silent mid-stream, or never says go, fails the receive at its timeout.
//!
//! Timeouts here are a few hundred ms, so each test takes about a second.

mod tls_creds;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use tls_creds::{good_creds, temp_dir, tls};
use vfmig_migration::Gpa;
use vfmig_migration::engine::{
    ACK_FAILED, ACK_READY, DowntimeLimit, MAX_PENDING_PEERS, MigrationError, Progress,
    ReceiveOptions, ReceiveStats, ReceiveTimeouts, RefusalLog, migrate_with, receive_into,
};
use vfmig_migration::stream::{MAGIC, RamLayout, RegionDesc, StreamConfig, StreamWriter};
use vfmig_migration::transport::{
    Address, Listener, StreamConnection, TransportSecurity, connect, listen_with,
};
use vfmig_vmm::{DeviceHost, Vm, VmConfig};

const RAM: u64 = 32 << 20;

/// Each phase's timeout in these tests.
const PHASE: Duration = Duration::from_millis(300);

/// The setup timeout of the tests where silent peers hold slots while a source migrates:
/// long against a migration of [`RAM`], so finishing before it shows they did not delay it.
const LONG_SETUP: Duration = Duration::from_secs(3);

/// How late past its deadline a peer may be dropped on a loaded machine (the refusal's
/// gentle close takes up to 200 ms more).
const SLACK: Duration = Duration::from_millis(1500);

fn timeouts() -> ReceiveTimeouts {
    ReceiveTimeouts {
        handshake: PHASE,
        setup: PHASE,
        idle: PHASE,
        go: PHASE,
    }
}

/// A host for VMs without devices (the device program is never run).
fn host(name: &str) -> DeviceHost {
    DeviceHost {
        program: PathBuf::from("vfmig"),
        dir: temp_dir(name),
        viommu: false,
    }
}

fn vm_config(ram: u64) -> VmConfig {
    VmConfig::with_memory(ram, vec![]).unwrap()
}

/// A source VM whose RAM holds a different word every 4 KiB.
fn source_vm(host: &DeviceHost, ram: u64) -> Vm {
    let vm = Vm::build(vm_config(ram), host, true).unwrap();
    for gpa in (0..ram).step_by(4096) {
        vm.ram().write(gpa, &(gpa ^ 0x5a5a).to_le_bytes()).unwrap();
    }
    vm
}

/// A listener on a free port of 127.0.0.1 with `security`, and its address.
fn local_listener(security: &TransportSecurity) -> (Listener, Address) {
    let listener = listen_with(&"tcp:127.0.0.1:0".parse().unwrap(), security).unwrap();
    let to = listener.address().clone();
    (listener, to)
}

fn port(listener: &Listener) -> u16 {
    let Address::Tcp { port, .. } = listener.address() else {
        unreachable!("a tcp: listener")
    };
    *port
}

/// Runs `receive_into` for a VM of [`RAM`] on `listener` on a thread while `peer` runs;
/// returns what the receive returned.
fn receive_while(
    listener: &Listener,
    host: &DeviceHost,
    peer: impl FnOnce(),
) -> Result<(Vm, ReceiveStats), MigrationError> {
    receive_with(listener, host, timeouts(), &RefusalLog::default(), peer)
}

/// [`receive_while`] with the timeouts given, recording refusals in `refusals`.
fn receive_with(
    listener: &Listener,
    host: &DeviceHost,
    timeouts: ReceiveTimeouts,
    refusals: &RefusalLog,
    peer: impl FnOnce(),
) -> Result<(Vm, ReceiveStats), MigrationError> {
    let expected = vm_config(RAM);
    let options = ReceiveOptions {
        expected: Some(&expected),
        timeouts,
        refusals: refusals.clone(),
        ..ReceiveOptions::default()
    };
    thread::scope(|s| {
        let receiving = s.spawn(|| receive_into(listener, host, &options));
        // A peer that fails leaves the receive waiting for a connection that never comes, and
        // the scope waiting for it: end the test binary as failed instead of hanging.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(peer)).is_err() {
            eprintln!("the peer of a receive panicked (above); the receive cannot end");
            std::process::exit(101);
        }
        receiving.join().unwrap()
    })
}

/// Migrates `vm` to `to`; it must succeed.
fn migrate(vm: &Vm, to: &Address, security: &TransportSecurity) {
    migrate_with(
        vm,
        to,
        security,
        &mut DowntimeLimit::default(),
        &Progress::new(),
    )
    .unwrap();
}

/// Everything the destination sends a peer until it closes, and when it first answered:
/// its first byte, or the close if it sent none.
fn until_closed(conn: &mut TcpStream) -> (String, Instant) {
    conn.set_read_timeout(Some(PHASE + SLACK * 2)).unwrap();
    let mut got = Vec::new();
    let mut first = None;
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    let answered = first.unwrap_or_else(Instant::now);
    (String::from_utf8_lossy(&got).into_owned(), answered)
}

/// [`timeouts`] with a setup of [`LONG_SETUP`].
fn long_setup() -> ReceiveTimeouts {
    ReceiveTimeouts {
        setup: LONG_SETUP,
        ..timeouts()
    }
}

/// `count` peers connected to `listener` that send nothing.
fn silent_peers(listener: &Listener, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(("127.0.0.1", port(listener))).unwrap())
        .collect()
}

/// Waits (a few seconds at most) until `refusals` has recorded `count` refusals.
fn wait_for_refusals(refusals: &RefusalLog, count: u64) {
    let deadline = Instant::now() + LONG_SETUP;
    while refusals.get().refused < count {
        assert!(Instant::now() < deadline, "{:?}", refusals.get());
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `elapsed` is the deadline, not much later and not earlier.
fn at_deadline(elapsed: Duration) {
    assert!(
        elapsed >= PHASE && elapsed < PHASE + SLACK,
        "dropped after {elapsed:?}, the deadline is {PHASE:?}"
    );
}

/// Asserts that the receive refused exactly one peer, for a reason saying `why`.
fn refused_once(stats: &ReceiveStats, why: &str) {
    assert_eq!(stats.refused, 1, "{stats:?}");
    assert!(stats.refusals[0].contains(why), "{stats:?}");
}

/// The stream header and `Config` of a VM of [`RAM`], as a source sends them first.
fn writer_with_config(conn: StreamConnection) -> StreamWriter<StreamConnection> {
    let regions = vm_config(RAM)
        .ram
        .iter()
        .map(|&(gpa, size)| RegionDesc {
            gpa: Gpa(gpa),
            size,
        })
        .collect();
    let config = StreamConfig::new(RamLayout::new(regions).unwrap(), vec![]).unwrap();
    let mut writer = StreamWriter::new(conn).unwrap();
    writer.write_config(&config).unwrap();
    writer.flush().unwrap();
    writer
}

#[test]
fn a_silent_peer_is_dropped_at_the_setup_deadline_and_the_next_source_migrates() {
    let host = host("incoming-silent");
    let vm = source_vm(&host, RAM);
    let (listener, to) = local_listener(&Default::default());
    let (received, stats) = receive_while(&listener, &host, || {
        let mut silent = TcpStream::connect(("127.0.0.1", port(&listener))).unwrap();
        let start = Instant::now();
        let (told, answered) = until_closed(&mut silent);
        at_deadline(answered - start);
        assert!(told.starts_with(ACK_FAILED), "{told:?}");
        migrate(&vm, &to, &TransportSecurity::Plain);
    })
    .unwrap();
    assert_eq!(received.digest().unwrap(), vm.digest().unwrap());
    refused_once(&stats, "not done within 300 ms");
}

#[test]
fn a_peer_trickling_its_header_is_dropped_at_the_setup_deadline() {
    let host = host("incoming-trickle");
    let vm = source_vm(&host, RAM);
    let (listener, to) = local_listener(&Default::default());
    let (_, stats) = receive_while(&listener, &host, || {
        let mut peer = TcpStream::connect(("127.0.0.1", port(&listener))).unwrap();
        let start = Instant::now();
        // One byte of a valid header every 100 ms: each read comes well within the
        // deadline, the header never does (16 bytes take 1.6 s).
        let mut trickle = peer.try_clone().unwrap();
        let trickling = thread::spawn(move || {
            for byte in MAGIC.iter().chain(&[1, 0, 0, 0, 0, 0, 0, 0]) {
                if trickle.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let (told, answered) = until_closed(&mut peer);
        at_deadline(answered - start);
        assert!(told.starts_with(ACK_FAILED), "{told:?}");
        trickling.join().unwrap();
        migrate(&vm, &to, &TransportSecurity::Plain);
    })
    .unwrap();
    assert_eq!(stats.refused, 1, "{stats:?}");
}

#[test]
fn a_tls_peer_that_never_finishes_the_handshake_is_dropped_at_the_handshake_deadline() {
    let host = host("incoming-handshake");
    let vm = source_vm(&host, RAM);
    let security = tls(&good_creds("incoming-handshake-creds"), &[]);
    let (listener, to) = local_listener(&security);
    let (received, stats) = receive_while(&listener, &host, || {
        let mut silent = TcpStream::connect(("127.0.0.1", port(&listener))).unwrap();
        let start = Instant::now();
        let (_, closed) = until_closed(&mut silent);
        at_deadline(closed - start);
        migrate(&vm, &to, &security);
    })
    .unwrap();
    assert_eq!(received.digest().unwrap(), vm.digest().unwrap());
    refused_once(&stats, "TLS handshake");
}

#[test]
fn a_tls_peer_trickling_its_hello_is_dropped_at_the_handshake_deadline() {
    let host = host("incoming-hello");
    let vm = source_vm(&host, RAM);
    let security = tls(&good_creds("incoming-hello-creds"), &[]);
    let (listener, to) = local_listener(&security);
    let (_, stats) = receive_while(&listener, &host, || {
        let mut peer = TcpStream::connect(("127.0.0.1", port(&listener))).unwrap();
        let start = Instant::now();
        // A handshake record of 255 bytes, one byte every 100 ms: every read of the
        // destination gets a byte in time, the record would take 26 s.
        let mut trickle = peer.try_clone().unwrap();
        let trickling = thread::spawn(move || {
            for byte in [0x16, 0x03, 0x01, 0x00, 0xff].into_iter().chain([0; 255]) {
                if trickle.write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let (_, answered) = until_closed(&mut peer);
        at_deadline(answered - start);
        drop(peer);
        trickling.join().unwrap();
        migrate(&vm, &to, &security);
    })
    .unwrap();
    refused_once(&stats, "not complete within 300 ms");
}

#[test]
fn a_vm_of_another_shape_is_refused_and_the_destination_listens_on() {
    let host = host("incoming-shape");
    let (other, vm) = (source_vm(&host, 2 * RAM), source_vm(&host, RAM));
    let (listener, to) = local_listener(&Default::default());
    let (received, stats) = receive_while(&listener, &host, || {
        let refused = migrate_with(
            &other,
            &to,
            &TransportSecurity::Plain,
            &mut DowntimeLimit::default(),
            &Progress::new(),
        )
        .expect_err("a VM of another shape migrated in");
        assert!(refused.to_string().contains("RAM"), "{refused}");
        migrate(&vm, &to, &TransportSecurity::Plain);
    })
    .unwrap();
    assert_eq!(received.digest().unwrap(), vm.digest().unwrap());
    assert_eq!(stats.refused, 1, "{stats:?}");
}

#[test]
fn a_source_silent_after_its_config_fails_the_receive_at_the_idle_timeout() {
    let host = host("incoming-idle");
    let (listener, _) = local_listener(&Default::default());
    let mut start = Instant::now();
    let failed = receive_while(&listener, &host, || {
        let writer = writer_with_config(connect(listener.address()).unwrap());
        start = Instant::now();
        // Past the commit point: the destination builds the VM and waits for the rest.
        let mut conn = writer.into_inner().unwrap();
        let mut told = String::new();
        let _ = conn.read_to_string(&mut told);
        assert!(told.starts_with(ACK_FAILED), "{told:?}");
    })
    .expect_err("a stream that stopped was received");
    at_deadline(start.elapsed());
    assert!(
        matches!(failed, MigrationError::Receive(_))
            && failed
                .to_string()
                .contains("nothing from the peer for 300 ms"),
        "{failed}"
    );
}

#[test]
fn a_ready_destination_without_a_go_discards_the_vm_at_the_go_timeout() {
    let host = host("incoming-go");
    let (listener, _) = local_listener(&Default::default());
    let mut ready = Instant::now();
    let failed = receive_while(&listener, &host, || {
        let mut writer = writer_with_config(connect(listener.address()).unwrap());
        writer.finish().unwrap();
        let mut conn = writer.into_inner().unwrap();
        let mut line = [0u8; ACK_READY.len() + 1];
        conn.read_exact(&mut line).unwrap();
        ready = Instant::now();
        assert_eq!(&line[..ACK_READY.len()], ACK_READY.as_bytes());
        let mut rest = String::new();
        let _ = conn.read_to_string(&mut rest);
    })
    .expect_err("a VM was handed over without a go");
    at_deadline(ready.elapsed());
    assert!(
        matches!(failed, MigrationError::NoGo(_)) && failed.to_string().contains("go"),
        "{failed}"
    );
}

#[test]
fn silent_peers_holding_slots_do_not_delay_a_real_migration() {
    let host = host("incoming-pending");
    let vm = source_vm(&host, RAM);
    let (listener, to) = local_listener(&Default::default());
    let (received, _) = receive_with(
        &listener,
        &host,
        long_setup(),
        &RefusalLog::default(),
        || {
            let _silent = silent_peers(&listener, MAX_PENDING_PEERS - 1);
            let start = Instant::now();
            migrate(&vm, &to, &TransportSecurity::Plain);
            let took = start.elapsed();
            assert!(
                took < LONG_SETUP,
                "the migration took {took:?}, the silent peers' deadline is {LONG_SETUP:?}"
            );
        },
    )
    .unwrap();
    assert_eq!(received.digest().unwrap(), vm.digest().unwrap());
}

#[test]
fn a_peer_pending_when_another_is_admitted_is_told_so_at_once() {
    let host = host("incoming-superseded");
    let vm = source_vm(&host, RAM);
    let (listener, to) = local_listener(&Default::default());
    receive_with(
        &listener,
        &host,
        long_setup(),
        &RefusalLog::default(),
        || {
            let mut silent = silent_peers(&listener, 1).remove(0);
            let start = Instant::now();
            migrate(&vm, &to, &TransportSecurity::Plain);
            let (told, answered) = until_closed(&mut silent);
            assert!(
                answered - start < LONG_SETUP,
                "told after {:?}",
                answered - start
            );
            assert!(
                told.starts_with(ACK_FAILED) && told.contains("another migration was admitted"),
                "{told:?}"
            );
        },
    )
    .unwrap();
}

#[test]
fn a_connection_beyond_the_cap_is_closed_at_once_and_refused() {
    let host = host("incoming-cap");
    let vm = source_vm(&host, RAM);
    let (listener, to) = local_listener(&Default::default());
    let refusals = RefusalLog::default();
    let (_, stats) = receive_with(&listener, &host, long_setup(), &refusals, || {
        let silent = silent_peers(&listener, MAX_PENDING_PEERS);
        let mut extra = TcpStream::connect(("127.0.0.1", port(&listener))).unwrap();
        let start = Instant::now();
        let (told, closed) = until_closed(&mut extra);
        assert!(
            closed - start < LONG_SETUP / 3,
            "closed after {:?}",
            closed - start
        );
        assert_eq!(told, "");
        // The slots free once the silent peers hang up; then a source gets in.
        drop(silent);
        wait_for_refusals(&refusals, 1 + MAX_PENDING_PEERS as u64);
        migrate(&vm, &to, &TransportSecurity::Plain);
    })
    .unwrap();
    assert!(
        stats.refusals[0].contains("too many peers before the commit point"),
        "{stats:?}"
    );
}
