//! A connected client that does not complete VERSION in time is dropped, and the next client
//! gets the device: no client can hold a device server without negotiating.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::dummy::{BAR, REG_SCRATCH};
use common::*;
use vfmig_vfio_user::server::SessionEnd;
use vfmig_vfio_user::{Client, ClientConfig};

const TIMEOUT: Duration = Duration::from_millis(200);

/// A negotiated client behind the stalled one reaches the device.
fn next_client_is_served(path: &std::path::Path) {
    let client = Client::connect(path, ClientConfig::default()).unwrap();
    client
        .region_write(BAR, REG_SCRATCH, &7u64.to_le_bytes())
        .unwrap();
}

#[test]
fn a_client_that_sends_nothing_is_dropped_and_the_next_is_served() {
    let (path, server) = spawn_listener_with(2, TIMEOUT);
    let _silent = UnixStream::connect(&path).unwrap();
    next_client_is_served(&path);
    let ends = server.join();
    assert!(matches!(ends[0], SessionEnd::Dropped(_)), "{:?}", ends[0]);
}

#[test]
fn a_client_that_stops_inside_its_version_is_dropped_and_the_next_is_served() {
    let (path, server) = spawn_listener_with(2, TIMEOUT);
    let mut stalled = UnixStream::connect(&path).unwrap();
    // Half a header: msg_id 1, cmd VERSION, and nothing after.
    stalled.write_all(&[1, 0, 1, 0, 40, 0]).unwrap();
    next_client_is_served(&path);
    let ends = server.join();
    assert!(matches!(ends[0], SessionEnd::Dropped(_)), "{:?}", ends[0]);
}

#[test]
fn a_negotiated_client_may_stay_idle_longer_than_the_handshake_timeout() {
    let (path, server) = spawn_listener_with(1, TIMEOUT);
    let client = Client::connect(&path, ClientConfig::default()).unwrap();
    std::thread::sleep(TIMEOUT * 3);
    client
        .region_write(BAR, REG_SCRATCH, &7u64.to_le_bytes())
        .unwrap();
    drop(client);
    assert!(matches!(server.join()[0], SessionEnd::Closed));
}
