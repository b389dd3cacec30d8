//! A `vfmig vm run --incoming` destination against peers that are not a migration: a port
//! scan's connect-and-close, random bytes, a stream header that does not check, and a peer
//! that connects and stays silent. Each is refused before anything of a VM is built, the
//! destination listens on (its `vfmig vm status` counting the refusals), and a real source
//! VM then migrates into it, byte for byte.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{BUSY_GUEST, TestDir, VmProcess, digest, finite_migration, free_port, poll, to};
use serde_json::Value;
use vfmig_migration::engine::ACK_FAILED;
use vfmig_migration::stream::MAGIC;

/// The destination's pre-commit timeout in these tests, in ms.
const INCOMING_TIMEOUT_MS: &str = "1000";

/// What the destination logs when it refuses a connection and listens on.
const REFUSED: &str = "refused a connection before the commit point";

/// A source VM, and a destination for it on a free port that drops peers after
/// [`INCOMING_TIMEOUT_MS`].
fn source_and_destination(dir: &TestDir) -> (VmProcess, VmProcess, u16) {
    let source = VmProcess::source(dir, "src", BUSY_GUEST);
    let port = free_port();
    let mut args = vec!["--incoming-timeout-ms", INCOMING_TIMEOUT_MS];
    args.extend_from_slice(BUSY_GUEST);
    let destination = VmProcess::destination(dir, "dst", port, &args);
    (source, destination, port)
}

/// Connects to the destination as a peer that is not a migration.
fn peer(port: u16) -> TcpStream {
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the destination");
    conn.set_read_timeout(Some(common::DEADLINE))
        .expect("set a read timeout");
    conn
}

/// 4 KiB of noise: not a stream header.
fn random_bytes() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// What `vfmig vm status` prints for `vm`.
fn status_command(vm: &VmProcess) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vfmig"))
        .args(["vm", "status", "--control"])
        .arg(vm.control())
        .output()
        .expect("run vfmig vm status");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// What the destination told `conn` before it closed it.
fn told(mut conn: TcpStream) -> String {
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// Waits until the destination has logged `count` refusals, and checks it still waits for
/// a migration.
fn wait_for_refusals(destination: &VmProcess, count: usize) {
    poll("the destination to refuse the peer", || {
        (destination.log().matches(REFUSED).count() >= count).then_some(())
    });
    assert_eq!(destination.status()["incoming"], "waiting");
}

/// Migrates the source into the destination; the migration must complete and the
/// destination hold the source's VM.
fn assert_a_real_migration_succeeds(source: &VmProcess, destination: &VmProcess, port: u16) {
    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "completed", "{done}");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    assert_eq!(digest(source), digest(destination));
}

#[test]
fn a_connect_and_close_leaves_the_destination_listening_for_a_real_migration() {
    let dir = TestDir::new("scan");
    let (source, destination, port) = source_and_destination(&dir);

    drop(peer(port));

    wait_for_refusals(&destination, 1);
    assert!(
        destination.log().contains("truncated"),
        "{}",
        destination.log()
    );
    assert_a_real_migration_succeeds(&source, &destination, port);
}

#[test]
fn random_bytes_leave_the_destination_listening_for_a_real_migration() {
    let dir = TestDir::new("noise");
    let (source, destination, port) = source_and_destination(&dir);
    let mut conn = peer(port);

    conn.write_all(&random_bytes()).expect("send noise");

    let answer = told(conn);
    assert!(
        answer.starts_with(ACK_FAILED) && answer.contains("not a vfmig migration stream"),
        "{answer:?}"
    );
    wait_for_refusals(&destination, 1);
    assert_a_real_migration_succeeds(&source, &destination, port);
}

#[test]
fn a_bad_stream_header_leaves_the_destination_listening_for_a_real_migration() {
    let dir = TestDir::new("header");
    let (source, destination, port) = source_and_destination(&dir);
    let mut conn = peer(port);
    // The magic and version 1.0, with a checksum that does not match them.
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&[1, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);

    conn.write_all(&header).expect("send the header");

    let answer = told(conn);
    assert!(
        answer.starts_with(ACK_FAILED) && answer.contains("stream header checksum"),
        "{answer:?}"
    );
    wait_for_refusals(&destination, 1);
    assert_a_real_migration_succeeds(&source, &destination, port);
}

#[test]
fn a_silent_peer_does_not_hold_the_destination_from_a_real_migration() {
    let dir = TestDir::new("silent");
    let (source, destination, port) = source_and_destination(&dir);
    let silent = peer(port);

    // The silent peer stays connected all along; the source is taken to the commit point
    // beside it, and admitted.
    assert_a_real_migration_succeeds(&source, &destination, port);

    let answer = told(silent);
    assert!(
        answer.starts_with(ACK_FAILED) && answer.contains("another migration was admitted"),
        "{answer:?}"
    );
    assert!(destination.log().contains(REFUSED), "{}", destination.log());
}

#[test]
fn a_waiting_destination_shows_a_refused_peer_in_its_status() {
    let dir = TestDir::new("status");
    let port = free_port();
    let mut args = vec!["--incoming-timeout-ms", INCOMING_TIMEOUT_MS];
    args.extend_from_slice(BUSY_GUEST);
    let destination = VmProcess::destination(&dir, "dst", port, &args);
    let mut conn = peer(port);

    conn.write_all(&random_bytes()).expect("send noise");
    told(conn);

    let status = poll("the refusal in `vfmig vm status`", || {
        let status = status_command(&destination);
        (status["incoming_refusals"]["refused"].as_u64() >= Some(1)).then_some(status)
    });
    assert_eq!(status["incoming"], "waiting", "{status}");
    let reason = status["incoming_refusals"]["reasons"][0].as_str();
    assert!(
        reason.is_some_and(|r| r.contains("not a vfmig migration stream")),
        "{status}"
    );
}
